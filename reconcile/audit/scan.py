"""Data-level checks: read the source's rows (bounded and chunked) for values DSQL will refuse.

Nothing is discovered during the copy that a scan could have found before it: numeric values
that fit no target precision, JSON documents over 1 MiB, other values over 1 MiB, rows over
2 MiB, index keys over 1 KiB. The same scan sizes the plain ``numeric`` columns for the plan.

Every query is bounded. ``full`` walks the table in keyset chunks of ``chunk_rows`` rows (a table
without a key walks block ranges by ``ctid``), aggregating each chunk in the database so only one
row per chunk crosses the wire; ``sample`` reads at most ``sample_rows`` rows drawn with
``TABLESAMPLE BERNOULLI`` (all rows when the table is that small).

Sizes are raw bytes: ``octet_length`` of text, bytea and json values as stored (uncompressed), and
of the text form of other values, the way DSQL counts what is written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import psycopg
from psycopg import sql

from reconcile.audit.catalog import Catalog, Column, Table
from reconcile.audit.checks import QUOTAS, effective_collation, needs_order_check, text_key_columns
from reconcile.audit.findings import Finding, make
from reconcile.audit.translate import NumericProfile

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "DEFAULT_SAMPLE_ROWS",
    "ScanMode",
    "TableScan",
    "collation_findings",
    "data_findings",
    "numeric_profiles",
    "scan_tables",
]

log = logging.getLogger(__name__)

ScanMode = Literal["sample", "full"]
DEFAULT_SAMPLE_ROWS = 10_000
DEFAULT_CHUNK_ROWS = 10_000
MiB = 1024 * 1024
ROW_LIMIT = 2 * MiB
VALUE_LIMIT = MiB
ORDER_SAMPLE = 1000
"""Key values read per text key to compare the source's ordering with C."""

_JSONISH = ("json", "jsonb")
_RAW_BYTES = ("text", "varchar", "bpchar", "bytea", "json")


@dataclass
class ColumnStats:
    max_bytes: int = 0
    over_limit: int = 0


@dataclass
class TableScan:
    """What one scan of a table saw."""

    table: str
    mode: ScanMode
    rows: int = 0
    chunks: int = 0
    max_row_bytes: int = 0
    rows_over_limit: int = 0
    values: dict[str, ColumnStats] = field(default_factory=dict)
    """Per column outside any index: largest value and values over 1 MiB."""
    keys: dict[str, ColumnStats] = field(default_factory=dict)
    """Per index (``schema.index``): largest key and keys over 1 KiB."""
    numeric: dict[str, NumericProfile] = field(default_factory=dict)
    """Per plain numeric column (``schema.table.column``)."""
    counted: set[str] = field(default_factory=set)
    """Numeric columns whose ``over_default`` was counted over every row (a sample recounts what it flags)."""


def _over_default(ref: sql.Composable, finite: sql.Composable) -> sql.Composable:
    """Rows whose value numeric(18,6) cannot hold exactly: rounding to 6 decimals changes it, or the rounded
    value needs more than 12 integer digits. A scale above 6 alone is not enough: ``1.2500000`` fits."""
    return sql.SQL("count(*) FILTER (WHERE {f} AND (round({r}, 6) <> {r} OR abs(round({r}, 6)) >= 1e12))").format(
        f=finite, r=ref)


def _finite(ref: sql.Composable, server_version: int) -> sql.Composable:
    if server_version >= 140000:
        return sql.SQL("{} NOT IN ('NaN', 'Infinity', '-Infinity')").format(ref)
    return sql.SQL("{} <> 'NaN'").format(ref)


def _value_bytes(col: Column, ref: sql.Composable) -> sql.Composable:
    if col.type_name in _RAW_BYTES:
        return sql.SQL("coalesce(octet_length({}), 0)").format(ref)
    return sql.SQL("coalesce(octet_length({}::text), 0)").format(ref)


def _json_bytes(col: Column, ref: sql.Composable) -> sql.Composable:
    if col.category == "A":
        return sql.SQL("coalesce(octet_length(array_to_json({})::text), 0)").format(ref)
    return _value_bytes(col, ref)


@dataclass
class _Agg:
    """One aggregate of the chunk query and how chunk results fold into the total."""

    expr: sql.Composable
    fold: str  # "max" or "sum"
    slot: tuple


def _planned_indexes(table: Table):
    """Indexes the target will have (what counts for the 1 KiB key limit)."""
    for idx in table.indexes:
        if idx.exclusion or idx.method not in ("btree", "hash") or idx.key_count > QUOTAS["key_columns"]:
            continue
        yield idx


def _aggregates(table: Table, catalog: Catalog, *, with_sizes: bool, numeric_cols: Sequence[Column],
                server_version: int) -> list[_Agg]:
    aggs: list[_Agg] = []
    if with_sizes:
        row = sql.SQL(" + ").join(_value_bytes(c, sql.Identifier("t", c.name)) for c in table.columns) \
            if table.columns else sql.SQL("0")
        aggs.append(_Agg(sql.SQL("max({})").format(row), "max", ("row_max",)))
        aggs.append(_Agg(sql.SQL("count(*) FILTER (WHERE {} > {})").format(row, sql.Literal(ROW_LIMIT)),
                         "sum", ("row_over",)))
        indexed = {c for idx in table.indexes for c in idx.key_columns if c}
        for c in table.columns:
            if c.name in indexed or c.type_name in ("bool", "int2", "int4", "int8", "float4", "float8",
                                                     "date", "timestamp", "timestamptz", "uuid", "time"):
                continue
            if c.type_name == "numeric" and not c.is_plain_numeric:
                continue
            size = _json_bytes(c, sql.Identifier("t", c.name))
            aggs.append(_Agg(sql.SQL("max({})").format(size), "max", ("value_max", c.name)))
            aggs.append(_Agg(sql.SQL("count(*) FILTER (WHERE {} > {})").format(size, sql.Literal(VALUE_LIMIT)),
                             "sum", ("value_over", c.name)))
        for idx in _planned_indexes(table):
            parts = []
            for key, is_expr, col_name in zip(idx.keys, idx.key_is_expression, idx.key_columns):
                if is_expr:
                    # Catalog-printed expression over this table's columns (not user input).
                    expr = sql.SQL(key)  # type: ignore[arg-type]
                    parts.append(sql.SQL("coalesce(octet_length(({})::text), 0)").format(expr))
                else:
                    parts.append(_value_bytes(table.column(col_name), sql.Identifier("t", col_name)))
            key_sum = sql.SQL(" + ").join(parts)
            name = f"{table.schema}.{idx.name}"
            aggs.append(_Agg(sql.SQL("max({})").format(key_sum), "max", ("key_max", name)))
            over = sql.SQL("count(*) FILTER (WHERE {} > {})").format(key_sum, sql.Literal(QUOTAS["key_bytes"]))
            aggs.append(_Agg(over, "sum", ("key_over", name)))
    for c in numeric_cols:
        ref = sql.Identifier("t", c.name)
        finite = _finite(ref, server_version)
        if server_version >= 140000:
            inf = sql.SQL("count(*) FILTER (WHERE {} IN ('Infinity', '-Infinity'))").format(ref)
        else:
            inf = sql.SQL("0")
        aggs += [
            _Agg(sql.SQL("count({})").format(ref), "sum", ("num_rows", c.name)),
            _Agg(sql.SQL("max(scale({})) FILTER (WHERE {})").format(ref, finite), "max", ("num_scale", c.name)),
            _Agg(sql.SQL("max(length(trunc(abs({}))::text)) FILTER (WHERE {} AND abs({}) >= 1)").format(
                ref, finite, ref), "max", ("num_digits", c.name)),
            _Agg(inf, "sum", ("num_inf", c.name)),
            _Agg(sql.SQL("count(*) FILTER (WHERE {} = 'NaN')").format(ref), "sum", ("num_nan", c.name)),
            _Agg(_over_default(ref, finite), "sum", ("num_over", c.name)),
        ]
    return aggs


def _key_of(table: Table, keys: Mapping[str, tuple[str, ...]]) -> tuple[str, ...] | None:
    pk = table.primary_key
    if pk is not None:
        return pk.columns
    key = keys.get(table.qualified)
    if key and all(any(c.name == k for c in table.columns) for k in key):
        return tuple(key)
    return None


def scan_table(conn: psycopg.Connection, table: Table, catalog: Catalog, *, mode: ScanMode = "sample",
               key: tuple[str, ...] | None = None, sample_rows: int = DEFAULT_SAMPLE_ROWS,
               chunk_rows: int = DEFAULT_CHUNK_ROWS, sizes: bool = True,
               numeric_only: bool = False) -> TableScan:
    """Scan one table (see the module docstring).

    Args:
        conn: an autocommit connection to the source.
        table: the table (a partitioned parent scans every partition).
        catalog: its catalog.
        mode: ``sample`` or ``full``.
        key: key columns for keyset chunks (None: ctid block ranges).
        sample_rows: rows a sample reads at most.
        chunk_rows: rows per chunk of a full scan.
        sizes: measure rows, values and index keys.
        numeric_only: only profile plain numeric columns (what the schema plan needs).
    """
    numeric_cols = [c for c in table.columns if c.is_plain_numeric]
    aggs = _aggregates(table, catalog, with_sizes=sizes and not numeric_only, numeric_cols=numeric_cols,
                       server_version=catalog.server_version)
    result = TableScan(table.qualified, mode)
    if not aggs:
        return result
    totals: dict[tuple, int] = {}
    ident = sql.Identifier(table.schema, table.name)
    select = sql.SQL(", ").join(a.expr for a in aggs)

    def fold(values: Sequence) -> None:
        for agg, value in zip(aggs, values):
            if value is None:
                continue
            value = int(value)
            prev = totals.get(agg.slot)
            totals[agg.slot] = value if prev is None else (max(prev, value) if agg.fold == "max" else prev + value)

    if mode == "sample":
        estimated = max(table.estimated_rows, 0)
        if estimated <= sample_rows:
            source = sql.SQL("(SELECT * FROM {} LIMIT {}) AS t").format(ident, sql.Literal(sample_rows))
        else:
            pct = min(100.0, 100.0 * sample_rows * 1.2 / estimated)
            source = sql.SQL("(SELECT * FROM {} TABLESAMPLE BERNOULLI ({}) REPEATABLE (7) LIMIT {}) AS t").format(
                ident, sql.Literal(pct), sql.Literal(sample_rows))
        row = conn.execute(sql.SQL("SELECT count(*), {} FROM {}").format(select, source)).fetchone()
        result.rows, result.chunks = int(row[0]), 1
        fold(row[1:])
    elif key:
        cols = sql.SQL(", ").join(sql.Identifier(k) for k in key)
        last: tuple | None = None
        while True:
            where = sql.SQL("")
            if last is not None:
                where = sql.SQL("WHERE ({}) > ({})").format(cols, sql.SQL(", ").join(sql.Placeholder() * len(key)))
            lasts = sql.SQL(", ").join(
                sql.SQL("(SELECT {} FROM c ORDER BY {} LIMIT 1)").format(
                    sql.Identifier(k), sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier(x)) for x in key))
                for k in key)
            query = sql.SQL("WITH c AS (SELECT * FROM {} {} ORDER BY {} LIMIT {}) "
                            "SELECT count(*), {}, {} FROM c AS t").format(
                ident, where, cols, sql.Literal(chunk_rows), lasts, select)
            row = conn.execute(query, last or None).fetchone()
            n = int(row[0])
            if n == 0:
                break
            result.rows += n
            result.chunks += 1
            last = tuple(row[1:1 + len(key)])
            fold(row[1 + len(key):])
            if n < chunk_rows:
                break
    else:
        if table.kind != "r":
            # A partitioned parent has no blocks of its own: read it whole, bounded by a LIMIT per pass.
            row = conn.execute(sql.SQL("SELECT count(*), {} FROM {} AS t").format(select, ident)).fetchone()
            result.rows, result.chunks = int(row[0]), 1
            fold(row[1:])
        else:
            blocks = conn.execute(
                "SELECT pg_relation_size(c.oid) / current_setting('block_size')::int FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                (table.schema, table.name)).fetchone()[0]
            avg = max(1, (table.estimated_rows or chunk_rows) // max(1, blocks or 1))
            step = max(1, chunk_rows // avg)
            lo = 0
            while lo <= blocks:
                hi = lo + step
                query = sql.SQL("SELECT count(*), {} FROM {} AS t WHERE t.ctid >= {}::tid AND t.ctid < {}::tid"
                                ).format(select, ident, sql.Literal(f"({lo},0)"), sql.Literal(f"({hi},0)"))
                row = conn.execute(query).fetchone()
                result.rows += int(row[0])
                result.chunks += 1
                fold(row[1:])
                lo = hi

    result.max_row_bytes = totals.get(("row_max",), 0)
    result.rows_over_limit = totals.get(("row_over",), 0)
    for (kind, *rest), value in totals.items():
        if kind in ("value_max", "value_over"):
            stats = result.values.setdefault(rest[0], ColumnStats())
            if kind == "value_max":
                stats.max_bytes = value
            else:
                stats.over_limit = value
        elif kind in ("key_max", "key_over"):
            stats = result.keys.setdefault(rest[0], ColumnStats())
            if kind == "key_max":
                stats.max_bytes = value
            else:
                stats.over_limit = value
    over = {c.name: totals.get(("num_over", c.name), 0) for c in numeric_cols}
    flagged = [c for c in numeric_cols if over[c.name]]
    if mode == "sample" and flagged:
        # A count from a sample is not the table's: count exactly what the sample flagged, in one pass.
        counts = sql.SQL(", ").join(_over_default(sql.Identifier("t", c.name),
                                                  _finite(sql.Identifier("t", c.name), catalog.server_version))
                                    for c in flagged)
        row = conn.execute(sql.SQL("SELECT {} FROM {} AS t").format(counts, ident)).fetchone()
        over.update({c.name: int(n) for c, n in zip(flagged, row)})
    for c in numeric_cols:
        obj = f"{table.qualified}.{c.name}"
        result.numeric[obj] = NumericProfile(
            rows=totals.get(("num_rows", c.name), 0), max_scale=totals.get(("num_scale", c.name), 0),
            max_integer_digits=totals.get(("num_digits", c.name), 0), infinities=totals.get(("num_inf", c.name), 0),
            nans=totals.get(("num_nan", c.name), 0), over_default=over[c.name],
            sampled=mode == "sample")
        if mode == "full" or c in flagged:
            result.counted.add(obj)
    return result


def scan_tables(conn: psycopg.Connection, catalog: Catalog, *, tables: Iterable[str] | None = None,
                keys: Mapping[str, tuple[str, ...]] | None = None, mode: ScanMode = "sample",
                sample_rows: int = DEFAULT_SAMPLE_ROWS, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                numeric_only: bool = False) -> list[TableScan]:
    """Scan each table (default: every table of the catalog that is not a partition)."""
    keys = keys or {}
    wanted = set(tables) if tables is not None else None
    out = []
    for table in catalog.tables:
        if table.partition_of or table.persistence == "t":
            continue
        if wanted is not None and table.qualified not in wanted:
            continue
        if numeric_only and not any(c.is_plain_numeric for c in table.columns):
            continue
        log.info("scanning %s (%s)", table.qualified, mode)
        out.append(scan_table(conn, table, catalog, mode=mode, key=_key_of(table, keys), sample_rows=sample_rows,
                              chunk_rows=chunk_rows, numeric_only=numeric_only))
    return out


def numeric_profiles(scans: Iterable[TableScan]) -> dict[str, NumericProfile]:
    """``schema.table.column`` -> profile, over every scan."""
    out: dict[str, NumericProfile] = {}
    for s in scans:
        out.update(s.numeric)
    return out


def data_findings(catalog: Catalog, scans: Iterable[TableScan]) -> list[Finding]:
    """Findings for values DSQL will refuse, from the scans."""
    out: list[Finding] = []
    for s in scans:
        table = catalog.table(s.table)
        where = f"{s.rows:,} rows {'sampled' if s.mode == 'sample' else 'scanned'}"
        if s.rows_over_limit:
            out.append(make("row_too_large", s.table, f"{s.rows_over_limit:,} rows of {s.table} exceed 2 MiB "
                                                      f"(largest {s.max_row_bytes:,} bytes; {where})",
                            level="data", rows=s.rows_over_limit, max_bytes=s.max_row_bytes, mode=s.mode))
        for col_name, st in s.values.items():
            if not st.over_limit:
                continue
            col = table.column(col_name)
            code = "json_too_large" if (col.type_name in _JSONISH or col.category == "A") else "value_too_large"
            obj = f"{s.table}.{col_name}"
            out.append(make(code, obj, f"{st.over_limit:,} values of {obj} exceed 1 MiB (largest "
                                       f"{st.max_bytes:,} bytes; {where})", level="data",
                            values=st.over_limit, max_bytes=st.max_bytes, mode=s.mode))
        for index, st in s.keys.items():
            if st.over_limit:
                out.append(make("index_key_too_large", index, f"{st.over_limit:,} keys of index {index} on "
                                                              f"{s.table} exceed 1 KiB (largest "
                                                              f"{st.max_bytes:,} bytes; {where})",
                                level="data", table=s.table, keys=st.over_limit, max_bytes=st.max_bytes,
                                mode=s.mode))
        for obj, p in s.numeric.items():
            if not p.fits_anywhere:
                what = (f"{p.infinities:,} infinite values" if p.infinities else
                        f"values of {p.max_integer_digits} integer digits and scale {p.max_scale}")
                out.append(make("numeric_unfit", obj, f"{obj} holds {what}, which no DSQL numeric "
                                                      f"column holds ({where})", level="data",
                                profile=p.__dict__))
            elif p.over_default:
                counted = "counted over every row" if obj in s.counted else where
                out.append(make("numeric_exceeds_dsql_default", obj,
                                f"{p.over_default:,} values of {obj} do not fit numeric(18,6) exactly (up to "
                                f"{p.max_integer_digits} integer digits, scale {p.max_scale}; {counted})",
                                level="data", profile=p.__dict__, values=p.over_default))
    return out


def collation_findings(conn: psycopg.Connection, catalog: Catalog, *, tables: Iterable[str] | None = None,
                       sample: int = ORDER_SAMPLE) -> list[Finding]:
    """For each text key column under a non-C collation, compare the order of sampled values.

    One warning per key whose sampled values sort differently under C, with the two orders.
    """
    wanted = set(tables) if tables is not None else None
    out: list[Finding] = []
    for table in catalog.tables:
        if table.partition_of or (wanted is not None and table.qualified not in wanted):
            continue
        for col_name, index in text_key_columns(table):
            if not needs_order_check(table, col_name, catalog):
                continue
            ref = sql.Identifier(col_name)
            query = sql.SQL(
                "WITH s AS (SELECT DISTINCT v FROM (SELECT {c} AS v FROM {t} WHERE {c} IS NOT NULL LIMIT {n}) x) "
                "SELECT count(*), array_agg(v ORDER BY v), array_agg(v ORDER BY v COLLATE \"C\") FROM s"
            ).format(c=ref, t=sql.Identifier(table.schema, table.name), n=sql.Literal(sample))
            n, source_order, c_order = conn.execute(query).fetchone()
            if not n or source_order == c_order:
                continue
            first = next(i for i, (a, b) in enumerate(zip(source_order, c_order)) if a != b)
            lo = max(0, first - 1)
            obj = f"{table.qualified}.{col_name}"
            collation = effective_collation(table, col_name, catalog)
            out.append(make(
                "collation_key_order", obj,
                f"{obj} (key of {index}) sorts differently: {collation} gives "
                f"{', '.join(map(repr, source_order[lo:lo + 4]))}...; C gives "
                f"{', '.join(map(repr, c_order[lo:lo + 4]))}... ({n:,} distinct values sampled)",
                level="data", index=index, collation=collation, sampled=n,
                source_order=source_order[:20], c_order=c_order[:20]))
    return out
