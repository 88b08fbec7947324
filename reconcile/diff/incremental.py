"""Incremental verification of one table: what changed since it was last verified, plus one sweep slice.

A full diff reads every row on both sides; an *incremental* table diff reads (see DESIGN.md,
"Verification that costs what changed"):

1. **the changed keys**: every key the replay applied since the table's ``verified_lsn``, from the
   change windows it wrote with its apply transactions (:mod:`reconcile.replay.tracking`), read in one
   target snapshot together with the replay watermark ``W``: the windows then hold exactly the changes
   at or below ``W``, i.e. the keys the watermark has passed. Exact keys are fetched as (key, row
   hash) by key on both sides; coarsened ranges are checksummed like segments. The keys of the
   previous run's findings for the table are added (a known difference stays under watch until a run
   finds the row equal);
2. **one slice of the rolling sweep**: the key space is cut into at most ``[diff] sweep_runs`` (N)
   slices when a pass starts (integer keys: equal key spans between the two sides' min and max;
   other keys: every (rows/N)-th source key); each incremental run verifies the next slice, so every
   row, changed or not, on either side, is verified at least once every N runs: a corrupted cold row on
   the target is found within N runs.

Found candidates go through the same exact comparison and lag-aware re-checks as a full diff. When the
run's verification of the table completes (green or red), ``verified_lsn`` becomes ``W`` and the
windows at or below it are deleted (:mod:`reconcile.diff.coverage`).

A table is verified whole (and says why in its coverage) when the incremental form cannot vouch for
it: it was never verified, no replay watermark exists for the slot, the replay's tracking does not
reach back to ``verified_lsn`` (``[replay] track_changes`` off, or turned on later), a window holds more
changes than ``[replay] track_bytes`` could list, or the previous run's findings were more than it kept.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from reconcile.control.migrations import ident
from reconcile.diff import coverage, hashdiff, lag, sqlgen
from reconcile.diff.coverage import SliceState, TableCoverage
from reconcile.diff.hashdiff import Candidates, TableShape
from reconcile.diff.settings import DiffSettings
from reconcile.diff.side import Pair
from reconcile.replay.tracking import Window, merge_ranges

MODES = ("full", "incremental")
SMALL_RANGE = 64
"""An integer key range of fewer keys than this is verified key by key (with the exact keys, one array per
5,000) rather than as a range of its own (a query per side)."""


@dataclass
class TablePlan:
    """What one run verifies of one table, and the coverage state to store once it has."""

    table: str
    mode: str
    """``full`` or ``incremental`` (what is done, which may be full when incremental was asked)."""
    reason: str | None
    """Why a table of an incremental run is verified whole (None otherwise)."""
    watermark: int | None
    cov: TableCoverage
    started_at: dt.datetime
    keys: list[tuple] = field(default_factory=list)
    ranges: list[tuple[tuple, tuple]] = field(default_factory=list)
    windows: int = 0
    window_changes: int = 0
    carried: int = 0
    slice_no: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    """Where the time went: planning, changed keys, ranges, the sweep slice (or the whole scan)."""

    def slice_params(self, shape: TableShape) -> tuple[tuple | None, tuple | None]:
        lo, hi = self.cov.slice_range(self.slice_no or 0)
        return _params(shape, lo), _params(shape, hi)

    def describe(self, cands: Candidates) -> dict[str, Any]:
        """The table's ``coverage`` in ``diff_results.details`` (and the run summary)."""
        out: dict[str, Any] = {"mode": self.mode, "reason": self.reason,
                               "watermark": lag_text(self.watermark),
                               "rows_read": {"source": cands.rows_source, "target": cands.rows_target},
                               "seconds": dict(self.seconds)}
        if self.mode == "incremental":
            lo, hi = self.cov.slice_range(self.slice_no or 0)
            out["changed"] = {"since_lsn": lag_text(self.cov.verified_lsn), "windows": self.windows,
                              "changes": self.window_changes, "keys": len(self.keys), "ranges": len(self.ranges),
                              "carried_findings": self.carried}
            out["sweep"] = {"pass": self.cov.pass_no, "slice": self.slice_no, "slices": self.cov.pass_slices,
                            "lo": lo, "hi": hi}
        return out


def lag_text(lsn: int | None) -> str | None:
    from reconcile.replay.pgoutput import int_to_lsn

    return int_to_lsn(lsn) if lsn is not None else None


def _params(shape: TableShape, bound: list | None) -> tuple | None:
    if bound is None:
        return None
    return (int(bound[0]),) if shape.integer_key else tuple(bound)


def _tracking(conn: psycopg.Connection, slot: str) -> int | None:
    if not conn.execute("SELECT to_regclass('reconcile.change_tracking') IS NOT NULL").fetchone()[0]:
        return None
    row = conn.execute(sql.SQL("SELECT tracked_from FROM {} WHERE slot_name = %s").format(ident("change_tracking")),
                       (slot,)).fetchone()
    return int(row[0]) if row else None


def _windows(conn: psycopg.Connection, slot: str, table: str, since: int) -> list[tuple[str, str, int]]:
    return [(r[0], r[1], int(r[2])) for r in conn.execute(sql.SQL(
        "SELECT form, keys, changes FROM {} WHERE slot_name = %s AND table_name = %s AND last_lsn > %s "
        "ORDER BY window_no").format(ident("change_windows")), (slot, table, since)).fetchall()]


def _findings(conn: psycopg.Connection, run_id: str | None, table: str) -> tuple[list[tuple], int]:
    """Keys of the findings ``run_id`` stored for ``table``, and how many it counted."""
    if run_id is None:
        return [], 0
    keys = [tuple(json.loads(r[0])) for r in conn.execute(sql.SQL(
        "SELECT row_key FROM {} WHERE run_id = %s AND table_name = %s AND kind IN "
        "('missing_in_target', 'extra_in_target', 'changed')").format(ident("diff_findings")),
        (run_id, table)).fetchall()]
    row = conn.execute(sql.SQL("SELECT missing + extra + changed FROM {} WHERE run_id = %s AND table_name = %s")
                       .format(ident("diff_results")), (run_id, table)).fetchone()
    return keys, int(row[0]) if row and row[0] is not None else len(keys)


def plan_table(control: psycopg.Connection, settings: DiffSettings, *, mode: str, slot: str, table: str,
               shape: TableShape, pair: Pair) -> TablePlan:
    """Decide what this run verifies of ``table`` (see the module docstring); nothing is written."""
    t0 = time.monotonic()
    plan = _plan(control, settings, mode=mode, slot=slot, table=table, shape=shape, pair=pair)
    plan.seconds["plan"] = round(time.monotonic() - t0, 3)
    return plan


def _plan(control: psycopg.Connection, settings: DiffSettings, *, mode: str, slot: str, table: str,
          shape: TableShape, pair: Pair) -> TablePlan:
    with control.transaction():  # one snapshot: the watermark and the windows agree
        now = control.execute("SELECT now()").fetchone()[0]
        mark = lag.watermark(control, slot)
        cov = coverage.load(control, slot, table).get(table) or TableCoverage(slot, table)
        reason: str | None = None
        windows: list[tuple[str, str, int]] = []
        carried: list[tuple] = []
        if mode == "incremental":
            tracked_from = _tracking(control, slot)
            if cov.verified_lsn is None:
                reason = "first verification of the table (no earlier verified point)"
            elif mark is None:
                reason = f"no replay watermark for slot {slot} on the target: nothing tracks the changes"
            elif tracked_from is None:
                reason = (f"the replay of slot {slot} does not track changed keys ([replay] track_changes is off, "
                          "or no replay has run since it was turned on)")
            elif tracked_from > cov.verified_lsn:
                reason = ("changed-key tracking started after the last verification of the table, so changes "
                          "before it are not listed")
            else:
                windows = _windows(control, slot, table, cov.verified_lsn)
                full_windows = sum(1 for w in windows if w[0] == "all")
                carried, counted = _findings(control, cov.verified_run_id, table)
                if full_windows:
                    reason = (f"{full_windows} change window(s) held more changes than [replay] track_bytes can "
                              "list, so the table changed as a whole")
                elif counted > len(carried):
                    reason = (f"the last run found {counted} differences and kept {len(carried)} ([diff] "
                              "max_findings): the rest are only found by reading the table whole")
    if mode == "full" or reason is not None:
        plan = TablePlan(table, "full", reason, mark, cov, now)
        if cov.bounds is None:
            _new_pass(plan, settings, shape, pair)
        return plan
    plan = TablePlan(table, "incremental", None, mark, cov, now, windows=len(windows),
                     window_changes=sum(w[2] for w in windows), carried=len(carried))
    _changed(plan, shape, windows, carried)
    if cov.bounds is None or cov.next_slice >= cov.pass_slices or cov.pass_runs != settings.sweep_runs:
        _new_pass(plan, settings, shape, pair)
    plan.slice_no = cov.next_slice
    return plan


def _changed(plan: TablePlan, shape: TableShape, windows: list[tuple[str, str, int]], carried: list[tuple]) -> None:
    """The keys and key ranges of the windows (and the carried findings) as query parameters."""
    order = "int" if shape.integer_key else "str"
    ranges: list[tuple[Any, Any]] = []
    keys: set[tuple] = set()
    for form, text, _n in windows:
        got, exact = Window.decode(form, text, order)
        ranges.extend(got)
        keys.update(exact)
    for lo, hi in merge_ranges(ranges, order) if ranges else []:
        if lo == hi:
            keys.add((lo,))
        elif order == "int" and hi - lo < SMALL_RANGE:  # a few neighbours: fetched by key with the others
            keys.update((k,) for k in range(lo, hi + 1))
        elif order == "int":
            plan.ranges.append(((lo,), (hi + 1,)))
        else:
            plan.ranges.append(((lo,), (hi + "\x01",)))  # no text sorts between hi and hi || E'\x01'
    for k in carried:
        keys.add(tuple(int(v) if shape.integer_key and isinstance(v, (int, str)) else v for v in k))
    # In key order (integers as numbers): neighbouring index pages are read together.
    if shape.integer_key and all(isinstance(k[0], int) for k in keys):
        plan.keys = sorted(keys)
    else:
        plan.keys = sorted(keys, key=lambda k: tuple((0, v, "") if isinstance(v, int) else (1, 0, str(v)) for v in k))


def _new_pass(plan: TablePlan, settings: DiffSettings, shape: TableShape, pair: Pair) -> None:
    """Start a sweep pass: at most N slices of the key space, boundaries fixed until the pass ends."""
    cov, n = plan.cov, settings.sweep_runs
    bounds: list[list] = []
    if n > 1 and shape.integer_key:
        (kc,) = shape.key
        q = sqlgen.min_max_query(shape.ident, kc)
        (smin, smax), (tmin, tmax) = pair.both(lambda s: s.one(q))
        lows = [v for v in (smin, tmin) if v is not None]
        highs = [v for v in (smax, tmax) if v is not None]
        if lows:
            lo, hi = min(lows), max(highs)
            width = max(1, math.ceil((hi - lo + 1) / n))
            bounds = [[str(lo + i * width)] for i in range(1, n) if lo + i * width <= hi]
    elif n > 1:
        schema, table = shape.name.split(".", 1)
        est = pair.source.estimate_rows(schema, table) or 0.0
        step = max(1, math.ceil(max(est, 1.0) / n))
        rows = pair.source.fetch(sqlgen.quantiles_query(shape.ident, shape.key, step, n - 1))
        for r in rows:
            b = list(r)
            if not bounds or bounds[-1] != b:
                bounds.append(b)
    cov.pass_no += 1
    cov.pass_runs = n
    cov.bounds = bounds
    cov.pass_started_at = plan.started_at
    cov.next_slice = 0
    cov.pass_clean = True
    cov.slices = [SliceState(i, *cov.slice_range(i)) for i in range(cov.pass_slices)]


def candidates(pair: Pair, shape: TableShape, settings: DiffSettings, plan: TablePlan) -> Candidates:
    """The candidate mismatches of what ``plan`` verifies (the whole table when it is full)."""
    t0 = time.monotonic()
    if plan.mode == "full":
        out = hashdiff.candidates(pair, shape, settings)
        plan.seconds["scan"] = round(time.monotonic() - t0, 3)
        return out
    total = Candidates()
    if plan.keys:
        total.merge(hashdiff.key_candidates(pair, shape, plan.keys))
    t1 = time.monotonic()
    for lo, hi in plan.ranges:
        if shape.integer_key and hi[0] - lo[0] <= settings.fetch_threshold:
            total.merge(hashdiff.range_candidates(pair, shape, lo, hi))
        else:
            total.merge(hashdiff.candidates(pair, shape, settings, lo, hi))
    t2 = time.monotonic()
    lo, hi = plan.slice_params(shape)
    total.merge(hashdiff.candidates(pair, shape, settings, lo, hi))
    plan.seconds.update(keys=round(t1 - t0, 3), ranges=round(t2 - t1, 3), sweep=round(time.monotonic() - t2, 3))
    return total


def record(control: psycopg.Connection, plan: TablePlan, run_id: str, status: str, *, policy: Any,
           budget: Any = None) -> None:
    """The table was verified (``status`` green or red): move its coverage forward and drop verified windows.

    Nothing moves for a table that could not be compared (``error``).
    """
    if status not in ("green", "red"):
        return
    cov, now = plan.cov, plan.started_at
    clean = status == "green"
    if plan.watermark is not None:
        cov.verified_lsn = plan.watermark
    cov.verified_run_id, cov.verified_at = run_id, now
    if plan.mode == "full":
        cov.last_full_run_id, cov.last_full_at, cov.last_full_clean = run_id, now, clean
        for s in cov.slices:
            s.last_verified_at, s.last_run_id, s.last_mode, s.last_status = now, run_id, "full", status
    else:
        i = plan.slice_no or 0
        s = cov.slices[i]
        s.last_verified_at, s.last_run_id, s.last_mode, s.last_status = now, run_id, "incremental", status
        cov.pass_clean = bool(cov.pass_clean is not False and clean)
        cov.next_slice = i + 1
        if cov.next_slice >= cov.pass_slices:
            cov.last_pass_started_at = cov.pass_started_at
            cov.last_pass_finished_at = control.execute("SELECT now()").fetchone()[0]
            cov.last_pass_clean = cov.pass_clean
    coverage.save(control, cov, policy=policy)
    if plan.watermark is not None:
        coverage.drop_windows(control, cov.slot_name, cov.table, plan.watermark, policy=policy, budget=budget)
