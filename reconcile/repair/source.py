"""The source side of a live repair: watermarks in the change stream, the wait for transactions in
progress, and reading rows as the text forms the replay's decoding produces.

Every statement runs on an autocommit connection whose session pins the text forms exactly as the
replay's does (:func:`reconcile.replay.source.prepare_session`), so a copied value is the very text
pgoutput would have sent for it, converted on the way by the same column contract.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from reconcile.budget import qualified, split_table_name
from reconcile.repair.errors import RepairError
from reconcile.replay import pgoutput as po
from reconcile.replay.marks import PREFIX, mark_content

Key = tuple[str, ...]

_COLUMNS = """
SELECT a.attname::text, a.atttypid::int, a.atttypmod::int,
       CASE c.relreplident WHEN 'f' THEN true WHEN 'n' THEN false
            ELSE coalesce(a.attnum = ANY(i.indkey::int2[]), false) END,
       format_type(a.atttypid, NULL)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid
     AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
WHERE n.nspname = %s AND c.relname = %s
ORDER BY a.attnum
"""


@dataclass(frozen=True)
class SourceTable:
    """A table as pgoutput describes it to the replay, and where its configured key sits."""

    name: str
    columns: tuple[tuple[str, int, int, bool], ...]
    """(name, type oid, typmod, replica identity flag) per published column, in column order."""
    types: tuple[str, ...]
    """Each column's type name without modifier (``format_type(oid, NULL)``)."""
    key: tuple[str, ...]
    key_positions: tuple[int, ...]

    def doc(self) -> dict[str, Any]:
        """What the replay needs to build its rows (stored with each chunk)."""
        return {"columns": [list(c) for c in self.columns], "key_positions": list(self.key_positions)}


def describe(conn: psycopg.Connection, name: str, key: Sequence[str]) -> SourceTable:
    """The published columns of ``name`` and its configured key's positions.

    Raises:
        RepairError: the table does not exist on the source, or lacks a key column.
    """
    schema, table = split_table_name(name)
    rows = conn.execute(_COLUMNS, (schema, table)).fetchall()
    if not rows:
        raise RepairError(f"Table {name} does not exist on the source (or has no columns): check [[tables]].")
    names = [r[0] for r in rows]
    missing = [k for k in key if k not in names]
    if missing:
        raise RepairError(f"Table {name} has no column(s) {', '.join(missing)} of its configured key on the source: "
                          "fix the key in [[tables]].")
    return SourceTable(name, tuple((r[0], r[1], r[2], bool(r[3])) for r in rows), tuple(r[4] for r in rows),
                       tuple(key), tuple(names.index(k) for k in key))


def canonical_keys(conn: psycopg.Connection, t: SourceTable, keys: Sequence[Sequence[Any]]) -> list[Key]:
    """Keys as the text forms the replay's decoding produces (a finding stores JSON values: ``2024-01-01T..``
    for a timestamp, a number for an integer), cast on the source through each key column's type."""
    if not keys:
        return []
    columns: list[list[str]] = []
    for i, pos in enumerate(t.key_positions):
        q = sql.SQL("SELECT (CAST(u.v AS {}))::text FROM unnest(%s::text[]) WITH ORDINALITY AS u(v, n) "
                    "ORDER BY u.n").format(sql.SQL(t.types[pos]))  # type: ignore[arg-type]  # format_type text
        values = [None if k[i] is None else str(k[i]) for k in keys]
        columns.append([r[0] for r in conn.execute(q, (values,)).fetchall()])
    return [tuple(col[j] for col in columns) for j in range(len(keys))]


def emit(conn: psycopg.Connection, slot_name: str, chunk_id: str, mark: str) -> int:
    """Write a watermark into the change stream (its own source transaction); returns its LSN."""
    (lsn,) = conn.execute("SELECT pg_logical_emit_message(true, %s, %s)::text",
                          (PREFIX, mark_content(slot_name, chunk_id, mark))).fetchone()
    return po.lsn_to_int(lsn)


def wait_for_older_transactions(conn: psycopg.Connection, *, timeout: float, poll: float) -> int:
    """Wait until every source transaction in progress now has ended; returns how many there were.

    Called after the low watermark committed: a transaction whose commit record precedes the watermark may
    still be invisible to a new snapshot for a moment (PostgreSQL makes a commit visible after writing its
    record). Once all transactions in progress at this point have ended, a read sees every transaction that
    committed before the watermark; anything it cannot see commits after the watermark, so the replay sees
    it change (and drops the copied row) or applies it after the copy.

    Raises:
        RepairError: they did not end within ``timeout`` seconds.
    """
    (xips,) = conn.execute("SELECT coalesce(array_agg(x::text), '{}') FROM pg_snapshot_xip(pg_current_snapshot()) x"
                           ).fetchone()
    if not xips:
        return 0
    deadline = time.monotonic() + timeout
    q = "SELECT count(*) FROM unnest(%s::xid8[]) x WHERE pg_xact_status(x) = 'in progress'"
    while True:
        (left,) = conn.execute(q, (xips,)).fetchone()
        if not left:
            return len(xips)
        if time.monotonic() >= deadline:
            raise RepairError(f"{left} source transaction(s) in progress when the repair started did not end within "
                              f"{timeout:g} s (a long transaction, or a session idle in transaction); the copy needs "
                              "them finished: end them, or raise [repair] xact_wait_seconds, and run the repair again.")
        time.sleep(poll)


def _select(t: SourceTable) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c[0])) for c in t.columns)


def read_keys(conn: psycopg.Connection, t: SourceTable, keys: Sequence[Key]) -> dict[Key, list[str | None]]:
    """The rows of ``keys`` (text forms of every published column) in one statement (one snapshot)."""
    if not keys:
        return {}
    ref = sql.SQL(", ").join(sql.Identifier(k) for k in t.key)
    one = sql.SQL("({})").format(sql.SQL(", ").join([sql.Placeholder()] * len(t.key)))
    q = sql.SQL("SELECT {} FROM {} WHERE ({}) IN ({})").format(_select(t), qualified(t.name), ref,
                                                             sql.SQL(", ").join([one] * len(keys)))
    rows = conn.execute(q, [v for k in keys for v in k]).fetchall()
    return {tuple(r[i] for i in t.key_positions): list(r) for r in rows}


def read_after(conn: psycopg.Connection, t: SourceTable, after: Key | None, limit: int,
               collate: Sequence[bool]) -> list[list[str | None]]:
    """The next ``limit`` rows in key order after ``after`` (text key columns in byte order), one statement."""
    parts = [sql.SQL('{} COLLATE "C"').format(sql.Identifier(k)) if c else sql.Identifier(k)
             for k, c in zip(t.key, collate)]
    ref = parts[0] if len(parts) == 1 else sql.SQL("({})").format(sql.SQL(", ").join(parts))
    vals = sql.SQL("({})").format(sql.SQL(", ").join([sql.Placeholder()] * len(t.key))) if len(t.key) > 1 \
        else sql.Placeholder()
    where = sql.SQL("WHERE {} > {}").format(ref, vals) if after is not None else sql.SQL("")
    q = sql.SQL("SELECT {} FROM {} {} ORDER BY {} LIMIT {}").format(
        _select(t), qualified(t.name), where, sql.SQL(", ").join(parts), sql.Literal(limit))
    return [list(r) for r in conn.execute(q, list(after) if after is not None else None).fetchall()]
