"""Workload-level checks: statements on the source that will not fit one DSQL transaction.

Read from ``pg_stat_statements`` when the extension exists in the source database. The audit never
creates it (it has no side effects on the source): when it is missing, a ``workload_unavailable``
finding says so and how to enable it (the library in ``shared_preload_libraries``, then
``CREATE EXTENSION pg_stat_statements`` in the database). For each
data-modifying statement (INSERT, UPDATE, DELETE, MERGE, COPY ... FROM) the mean rows per call
is compared with DSQL's 3,000 rows per transaction, and an estimate of the bytes per call (rows
times the table's average row width from ``pg_stats``, else its size per row; no estimate for a table
never analysed, whose ``reltuples`` is -1) with 10 MiB.

What this cannot see: several statements inside one application transaction (pg_stat_statements
counts statements, not transactions), and the largest single call (only the mean is kept).
"""

from __future__ import annotations

import logging
import re

import psycopg
from psycopg import sql

from reconcile.audit.findings import Finding, make

__all__ = ["BYTE_LIMIT", "ROW_LIMIT", "workload_findings"]

log = logging.getLogger(__name__)

ROW_LIMIT = 3000
BYTE_LIMIT = 10 * 1024 * 1024
NEAR_FRACTION = 0.5

_DML = re.compile(r"^\s*(?:WITH\b.*?\)\s*)?(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|MERGE\s+INTO|COPY)\b", re.I | re.S)
_TARGET = re.compile(
    r"\b(?:INSERT\s+INTO|UPDATE(?:\s+ONLY)?|DELETE\s+FROM(?:\s+ONLY)?|MERGE\s+INTO|COPY)\s+"
    r"((?:\"[^\"]+\"|[\w$]+)(?:\s*\.\s*(?:\"[^\"]+\"|[\w$]+))?)", re.I)


def _table_of(query: str) -> tuple[str, str] | None:
    m = _TARGET.search(query)
    if not m:
        return None
    parts = [p.strip().strip('"') for p in re.split(r"\s*\.\s*", m.group(1))]
    return (parts[0], parts[1]) if len(parts) == 2 else ("public", parts[0])


def _extension_schema(conn: psycopg.Connection) -> str | None:
    row = conn.execute("SELECT n.nspname FROM pg_catalog.pg_extension x JOIN pg_catalog.pg_namespace n "
                       "ON n.oid = x.extnamespace WHERE x.extname = 'pg_stat_statements'").fetchone()
    return row[0] if row else None


def workload_findings(conn: psycopg.Connection, *, schemas: tuple[str, ...] | None = None) -> list[Finding]:
    """Findings for statements that modify more than DSQL allows per transaction (reads only).

    Args:
        conn: an autocommit connection to the source.
        schemas: only statements on tables of these schemas (None: all).
    """
    schema = _extension_schema(conn)
    if schema is None:
        (loaded,) = conn.execute(
            "SELECT 'pg_stat_statements' = ANY(string_to_array(replace(current_setting('shared_preload_libraries'), "
            "' ', ''), ','))").fetchone()
        how = ("the library is loaded, so a superuser (on Aurora: the rds_superuser role) can run "
               "CREATE EXTENSION pg_stat_statements in it" if loaded else
               "add pg_stat_statements to shared_preload_libraries (on Aurora: the DB cluster parameter group), "
               "restart, then run CREATE EXTENSION pg_stat_statements in it")
        db = conn.info.dbname
        return [make("workload_unavailable", db,
                     f"pg_stat_statements is not installed in database {db}, so statement sizes were not checked "
                     "(the audit does not create it: it changes nothing on the source)",
                     fix=f"To enable it, {how}; then rerun the audit.", level="workload",
                     library_loaded=bool(loaded))]
    view = sql.Identifier(schema, "pg_stat_statements")
    query = sql.SQL(
        "SELECT s.queryid::text, s.query, s.calls, s.rows FROM {} s "
        "WHERE s.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) "
        "AND s.calls > 0 AND s.rows::float8 / s.calls > %s "
        "ORDER BY s.rows::float8 / s.calls DESC LIMIT 1000").format(view)
    try:
        rows = conn.execute(query, (ROW_LIMIT * NEAR_FRACTION,)).fetchall()
    except psycopg.Error as exc:
        return [make("workload_unavailable", conn.info.dbname,
                     f"pg_stat_statements cannot be read ({exc.diag.message_primary or exc})", level="workload")]
    out: list[Finding] = []
    widths: dict[tuple[str, str], int | None] = {}
    for queryid, text, calls, nrows in rows:
        flat = " ".join(text.split())
        if not _DML.match(flat):
            continue  # reads return rows without modifying them
        if re.match(r"^\s*COPY\b", flat, re.I) and not re.search(r"\bFROM\b", flat, re.I):
            continue  # COPY ... TO reads
        target = _table_of(flat)
        if target and (target[0] in ("pg_catalog", "reconcile", "dsql_guard")
                       or (schemas is not None and target[0] not in schemas)):
            continue
        per_call = nrows / calls
        width = None
        if target:
            if target not in widths:
                widths[target] = _row_width(conn, *target)
            width = widths[target]
        est_bytes = int(per_call * width) if width else None
        obj = f"query {queryid}"
        shown = flat if len(flat) <= 160 else flat[:157] + "..."
        evidence = (f"{shown!r} modifies {per_call:,.0f} rows per call on average ({calls:,} calls)"
                    + (f", about {est_bytes / 1048576:,.1f} MiB" if est_bytes else ""))
        details = {"query": flat[:2000], "calls": calls, "rows": nrows, "rows_per_call": round(per_call, 1),
                   "estimated_bytes_per_call": est_bytes, "table": ".".join(target) if target else None}
        if per_call > ROW_LIMIT:
            out.append(make("workload_rows", obj, evidence, level="workload", **details))
        elif est_bytes and est_bytes > BYTE_LIMIT:
            out.append(make("workload_bytes", obj, evidence, level="workload", **details))
        else:
            out.append(make("workload_near_limit", obj, evidence, level="workload", **details))
    return out


def _row_width(conn: psycopg.Connection, schema: str, table: str) -> int | None:
    row = conn.execute(
        "SELECT coalesce((SELECT sum(s.avg_width) FROM pg_catalog.pg_stats s "
        "                 WHERE s.schemaname = n.nspname AND s.tablename = c.relname),"
        "                CASE WHEN c.reltuples > 0 THEN pg_catalog.pg_relation_size(c.oid) / c.reltuples END)::bigint "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s", (schema, table)).fetchone()
    return int(row[0]) if row and row[0] and row[0] > 0 else None
