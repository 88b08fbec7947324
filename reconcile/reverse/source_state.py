"""The reverse replay's state on the old source: schema ``reconcile_reverse``, written in the same source
transaction as the rows it covers (that is what makes the reverse replay exactly-once).

* ``streams``: one row per Kinesis stream: ``start_ts_ns`` (records committed on DSQL before it are not
  replayed: they are the forward replay's own writes, already on the source), ``applied_ts_ns`` (commit
  time of the newest DSQL transaction applied), ``caught_up_ns`` (every record committed before it has
  been applied: the lag a rollback gate reads), counters.
* ``checkpoints``: per shard, the sequence number through which every record was applied or found
  needless; ``finished`` once a closed shard (after a split or merge) has been read to its end.
* ``versions``: per table and primary key, the ``source.ts_ns`` of the change last applied to it and
  whether it was a delete (a tombstone): an older image never overwrites a newer one.
* ``chunks``: chunk ids of reassembled oversized images already applied (a late duplicate fragment of
  one is recognised as done).

:func:`init` creates all of it idempotently (one DDL per statement, PostgreSQL, not DSQL), plus the
replication origin that tags reverse-applied transactions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
from psycopg import sql

SCHEMA = "reconcile_reverse"


def ident(table: str) -> sql.Identifier:
    return sql.Identifier(SCHEMA, table)


DDL = (
    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
    stream text PRIMARY KEY,
    start_ts_ns bigint NOT NULL,
    applied_ts_ns bigint NOT NULL DEFAULT 0,
    caught_up_ns bigint,
    applied_txns bigint NOT NULL DEFAULT 0,
    applied_changes bigint NOT NULL DEFAULT 0,
    stale_changes bigint NOT NULL DEFAULT 0,
    late_changes bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now())""").format(ident("streams")),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
    stream text NOT NULL,
    shard_id text NOT NULL,
    sequence_number numeric(48,0),
    finished boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, shard_id))""").format(ident("checkpoints")),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
    table_name text NOT NULL,
    pk text NOT NULL,
    ts_ns bigint NOT NULL,
    deleted boolean NOT NULL,
    PRIMARY KEY (table_name, pk))""").format(ident("versions")),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
    chunk_id text PRIMARY KEY,
    ts_ns bigint NOT NULL)""").format(ident("chunks")),
)


@dataclasses.dataclass(frozen=True)
class StreamState:
    stream: str
    start_ts_ns: int
    applied_ts_ns: int = 0
    caught_up_ns: int | None = None
    applied_txns: int = 0
    applied_changes: int = 0
    stale_changes: int = 0
    late_changes: int = 0
    updated_at: Any = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["updated_at"] = self.updated_at.isoformat() if self.updated_at else None
        return d


def init(conn: psycopg.Connection, *, stream: str, origin: str, start_ts_ns: int) -> dict[str, Any]:
    """Create the schema, the stream's row (``start_ts_ns`` only when new) and the replication origin."""
    actions = []
    if conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.chunks",)).fetchone()[0] is None:
        actions.append(f"created schema {SCHEMA} on the source")
    for stmt in DDL:
        conn.execute(stmt)
    if conn.execute("SELECT 1 FROM pg_replication_origin WHERE roname = %s", (origin,)).fetchone() is None:
        conn.execute("SELECT pg_replication_origin_create(%s)", (origin,))
        actions.append(f"created replication origin {origin}")
    cur = conn.execute(sql.SQL("INSERT INTO {} (stream, start_ts_ns) VALUES (%s, %s) ON CONFLICT (stream) DO NOTHING")
                       .format(ident("streams")), (stream, start_ts_ns))
    if cur.rowcount:
        actions.append(f"stream {stream}: records committed on DSQL from {start_ts_ns} ns on will be replayed")
    return {"stream": stream, "origin": origin, "actions": actions or ["already initialised; nothing to do"]}


def exists(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.streams",)).fetchone()[0] is not None


def read_stream(conn: psycopg.Connection, stream: str) -> StreamState | None:
    row = conn.execute(sql.SQL(
        "SELECT stream, start_ts_ns, applied_ts_ns, caught_up_ns, applied_txns, applied_changes, stale_changes, "
        "late_changes, updated_at FROM {} WHERE stream = %s").format(ident("streams")), (stream,)).fetchone()
    return StreamState(*row) if row else None


def read_checkpoints(conn: psycopg.Connection, stream: str) -> dict[str, tuple[int | None, bool]]:
    rows = conn.execute(sql.SQL("SELECT shard_id, sequence_number, finished FROM {} WHERE stream = %s")
                        .format(ident("checkpoints")), (stream,)).fetchall()
    return {r[0]: (int(r[1]) if r[1] is not None else None, r[2]) for r in rows}


def write_checkpoints(conn: psycopg.Connection, stream: str, marks: dict[str, tuple[int | None, bool]]) -> None:
    if not marks:
        return
    conn.cursor().executemany(sql.SQL("""
INSERT INTO {t} AS c (stream, shard_id, sequence_number, finished, updated_at) VALUES (%s, %s, %s, %s, now())
ON CONFLICT (stream, shard_id) DO UPDATE SET
    sequence_number = GREATEST(c.sequence_number, EXCLUDED.sequence_number),
    finished = c.finished OR EXCLUDED.finished, updated_at = now()""").format(t=ident("checkpoints")),
        [(stream, shard, seq, fin) for shard, (seq, fin) in marks.items()])


def chunks_done(conn: psycopg.Connection, chunk_ids: list[str]) -> set[str]:
    if not chunk_ids:
        return set()
    rows = conn.execute(sql.SQL("SELECT chunk_id FROM {} WHERE chunk_id = ANY(%s)").format(ident("chunks")),
                        (chunk_ids,)).fetchall()
    return {r[0] for r in rows}


def record_chunks(conn: psycopg.Connection, rows: list[tuple[str, int]]) -> None:
    """Chunk ids done (applied or passed over), in the caller's transaction."""
    if rows:
        conn.cursor().executemany(sql.SQL("INSERT INTO {} (chunk_id, ts_ns) VALUES (%s, %s) ON CONFLICT DO NOTHING")
                                  .format(ident("chunks")), rows)
