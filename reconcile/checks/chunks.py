"""Key-range chunks for the checks: no expectation reads a whole table in one statement.

DSQL caps what one query may hold in memory (128 MiB) and how long a transaction may last (5 minutes),
so a GROUP BY over a ten-million-row ledger, or GX's count of a column's NULLs over it, cannot run as one
statement there. Every SQL check therefore names how its batch may be split (:class:`Chunking`), and
:func:`plan_chunks` turns that into key ranges of at most about ``[checks] chunk_rows`` rows each, taken
from the index with :func:`reconcile.diff.balances.key_ranges` (the balance diff's own helper: a keyset
walk, one key's rows never split across two ranges). Each chunk is its own batch, so its own short
statements; :mod:`reconcile.checks.gxrun` runs every chunk and combines the results exactly (counts
summed, the unexpected values kept up to ``result_rows``, a row count judged on the sum).

What is chunkable, and by what:

* **row-wise checks** (a column is not NULL, in a set, a CHECK expression, an entry has its journal
  transaction / its account / its account's currency, a balance is not negative, a foreign key): a row's
  verdict depends on that row alone (plus index lookups into the parent), so any split works; they are
  split on the table's primary key (its first column, always indexed; with a composite key, the rows
  sharing one first-column value stay in one chunk, which may then exceed ``chunk_rows``). The control
  tables' checks (open dead letters, unacknowledged rejects) are row-wise too.
* **grouped checks**: a group must never straddle two chunks, so they are split on the grouping column
  itself: "a transaction's entries sum to zero" on the entries' transaction column, "two rows share a
  value" (unique, compound unique: the first column) on that column, "a balance equals the sum of its
  entries" on the account column, with the ranges taken from the entries' account column (the big side)
  and applied to the accounts batch and to the entries sub-query alike (the query's ``{chunk}`` token).
  Without an index on the grouping column the boundaries would need a sort of the whole table per chunk:
  such a check runs whole, and its result says so (``result["chunking"]["whole_reason"]``).
* **table row counts** (parity): a count is additive, so the chunks' counts are summed and judged once.
* **not chunkable**: a table without a primary key (row-wise checks then run whole; said in the result);
  facts computed in Python (the replay lag frame: one row).

Chunks are separate reads, not one snapshot: under live writes each range is seen at its own moment.
Every verdict is per row or per group and a group lies in one range, so nothing is counted twice or
missed for that (ledger keys do not move between ranges); a row count under live writes is as exact as
the in-flight tolerance parity already allows.

A column that may hold NULL gets one more chunk, ``column IS NULL`` (NULL keys are in no range). A table
whose keys fit one chunk runs exactly as before, in one batch over the whole table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from reconcile.checks.spec import _BIND, ROW_WISE, Chunking, escape_query

__all__ = ["ROW_WISE", "Chunk", "ChunkPlan", "Chunking", "chunked_count", "plan_chunks"]


@dataclass(frozen=True)
class Chunk:
    """One batch: the query GX reads, the condition that replaces ``{chunk}``, the range it covers."""

    query: str
    inner: str
    lo: Any = None
    hi: Any = None
    nulls: bool = False
    """The ``column IS NULL`` chunk."""


@dataclass
class ChunkPlan:
    """The chunks of one (table, chunking) on one side; one whole-table chunk when not split."""

    table: str
    column: str | None
    chunks: list[Chunk] = field(default_factory=list)
    whole_reason: str | None = None
    """Why the batch is not split (None when it is, or when it fits one chunk)."""

    @property
    def chunked(self) -> bool:
        return len(self.chunks) > 1


def _split(name: str) -> tuple[str, str]:
    from reconcile.budget import split_table_name

    return split_table_name(name)


def _gx_text(composed: sql.Composable) -> str:
    """Composed SQL as the text GX's asset query takes (``:word`` escaped for SQLAlchemy ``text()``)."""
    return _BIND.sub(r"\\:", composed.as_string())


def _where(column: str, lo: Any, hi: Any, alias: str | None = None) -> sql.Composable:
    """``lo < column <= hi`` with the bounds as literals (the ranges of :func:`key_ranges`); open ends when None."""
    col = sql.Identifier(alias, column) if alias else sql.Identifier(column)
    parts = []
    if lo is not None:
        parts.append(sql.SQL("{} > {}").format(col, sql.Literal(lo)))
    if hi is not None:
        parts.append(sql.SQL("{} <= {}").format(col, sql.Literal(hi)))
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("{} IS NOT NULL").format(col)


# The first column of each index (unnest ... WITH ORDINALITY, as reconcile.budget reads indexes on the target).
_FIRST_KEY_COLUMN = (
    "SELECT a.attname::text FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
    "JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
    "WHERE n.nspname = %s AND c.relname = %s AND k.ord = 1")


def primary_key_column(conn: psycopg.Connection, table: str) -> str | None:
    """The first column of ``table``'s primary key, or None."""
    row = conn.execute(_FIRST_KEY_COLUMN + " AND i.indisprimary LIMIT 1", _split(table)).fetchone()
    return row[0] if row else None


def leads_an_index(conn: psycopg.Connection, table: str, column: str) -> bool:
    """Whether some index of ``table`` starts with ``column`` (so range boundaries are an index walk)."""
    row = conn.execute(_FIRST_KEY_COLUMN + " AND a.attname = %s LIMIT 1", (*_split(table), column)).fetchone()
    return row is not None


def _nullable(conn: psycopg.Connection, table: str, column: str) -> bool:
    from reconcile.db.columns import read_columns  # the one column reader

    found = [c for c in read_columns(conn, tables=[table]).get(table, ()) if c.name == column]
    return bool(found) and not found[0].not_null


def _whole(table: str, reason: str | None, column: str | None = None) -> ChunkPlan:
    from reconcile.checks.gxrun import table_query

    return ChunkPlan(table, column, [Chunk(table_query(table), "TRUE")], whole_reason=reason)


def plan_chunks(conn: psycopg.Connection, table: str, chunking: Chunking, rows: int) -> ChunkPlan:
    """The batches of ``table`` under ``chunking``, each about ``rows`` keys of the boundary column at most.

    Ranges come from :func:`reconcile.diff.balances.key_ranges` (one boundary query each, an index walk);
    a column that may hold NULL adds a ``column IS NULL`` chunk.
    """
    from reconcile.diff.balances import key_ranges  # the balance diff's range helper, shared

    column = chunking.column
    if column is None:
        column = primary_key_column(conn, table)
        if column is None:
            return _whole(table, f"{table} has no primary key to split it on")
    keys_table, keys_column = chunking.keys or (table, column)
    if not leads_an_index(conn, keys_table, keys_column):
        return _whole(table, f"no index of {keys_table} starts with {keys_column}: its key ranges would need a "
                             "sort of the whole table", column)
    ranges = key_ranges(conn, keys_table, keys_column, max(1, int(rows)))
    if len(ranges) <= 1:
        return _whole(table, None, column)
    schema, name = _split(table)
    base = sql.SQL("SELECT * FROM {} WHERE ").format(sql.Identifier(schema, name))
    chunks = []
    for lo, hi in ranges:
        inner = escape_query(_where(chunking.inner, lo, hi).as_string()) if chunking.inner else "TRUE"
        chunks.append(Chunk(_gx_text(base + _where(column, lo, hi)), inner, lo, hi))
    if _nullable(conn, table, column):
        chunks.append(Chunk(_gx_text(base + sql.SQL("{} IS NULL").format(sql.Identifier(column))), "FALSE",
                            nulls=True))
    return ChunkPlan(table, column, chunks)


def chunked_count(conn: psycopg.Connection, table: str, rows: int) -> int:
    """``count(*)`` of ``table``, one short statement per key range of its primary key (whole without one)."""
    plan = plan_chunks(conn, table, ROW_WISE, rows)
    schema, name = _split(table)
    if not plan.chunked:
        return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()[0])
    total = 0
    for chunk in plan.chunks:
        where = (sql.SQL("{} IS NULL").format(sql.Identifier(plan.column or "")) if chunk.nulls
                 else _where(plan.column or "", chunk.lo, chunk.hi))
        total += int(conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
            sql.Identifier(schema, name), where)).fetchone()[0])
    return total


def describe(plans: Sequence[ChunkPlan]) -> list[dict[str, Any]]:
    """JSON-able ranges of plans (for results and logs)."""
    from reconcile.checks.gxrun import _jsonable

    return [{"table": p.table, "column": p.column, "whole_reason": p.whole_reason,
             "ranges": [[_jsonable(c.lo), _jsonable(c.hi)] if not c.nulls else "null" for c in p.chunks]}
            for p in plans]
