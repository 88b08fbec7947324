"""The replay loop: read whole source transactions from the slot, apply them in commit order, advance.

One *round* (:meth:`Replayer._round`):

1. note the source's WAL flush position ``L``, then peek up to ``peek_changes`` messages from the slot
   (:class:`~reconcile.replay.source.SlotReader`; a transaction always arrives whole, and a tail
   without its Commit would be left for the next round);
2. check the read (:func:`split_read`: commit LSNs strictly increasing, transactions at or below the
   watermark only as a prefix; anything else stops the run with :class:`ReadOutOfOrder` before any
   apply or advance, since an advance past a transaction never applied would lose it silently) and
   drop the transactions at or below the watermark (already applied: the process died between the
   target commit and the slot advance last time);
3. group the rest, in commit order, into target transactions that fit the budget
   (:class:`reconcile.budget.Batcher`; a source transaction is never split), each written by
   :mod:`reconcile.replay.apply` with the watermark in the same transaction, through
   :func:`reconcile.occ.run_with_retry` (40001 conflicts and retries counted);
4. advance the slot to the end of the last applied commit, only after its target commit;
5. when the peek was not cut short by its limit, every transaction that committed before ``L`` is now
   applied: ``L`` is written as ``replay_state.caught_up_lsn`` (in the round's last apply transaction,
   or alone when there was nothing to apply), the slot advances to ``L`` even when none of that WAL
   touched a replicated table (a quiet ledger on a busy cluster retains nothing for replay), and the
   run counts as *caught up*.

What cannot be replayed stops the run with status ``stopped`` and an open dead letter holding the
whole transaction (:mod:`reconcile.replay.state`), before anything after it is applied:

* a ``TRUNCATE`` (DSQL has none; an emptied ledger table is never what a shadow write should do);
* a source transaction larger than one DSQL transaction, under the default ``oversized_policy =
  "stop"``; with ``"split"`` (or a dead letter resolved ``retry-split``) it is applied in budget-sized
  pieces, recorded in ``reconcile.replay_windows`` as a non-atomic window;
* a transaction the target refuses (not a conflict): the group it was in is re-applied one source
  transaction at a time to find it; ``on_error = "skip"`` records the dead letter as ``skipped`` and
  goes on.

Exactly once: a source transaction's changes and the watermark past it commit together on the target,
transactions at or below the watermark are skipped, and the slot only moves after the target commit.
Kill the process anywhere and rerun: the target ends equal to the source, with no loss and no
duplicate. Two replayers on one slot cannot both apply: each apply transaction checks the watermark
it expects (DSQL's OCC makes the loser fail with 40001, then :class:`WatermarkMoved`).

Written with the changes, in the same apply transaction (issue 18): the keys they changed, per table and
window (:mod:`reconcile.replay.tracking`, what an incremental diff verifies), and the state of live repairs
(:mod:`reconcile.replay.marks`: a repair's low watermark opens a chunk, the keys changed after it are noted,
and at its high watermark the copied rows not changed in between are applied as that source transaction's
own changes). Both are priced into the transaction budget (their rows reserved, or added to the
transaction's cost).

Bookkeeping: a run first closes ``running`` rows of this slot left by killed runs as ``abandoned``
(:meth:`ReplayControl.abandon_stale_runs`). Messages stored on the run row, logged or raised go
through :func:`reconcile.config.redact` with the endpoints' secrets. :meth:`Replayer.run` is the
stage's error boundary: any error that is not a reconcile error leaves classified by
:func:`reconcile.occ.stage_error` (a dropped connection as :class:`~reconcile.errors.TransientFailure`,
a 42xxx error or a bug as :class:`~reconcile.errors.TerminalFailure`, with its SQLSTATE), raised from
the original (its secrets removed, :func:`reconcile.occ.scrubbed`).
``log`` at DEBUG prints every read (flush position, messages, commit LSN range, watermark, skipped,
to apply) and every slot advance.

The copy/replay race (DESIGN.md): the replayer refuses to apply while the initial backfill of a
replicated table is incomplete or was copied before the slot existed (``require_backfill``; opt out
for tables that need no backfill).

Replay run summary (``reconcile.runs.summary`` of a ``kind='replay'`` row, and
:meth:`ReplayResult.to_dict`): ``txns_applied, changes_applied, target_commits, conflicts, retries,
lag_seconds_p50, lag_seconds_p99, lag_bytes, dead_letters_open, caught_up, last_commit_lsn`` plus
``status`` (``done`` | ``stopped`` | ``error``), ``run_id``, ``txns_skipped``, ``rows_written``,
``split_windows``, ``duration_seconds``, ``apply_rate_changes_per_second``, ``message`` and
``dead_letter_id``. Lag is, per applied source transaction, the target commit time minus the source
commit timestamp.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from reconcile.backfill.checkpoints import DONE, Control
from reconcile.budget import Batcher, Budget, budget_from
from reconcile.config import Config, TableSpec, redact
from reconcile.control import migrate
from reconcile.errors import LimitExceeded
from reconcile.occ import (
    DEFAULT_POLICY,
    Reconnector,
    RetryCounters,
    RetryPolicy,
    policy_from,
    run_with_retry,
    scrubbed,
    stage_error,
)
from reconcile.replay import pgoutput as po
from reconcile.replay.apply import (
    ApplyRefused,
    Converter,
    NetChanges,
    Pricer,
    Watermark,
    Writer,
    check_watermark,
    inspect_target,
    read_watermark,
    reserve,
    write_caught_up,
    write_watermark,
)
from reconcile.errors import ReconcileError
from reconcile.replay.errors import BackfillIncomplete, ReadOutOfOrder
from reconcile.replay.marks import RepairMarks
from reconcile.replay.tracking import ChangeTracker
from reconcile.replay.errors import primary_message as _primary
from reconcile.replay.settings import ReplaySettings
from reconcile.replay.source import Assembler, SlotReader, SourceTxn, prepare_session, slot_row
from reconcile.replay.state import DeadLetter, ReplayControl
from reconcile.schema.dialect import dialect_for

log = logging.getLogger("reconcile.replay")

RUN_KIND = "replay"
ConnectionFactory = Callable[[], psycopg.Connection]
Fault = Callable[[str], None]


@dataclasses.dataclass
class ReplayResult:
    """What one :meth:`Replayer.run` did (JSON-able through :meth:`to_dict`)."""

    run_id: str | None = None
    status: str = "done"
    txns_applied: int = 0
    changes_applied: int = 0
    target_commits: int = 0
    conflicts: int = 0
    retries: int = 0
    lag_seconds_p50: float | None = None
    lag_seconds_p99: float | None = None
    lag_bytes: int | None = None
    dead_letters_open: int = 0
    caught_up: bool = False
    last_commit_lsn: str | None = None
    txns_skipped: int = 0
    rows_written: int = 0
    split_windows: int = 0
    duration_seconds: float = 0.0
    apply_rate_changes_per_second: float = 0.0
    message: str | None = None
    dead_letter_id: str | None = None

    @property
    def exit_code(self) -> int:
        """0 done, 1 stopped at a dead letter, 2 error."""
        return {"done": 0, "stopped": 1}.get(self.status, 2)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def text(self) -> str:
        lag = (f"lag p50 {self.lag_seconds_p50:.3f} s, p99 {self.lag_seconds_p99:.3f} s"
               if self.lag_seconds_p50 is not None else "no lag measured")
        line = (f"replay {self.status}: {self.txns_applied:,} source transactions ({self.changes_applied:,} changes) "
                f"in {self.target_commits:,} target commits over {self.duration_seconds:.1f} s "
                f"({self.apply_rate_changes_per_second:,.0f} changes/s), {self.conflicts} conflicts, "
                f"{self.retries} retries, {lag}; caught up: {'yes' if self.caught_up else 'no'}, "
                f"watermark {self.last_commit_lsn or '-'}, lag {self.lag_bytes if self.lag_bytes is not None else '?'} "
                f"bytes, {self.dead_letters_open} open dead letter(s)")
        return line + (f"\n{self.message}" if self.message else "")


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 6)


def split_read(txns: Sequence[SourceTxn], watermark: int) -> tuple[int, list[SourceTxn]]:
    """``(end LSN past the already applied transactions, the transactions to apply)`` of one read, checked.

    The slot hands out whole transactions in commit order, so commit LSNs strictly increase, each ends
    after it commits, and the ones at or below the watermark (applied before a crash left the slot
    behind) form a prefix. The slot is later advanced to the end of the last transaction applied or
    skipped, and it never re-sends what lies below its position: a read breaking that order would let
    the advance jump over a transaction never applied. It stops the run instead (nothing applied,
    nothing advanced).

    >>> t = lambda c: SourceTxn(xid=c, commit_lsn=c, end_lsn=c + 1, commit_ts=0)
    >>> split_read([t(10), t(20), t(30)], 20)[0], [x.commit_lsn for x in split_read([t(10), t(20), t(30)], 20)[1]]
    (21, [30])
    >>> split_read([t(20), t(10)], 0)
    Traceback (most recent call last):
    ...
    reconcile.replay.errors.ReadOutOfOrder: The slot returned source transaction xid 10 (commit LSN 0/A) after xid 20 (commit LSN 0/14), out of commit order; replay stopped before applying or advancing past them so no transaction can be skipped: keep the slot, and report this with the source server's log.
    """
    skip_end, prev = 0, None
    todo: list[SourceTxn] = []
    for t in txns:
        if prev is not None and t.commit_lsn <= prev.commit_lsn or t.end_lsn <= t.commit_lsn:
            what = (f"after xid {prev.xid} (commit LSN {prev.commit_lsn_text}), out of commit order"
                    if prev is not None and t.commit_lsn <= prev.commit_lsn
                    else f"ending at {t.end_lsn_text}, not after its commit")
            raise ReadOutOfOrder(
                f"The slot returned source transaction xid {t.xid} (commit LSN {t.commit_lsn_text}) {what}; replay "
                "stopped before applying or advancing past them so no transaction can be skipped: keep the slot, and "
                "report this with the source server's log.")
        prev = t
        if t.commit_lsn <= watermark:
            skip_end = t.end_lsn  # only a prefix can be here: commit LSNs increase
        else:
            todo.append(t)
    return skip_end, todo


def backfill_problems(control: Control, tables: Sequence[TableSpec], slot_name: str) -> list[str]:
    """Why the initial backfill of ``tables`` is not complete under ``slot_name`` (empty when it is).

    Complete means: planned, every chunk done, every chunk copied under the slot, and no row refused by
    the target (``reconcile.rejects``). A refused row that committed before the slot existed reaches the
    target only through the copy, so the replay never brings it: replaying on would leave the target
    short of it for good while every later check of the replay itself looks clean (issue 5: journal
    reversals refused by a foreign key when two workers copied journal chunks out of order). Which
    refused rows predate the slot cannot be told from the rejects, so any of them blocks.
    """
    problems = []
    live = _live_backfills(control, slot_name)
    for spec in tables:
        if spec.name in live:  # copied through the replay itself (DBLog watermarks): nothing to wait for
            continue
        if control.load_plan(spec.name) is None:
            problems.append(f"{spec.name} was never backfilled")
            continue
        chunks = control.chunks(spec.name)
        left = [c for c in chunks if c.status != DONE]
        if left:
            problems.append(f"{spec.name} has {len(left)} of {len(chunks)} chunks not done")
            continue
        stale = [c for c in chunks if c.replay_slot != slot_name]
        if stale:
            others = sorted({c.replay_slot for c in stale if c.replay_slot})
            if others:
                what = f"were copied under replication slot {', '.join(others)}, not {slot_name} ([replay] slot_name)"
            else:
                what = (f"were copied while the backfill found no replication slot {slot_name} on the source (it had "
                        "not been created yet, or the backfill looked for another name), so writes racing them "
                        "were not captured")
            problems.append(f"{len(stale)} chunk(s) of {spec.name} {what}; copy them again under the slot "
                            f"(`reconcile backfill --table {spec.name} --replay --force`)")
            continue
        refused = control.count_rejects(spec.name)
        if refused:
            first = control.rejects(spec.name, limit=1)
            why = f" (e.g. key {first[0].key}: SQLSTATE {first[0].sqlstate}, {first[0].reason})" if first else ""
            fk = (" (a foreign key on the target refuses rows copied before their parents: add foreign keys only "
                  "after the backfill and the replay catch-up, `reconcile schema apply --phase post-load`)"
                  if first and first[0].sqlstate == "23503" else "")
            problems.append(
                f"{refused} row(s) of {spec.name} were refused by the target during the backfill{why}; rows "
                "committed before the slot reach the target only through the copy, so replay could never bring them: "
                f"fix the cause{fk} and copy the table again (`reconcile backfill --table {spec.name} --force`; see "
                "`reconcile backfill rejects`)")
    return problems


def _live_backfills(control: Control, slot_name: str) -> set[str]:
    """Tables whose backfill runs through the replay (``reconcile repair --whole-table``) under ``slot_name``."""
    from reconcile.repair.store import RepairStore

    return RepairStore(control.target, budget=control.budget, policy=control.policy).live_tables(slot_name)


class _Halt(Exception):
    """Internal: replay stops at a dead letter (status ``stopped``)."""

    def __init__(self, message: str, dead_letter_id: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.dead_letter_id = dead_letter_id


class Replayer:
    """One replay session over a source slot and a target (the lower-level API; tests use it directly)."""

    def __init__(
        self,
        *,
        source: ConnectionFactory,
        target: ConnectionFactory,
        tables: Sequence[TableSpec],
        settings: ReplaySettings | None = None,
        budget: Budget | None = None,
        policy: RetryPolicy = DEFAULT_POLICY,
        dialect: str = "postgres",
        fault: Fault | None = None,
        clock: Callable[[], float] = time.time,
        secrets: Sequence[str] = (),
        migration_id: str | None = None,
    ) -> None:
        self.settings = settings or ReplaySettings()
        self.migration_id = migration_id
        """The migration this session's runs belong to (:func:`reconcile.identity.migration_of`)."""
        self.secrets = tuple(secrets)
        """Passwords and tokens that must never reach a message, a log or the runs row (:func:`redact`)."""
        self.tables = list(tables)
        self.budget = budget or Budget()
        s = self.settings
        # Changed-key windows and repair marks are written in the apply transactions too.
        track = (2 * len(self.tables), 2 * len(self.tables) * (s.track_bytes + 256)) if s.track_changes else (0, 0)
        self.batch_budget = reserve(self.budget, rows=track[0], nbytes=track[1])
        self.policy = policy
        self.dialect = dialect
        self.fault = fault
        self.clock = clock
        self.counters = RetryCounters()
        self._source_factory = source
        self._target = Reconnector(target)
        self.control = ReplayControl(self._target, budget=self.budget, policy=policy, counters=self.counters)
        self._source: psycopg.Connection | None = None
        self.reader: SlotReader | None = None
        self.assembler = Assembler(self.tables, fault)
        self.wm = Watermark()
        self._slot_at = 0
        """The slot's confirmed position as this replayer last set (or read) it."""
        self._prepared = False

    @classmethod
    def from_config(cls, config: Config, *, fault: Fault | None = None) -> Replayer:
        from reconcile.connections import connect
        from reconcile.identity import migration_of

        return cls(source=lambda: connect(config.source), target=lambda: connect(config.target), tables=config.tables,
                   settings=config.replay, budget=budget_from(config), policy=policy_from(config),
                   dialect=dialect_for(config.target).name, fault=fault,
                   secrets=config.secrets(), migration_id=migration_of(config).id)

    def close(self) -> None:
        if self._source is not None:
            try:
                self._source.close()
            except Exception:  # closing a broken connection must not hide why it broke
                log.debug("error ignored closing the source connection", exc_info=True)
            self._source = None
        self._target.close()

    def __enter__(self) -> Replayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self, fn, label: str, *, pipeline: bool = False):
        return run_with_retry(self._target, fn, policy=self.policy, counters=self.counters, label=label,
                              pipeline=pipeline)

    def _redact(self, text: str) -> str:
        return redact(text, self.secrets)

    # --- preparation --------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Control schema current, slot present, backfill complete (unless opted out), target inspected."""
        if self._prepared:
            return
        s = self.settings
        migrate(self._target.get(), dialect=self.dialect, policy=self.policy, counters=self.counters)  # type: ignore[arg-type]
        self._source = prepare_session(self._source_factory())
        self.reader = SlotReader(self._source, slot_name=s.slot_name, publication=s.publication)
        self._slot_at = self.reader.confirmed()  # SlotMissing when init never ran
        if s.require_backfill:
            problems = backfill_problems(Control(self._target, budget=self.budget, policy=self.policy,
                                                 counters=self.counters), self.tables, s.slot_name)
            if problems:
                raise BackfillIncomplete(
                    "Replay applies nothing until the initial backfill of every replicated table is done under slot "
                    f"{s.slot_name} ({'; '.join(problems)}): finish `reconcile backfill` first, or set "
                    "[replay] require_backfill = false (--skip-backfill-check) for tables that need no backfill.")
        source = self._source
        targets = self._tx(lambda c: inspect_target(c, self.tables, source=source), "inspect target tables")
        self.writer = Writer(targets, [t.name for t in self.tables])
        self.converter = Converter(targets)
        self.pricer = Pricer(targets, self.budget)
        self.wm = self._tx(lambda c: read_watermark(c, s.slot_name), "read watermark")
        self.tracker = ChangeTracker(s.slot_name, {n: [t.types[k] for k in t.key] for n, t in targets.items()},
                                     enabled=s.track_changes, cap_bytes=s.track_bytes,
                                     window_seconds=s.track_window_seconds, max_windows=s.track_max_windows)
        self._tx(lambda c: self.tracker.load(c, self.wm.last_commit_lsn), "load change windows")
        self.marks = RepairMarks(s.slot_name, self._tx, relation=self._relation, tables={t.name for t in self.tables})
        self.marks.load()
        self._prepared = True

    def _relation(self, table: str) -> po.Relation | None:
        return next((r for r in self.assembler.relations.values() if r.qualified == table), None)

    # --- the run ------------------------------------------------------------------------------------

    def run(self, *, until_caught_up: bool = False, duration: float | None = None, max_txns: int | None = None,
            follow: bool = False, stop_event: threading.Event | None = None, run_id: str | None = None) -> ReplayResult:
        """Replay until a stop condition; without ``follow`` or ``duration``, until caught up at the latest.

        Args:
            until_caught_up: stop once everything committed before the last read is applied.
            duration: stop after this many seconds (a time-boxed Airflow task).
            max_txns: stop after applying this many source transactions.
            follow: keep going until ``stop_event`` is set (or Ctrl-C).
            stop_event: ends the run cleanly between rounds.
            run_id: an existing ``reconcile.runs`` row to finish (one is opened otherwise).

        Raises:
            ReconcileError: anything but a dead letter (recorded on the run row as ``error``, then raised).
        """
        if not (follow or duration is not None):
            until_caught_up = True  # nothing else would end the run (max_txns alone stops early, never waits)
        stop = stop_event or threading.Event()
        t0 = time.monotonic()
        deadline = t0 + duration if duration is not None else None
        self.result = result = ReplayResult()
        self._lags: list[float] = []
        self._decisions: dict[int, DeadLetter] = {}
        runs = Control(self._target, budget=self.budget, policy=self.policy, counters=self.counters,
                       migration_id=self.migration_id)
        doc = {"kind": RUN_KIND, "settings": dataclasses.asdict(self.settings), "tables": [t.name for t in self.tables],
               "mode": {"until_caught_up": until_caught_up, "duration": duration, "max_txns": max_txns,
                        "follow": follow},
               "budget": dataclasses.asdict(self.budget)}
        unexpected: BaseException | None = None
        original: BaseException | None = None
        try:
            migrate(self._target.get(), dialect=self.dialect, policy=self.policy, counters=self.counters)  # type: ignore[arg-type]
            result.run_id = run_id or runs.start_run(doc, kind=RUN_KIND)
            self._abandon_stale_runs(result.run_id)
            self.prepare()
            self._decisions = self.control.decisions(self.settings.slot_name, self.wm.last_commit_lsn)
            while not stop.is_set():
                left = None if max_txns is None else max_txns - result.txns_applied - result.txns_skipped
                if left is not None and left <= 0:
                    break
                caught_up = self._round(left)
                result.caught_up = caught_up
                if caught_up and until_caught_up:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if caught_up:
                    wait = self.settings.poll_interval
                    if deadline is not None:
                        wait = min(wait, max(0.0, deadline - time.monotonic()))
                    if stop.wait(wait):
                        break
        except _Halt as halt:
            result.status, result.dead_letter_id = "stopped", halt.dead_letter_id
            result.message = self._redact(halt.message)
            result.caught_up = False
            log.error("%s", result.message)
        except KeyboardInterrupt:
            result.status, result.message = "done", "interrupted (Ctrl-C) between rounds; rerun to go on"
        except BaseException as exc:  # the stage's error boundary: recorded on the run row (secrets removed), raised
            unexpected = original = exc
            if isinstance(exc, Exception):  # classified by SQLSTATE (occ); KeyboardInterrupt, SystemExit as they are
                unexpected = stage_error(exc, f"Replay run {result.run_id or '(not started)'}", redact=self._redact)
            text = str(unexpected) if isinstance(unexpected, ReconcileError) else f"{type(exc).__name__}: {exc}"
            result.status, result.message = "error", self._redact(" ".join(text.split()))
        result.duration_seconds = round(time.monotonic() - t0, 3)
        self._finish(result)
        if result.run_id is not None:
            try:
                runs.finish_run(result.run_id, result.status, result.to_dict())
            except Exception as exc:  # the summary (or the original error) still reaches the caller
                log.warning("could not record the end of replay run %s: %s", result.run_id, self._redact(str(exc)))
        if unexpected is not None:
            if unexpected is not original:
                raise unexpected from scrubbed(original, self._redact)
            raise unexpected
        return result

    def _abandon_stale_runs(self, run_id: str | None) -> None:
        """Close earlier replay runs of this slot that were killed mid-way (see ReplayControl.abandon_stale_runs)."""
        try:
            closed = self.control.abandon_stale_runs(self.settings.slot_name, own_run_id=run_id,
                                                     stale_after_seconds=self.settings.stale_run_minutes * 60)
        except psycopg.Error as exc:  # bookkeeping only: never a reason not to replay
            log.warning("could not close stale replay runs: %s", self._redact(_primary(exc)))
            return
        if closed:
            log.warning("closed %d replay run(s) of slot %s that never finished as abandoned: %s", len(closed),
                        self.settings.slot_name, ", ".join(closed))

    def _finish(self, result: ReplayResult) -> None:
        c = self.counters
        result.conflicts, result.retries = c.conflicts, c.retries
        result.lag_seconds_p50 = _percentile(self._lags, 0.50)
        result.lag_seconds_p99 = _percentile(self._lags, 0.99)
        result.last_commit_lsn = po.int_to_lsn(self.wm.last_commit_lsn) if self.wm.last_commit_lsn else None
        if result.duration_seconds > 0:
            result.apply_rate_changes_per_second = round(result.changes_applied / result.duration_seconds, 1)
        try:
            if self._source is not None and not self._source.closed:
                slot = slot_row(self._source, self.settings.slot_name)
                if slot is not None:
                    done = max(po.lsn_to_int(slot["confirmed_flush_lsn"]), self.wm.last_end_lsn, self.wm.caught_up_lsn)
                    result.lag_bytes = max(0, po.lsn_to_int(slot["current_lsn"]) - done)
            result.dead_letters_open = self.control.count_open(self.settings.slot_name)
        except Exception as exc:  # the run's outcome matters more than these two numbers
            log.warning("could not read the end-of-run lag or dead letters: %s", self._redact(str(exc)))

    # --- one round ----------------------------------------------------------------------------------

    def _round(self, left: int | None) -> bool:
        """Read, apply and advance once; True when caught up (nothing more was waiting)."""
        assert self.reader is not None
        s = self.settings
        self.marks.begin_round()
        flush = self.reader.flush_lsn()
        rows = self.reader.peek(s.peek_changes)
        try:
            txns, partial = self.assembler.assemble(rows)
        except po.DecodeError as exc:
            raise po.DecodeError(
                f"Replay stopped before applying or advancing: a message of slot {s.slot_name} could not be decoded "
                f"({exc}); nothing was skipped: keep the slot, check that its tables and [[tables]] keys match, and "
                "report it with the source's version if they do.") from exc
        limited = partial or len(rows) >= s.peek_changes
        skip_end, todo = split_read(txns, self.wm.last_commit_lsn)
        if left is not None and len(todo) > left:
            todo, limited = todo[:left], True
        if log.isEnabledFor(logging.DEBUG):
            log.debug("read: flush %s, %d messages, %d transactions (%s..%s), watermark %s, %d already applied "
                      "(skip to %s), %d to apply%s", po.int_to_lsn(flush), len(rows), len(txns),
                      txns[0].commit_lsn_text if txns else "-", txns[-1].commit_lsn_text if txns else "-",
                      po.int_to_lsn(self.wm.last_commit_lsn), sum(t.commit_lsn <= self.wm.last_commit_lsn for t in txns),
                      po.int_to_lsn(skip_end), len(todo), ", cut short" if limited else "")
        caught_up = None if limited else flush
        self._advanced_to = 0
        try:
            self._apply_all(todo, caught_up)
        except _Halt:
            # What committed on the target before the dead letter may be released on the source.
            self._advance(max(skip_end, self._advanced_to))
            raise
        done = max(skip_end, self._advanced_to)
        if limited:
            self._advance(done)
            return False
        if flush > self.wm.caught_up_lsn:
            self._tx(lambda c: write_caught_up(c, s.slot_name, flush), "caught-up mark")
            self.wm = dataclasses.replace(self.wm, caught_up_lsn=flush)
        # Caught up: a peek its limit did not cut decodes every WAL record that starts before the server's
        # flush position at that time (at least ``flush``), so every transaction committing before ``flush``
        # was in this read and is applied now. The slot may move to ``flush`` even when none of that WAL was
        # ours (other tables, other databases): it is not retained for replay any longer. A transaction of
        # ours still open commits after ``flush``, and the slot sends every commit at or after its position.
        self._advance(max(done, flush))
        return True

    def _advance(self, end: int) -> None:
        """Move the slot past what the target has committed (called only after the commit); never backwards."""
        if end <= self._slot_at:
            return
        assert self.reader is not None
        if self.fault is not None:
            self.fault("committed")
        log.debug("advance slot %s to %s (watermark %s)", self.settings.slot_name, po.int_to_lsn(end),
                  po.int_to_lsn(self.wm.last_commit_lsn))
        self.reader.advance(end)
        self._slot_at = end
        if self.fault is not None:
            self.fault("advanced")

    def _apply_all(self, todo: list[SourceTxn], caught_up: int | None) -> None:
        batcher: Batcher[SourceTxn] = Batcher(self.batch_budget, what="source transaction")
        self._skips: set[int] = set()
        s = self.settings
        for t in todo:
            self.marks.scan(t)
            decision = self._decisions.get(t.commit_lsn)
            mode = "normal"
            if decision is not None:
                if decision.open:
                    self._flush(batcher)
                    raise _Halt(f"Replay stopped at source transaction xid {t.xid} (commit LSN {t.commit_lsn_text}): "
                                f"dead letter {decision.dead_letter_id} is open ({decision.reason}); resolve it with "
                                "`reconcile replay dead-letters retry|skip`.", decision.dead_letter_id)
                if decision.resolution in ("skip", "skipped"):
                    mode = "skip"
                elif decision.resolution == "retry-split":
                    mode = "split"
            if mode == "skip":
                self._skips.add(t.commit_lsn)
                self._add(batcher, t, 0, 0)
                continue
            if t.truncated:
                self._flush(batcher)
                self._dead_letter(t, f"Source transaction xid {t.xid} (commit LSN {t.commit_lsn_text}) truncates "
                                     f"{', '.join(t.truncated)}; TRUNCATE cannot be replayed (DSQL has none, and emptying "
                                     "a ledger table is never a shadow write), so replay stopped before it: undo it on "
                                     "the source or re-sync the table, then skip this dead letter with a reason.", None)
            rows, nbytes = self.pricer.txn(t)
            extra = self.marks.cost(t)
            rows, nbytes = rows + extra[0], nbytes + extra[1]
            if mode == "split" or not self.batch_budget.within_limit(rows, nbytes):
                self._flush(batcher)
                if mode == "split" or s.oversized_policy == "split":
                    self._apply_split(t, "retry-split" if mode == "split" else "oversized_policy=split")
                else:
                    self._oversized(t, rows, nbytes)
                continue
            self._add(batcher, t, rows, nbytes)
        self._flush(batcher, caught_up)

    def _add(self, batcher: Batcher[SourceTxn], t: SourceTxn, rows: int, nbytes: int) -> None:
        closed = batcher.add(t, rows, nbytes)
        if closed is not None:
            self._apply_group(list(closed.items))

    def _flush(self, batcher: Batcher[SourceTxn], caught_up: int | None = None) -> None:
        closed = batcher.flush()
        if closed is not None:
            self._apply_group(list(closed.items), caught_up)

    # --- applying -----------------------------------------------------------------------------------

    def _apply_group(self, txns: list[SourceTxn], caught_up: int | None = None) -> None:
        try:
            self._commit(txns, caught_up)
        except (LimitExceeded, ApplyRefused, psycopg.Error) as exc:
            if len(txns) > 1:
                log.info("a group of %d source transactions was refused (%s); applying them one by one", len(txns),
                         exc)
                for i, t in enumerate(txns):
                    self._apply_group([t], caught_up if i == len(txns) - 1 else None)
                return
            self._refused(txns[0], exc, caught_up)

    def _commit(self, txns: list[SourceTxn], caught_up: int | None) -> None:
        net = NetChanges()
        for t in txns:
            if t.commit_lsn not in self._skips:
                net.add_all(t.changes)
        self._convert(net)
        slot, expected, last, fault = self.settings.slot_name, self.wm.last_commit_lsn, txns[-1], self.fault
        writer, tracker, marks = self.writer, self.tracker, self.marks
        windows = tracker.pending(txns, count=self._window_count)

        def apply(conn: psycopg.Connection) -> int:
            # Read first: a moved watermark stops before any write is sent. Pipelined ([replay]
            # pipeline_apply), BEGIN travels with this read and every write with the COMMIT: two round trips.
            check_watermark(conn, slot, expected)
            written = writer.write(conn, net, fault)
            tracker.write(conn, windows)
            marks.write(conn, txns)
            write_watermark(conn, slot, last, len(txns), caught_up)
            return written

        written = self._tx(apply, f"apply of {len(txns)} source transaction(s)", pipeline=self.settings.pipeline_apply)
        tracker.commit(windows)
        marks.committed(txns)
        self._committed(txns, written, caught_up)

    def _window_count(self, table: str) -> int:
        return self._tx(lambda c: self.tracker.refresh_count(c, table), "change windows count")

    def _convert(self, net: NetChanges) -> None:
        """The column contract's source-side conversions (arrays to json, money to numeric), before the write."""
        if self.converter.needed and self._source is not None:
            self.converter.convert(self._source, net)

    def _committed(self, txns: list[SourceTxn], written: int, caught_up: int | None) -> None:
        now = self.clock()
        r = self.result
        last = txns[-1]
        self.wm = Watermark(last.commit_lsn, last.end_lsn, last.xid, max(caught_up or 0, self.wm.caught_up_lsn),
                            self.wm.applied_txns + len(txns), po.pg_timestamp(last.commit_ts))
        self._advanced_to = max(self._advanced_to, last.end_lsn)
        r.target_commits += 1
        r.rows_written += written
        epoch = po.PG_EPOCH.timestamp()
        for t in txns:
            if t.commit_lsn in self._skips:
                r.txns_skipped += 1
                continue
            r.txns_applied += 1
            r.changes_applied += len(t.changes)
            self._lags.append(now - (epoch + t.commit_ts / 1e6))

    def _refused(self, t: SourceTxn, exc: BaseException, caught_up: int | None) -> None:
        if isinstance(exc, LimitExceeded):
            rows, nbytes = self.pricer.txn(t)
            if self.settings.oversized_policy == "split":
                self._apply_split(t, f"the target refused it whole: {exc}")
                return
            self._oversized(t, rows, nbytes, detail=str(exc))
        sqlstate = getattr(exc, "sqlstate", None)
        detail = exc.reason if isinstance(exc, ApplyRefused) else _primary(exc)
        what = f"SQLSTATE {sqlstate}: {detail}" if sqlstate else detail
        if self.settings.on_error == "skip":
            reason = self._redact(f"The target refused source transaction xid {t.xid} (commit LSN {t.commit_lsn_text}) "
                                  f"with {what}; skipped by on_error=skip (its changes are NOT on the target).")
            dl_id = self.control.record_dead_letter(self.settings.slot_name, t, reason=reason, sqlstate=sqlstate,
                                                    run_id=self.result.run_id, resolution="skipped",
                                                    resolved_by="replay (on_error=skip)", resolution_reason=reason)
            log.warning("%s (dead letter %s)", reason, dl_id)
            self._skips.add(t.commit_lsn)
            self._commit([t], caught_up)
            return
        self._dead_letter(t, f"The target refused source transaction xid {t.xid} (commit LSN {t.commit_lsn_text}) "
                             f"with {what}; replay stopped before it (order matters for a ledger): fix the cause and "
                             "`reconcile replay dead-letters retry`, or skip it with a reason.", sqlstate)

    def _oversized(self, t: SourceTxn, rows: int, nbytes: int, detail: str | None = None) -> None:
        b = self.budget
        self._dead_letter(
            t, f"Source transaction xid {t.xid} (commit LSN {t.commit_lsn_text}) changes {len(t.changes):,} rows "
               f"({rows:,} DSQL rows, about {nbytes / 1048576:.2f} MiB), more than one DSQL transaction can hold "
               f"({b.max_rows:,} rows, {b.max_bytes / 1048576:.0f} MiB), so it cannot land atomically and replay stopped "
               "before it: apply it in pieces with `reconcile replay dead-letters retry ID --split` (a recorded "
               "non-atomic window), or skip it with a reason." + (f" ({detail})" if detail else ""), "54000")

    def _dead_letter(self, t: SourceTxn, reason: str, sqlstate: str | None) -> None:
        reason = self._redact(reason)
        dl_id = self.control.record_dead_letter(self.settings.slot_name, t, reason=reason, sqlstate=sqlstate,
                                                run_id=self.result.run_id)
        raise _Halt(f"{reason} (dead letter {dl_id})", dl_id)

    def _apply_split(self, t: SourceTxn, why: str) -> None:
        """Apply one source transaction in budget-sized pieces, recorded as a non-atomic window."""
        try:
            pieces = list(self.batch_budget.batches(t.changes, self.pricer.change, what="row change"))
        except LimitExceeded as exc:
            self._dead_letter(t, f"Source transaction xid {t.xid} (commit LSN {t.commit_lsn_text}) holds a single row "
                                 f"change too big for any DSQL transaction ({exc}); it cannot be replayed even in "
                                 "pieces: skip it with a reason and re-sync the row.", "54000")
        slot = self.settings.slot_name
        wid = self.control.open_window(slot, t, pieces=len(pieces), reason=why, run_id=self.result.run_id)
        log.warning("applying source transaction xid %d (%d changes) in %d pieces: a non-atomic window (%s)", t.xid,
                    len(t.changes), len(pieces), why)
        writer, fault, control, tracker, marks = self.writer, self.fault, self.control, self.tracker, self.marks
        for i, piece in enumerate(pieces):
            net = NetChanges()
            net.add_all(piece.items)
            self._convert(net)
            last = i == len(pieces) - 1
            expected = self.wm.last_commit_lsn
            windows = tracker.pending([dataclasses.replace(t, changes=list(piece.items))], count=self._window_count)

            def apply(conn: psycopg.Connection, net=net, last=last, i=i, windows=windows) -> int:
                check_watermark(conn, slot, expected)
                written = writer.write(conn, net, fault)
                tracker.write(conn, windows)
                control.piece_done(conn, wid, i, last)
                if last:
                    marks.write(conn, [t])
                    write_watermark(conn, slot, t, 1)
                return written

            try:
                written = self._tx(apply, f"piece {i + 1}/{len(pieces)} of source transaction {t.xid}")
            except (LimitExceeded, ApplyRefused, psycopg.Error) as exc:
                self._dead_letter(t, f"Piece {i + 1} of {len(pieces)} of source transaction xid {t.xid} (commit LSN "
                                     f"{t.commit_lsn_text}) was refused ({_primary(exc)}); the target holds the first "
                                     f"{i} piece(s) only (non-atomic window {wid}): fix the cause and retry.",
                                  getattr(exc, "sqlstate", None))
            tracker.commit(windows)
            if last:
                marks.committed([t])
                self._committed([t], written, None)
            else:
                self.result.target_commits += 1
                self.result.rows_written += written
        self.result.split_windows += 1
