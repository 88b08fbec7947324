"""Control-schema steps of the replay stage (versions 500-599).

Imported by :mod:`reconcile.control`, so these steps are part of every ``migrate``. One DDL
statement per step (``table_step``, ``register_index``, or an ``ALTER TABLE ... ADD COLUMN``
without inline DEFAULT/NOT NULL); never renumber a shipped step.
"""

from __future__ import annotations

from reconcile.control.migrations import register, register_index, table_step  # noqa: F401

from psycopg import sql  # noqa: E402

from reconcile.control.migrations import Migration, ident  # noqa: E402

# A source WAL position the replayer has read through: every source transaction that committed before
# it is applied on the target. Updated when a read of the slot finds nothing more to apply, so a
# lag-aware reader (the diff) can tell "caught up past my start" even when the source is idle.
register(Migration(500, "replay_state.caught_up_lsn", sql.SQL(
    "ALTER TABLE {} ADD COLUMN IF NOT EXISTS caught_up_lsn text").format(ident("replay_state"))))
