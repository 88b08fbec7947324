"""The replay-ready hook: slot first, then backfill.

Every write that races the copy must reach the target later through the shadow-write replay. That
holds only if the replication slot exists *before* the first chunk is read: the slot retains every
change committed after its creation, and replaying those full row images in commit order ends at
the source's state whatever older images the copy wrote (DESIGN.md, "The copy/replay race"). So a
run that says replay will follow refuses to start while the slot is missing, and each chunk records
the slot it was copied under (``chunks.replay_slot``): rows copied before the slot existed are
refused too, until they are copied again (``--force``).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from reconcile.backfill.errors import ReplayNotReady


@dataclass(frozen=True)
class SlotInfo:
    """A replication slot on the source, as ``pg_replication_slots`` shows it."""

    name: str
    slot_type: str
    plugin: str | None
    database: str | None
    active: bool
    restart_lsn: str | None
    confirmed_flush_lsn: str | None


_QUERY = """
SELECT slot_name::text, slot_type, plugin::text, database::text, active,
       restart_lsn::text, confirmed_flush_lsn::text
FROM pg_catalog.pg_replication_slots WHERE slot_name = %s
"""


def find_slot(source_conn: psycopg.Connection, slot_name: str) -> SlotInfo | None:
    """The slot called ``slot_name`` on the source, or None."""
    row = source_conn.execute(_QUERY, (slot_name,)).fetchone()
    return SlotInfo(*row) if row else None


def assert_replay_ready(source_conn: psycopg.Connection, slot_name: str, required: bool) -> SlotInfo | None:
    """Refuse to start a backfill that replay must follow before replay's slot exists.

    Args:
        source_conn: a connection to the source database the backfill reads.
        slot_name: the logical replication slot replay will read (default ``reconcile``).
        required: whether replay follows this backfill; when False nothing is refused.

    Returns:
        The slot when it exists and is usable, else None (only possible when not required).

    Raises:
        ReplayNotReady: ``required`` and the slot is missing, not logical, or belongs to another
            database.
    """
    slot = find_slot(source_conn, slot_name)
    if not required:
        return slot if slot is not None and _usable(source_conn, slot) else None
    (db,) = source_conn.execute("SELECT current_database()").fetchone()
    if slot is None:
        raise ReplayNotReady(
            f"Replay is enabled but the source has no replication slot named {slot_name!r} yet, so writes "
            "racing this backfill would be lost; create the slot first (the replay stage creates it, or "
            f"SELECT pg_create_logical_replication_slot('{slot_name}', 'pgoutput') on database {db}), then "
            "start the backfill, or run it with --no-replay if no replay will follow.")
    if slot.slot_type != "logical":
        raise ReplayNotReady(f"Replication slot {slot_name!r} on the source is a {slot.slot_type} slot; replay "
                             "needs a logical slot: drop it and create a logical one, or pass --slot-name.")
    if slot.database != db:
        raise ReplayNotReady(f"Replication slot {slot_name!r} belongs to database {slot.database}, not {db} "
                             "that this backfill reads; create the slot in this database or pass --slot-name.")
    return slot


def _usable(source_conn: psycopg.Connection, slot: SlotInfo) -> bool:
    if slot.slot_type != "logical":
        return False
    (db,) = source_conn.execute("SELECT current_database()").fetchone()
    return slot.database == db
