"""Which side is the system of record when a reconciliation runs: its ``direction``.

* ``forward``: the source is the system of record (shadow writes, read cutover). What the target
  lacks is ``missing``; what only the target holds is ``extra``.
* ``reverse``: after the write cutover the target (DSQL) is the system of record and the reverse replay
  copies its changes back to the old source. ``missing`` then means on the target but not on the
  source, ``extra`` on the source only.

A diff run (and its expectations run) records its direction in ``reconcile.runs.direction``; by default
it is derived from the cutover state when the run starts (``write_cutover`` -> reverse, else forward),
``reconcile diff --direction`` forces it. The forward gates (read, write) count only forward runs; the
rollback gate counts only reverse ones. Runs written before the column existed are forward. A reverse
diff re-checks after the reverse replay's caught-up point, not the forward watermark
(:class:`reconcile.diff.run.ReverseWaiter`), and repairs are refused in reverse.

>>> swap_counts("reverse", {"missing_in_target": 2, "extra_in_target": 5})
(5, 2)
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from reconcile.errors import InvalidArgument

__all__ = ["DIRECTIONS", "FORWARD", "REVERSE", "check_direction", "describe", "direction_of", "swap_counts"]

FORWARD, REVERSE = "forward", "reverse"
DIRECTIONS = (FORWARD, REVERSE)

_SYSTEM_OF_RECORD = {FORWARD: "the source is the system of record",
                     REVERSE: "the target is the system of record (after write cutover)"}


def check_direction(value: str | None) -> str | None:
    """``value`` when it is a direction (None stays None); one-sentence error otherwise."""
    if value is None:
        return None
    if value not in DIRECTIONS:
        raise InvalidArgument(f"direction {value!r} is not one of {', '.join(DIRECTIONS)}; use forward (the source "
                              "is the system of record) or reverse (after write cutover)")
    return value


def direction_of(conn: psycopg.Connection, forced: str | None = None, *, key: str | None = None) -> str:
    """``forced`` when given, else from the cutover state on the target (``write_cutover`` -> reverse).

    ``key``: the migration's cutover state key (:func:`reconcile.identity.cutover_key`); its row decides,
    and a control schema from before the state was scoped (one ``'cutover'`` row, not yet adopted) stands
    in for it. No key (a caller that does not know the migration): reverse when *any* migration of this
    control schema is in write cutover, the side that refuses more. No state row (gates never used) is
    forward.
    """
    if check_direction(forced) is not None:
        return forced  # type: ignore[return-value]
    if conn.execute("SELECT to_regclass('reconcile.gate_state')").fetchone()[0] is None:
        return FORWARD
    from reconcile.identity import LEGACY_CUTOVER_KEY

    table = sql.Identifier("reconcile", "gate_state")
    if key is None:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE state = 'write_cutover'").format(table)).fetchone()
        return REVERSE if row is not None and row[0] else FORWARD
    rows = dict(conn.execute(sql.SQL("SELECT gate_key, state FROM {} WHERE gate_key IN (%s, %s)").format(table),
                             (key, LEGACY_CUTOVER_KEY)).fetchall())
    state = rows.get(key, rows.get(LEGACY_CUTOVER_KEY))
    return REVERSE if state == "write_cutover" else FORWARD


def describe(direction: str | None) -> str:
    """``forward (the source is the system of record)``."""
    d = direction or FORWARD
    return f"{d} ({_SYSTEM_OF_RECORD.get(d, d)})"


def swap_counts(direction: str | None, counts: dict[str, Any]) -> tuple[int, int]:
    """(missing, extra) of a table, as the system of record sees them, from the physical finding kinds.

    Findings keep their physical kinds (``missing_in_target``: a row on the source only); in reverse the
    system of record is the target, so a row on the target only is what the source is missing.
    """
    on_source_only, on_target_only = int(counts.get("missing_in_target", 0)), int(counts.get("extra_in_target", 0))
    if direction == REVERSE:
        return on_target_only, on_source_only
    return on_source_only, on_target_only
