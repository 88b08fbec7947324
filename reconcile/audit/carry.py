"""What the pipeline cannot carry: blocker findings from the column decisions and from the data.

The schema plan decides each column's conversion (:func:`reconcile.audit.translate.translate_column`);
two things it decides cannot be carried and must be known before any copy, never discovered as
rejects during it:

* ``key_conversion`` (catalog): a key column whose type changes on the target (an enum key becomes
  text, a citext key text): keys would order and compare differently on the two sides;
* ``numeric_special`` (data): NaN or +-Infinity in a column stored as numeric on the target (DSQL's
  numeric holds finite numbers; PostgreSQL's numeric(p,s) refuses infinity too). Found by
  :func:`special_numeric_scan`, a keyset-chunked count over the source, run by ``reconcile audit
  --scan-data`` and by the schema plan.

Numeric NaN and infinity *inside an array* are carried: ``array_to_json`` writes them as the JSON
strings ``"NaN"`` and ``"Infinity"``. Float NaN, +-Infinity and -0 are carried as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import psycopg
from psycopg import sql

from reconcile.audit.catalog import Catalog, Column, Table
from reconcile.audit.findings import Finding, make
from reconcile.audit.translate import translate_column

__all__ = ["SpecialValues", "carry_findings", "special_numeric_scan"]

log = logging.getLogger(__name__)

SpecialValues = tuple[int, int]
"""(NaN count, +-Infinity count) of one column."""

CHUNK_ROWS = 50_000


def _numeric(col: Column) -> bool:
    base = col.base_type_name if col.type_kind == "d" else col.type_name
    return base == "numeric"


def _key(table: Table, keys: Mapping[str, tuple[str, ...]]) -> tuple[str, ...] | None:
    if table.primary_key is not None:
        return table.primary_key.columns
    key = keys.get(table.qualified)
    return tuple(key) if key and all(any(c.name == k for c in table.columns) for k in key) else None


def special_numeric_scan(conn: psycopg.Connection, catalog: Catalog, *, tables: Iterable[str] | None = None,
                         keys: Mapping[str, tuple[str, ...]] | None = None,
                         chunk_rows: int = CHUNK_ROWS, max_rows: int | None = None) -> dict[str, SpecialValues]:
    """NaN and +-Infinity counts of every numeric column (domains over numeric included) that has any.

    Reads each table in keyset chunks of ``chunk_rows`` rows (one aggregate row per chunk crosses the
    wire); a table with neither primary key nor configured key is read in one statement. ``max_rows``
    stops after that many rows of each table (the audit's sample mode).

    Returns:
        ``schema.table.column`` -> (NaN values, infinite values), only for columns holding some.
    """
    keys = keys or {}
    wanted = set(tables) if tables is not None else None
    infinity = catalog.server_version >= 140000
    out: dict[str, SpecialValues] = {}
    for table in catalog.tables:
        if table.partition_of or (wanted is not None and table.qualified not in wanted):
            continue
        cols = [c for c in table.columns if _numeric(c)]
        if not cols:
            continue
        aggs: list[sql.Composable] = []
        for c in cols:
            ref = sql.Identifier("c", c.name)
            aggs.append(sql.SQL("count(*) FILTER (WHERE {} = 'NaN')").format(ref))
            aggs.append(sql.SQL("count(*) FILTER (WHERE {} IN ('Infinity', '-Infinity'))").format(ref)
                        if infinity else sql.SQL("0"))
        totals = [0] * len(aggs)
        ident = sql.Identifier(table.schema, table.name)
        key = _key(table, keys)
        if key is None:
            source = sql.SQL("(SELECT * FROM {} LIMIT {})").format(ident, sql.Literal(max_rows)) if max_rows else ident
            row = conn.execute(sql.SQL("SELECT {} FROM {} AS c").format(sql.SQL(", ").join(aggs), source)).fetchone()
            totals = [int(v or 0) for v in row]
        else:
            kcols = sql.SQL(", ").join(map(sql.Identifier, key))
            last: tuple | None = None
            seen = 0
            while True:
                where = sql.SQL("")
                if last is not None:
                    where = sql.SQL("WHERE ({}) > ({})").format(kcols, sql.SQL(", ").join(sql.Placeholder() * len(key)))
                lasts = sql.SQL(", ").join(
                    sql.SQL("(SELECT {} FROM c ORDER BY {} LIMIT 1)").format(
                        sql.Identifier(k), sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier(x)) for x in key))
                    for k in key)
                q = sql.SQL("WITH c AS (SELECT * FROM {} {} ORDER BY {} LIMIT {}) SELECT count(*), {}, {} FROM c").format(
                    ident, where, kcols, sql.Literal(chunk_rows), lasts, sql.SQL(", ").join(aggs))
                row = conn.execute(q, last or None).fetchone()
                n = int(row[0])
                if n == 0:
                    break
                last = tuple(row[1:1 + len(key)])
                totals = [t + int(v or 0) for t, v in zip(totals, row[1 + len(key):])]
                seen += n
                if n < chunk_rows or (max_rows is not None and seen >= max_rows):
                    break
        for i, c in enumerate(cols):
            nans, infs = totals[2 * i], totals[2 * i + 1]
            if nans or infs:
                out[f"{table.qualified}.{c.name}"] = (nans, infs)
    return out


def carry_findings(catalog: Catalog, *, keys: Mapping[str, tuple[str, ...]] | None = None,
                   special: Mapping[str, SpecialValues] | None = None) -> list[Finding]:
    """``key_conversion`` and ``numeric_special`` findings (see the module docstring)."""
    keys = keys or {}
    out: list[Finding] = []
    for table in catalog.tables:
        if table.partition_of:
            continue
        for name in _key(table, keys) or ():
            col = table.column(name)
            tr = translate_column(col, table, catalog)
            if tr.conversion != "none":
                obj = f"{table.qualified}.{name}"
                out.append(make("key_conversion", obj, f"key column {obj} is {col.type_sql}, which the target "
                                                       f"stores as {tr.target_type}", target_type=tr.target_type,
                                conversion=tr.conversion))
    for obj, (nans, infs) in sorted((special or {}).items()):
        tname, _, cname = obj.rpartition(".")
        if not nans and catalog.has_table(tname) and catalog.table(tname).column(cname).is_plain_numeric:
            continue  # infinity in a plain numeric: the scan's numeric_unfit finding already says so
        parts = [f"{nans:,} NaN" if nans else "", f"{infs:,} +-Infinity" if infs else ""]
        out.append(make("numeric_special", obj, f"{obj} holds {' and '.join(p for p in parts if p)} value(s)",
                        level="data", nans=nans, infinities=infs))
    return out
