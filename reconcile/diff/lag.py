"""Lag awareness: the replay watermark, and re-checks of candidate mismatches after it passes.

Contract (see :mod:`reconcile.control.migrations` and ``replay_tables``): ``reconcile.replay_state``
holds, per slot, ``last_commit_lsn`` (the last source commit applied on the target, written in the
same target transaction) and ``caught_up_lsn`` (a source WAL position the replayer has read
through with nothing left to apply). The target holds every source transaction committed before
``max(last_commit_lsn, caught_up_lsn)``; LSNs compare as integers, ``'X/Y'`` -> ``(X << 32) + Y``.

A re-check round: take the source's current LSN ``L``; wait (bounded) until the watermark reaches
``L``; read the candidate rows on the target, then on the source; compare. Rows equal now were in
flight; rows still different go to the next round (a hot row may have changed again between the
two reads). What still differs after ``recheck_rounds`` rounds is persistent: a finding. With no
``replay_state`` row for the slot (no replay running), the comparison is static: no re-check.

A row that changes faster than the replay lag (a settlement account under load) differs in every
round: the target shows it at the watermark, the source a later version. :func:`settle` applies the
bracket rule to such rows: once the watermark has passed the previous round's source read, the
target stands between the two source reads, so a row whose source version moved between them (or
whose target equals the earlier source version) is in flight, not a finding. A row that held still
on the source must match exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from reconcile.replay.pgoutput import lsn_to_int

DEFAULT_SLOT = "reconcile"


def lsn_int(lsn: str | None) -> int | None:
    """``'16/B374D848'`` -> ``(0x16 << 32) + 0xB374D848``; None stays None.

    >>> lsn_int("1/0"), lsn_int("0/10")
    (4294967296, 16)
    """
    return None if lsn is None or lsn == "" else lsn_to_int(str(lsn))


def slot_name(config: Any) -> str:
    """The replay slot the diff follows: ``[replay] slot_name``, default ``reconcile``."""
    return getattr(getattr(config, "replay", None), "slot_name", None) or DEFAULT_SLOT


def current_lsn(source: psycopg.Connection) -> str:
    return str(source.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])


def watermark(target: psycopg.Connection, slot: str) -> int | None:
    """The replay watermark of ``slot`` as an integer, or None when no replay has written one."""
    has_caught_up = target.execute(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'reconcile' "
        "AND table_name = 'replay_state' AND column_name = 'caught_up_lsn')").fetchone()[0]
    exists = target.execute("SELECT to_regclass('reconcile.replay_state') IS NOT NULL").fetchone()[0]
    if not exists:
        return None
    cols = "last_commit_lsn, caught_up_lsn" if has_caught_up else "last_commit_lsn, NULL"
    row = target.execute(f"SELECT {cols} FROM reconcile.replay_state WHERE slot_name = %s",  # noqa: S608
                         (slot,)).fetchone()
    if row is None:
        return None
    values = [v for v in (lsn_int(row[0]), lsn_int(row[1])) if v is not None]
    return max(values) if values else None


def slot_state(source: psycopg.Connection, slot: str) -> str:
    """Whether a replay is reading ``slot`` on the source, as a phrase for the console: the slot is active (a
    replay holds it), inactive (no replay is reading it: the watermark cannot move), or missing."""
    try:
        row = source.execute("SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
                             (slot,)).fetchone()
    except psycopg.Error:
        return f"the state of slot {slot!r} cannot be read on the source"
    if row is None:
        return f"slot {slot!r} does not exist on the source: no replay can advance the watermark"
    if not row[0]:
        return f"no replay is reading slot {slot!r} (inactive on the source): the watermark is not advancing"
    return f"a replay is reading slot {slot!r}"


@dataclass
class Waiter:
    """Waits for the watermark to reach an LSN, within one overall deadline."""

    read: Callable[[], int | None]
    deadline: float
    poll: float = 0.5
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    tick: Callable[[float], None] | None = None
    """Called with the seconds left every ``every`` seconds of waiting (a visible countdown)."""
    every: float = 10.0

    passed: bool | None = None
    """The outcome of the last :meth:`wait` (None before the first)."""
    mark: int | None = None
    """The watermark last read."""

    def wait(self, lsn: int) -> bool:
        """True once the watermark is at or past ``lsn``; False when the deadline passes first."""
        next_tick = self.clock() + self.every
        while True:
            self.mark = mark = self.read()
            if mark is not None and mark >= lsn:
                self.passed = True
                return True
            now = self.clock()
            remaining = self.deadline - now
            if remaining <= 0:
                self.passed = False
                return False
            if self.tick is not None and now >= next_tick:
                self.tick(remaining)
                next_tick = now + self.every
            self.sleep(min(self.poll, remaining))


def settle(previous: Sequence[Any], current: Sequence[Any], *, bracket: bool) -> list[Any]:
    """Row findings of a re-check round, with the bracket rule (see the module docstring).

    Args:
        previous: the findings of the round before (their ``source`` is the earlier source read).
        current: the findings of this round's re-read (target first, then source).
        bracket: the watermark passed a source LSN taken after the previous round's source read
            (``Waiter.passed`` of this round); without it the findings stay as they are.

    Returns:
        ``current`` without the rows in flight: source version moved between the two reads, or the
        target equals the earlier source version. Findings are matched by ``key``.
    """
    if not bracket:
        return list(current)
    before = {repr(f.key): f for f in previous}
    out = []
    for f in current:
        old = before.get(repr(f.key))
        if old is not None and (old.source != f.source or (f.target is not None and f.target == old.source)):
            continue
        out.append(f)
    return out
