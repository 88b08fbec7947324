"""A live, correct double-entry write load on the source ledger.

Each business transaction is one real source transaction (READ COMMITTED, the Aurora PostgreSQL
default): lock the accounts it touches with ``SELECT ... FOR UPDATE`` (ascending ``account_id``,
so two transactions never wait on each other in opposite order), check the debited account can
pay, insert one ``ledger.journal`` row and two ``ledger.entries`` rows, commit. The legacy trigger
moves the two balances. An unaffordable transaction is rolled back before it writes anything and
counted as *declined*; so is a reversal that lost the race for its transfer (the UNIQUE
``idempotency_key`` ``reversal-of-<txn_id>`` refuses the second one) and, defensively, any CHECK
violation. Nothing is ever partially applied: every write of a business transaction shares one
``with conn.transaction()`` block.

``workers`` threads, each with its own connection, share the requested rate: worker ``i`` runs on
a fixed schedule of one transaction every ``workers / tps`` seconds, offset by ``i / tps``. A worker
that falls behind does not burst to catch up; it just runs flat out, so ``achieved_tps`` below the
request means the database (or the client) is the bottleneck. ``SerializationFailure`` (40001) and
``DeadlockDetected`` (40P01) are retried a few times with capped, jittered backoff; a lost
connection is reopened. A ``stop_event`` (or Ctrl-C in the calling thread) ends the run cleanly:
each worker finishes its current transaction and the report is still returned.

Write modes (``write_to``): ``source`` is the legacy application above (the trigger keeps the
balances). ``target`` is the application after write cutover, on DSQL: no trigger exists there, so the
application keeps the balances itself, in the same transaction as the journal and entry rows (lock
both accounts with ``SELECT ... FOR UPDATE`` on their primary key, check, insert, ``UPDATE`` both
balances: five rows, far inside DSQL's limits), the whole transaction under
:func:`reconcile.occ.run_with_retry` (OCC conflicts retried with backoff; a commit whose outcome is
unknown is not retried blindly, and the idempotency key is fixed before the first attempt, so a
business transaction can never post twice). Keys come from one DSQL sequence,
``<schema>.app_id_seq`` (``CACHE 65536``, as DSQL requires), created or moved past the largest key
on the target by :func:`prepare_target` (one DDL statement, in a transaction of its own).

The hot accounts are the seed's (:data:`reconcile.workload.seed.HOT_PER_CURRENCY` lowest customer
ids per currency); ``hot_fraction`` of transfers put one of them on one side, so a few rows are
updated over and over: what a copy/replay race test needs.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from decimal import Decimal

import psycopg
from psycopg import errors

from reconcile.errors import ConnectionFailed, TerminalError

from . import schema
from .seed import CURRENCY_INFO, HOT_PER_CURRENCY

log = logging.getLogger(__name__)

MIX = (("transfer", 0.55), ("deposit", 0.22), ("withdrawal", 0.15), ("reversal", 0.08))
"""Business transaction kinds the live load draws, with their weights."""

MAX_ATTEMPTS = 4
"""Attempts per business transaction on 40001/40P01 before it counts as an error."""

_RETRYABLE = (errors.SerializationFailure, errors.DeadlockDetected)
_DECLINED = (errors.CheckViolation, errors.UniqueViolation)
_REVERSIBLE_SAMPLE = 2_000

Source = str | Callable[[], psycopg.Connection]


@dataclasses.dataclass
class WorkloadReport:
    """What :func:`run_workload` did."""

    requested_tps: float
    workers: int
    committed: dict[str, int]
    """Committed business transactions per kind."""
    declined: int
    """Rolled back before writing: not affordable, or the transfer was already reversed."""
    retried: int
    """Attempts repeated after a serialization failure (40001) or a deadlock (40P01)."""
    errors: int
    """Business transactions given up on (after retries, or an unexpected error)."""
    elapsed_s: float
    error_samples: list[str] = dataclasses.field(default_factory=list)
    """The first few error messages, for the log."""
    interrupted: bool = False
    """True when Ctrl-C ended the run early."""

    @property
    def committed_total(self) -> int:
        return sum(self.committed.values())

    @property
    def attempted(self) -> int:
        """Business transactions started: committed + declined + errors (what the pacing counts)."""
        return self.committed_total + self.declined + self.errors

    @property
    def achieved_tps(self) -> float:
        """Committed business transactions per second."""
        return self.committed_total / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def attempted_tps(self) -> float:
        return self.attempted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def rows_inserted(self) -> int:
        """journal + entries rows: three per committed transaction."""
        return 3 * self.committed_total

    @property
    def rows_updated(self) -> int:
        """``ledger.accounts`` rows the trigger updated: two per committed transaction."""
        return 2 * self.committed_total

    @property
    def rows_written(self) -> int:
        return self.rows_inserted + self.rows_updated

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {
            "committed_total": self.committed_total, "attempted": self.attempted,
            "achieved_tps": round(self.achieved_tps, 1), "attempted_tps": round(self.attempted_tps, 1),
            "rows_inserted": self.rows_inserted, "rows_updated": self.rows_updated,
            "rows_written": self.rows_written}

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(self.committed.items())) or "none"
        return (f"workload: {self.committed_total:,} committed ({kinds}), {self.declined:,} declined, "
                f"{self.retried:,} retried, {self.errors:,} errors in {self.elapsed_s:.1f} s: "
                f"{self.achieved_tps:,.1f} TPS committed, {self.attempted_tps:,.1f} attempted of "
                f"{self.requested_tps:g} requested, "
                f"{self.rows_written:,} rows written"
                + (" (interrupted)" if self.interrupted else ""))


@dataclasses.dataclass(frozen=True)
class _Accounts:
    """The account catalogue the workers draw from (read once at start)."""

    customers: dict[str, list[int]]
    hot: dict[str, list[int]]
    settlement: dict[str, int]
    currency: dict[int, str]


class _Reversible:
    """Transfers that may still be reversed, shared by all workers."""

    def __init__(self, items: list[tuple[int, int, int, Decimal]]) -> None:
        self._items = items
        self._lock = threading.Lock()

    def add(self, item: tuple[int, int, int, Decimal]) -> None:
        with self._lock:
            self._items.append(item)
            if len(self._items) > 4 * _REVERSIBLE_SAMPLE:
                del self._items[: len(self._items) - _REVERSIBLE_SAMPLE]

    def take(self, rng: random.Random) -> tuple[int, int, int, Decimal] | None:
        with self._lock:
            if not self._items:
                return None
            i = rng.randrange(len(self._items))
            self._items[i], self._items[-1] = self._items[-1], self._items[i]
            return self._items.pop()


class _Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.committed: Counter = Counter()
        self.declined = 0
        self.retried = 0
        self.errors = 0
        self.samples: list[str] = []

    def error(self, exc: BaseException) -> None:
        with self.lock:
            self.errors += 1
            if len(self.samples) < 5:
                self.samples.append(f"{type(exc).__name__}: {exc}".strip())


class _Declined(Exception):
    """Raised inside a business transaction to roll it back as declined."""


def _connect(source: Source) -> psycopg.Connection:
    try:
        if callable(source):
            conn = source()
            conn.autocommit = True
            return conn
        return psycopg.connect(source, autocommit=True)
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(f"cannot connect to the source database for the workload: "
                               f"{type(exc).__name__}; check the source settings") from exc


def _load_accounts(conn: psycopg.Connection) -> _Accounts:
    if not schema.schema_exists(conn):
        raise TerminalError("the source database has no ledger schema; run "
                            "`reconcile workload seed` first")
    customers: dict[str, list[int]] = {}
    settlement: dict[str, int] = {}
    currency: dict[int, str] = {}
    for aid, cur, kind in conn.execute(
            "SELECT account_id, currency, kind FROM ledger.accounts ORDER BY account_id"):
        currency[aid] = cur
        if kind == "customer":
            customers.setdefault(cur, []).append(aid)
        elif kind == "settlement":
            settlement.setdefault(cur, aid)
    customers = {c: ids for c, ids in customers.items() if len(ids) >= 2 and c in settlement}
    if not customers:
        raise TerminalError("the source ledger has no currency with a settlement account and two "
                            "customers; reseed it with `reconcile workload seed --reset`")
    hot = {c: ids[:HOT_PER_CURRENCY] for c, ids in customers.items()}
    return _Accounts(customers, hot, settlement, currency)


def _load_reversible(conn: psycopg.Connection) -> list[tuple[int, int, int, Decimal]]:
    """The latest transfers with no reversal yet: (txn_id, from, to, amount)."""
    rows = conn.execute("""
        SELECT j.txn_id, d.account_id, c.account_id, c.amount
          FROM (SELECT txn_id FROM ledger.journal WHERE kind = 'transfer'
                 ORDER BY txn_id DESC LIMIT %s) j
          JOIN ledger.entries d ON d.txn_id = j.txn_id AND d.amount < 0
          JOIN ledger.entries c ON c.txn_id = j.txn_id AND c.amount > 0
         WHERE NOT EXISTS (SELECT 1 FROM ledger.journal r
                            WHERE r.idempotency_key = 'reversal-of-' || j.txn_id)
         ORDER BY j.txn_id""", (_REVERSIBLE_SAMPLE,)).fetchall()
    return [tuple(r) for r in rows]


def _amount(rng: random.Random, cur: str, lo_usd: int, hi_usd: int) -> Decimal:
    rate, digits = CURRENCY_INFO.get(cur, (1.0, 2))
    cents = int(rng.randint(lo_usd * 100, hi_usd * 100) / rate)
    if digits == 0:
        cents = max(100, cents // 100 * 100)
    return Decimal(max(cents, 1)).scaleb(-2)


def _fx(rng: random.Random, cur: str) -> Decimal | None:
    if cur == "USD":
        return None
    rate = CURRENCY_INFO.get(cur, (1.0, 2))[0]
    return Decimal(f"{rate * (1 + rng.uniform(-0.02, 0.02)):.10f}")


class _Worker:
    def __init__(self, index: int, source: Source, conn: psycopg.Connection, accounts: _Accounts,
                 reversible: _Reversible, tally: _Tally, rng: random.Random,
                 hot_fraction: float) -> None:
        self.index, self.source, self.conn = index, source, conn
        self.accounts, self.reversible, self.tally = accounts, reversible, tally
        self.rng, self.hot_fraction = rng, hot_fraction
        self.currencies = sorted(accounts.customers)
        self.kinds = [k for k, _ in MIX]
        self.weights = [w for _, w in MIX]

    # -- one business transaction ------------------------------------------------------------

    def plan(self) -> dict:
        """Pick a kind and its accounts; amounts that depend on balances are fixed under lock."""
        rng, acc = self.rng, self.accounts
        kind = rng.choices(self.kinds, self.weights)[0]
        cur = rng.choice(self.currencies)
        if kind == "reversal":
            item = self.reversible.take(rng)
            if item is not None:
                orig, src, dst, amount = item
                return {"kind": "reversal", "reverses": orig, "debit": dst, "credit": src,
                        "amount": amount, "key": f"reversal-of-{orig}",
                        "memo": f"reversal of txn {orig}", "cur": acc.currency[dst]}
            kind = "transfer"
        if kind == "transfer":
            src, dst = rng.sample(acc.customers[cur], 2)
            if rng.random() < self.hot_fraction:
                h = rng.choice(acc.hot[cur])
                if rng.random() < 0.5:
                    src, dst = h, (dst if dst != h else src)
                else:
                    src, dst = (src if src != h else dst), h
            # Drawn independently of the balance: some transfers are unaffordable and declined.
            return {"kind": "transfer", "debit": src, "credit": dst, "cur": cur,
                    "amount": _amount(rng, cur, 1, 2_000), "memo": "live transfer"}
        if kind == "withdrawal":
            return {"kind": "withdrawal", "debit": rng.choice(acc.customers[cur]),
                    "credit": acc.settlement[cur], "cur": cur,
                    "amount": _amount(rng, cur, 20, 1_000), "memo": "ATM withdrawal"}
        return {"kind": "deposit", "debit": acc.settlement[cur],
                "credit": rng.choice(acc.customers[cur]), "cur": cur,
                "amount": _amount(rng, cur, 10, 3_000), "memo": "cash deposit"}

    def apply(self, p: dict) -> int:
        """Run one planned business transaction; returns its txn_id or raises _Declined."""
        conn = self.conn
        with conn.transaction():
            ids = sorted({p["debit"], p["credit"]})
            rows = conn.execute(
                "SELECT account_id, balance, kind FROM ledger.accounts"
                " WHERE account_id = ANY(%s) ORDER BY account_id FOR UPDATE", (ids,)).fetchall()
            balances = {aid: (bal, kind) for aid, bal, kind in rows}
            bal, kind = balances[p["debit"]]
            if kind != "equity" and bal < p["amount"]:
                raise _Declined("insufficient funds")
            if p["kind"] == "reversal" and conn.execute(
                    "SELECT 1 FROM ledger.journal WHERE idempotency_key = %s", (p["key"],)).fetchone():
                raise _Declined("already reversed")
            txn_id, posted_at = conn.execute(
                "INSERT INTO ledger.journal (idempotency_key, kind, reverses_txn_id, posted_at,"
                " memo, fx_rate) VALUES (%s, %s, %s, clock_timestamp(), %s, %s)"
                " RETURNING txn_id, posted_at",
                (p.get("key") or str(uuid.uuid4()), p["kind"], p.get("reverses"), p["memo"],
                 _fx(self.rng, p["cur"]))).fetchone()
            conn.execute(
                "INSERT INTO ledger.entries (txn_id, account_id, currency, amount, posted_at)"
                " VALUES (%s, %s, %s, %s, %s), (%s, %s, %s, %s, %s)",
                (txn_id, p["debit"], p["cur"], -p["amount"], posted_at,
                 txn_id, p["credit"], p["cur"], p["amount"], posted_at))
        return txn_id

    def one(self) -> None:
        p = self.plan()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                txn_id = self.apply(p)
            except (_Declined, *_DECLINED):
                with self.tally.lock:
                    self.tally.declined += 1
                return
            except _RETRYABLE as exc:
                if attempt == MAX_ATTEMPTS:
                    self.tally.error(exc)
                    return
                with self.tally.lock:
                    self.tally.retried += 1
                time.sleep(self.rng.uniform(0, min(0.2, 0.005 * 2 ** attempt)))
                continue
            except psycopg.OperationalError as exc:
                # Not retried: if the connection dropped during COMMIT the outcome is unknown and
                # a blind retry could post the transaction twice. Count it, reconnect, move on.
                self.tally.error(exc)
                if self.conn.closed or self.conn.broken:
                    self.conn.close()
                    self.conn = _connect(self.source)
                return
            except Exception as exc:  # noqa: BLE001  counted and sampled in the report, never silently dropped
                self.tally.error(exc)
                return
            with self.tally.lock:
                self.tally.committed[p["kind"]] += 1
            if p["kind"] == "transfer":
                self.reversible.add((txn_id, p["debit"], p["credit"], p["amount"]))
            return

    # -- the paced loop --------------------------------------------------------------------------

    def loop(self, first_due: float, interval: float, deadline: float | None,
             stop: threading.Event) -> None:
        due = first_due
        try:
            while not stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return
                if due > now:
                    wake = due if deadline is None else min(due, deadline)
                    if stop.wait(wake - now) or (deadline is not None and due >= deadline):
                        return
                self.one()
                # Behind schedule: run flat out from now on, never burst to catch up.
                due = max(due + interval, time.monotonic())
        except Exception as exc:  # a dead worker is reported, not hidden
            self.tally.error(exc)
            log.exception("workload worker %d stopped", self.index)


WRITE_MODES = ("source", "target")
ID_SEQUENCE = "app_id_seq"
"""The target-side sequence the application draws journal and entry keys from (``write_to='target'``)."""


def prepare_target(conn: psycopg.Connection) -> int:
    """Make ``ledger.app_id_seq`` exist on the target and stand past every journal and entry key.

    Returns the first key the sequence can hand out. Safe to run again (after a rollback the source's
    keys may have moved ahead: the sequence is moved past them).
    """
    from psycopg import sql

    if not schema.schema_exists(conn):
        raise TerminalError("the target has no ledger schema: apply the schema plan (`reconcile schema apply`) "
                            "and backfill before writing to the target")
    (top,) = conn.execute("SELECT greatest((SELECT coalesce(max(txn_id), 0) FROM ledger.journal), "
                          "(SELECT coalesce(max(entry_id), 0) FROM ledger.entries))").fetchone()
    seq = sql.Identifier(schema.SCHEMA, ID_SEQUENCE)
    exists = conn.execute("SELECT to_regclass(%s)", (f"{schema.SCHEMA}.{ID_SEQUENCE}",)).fetchone()[0]
    if exists is None:
        with conn.transaction():  # one DDL statement, alone in its transaction (DSQL)
            conn.execute(sql.SQL("CREATE SEQUENCE IF NOT EXISTS {} AS bigint START WITH {} CACHE 65536").format(
                seq, sql.Literal(int(top) + 1)))
        return int(top) + 1
    (last,) = conn.execute(sql.SQL("SELECT last_value FROM {}").format(seq)).fetchone()
    if last <= top:
        conn.execute("SELECT setval(%s::regclass, %s)", (f"{schema.SCHEMA}.{ID_SEQUENCE}", int(top)))
    return max(int(last), int(top)) + 1


class _TargetWorker(_Worker):
    """The application after write cutover: writes DSQL and keeps the balances itself (see the module docstring)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        from reconcile.occ import DEFAULT_POLICY, RetryCounters

        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.policy = DEFAULT_POLICY
        self.counters = RetryCounters()

    def apply(self, p: dict) -> int:
        from reconcile.occ import run_with_retry

        p.setdefault("key", str(uuid.uuid4()))  # fixed before the first attempt: a retry cannot post twice
        fx = _fx(self.rng, p["cur"])
        counters = self.counters

        def business(conn: psycopg.Connection) -> int:
            balances = {}
            for aid in sorted({p["debit"], p["credit"]}):  # full primary key, ascending: DSQL's FOR UPDATE
                row = conn.execute("SELECT balance, kind FROM ledger.accounts WHERE account_id = %s FOR UPDATE",
                                   (aid,)).fetchone()
                balances[aid] = row
            bal, kind = balances[p["debit"]]
            if kind != "equity" and bal < p["amount"]:
                raise _Declined("insufficient funds")
            if conn.execute("SELECT 1 FROM ledger.journal WHERE idempotency_key = %s", (p["key"],)).fetchone():
                raise _Declined("already posted")
            txn_id, debit_id, credit_id = conn.execute(
                "SELECT nextval('ledger.app_id_seq'), nextval('ledger.app_id_seq'), nextval('ledger.app_id_seq')"
            ).fetchone()
            posted_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            conn.execute("INSERT INTO ledger.journal (txn_id, idempotency_key, kind, reverses_txn_id, posted_at, memo,"
                         " fx_rate) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                         (txn_id, p["key"], p["kind"], p.get("reverses"), posted_at, p["memo"], fx))
            conn.execute("INSERT INTO ledger.entries (entry_id, txn_id, account_id, currency, amount, posted_at)"
                         " VALUES (%s, %s, %s, %s, %s, %s), (%s, %s, %s, %s, %s, %s)",
                         (debit_id, txn_id, p["debit"], p["cur"], -p["amount"], posted_at,
                          credit_id, txn_id, p["credit"], p["cur"], p["amount"], posted_at))
            for aid, delta in ((p["debit"], -p["amount"]), (p["credit"], p["amount"])):
                conn.execute("UPDATE ledger.accounts SET balance = balance + %s, updated_at = %s WHERE account_id = %s",
                             (delta, posted_at, aid))
            return txn_id

        before = counters.retries
        try:
            return run_with_retry(self.conn, business, policy=self.policy, counters=counters, idempotent=False,
                                  label="business transaction")
        finally:
            with self.tally.lock:
                self.tally.retried += counters.retries - before

    def one(self) -> None:
        from reconcile.errors import RetriesExhausted

        p = self.plan()
        try:
            txn_id = self.apply(p)
        except (_Declined, *_DECLINED):
            with self.tally.lock:
                self.tally.declined += 1
            return
        except RetriesExhausted as exc:
            self.tally.error(exc)
            return
        except psycopg.OperationalError as exc:  # outcome unknown: counted, never retried blindly
            self.tally.error(exc)
            if self.conn.closed or self.conn.broken:
                self.conn.close()
                self.conn = _connect(self.source)
            return
        except Exception as exc:  # noqa: BLE001  counted and sampled in the report
            self.tally.error(exc)
            return
        with self.tally.lock:
            self.tally.committed[p["kind"]] += 1
        if p["kind"] == "transfer":
            self.reversible.add((txn_id, p["debit"], p["credit"], p["amount"]))


def run_workload(source: Source, *, tps: float = 50, duration: float | None = 10.0,
                 workers: int = 4, seed: int | None = None, hot_fraction: float = 0.2,
                 stop_event: threading.Event | None = None, write_to: str = "source") -> WorkloadReport:
    """Run a paced, correct double-entry write load against the seeded source ledger.

    Args:
        source: a conninfo string, or a zero-argument callable returning a new connection to
            the source (the CLI passes one built from the configuration).
        tps: business transactions per second, summed over all workers.
        duration: seconds to run; ``None`` runs until ``stop_event`` is set.
        workers: threads, each with its own connection.
        seed: makes the choices of kinds, accounts and amounts repeatable (idempotency keys and
            timestamps stay unique per run); ``None`` draws a fresh seed.
        hot_fraction: share of transfers with a hot account on one side.
        stop_event: set it from another thread to stop; workers finish their current transaction.
        write_to: ``source`` (the legacy application; ``source`` is the source database) or ``target``
            (after write cutover; ``source`` is then the *target* database, the application keeps the
            balances under OCC retries).

    Returns:
        A :class:`WorkloadReport`.

    Raises:
        ConnectionFailed: a worker could not connect.
        TerminalError: the source has no seeded ledger, or an argument is out of range.
    """
    if tps <= 0:
        raise TerminalError(f"--tps must be positive, got {tps}")
    if workers < 1:
        raise TerminalError(f"--workers must be at least 1, got {workers}")
    if duration is not None and duration < 0:
        raise TerminalError(f"--duration must be zero or more seconds, got {duration}")
    if not 0 <= hot_fraction <= 1:
        raise TerminalError(f"--hot-fraction must be between 0 and 1, got {hot_fraction}")
    if write_to not in WRITE_MODES:
        raise TerminalError(f"--write-to must be one of {', '.join(WRITE_MODES)}, got {write_to!r}")
    stop = stop_event or threading.Event()
    base = random.Random(seed)
    tally = _Tally()
    pool: list[_Worker] = []
    conns: list[psycopg.Connection] = []
    interrupted = False
    try:
        for _ in range(workers):
            conns.append(_connect(source))
        accounts = _load_accounts(conns[0])
        reversible = _Reversible(_load_reversible(conns[0]))
        cls = _Worker
        if write_to == "target":
            prepare_target(conns[0])
            cls = _TargetWorker
        pool = [cls(i, source, conns[i], accounts, reversible, tally,
                    random.Random(base.getrandbits(64)), hot_fraction) for i in range(workers)]
        interval = workers / tps
        start = time.monotonic()
        deadline = None if duration is None else start + duration
        threads = [threading.Thread(target=w.loop, args=(start + w.index / tps, interval, deadline, stop),
                                    name=f"reconcile-workload-{w.index}", daemon=True) for w in pool]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
            for t in threads:
                t.join()
        elapsed = time.monotonic() - start
    finally:
        # Workers may have reconnected: close what they hold now as well as what was opened here.
        for conn in conns + [w.conn for w in pool]:
            if not conn.closed:
                conn.close()
    report = WorkloadReport(
        requested_tps=tps, workers=workers, committed=dict(sorted(tally.committed.items())),
        declined=tally.declined, retried=tally.retried, errors=tally.errors,
        elapsed_s=round(elapsed, 3), error_samples=tally.samples, interrupted=interrupted)
    log.info("%s", report.summary())
    return report
