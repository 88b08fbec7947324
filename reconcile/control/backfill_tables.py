"""Control-schema steps the backfill needs beyond the base tables (``chunks``, ``rejects``, ``runs``).

Imported by :mod:`reconcile.control`, so these steps are part of every ``migrate``. Columns only, no new tables or
indexes: DSQL allows ``ADD COLUMN`` without inline DEFAULT or NOT NULL, so the new counters are
nullable and read with ``coalesce``. The versions start at 401 (issue 4) so that steps registered by
other stages' modules do not collide with them.

What they hold:

* ``chunks.last_key``: the key of the last row committed in the chunk, written in the same target
  transaction as those rows, so a resume continues exactly after it (keys > last_key).
* ``chunks.rejected``: rows of the chunk the target refused (listed in ``rejects``).
* ``chunks.replay_slot``: the replication slot that existed on the source when the chunk was
  copied (NULL when none did, or when parts were copied with and without one). A run that requires
  replay refuses chunks copied before their slot existed.
* ``rejects.chunk_id``: the chunk a rejected row belongs to, so a fresh copy of the chunk clears the
  rejects of its earlier copies.
"""

from __future__ import annotations

from typing import LiteralString

from psycopg import sql

from reconcile.control.migrations import Migration, ident, register


def _add_column(version: int, name: str, table: str, column: LiteralString, type_: LiteralString) -> Migration:
    return Migration(version, name, sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} " + type_).format(
        ident(table), sql.Identifier(column)))


STEPS: tuple[Migration, ...] = (
    _add_column(401, "chunks.last_key", "chunks", "last_key", "text"),
    _add_column(402, "chunks.rejected", "chunks", "rejected", "bigint"),
    _add_column(403, "chunks.replay_slot", "chunks", "replay_slot", "text"),
    _add_column(404, "rejects.chunk_id", "rejects", "chunk_id", "bigint"),
)

for _step in STEPS:
    register(_step)
