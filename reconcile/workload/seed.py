"""Seed the demo ledger on the source: deterministic, fast, and correct to the cent.

Everything is generated in Python from ``random.Random(seed)``, with timestamps counted from a
fixed epoch (:data:`EPOCH`), never from ``now()``: the same seed gives byte-identical tables. The
generator tracks every balance in integer cents, so it never plans an overdraft, and writes the
final balances straight into ``ledger.accounts``.

Loading follows ``pg_restore``: create the tables (primary keys, UNIQUE and CHECK constraints),
COPY the rows, then add the foreign keys, secondary indexes and the balance trigger
(:data:`reconcile.workload.schema.POST_LOAD`). The trigger therefore never fires for seeded rows
(they already carry their final balances), the foreign keys are validated set-based in one query
each, and no ``session_replication_role`` (which would also silence the foreign keys) is needed.
All of it, including dropping an old schema on ``reset``, is one transaction: a failed seed leaves
the database as it was.

What gets generated (``accounts`` counts customer accounts; each currency adds a settlement and
an equity account, ids ``1..2*len(currencies)``):

* one opening transaction per currency: equity -> settlement, :data:`OPENING_UNITS` units;
* ``transactions`` business transactions, drawn from :data:`MIX`: deposits (settlement ->
  customer), transfers between customers of one currency (a share of them touching a few hot
  accounts, the first :data:`HOT_PER_CURRENCY` customers of each currency), withdrawals (customer
  -> settlement) and reversals of earlier transfers (idempotency key ``reversal-of-<txn_id>``, so
  the UNIQUE index allows one reversal per transfer). A draw that is not affordable (an empty
  account, nothing left to reverse) becomes a deposit instead, so the count is always exact.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import psycopg
from psycopg import sql

from reconcile.errors import ReconcileError, TerminalError

from . import schema

log = logging.getLogger(__name__)

EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
"""Time zero of every seeded timestamp: accounts open within 30 days of it, postings follow."""

OPENING_UNITS = 100_000_000_000
"""Money put into each currency by its opening transaction, in major units (10^11)."""

HOT_PER_CURRENCY = 3
"""The first N customer accounts (by id) of each currency are the hot accounts."""

HOT_SHARE = 0.3
"""Share of seeded transfers that have a hot account on one side."""

MIX = (("deposit", 0.25), ("transfer", 0.55), ("withdrawal", 0.12), ("reversal", 0.08))
"""Business transaction kinds and their weights."""

# Approximate value of one major unit in USD, and minor-unit digits. Unknown currencies: 1.0, 2.
CURRENCY_INFO: dict[str, tuple[float, int]] = {
    "USD": (1.0, 2), "EUR": (1.08, 2), "GBP": (1.27, 2), "JPY": (0.0067, 0),
    "CHF": (1.13, 2), "SEK": (0.095, 2), "NOK": (0.093, 2), "DKK": (0.145, 2),
}

# Mixed case and accents: C ordering (B < Z < a < z < Å < É < Ø < ä) differs from en_US ordering.
ACCOUNT_PREFIXES = ("a", "B", "ä", "Z", "b", "É", "z", "Å", "c", "Ø")
FIRST_NAMES = ("Anna", "Zoë", "José", "Łukasz", "Søren", "Chloé", "Ömer", "Björk", "Dvořák",
               "Nguyễn", "Ana", "Иван", "Μαρία", "李", "さくら", "Brian", "émile", "Ågot")
LAST_NAMES = ("Müller", "García", "Ørsted", "O'Brien", "Nowak", "Śliwińska", "Dupré", "Smith",
              "van der Berg", "Çelik", "Петрова", "Παπαδόπουλος", "王", "渡辺", "Ångström", "zur Linde")
DEPOSIT_MEMOS = ("cash deposit", "Einzahlung", "dépôt en espèces", "salary", None)
WITHDRAWAL_MEMOS = ("ATM withdrawal", "Barabhebung", "retrait", None)


@dataclasses.dataclass(frozen=True)
class SeedReport:
    """What :func:`seed` wrote and how fast."""

    seed: int
    currencies: tuple[str, ...]
    accounts: int
    """Rows in ``ledger.accounts`` (customers + one settlement and one equity per currency)."""
    customer_accounts: int
    journal_rows: int
    """Rows in ``ledger.journal``: the business transactions plus one opening per currency."""
    entries: int
    by_kind: dict[str, int]
    """Business transactions per kind (opening transactions not included)."""
    substituted: int
    """Draws that were not affordable and became a deposit instead."""
    generate_s: float
    load_s: float
    elapsed_s: float

    @property
    def rows(self) -> int:
        return self.accounts + self.journal_rows + self.entries

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"rows": self.rows, "rows_per_s": round(self.rows_per_s, 1)}

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(self.by_kind.items()))
        return (f"seeded ledger (seed {self.seed}): {self.accounts:,} accounts, "
                f"{self.journal_rows:,} journal rows ({kinds}), {self.entries:,} entries "
                f"in {self.elapsed_s:.2f} s ({self.rows_per_s:,.0f} rows/s)")


class SchemaExists(TerminalError):
    """The target database already holds a ``ledger`` schema and reset was not asked for."""


# ---------------------------------------------------------------------------------------------
# Generation (pure Python, no database)
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Ledger:
    """The generated rows, already formatted as COPY text lines."""

    accounts: list[str]
    journal: list[str]
    entries: list[str]
    by_kind: Counter
    substituted: int
    customer_accounts: int


def _copy_text(value: str | None) -> str:
    """One field in COPY text format."""
    if value is None:
        return "\\N"
    return (value.replace("\\", "\\\\").replace("\t", "\\t")
            .replace("\n", "\\n").replace("\r", "\\r"))


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def _ts(micros: int) -> str:
    return (EPOCH + dt.timedelta(microseconds=micros)).isoformat(sep=" ")


def _validate(accounts: int, transactions: int, currencies: Sequence[str]) -> None:
    if not currencies:
        raise TerminalError("seed needs at least one currency; pass e.g. currencies=('USD',)")
    if len(set(currencies)) != len(currencies):
        raise TerminalError(f"currencies must be distinct, got {list(currencies)}")
    for cur in currencies:
        if len(cur) != 3 or not cur.isascii() or not cur.isalpha() or not cur.isupper():
            raise TerminalError(f"currency {cur!r} is not a 3-letter upper-case ISO code such as 'USD'")
    if accounts < 2 * len(currencies):
        raise TerminalError(f"--accounts must be at least {2 * len(currencies)} (two customers "
                            f"per currency), got {accounts}")
    if transactions < 0:
        raise TerminalError(f"--transactions must be zero or more, got {transactions}")


REVERSIBLE_CAP = 100_000
"""Transfers kept as candidates for a later reversal; past it a new transfer takes an old one's slot, so
the generator's memory does not grow with the ledger (below it, nothing changes)."""

BATCH_TRANSACTIONS = 50_000
"""Journal transactions generated (and loaded) per batch by :func:`seed`."""


def generate(*, accounts: int, transactions: int, seed: int,
             currencies: Sequence[str]) -> _Ledger:
    """Generate the whole ledger in memory as COPY text lines; deterministic in its arguments."""
    journal: list[str] = []
    entries: list[str] = []
    ledger = _Ledger([], [], [], Counter(), 0, accounts)
    for item in stream(accounts=accounts, transactions=transactions, seed=seed, currencies=currencies):
        if isinstance(item, _Ledger):  # the last item: the accounts and the counts
            ledger = item
        else:
            journal += item[0]
            entries += item[1]
    ledger.journal, ledger.entries = journal, entries
    return ledger


def stream(*, accounts: int, transactions: int, seed: int, currencies: Sequence[str],
           batch: int = BATCH_TRANSACTIONS) -> Iterator[tuple[list[str], list[str]] | _Ledger]:
    """The ledger of :func:`generate` in batches: ``(journal lines, entry lines)`` of up to ``batch``
    transactions each, then a :class:`_Ledger` holding the accounts (balances final) and the counts, with
    empty journal and entries. Memory holds one batch, whatever the ledger's size."""
    _validate(accounts, transactions, currencies)
    rng = random.Random(seed)
    n_cur = len(currencies)
    rate = {c: CURRENCY_INFO.get(c, (1.0, 2))[0] for c in currencies}
    unit = {c: 100 if CURRENCY_INFO.get(c, (1.0, 2))[1] == 0 else 1 for c in currencies}

    # --- accounts (rows are written after the postings, once balances are final) ------------
    acc_no: dict[int, str] = {}
    acc_owner: dict[int, str] = {}
    acc_cur: dict[int, str] = {}
    acc_kind: dict[int, str] = {}
    acc_opened: dict[int, int] = {}
    settlement: dict[str, int] = {}
    equity: dict[str, int] = {}
    for i, cur in enumerate(currencies):
        s_id, e_id = 2 * i + 1, 2 * i + 2
        settlement[cur], equity[cur] = s_id, e_id
        for aid, kind, no, owner in ((s_id, "settlement", f"SETTLE-{cur}", f"Settlement {cur}"),
                                     (e_id, "equity", f"EQUITY-{cur}", f"Equity {cur}")):
            acc_no[aid], acc_owner[aid], acc_cur[aid], acc_kind[aid] = no, owner, cur, kind
            acc_opened[aid] = 0
    weights = [4.0 if c == "USD" else 3.0 if c == "EUR" else 2.0 for c in currencies]
    customers: dict[str, list[int]] = {c: [] for c in currencies}
    day = 86_400_000_000
    for k in range(accounts):
        aid = 2 * n_cur + 1 + k
        # The first two customers of each currency are assigned round-robin, so every currency
        # can transfer; the rest follow the weights.
        cur = currencies[k % n_cur] if k < 2 * n_cur else rng.choices(currencies, weights)[0]
        customers[cur].append(aid)
        acc_no[aid] = f"{rng.choice(ACCOUNT_PREFIXES)}-{aid:08d}"
        acc_owner[aid] = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        acc_cur[aid], acc_kind[aid] = cur, "customer"
        acc_opened[aid] = rng.randrange(30 * day)
    hot = {c: ids[:HOT_PER_CURRENCY] for c, ids in customers.items()}
    balance = {aid: 0 for aid in acc_no}
    last_posted = dict(acc_opened)

    journal: list[str] = []
    entries: list[str] = []
    next_entry = 1

    def fx(cur: str) -> str | None:
        if cur == "USD":
            return None
        return f"{rate[cur] * (1 + rng.uniform(-0.02, 0.02)):.10f}"

    def post(txn_id: int, key: str, kind: str, reverses: int | None, ts: int, memo: str | None,
             fx_rate: str | None, debit: int, credit: int, cents: int) -> None:
        nonlocal next_entry
        cur = acc_cur[debit]
        stamp = _ts(ts)
        journal.append("\t".join((str(txn_id), key, kind, "\\N" if reverses is None else str(reverses),
                                  stamp, _copy_text(memo), "\\N" if fx_rate is None else fx_rate)))
        for aid, amount in ((debit, -cents), (credit, cents)):
            entries.append(f"{next_entry}\t{txn_id}\t{aid}\t{cur}\t{_money(amount)}\t{stamp}")
            next_entry += 1
            balance[aid] += amount
            last_posted[aid] = ts

    def draw_cents(cur: str, lo_usd_cents: int, hi_usd_cents: int) -> int:
        local = int(rng.randint(lo_usd_cents, hi_usd_cents) / rate[cur])
        return max(unit[cur], local // unit[cur] * unit[cur])

    def share_of(cur: str, cents: int, lo_pct: int, hi_pct: int) -> int:
        part = cents * rng.randint(lo_pct, hi_pct) // 100
        return max(unit[cur], part // unit[cur] * unit[cur])

    # --- opening transactions: equity -> settlement, one per currency ------------------------
    txn_id = 0
    for cur in currencies:
        txn_id += 1
        post(txn_id, f"opening-{cur}", "deposit", None, 0, "opening balance", fx(cur),
             equity[cur], settlement[cur], OPENING_UNITS * 100)

    # --- business transactions -----------------------------------------------------------------
    kinds = [k for k, _ in MIX]
    kind_weights = [w for _, w in MIX]
    reversible: list[tuple[int, int, int, int]] = []  # (txn_id, from, to, cents) of transfers, REVERSIBLE_CAP at most
    by_kind: Counter = Counter()
    substituted = 0
    now = 31 * day
    for n in range(transactions):
        if n and n % batch == 0:
            yield journal, entries
            journal, entries = [], []
        txn_id += 1
        now += rng.randint(200_000, 50_000_000)
        cur = rng.choices(currencies, weights)[0]
        kind = rng.choices(kinds, kind_weights)[0]
        key = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        planned: tuple | None = None
        if kind == "transfer":
            pool = customers[cur]
            src, dst = rng.sample(pool, 2)
            if rng.random() < HOT_SHARE:
                h = rng.choice(hot[cur])
                if rng.random() < 0.5:
                    src, dst = h, (dst if dst != h else src)
                else:
                    src, dst = (src if src != h else dst), h
            if balance[src] >= 2 * unit[cur]:
                cents = share_of(cur, balance[src], 1, 50)
                memo = None if rng.random() < 0.1 else f"transfer {acc_no[src]} → {acc_no[dst]}"
                planned = ("transfer", None, memo, src, dst, cents)
        elif kind == "withdrawal":
            src = rng.choice(customers[cur])
            if balance[src] >= unit[cur]:
                cents = share_of(cur, balance[src], 10, 100)
                planned = ("withdrawal", None, rng.choice(WITHDRAWAL_MEMOS), src, settlement[cur], cents)
        elif kind == "reversal" and reversible:
            i = rng.randrange(len(reversible))
            reversible[i], reversible[-1] = reversible[-1], reversible[i]
            orig, o_src, o_dst, cents = reversible.pop()
            if balance[o_dst] >= cents:
                key = f"reversal-of-{orig}"
                cur = acc_cur[o_dst]
                planned = ("reversal", orig, f"reversal of txn {orig}", o_dst, o_src, cents)
        if planned is None:
            if kind != "deposit":
                substituted += 1
            dst = rng.choice(customers[cur])
            cents = draw_cents(cur, 1_000, 500_000)
            if balance[settlement[cur]] < cents:
                raise ReconcileError(f"settlement account for {cur} ran dry; lower --transactions")
            planned = ("deposit", None, rng.choice(DEPOSIT_MEMOS), settlement[cur], dst, cents)
        kind, reverses, memo, debit, credit, cents = planned
        post(txn_id, key, kind, reverses, now, memo, fx(acc_cur[debit]), debit, credit, cents)
        by_kind[kind] += 1
        if kind == "transfer":
            if len(reversible) < REVERSIBLE_CAP:
                reversible.append((txn_id, debit, credit, cents))
            else:
                reversible[txn_id % REVERSIBLE_CAP] = (txn_id, debit, credit, cents)
    yield journal, entries

    account_lines = [
        "\t".join((str(aid), _copy_text(acc_no[aid]), _copy_text(acc_owner[aid]), acc_cur[aid],
                   acc_kind[aid], _money(balance[aid]), _ts(acc_opened[aid]), _ts(last_posted[aid])))
        for aid in sorted(acc_no)
    ]
    yield _Ledger(account_lines, [], [], by_kind, substituted, accounts)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

_COPY_COLUMNS = {
    "accounts": ("account_id", "account_no", "owner_name", "currency", "kind", "balance",
                 "opened_at", "updated_at"),
    "journal": ("txn_id", "idempotency_key", "kind", "reverses_txn_id", "posted_at", "memo",
                "fx_rate"),
    "entries": ("entry_id", "txn_id", "account_id", "currency", "amount", "posted_at"),
}


def copy_statement(table: str) -> sql.Composed:
    """``COPY ledger.<table> (<columns>) FROM STDIN`` for one of the three ledger tables.

    >>> copy_statement("entries").as_string()  # doctest: +SKIP
    'COPY "ledger"."entries" ("entry_id", ...) FROM STDIN'
    """
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(schema.SCHEMA, table),
        sql.SQL(", ").join(map(sql.Identifier, _COPY_COLUMNS[table])))


def _copy(conn: psycopg.Connection, table: str, lines: Iterable[str], batch: int = 20_000) -> None:
    lines = list(lines)
    with conn.cursor().copy(copy_statement(table)) as copy:
        for i in range(0, len(lines), batch):
            copy.write(("\n".join(lines[i:i + batch]) + "\n").encode())


def _ahead(items: Iterator, depth: int = 2) -> Iterator[tuple[object, float]]:
    """``items`` produced by a thread up to ``depth`` ahead of the consumer; yields (item, seconds it took to
    produce). An error in the producer is raised in the consumer."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    q.put(("end", None, 0.0))
                    return
                q.put(("item", item, time.perf_counter() - t))
        except BaseException as exc:  # handed to the consumer
            q.put(("error", exc, 0.0))

    thread = threading.Thread(target=produce, name="seed-generate", daemon=True)
    thread.start()
    try:
        while True:
            kind, item, spent = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item, spent
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def seed(conn: psycopg.Connection, *, accounts: int = 10_000, transactions: int = 100_000,
         seed: int = 42, currencies: Sequence[str] = ("USD", "EUR", "GBP", "JPY"),
         reset: bool = False) -> SeedReport:
    """Create and fill the ``ledger`` schema on the source, in one transaction.

    The rows are generated in batches of :data:`BATCH_TRANSACTIONS` transactions, a batch ahead of the
    COPY that loads the previous one (memory holds a batch, not the ledger; ten million entries take a few
    minutes, most of it Python generating them). Indexes, foreign keys and the trigger come after the load.

    Args:
        conn: a connection to the source database (autocommit or not; the seed opens its own
            transaction block, a savepoint if one is already open).
        accounts: customer accounts; each currency adds a settlement and an equity account.
        transactions: business journal transactions (each writes two entries); one opening
            transaction per currency comes on top.
        seed: the random seed; the same seed gives byte-identical tables.
        currencies: ISO codes; customers are spread over them (USD > EUR > the rest).
        reset: drop an existing ``ledger`` schema first (its data is lost).

    Returns:
        A :class:`SeedReport` with counts and timings.

    Raises:
        SchemaExists: the database already has a ``ledger`` schema and ``reset`` is false.
        TerminalError: an argument is out of range.
    """
    currencies = tuple(currencies)
    _validate(accounts, transactions, currencies)
    t0 = time.perf_counter()
    generate_s = 0.0
    journal_rows = entry_rows = 0
    with conn.transaction():
        if schema.schema_exists(conn):
            if not reset:
                raise SchemaExists("the source database already has a ledger schema; rerun with "
                                   "--reset (reset=True) to drop it and seed again, which deletes "
                                   "its data")
            log.info("dropping the existing ledger schema (reset)")
            schema.drop_schema(conn)
        for stmt in schema.TABLES:
            conn.execute(stmt)
        # Generation (Python, one core) runs a batch ahead of the COPY (the server parses on another core);
        # a batch is all the memory the seed holds, whatever the ledger's size.
        ledger = None
        for item, spent in _ahead(stream(accounts=accounts, transactions=transactions, seed=seed,
                                         currencies=currencies)):
            generate_s += spent
            if isinstance(item, _Ledger):
                ledger = item
                break
            journal, entries = item
            _copy(conn, "journal", journal)
            _copy(conn, "entries", entries)
            journal_rows, entry_rows = journal_rows + len(journal), entry_rows + len(entries)
        assert ledger is not None
        _copy(conn, "accounts", ledger.accounts)
        t1 = time.perf_counter()
        for stmt in schema.POST_LOAD:
            conn.execute(stmt)
        conn.execute("SELECT setval(pg_get_serial_sequence('ledger.journal', 'txn_id'), %s)", (journal_rows,))
        conn.execute("SELECT setval('ledger.entry_id_seq', %s)", (entry_rows,))
        for table in _COPY_COLUMNS:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema.SCHEMA, table)))
    t2 = time.perf_counter()
    log.info("generated %d journal rows and %d entries (%.2f s of generation); loaded and indexed in %.2f s",
             journal_rows, entry_rows, generate_s, t2 - t1)
    report = SeedReport(
        seed=seed, currencies=currencies, accounts=len(ledger.accounts),
        customer_accounts=ledger.customer_accounts, journal_rows=journal_rows,
        entries=entry_rows, by_kind=dict(sorted(ledger.by_kind.items())),
        substituted=ledger.substituted, generate_s=round(generate_s, 3), load_s=round(t2 - t0 - generate_s, 3),
        elapsed_s=round(t2 - t0, 3))
    log.info("%s", report.summary())
    return report
