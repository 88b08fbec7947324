"""Planning: cutting a table's key space into chunks ``[lo, hi)`` of about ``chunk_rows`` rows.

The first chunk's ``lo`` and the last chunk's ``hi`` are open (None), so a plan covers every key the
table will ever hold: rows inserted after planning fall in some chunk, and nothing is missed
however the data moved since. Boundaries are keys in C order, read from the source:

* ``index`` strategy (a source index returns the key in C order: integer, uuid, C-collated text):
  one short statement per boundary, ``SELECT key ... WHERE key >= previous ORDER BY key OFFSET
  chunk_rows LIMIT 1``, an index-only walk; no statement lasts long.
* ``sort`` strategy (a text key under a non-C collation on the source): one statement streams every
  key in C order (``COPY (SELECT key ... ORDER BY key COLLATE "C") TO STDOUT``), one sort, and every
  ``chunk_rows``-th key becomes a boundary.

Key-range selection (``--from-key``/``--to-key``) compares keys on the source with the same casts
and collation (:func:`reconcile.backfill.keys.compare_sql`), by binary search over the boundaries.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg
from psycopg import sql

from reconcile.backfill.catalog import TableInfo
from reconcile.backfill.checkpoints import Chunk
from reconcile.backfill.errors import BadKey
from reconcile.backfill.keys import Key, KeyColumn, compare_sql, copy_field, key_range, key_value, order_by, show_key
from reconcile.budget import qualified

log = logging.getLogger(__name__)


def _key_text(cols: Sequence[KeyColumn]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("CAST({} AS text)").format(sql.Identifier("t", c.name)) for c in cols)


def plan_boundaries(source: psycopg.Connection, info: TableInfo, chunk_rows: int) -> tuple[list[Key], int, str]:
    """Chunk boundaries of a table in C order; returns (boundaries, rows counted, strategy)."""
    if info.index_ordered:
        return (*_by_index(source, info, chunk_rows), "index")
    return (*_by_sort(source, info, chunk_rows), "sort")


def _by_index(source: psycopg.Connection, info: TableInfo, chunk_rows: int) -> tuple[list[Key], int]:
    cols = info.source_key
    table = qualified(info.name)
    bounds: list[Key] = []
    rows = 0
    prev: Key | None = None
    while True:
        cond, params = key_range(cols, lower=prev, alias="t")
        q = sql.SQL("SELECT {keys} FROM {t} AS t WHERE {cond} ORDER BY {order} OFFSET %s LIMIT 1").format(
            keys=_key_text(cols), t=table, cond=cond, order=order_by(cols, "t"))
        row = source.execute(q, [*params, chunk_rows]).fetchone()
        if row is None:
            count = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {t} AS t WHERE {cond} LIMIT %s) AS s").format(
                t=table, cond=cond)
            rows += source.execute(count, [*params, chunk_rows]).fetchone()[0]
            return bounds, rows
        bounds.append(tuple(row))
        rows += chunk_rows
        prev = tuple(row)


def _by_sort(source: psycopg.Connection, info: TableInfo, chunk_rows: int) -> tuple[list[Key], int]:
    cols = info.source_key
    q = sql.SQL("COPY (SELECT {keys} FROM {t} AS t ORDER BY {order}) TO STDOUT").format(
        keys=_key_text(cols), t=qualified(info.name), order=order_by(cols, "t"))
    bounds: list[Key] = []
    rows = 0
    tail = b""
    with source.cursor().copy(q) as cp:
        for block in cp:
            data = tail + bytes(block)
            lines = data.split(b"\n")
            tail = lines.pop()
            for line in lines:
                if rows and rows % chunk_rows == 0:
                    bounds.append(tuple(copy_field(f) or "" for f in line.split(b"\t")))
                rows += 1
    return bounds, rows


def compare(source: psycopg.Connection, cols: Sequence[KeyColumn], a: Key, b: Key) -> int:
    """-1, 0 or 1 as key ``a`` sorts before, equal to or after ``b`` in C order on the source."""
    return source.execute(compare_sql(cols), [*a, *b, *a, *b]).fetchone()[0]


def check_key(source: psycopg.Connection, cols: Sequence[KeyColumn], key: Key, name: str, table: str) -> None:
    """Refuse a key bound the source cannot read as the key's type (text for an integer, out of range...).

    The value travels as a parameter cast to the column's type, so nothing in it is ever SQL; what fails
    is the cast (SQLSTATE class 22), reported in one sentence instead of a driver traceback.
    """
    try:
        source.execute(sql.SQL("SELECT {}").format(key_value(cols)), list(key))
    except psycopg.DataError as exc:
        if not source.autocommit:
            source.rollback()
        types = ", ".join(f"{c.name} {c.type}" for c in cols)
        reason = (exc.diag.message_primary or "invalid value").split(":")[0]
        raise BadKey(f"{name} {show_key(key)} is not a key of {table} ({types}): {reason}; give the key as the "
                     "column's text form (a JSON array for a composite key)") from None


def select_range(source: psycopg.Connection, info: TableInfo, chunks: Sequence[Chunk],
                 from_key: Key | None, to_key: Key | None) -> list[Chunk]:
    """The chunks (in key order) that overlap keys ``[from_key, to_key)``; None bounds are open.

    Raises:
        BadKey: a bound is no value of the key's type on the source (checked before any comparison).
    """
    if from_key is None and to_key is None:
        return list(chunks)
    cols = info.source_key
    for name, key in (("from_key", from_key), ("to_key", to_key)):
        if key is not None:
            check_key(source, cols, key, name, info.name)
    if from_key is not None and to_key is not None and compare(source, cols, from_key, to_key) >= 0:
        return []
    ordered = sorted(chunks, key=lambda c: c.chunk_id)
    # first: the first chunk whose hi is open or above from_key (his are increasing).
    lo_i, hi_i = 0, len(ordered)
    if from_key is not None:
        while lo_i < hi_i:
            mid = (lo_i + hi_i) // 2
            hi = ordered[mid].hi
            if hi is None or compare(source, cols, hi, from_key) > 0:
                hi_i = mid
            else:
                lo_i = mid + 1
    first = lo_i
    # end: one past the last chunk whose lo is open or below to_key (los are increasing).
    lo_i, hi_i = first, len(ordered)
    if to_key is not None:
        while lo_i < hi_i:
            mid = (lo_i + hi_i) // 2
            lo = ordered[mid].lo
            if lo is None or compare(source, cols, lo, to_key) < 0:
                lo_i = mid + 1
            else:
                hi_i = mid
        end = lo_i
    else:
        end = len(ordered)
    return ordered[first:end]
