"""The transaction budget: the one place that decides how much work fits one DSQL transaction.

Aurora DSQL refuses a transaction that modifies more than 3,000 rows or 10 MiB (SQLSTATE 54000,
see ../shared/dsql.md). Every writer (backfill, replay, control-table and report writes) sizes its
transactions here, so the rule lives in one module:

* :class:`Budget` holds the limits and a safety *fraction* of them that batches aim for.
* :func:`table_cost` reads the catalog (and a sample of rows) to price one row of a table:
  :class:`TableCost`.
* :meth:`Budget.rows_per_batch` turns a price into a batch size; :class:`Batcher` packs items of
  known cost (a source transaction, a measured row) into batches, never splitting an item.

How a row is priced, and why it matches the local stand-in (``reconcile/local/guards.sql``):

* DSQL rows: 1 per row, plus 1 per secondary index when ``count_index_tuples`` is on (AWS has not
  settled whether index tuples count toward the 3,000; it is a setting).
* Bytes: the text form of the row, ``octet_length(row::text)``, plus, per secondary index, the text
  form of its key, ``octet_length(ROW(key columns)::text)``. That is exactly what the guards
  measure; DSQL's own accounting adds index-entry overhead, which the fraction absorbs.
* Estimates are conservative: a batch size uses the *largest* sampled row and the largest sampled
  index keys, so a batch of ordinary rows lands well under the fraction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import psycopg
from psycopg import sql

from reconcile.errors import InvalidArgument, LimitExceeded, TerminalError

T = TypeVar("T")

MiB = 1024 * 1024
DSQL_MAX_ROWS = 3000
DSQL_MAX_BYTES = 10 * MiB

#: Rows read by :func:`table_cost` to measure row and index-key sizes.
DEFAULT_SAMPLE_ROWS = 1000
#: Bytes assumed for one expression column of an index key (its value is not sampled).
EXPRESSION_KEY_BYTES = 64
#: Bytes assumed for a variable-length column when there is neither a sample nor statistics.
DEFAULT_VARLENA_BYTES = 64


def budget_from(config) -> Budget:
    """The transaction budget of a config's ``[budget]`` section (a :class:`reconcile.config.Config`)."""
    b = config.budget
    return Budget(max_rows=b.max_rows, max_bytes=b.max_bytes, fraction=b.fraction,
                  count_index_tuples=b.count_index_tuples)


def _fmt_bytes(n: float) -> str:
    if n >= MiB:
        return f"{n / MiB:.2f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{int(n)} bytes"


@dataclass(frozen=True)
class Budget:
    """Per-transaction limits and the fraction of them a batch may use.

    >>> b = Budget(fraction=0.5)
    >>> (b.row_cap, b.byte_cap)
    (1500, 5242880)
    >>> b.fits(1500, 1024), b.fits(1501, 1024)
    (True, False)
    """

    max_rows: int = DSQL_MAX_ROWS
    """Rows one transaction may modify (DSQL: 3,000)."""
    max_bytes: int = DSQL_MAX_BYTES
    """Bytes one transaction may modify (DSQL: 10 MiB)."""
    fraction: float = 0.5
    """Share of both limits a batch aims for; the rest is head-room for estimate errors."""
    count_index_tuples: bool = False
    """Count every secondary-index tuple as a modified row (the cautious reading of AWS's pages)."""

    def __post_init__(self) -> None:
        if not (0 < self.fraction <= 1):
            raise InvalidArgument(f"budget fraction must be in (0, 1], got {self.fraction!r}; use e.g. 0.5")
        if self.max_rows < 1 or self.max_bytes < 1:
            raise InvalidArgument(
                f"budget limits must be positive, got max_rows={self.max_rows!r}, max_bytes={self.max_bytes!r}; "
                "use DSQL's 3000 rows and 10485760 bytes or less"
            )

    @property
    def row_cap(self) -> int:
        """Rows a batch may modify: ``fraction`` of ``max_rows`` (at least 1)."""
        return max(1, math.floor(self.max_rows * self.fraction))

    @property
    def byte_cap(self) -> int:
        """Bytes a batch may modify: ``fraction`` of ``max_bytes`` (at least 1)."""
        return max(1, math.floor(self.max_bytes * self.fraction))

    def fits(self, rows: int, nbytes: int) -> bool:
        """True when ``rows`` DSQL rows and ``nbytes`` bytes fit the fraction of both limits."""
        return rows <= self.row_cap and nbytes <= self.byte_cap

    def within_limit(self, rows: int, nbytes: int) -> bool:
        """True when the work fits the hard limits (it can land in one transaction at all)."""
        return rows <= self.max_rows and nbytes <= self.max_bytes

    def check(self, rows: int, nbytes: int, *, what: str = "The work") -> None:
        """Raise :class:`LimitExceeded` when the work cannot fit one transaction at all."""
        if not self.within_limit(rows, nbytes):
            raise LimitExceeded(
                f"{what} modifies {rows:,} row{'' if rows == 1 else 's'} and {_fmt_bytes(nbytes)}, "
                "more than one DSQL transaction "
                f"allows ({self.max_rows:,} rows, {_fmt_bytes(self.max_bytes)}), so it cannot be written "
                "atomically: split the work into smaller transactions or handle it with an explicit policy."
            )

    def dsql_rows(self, cost: TableCost, n: int = 1) -> int:
        """DSQL rows that writing ``n`` rows of a table costs."""
        per_row = 1 + (cost.secondary_indexes if self.count_index_tuples else 0)
        return n * per_row

    def item_cost(self, cost: TableCost, n: int = 1) -> tuple[int, int]:
        """(DSQL rows, estimated bytes) of writing ``n`` rows of a table: a :class:`Batcher` item size."""
        return self.dsql_rows(cost, n), n * cost.bytes_per_row

    def rows_per_batch(self, cost: TableCost) -> int:
        """Most rows of the table one batch may write within the fraction of both limits.

        At least 1 when a single row fits the hard limits (an oversized row goes alone);
        :class:`LimitExceeded` when even one row cannot fit any transaction.
        """
        one_rows, one_bytes = self.item_cost(cost)
        self.check(one_rows, one_bytes, what=f"One row of {cost.table}")
        by_rows = self.row_cap // one_rows
        by_bytes = self.byte_cap // max(1, one_bytes)
        return max(1, min(by_rows, by_bytes))

    def batcher(self, *, what: str = "item") -> Batcher:
        """A fresh :class:`Batcher` for this budget."""
        return Batcher(self, what=what)

    def batches(
        self, items: Iterable[T], size: Callable[[T], tuple[int, int]], *, what: str = "item"
    ) -> Iterator[Batch[T]]:
        """Pack ``items`` in order into batches that fit; ``size(item)`` gives (DSQL rows, bytes)."""
        batcher: Batcher[T] = Batcher(self, what=what)
        for item in items:
            rows, nbytes = size(item)
            done = batcher.add(item, rows, nbytes)
            if done is not None:
                yield done
        last = batcher.flush()
        if last is not None:
            yield last


@dataclass(frozen=True)
class Batch(Generic[T]):
    """Items that go into one transaction, in their original order, with their summed cost."""

    items: tuple[T, ...]
    rows: int
    """DSQL rows the batch modifies."""
    bytes: int
    """Bytes the batch modifies (estimated or measured by the caller)."""

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)


class Batcher(Generic[T]):
    """Packs items of known cost into batches that fit a budget, preserving order.

    An item is never split. An item larger than the fraction but within the hard limits travels
    alone; an item larger than the hard limits raises :class:`LimitExceeded` (a source transaction
    that big cannot land atomically: the caller applies an explicit, reported policy).

    >>> b = Batcher(Budget(max_rows=10, fraction=0.5))  # room for 5 rows per batch
    >>> b.add("a", 2, 10), b.add("b", 2, 10)
    (None, None)
    >>> b.add("c", 2, 10).items
    ('a', 'b')
    >>> b.flush().items
    ('c',)
    """

    def __init__(self, budget: Budget, *, what: str = "item") -> None:
        self.budget = budget
        self.what = what
        self._items: list[T] = []
        self._rows = 0
        self._bytes = 0

    @property
    def rows(self) -> int:
        """DSQL rows in the batch being filled."""
        return self._rows

    @property
    def bytes(self) -> int:
        """Bytes in the batch being filled."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def fits(self, rows: int, nbytes: int) -> bool:
        """True when an item of this cost can join the batch being filled within the fraction."""
        return self.budget.fits(self._rows + rows, self._bytes + nbytes)

    def add(self, item: T, rows: int, nbytes: int, *, label: str | None = None) -> Batch[T] | None:
        """Add one item; return the batch it closed, if adding it closed one.

        Args:
            item: anything; handed back unchanged inside a :class:`Batch`.
            rows: DSQL rows the item modifies (see :meth:`Budget.dsql_rows`).
            nbytes: bytes the item modifies (see :meth:`TableCost.bytes_per_row`).
            label: names the item in a :class:`LimitExceeded` message (default: ``what``).

        Raises:
            LimitExceeded: the item alone exceeds the hard limits.
        """
        if rows < 0 or nbytes < 0:
            raise ValueError(f"item cost must not be negative, got rows={rows!r}, bytes={nbytes!r}")
        self.budget.check(rows, nbytes, what=f"One {label or self.what}")
        closed = None
        if self._items and not self.fits(rows, nbytes):
            closed = self.flush()
        self._items.append(item)
        self._rows += rows
        self._bytes += nbytes
        return closed

    def flush(self) -> Batch[T] | None:
        """Close the batch being filled and return it (None when empty)."""
        if not self._items:
            return None
        batch = Batch(tuple(self._items), self._rows, self._bytes)
        self._items, self._rows, self._bytes = [], 0, 0
        return batch


@dataclass(frozen=True)
class TableCost:
    """What writing one row of a table costs, read from the catalog and a sample of rows."""

    table: str
    """``schema.table`` as given to :func:`table_cost`."""
    secondary_indexes: int
    """Indexes other than the primary key (unique constraints included)."""
    avg_row_bytes: int
    """Average ``octet_length(row::text)``."""
    max_row_bytes: int
    """Largest ``octet_length(row::text)`` seen (or an estimate: see ``source``)."""
    index_key_bytes: int
    """Largest per-row sum over secondary indexes of ``octet_length(ROW(key columns)::text)``."""
    avg_index_key_bytes: int = 0
    """Average of the same per-row sum."""
    index_columns: tuple[tuple[str, ...], ...] = field(default=())
    """Key (and INCLUDE) columns of each secondary index; expression columns are left out."""
    expression_columns: int = 0
    """Index key columns that are expressions (priced at EXPRESSION_KEY_BYTES each)."""
    sampled_rows: int = 0
    """Rows measured; 0 when the sizes come from statistics or column types."""
    source: str = "sample"
    """Where the sizes come from: ``sample``, ``stats`` (pg_stats) or ``types`` (column types)."""

    @property
    def bytes_per_row(self) -> int:
        """Conservative bytes one written row costs: largest row plus largest index keys."""
        return max(1, self.max_row_bytes + self.index_key_bytes)

    def row_bytes_sql(self, alias: str = "t") -> sql.Composed:
        """SQL expression for the exact bytes one row costs, as the stand-in measures it.

        Lets a reader price each row it fetches (``SELECT t.*, <expr> FROM tbl AS t``), to feed a
        :class:`Batcher` measured sizes instead of estimates.

        >>> TableCost("s.t", 1, 10, 10, 5, index_columns=(("a", "b"),)).row_bytes_sql().as_string()
        'octet_length("t"::text) + octet_length(ROW("t"."a", "t"."b")::text) + 0'
        """
        return _row_bytes_sql(alias, self.index_columns, self.expression_columns)


def _row_bytes_sql(alias: str, index_columns: Iterable[tuple[str, ...]], expression_columns: int) -> sql.Composed:
    a = sql.Identifier(alias)
    parts: list[sql.Composable] = [sql.SQL("octet_length({}::text)").format(a)]
    for cols in index_columns:
        if cols:
            parts.append(sql.SQL("octet_length(ROW({})::text)").format(
                sql.SQL(", ").join(sql.Identifier(alias, c) for c in cols)))
    parts.append(sql.Literal(expression_columns * EXPRESSION_KEY_BYTES))
    return sql.SQL(" + ").join(parts)


def split_table_name(name: str) -> tuple[str, str]:
    """``"schema.table"`` → ``("schema", "table")`` (parts in double quotes as :mod:`reconcile.db.names`
    reads them); a bare name is in ``public``."""
    from reconcile.db.names import NameError_, split_name

    try:
        return split_name(name)
    except NameError_ as exc:
        if exc.problem == "is not schema.table" and name and '"' not in name and not name.isspace():
            return "public", name
        raise InvalidArgument(f"table name {name!r} {exc.problem}; give it as schema.table") from None


def qualified(name: str) -> sql.Identifier:
    """``schema.table`` as a quoted identifier (a bare name is in ``public``)."""
    return sql.Identifier(*split_table_name(name))


_INDEXES = sql.SQL("""
SELECT i.indexrelid,
       array_agg(a.attname::text ORDER BY k.ord) FILTER (WHERE k.attnum <> 0) AS cols,
       count(*) FILTER (WHERE k.attnum = 0) AS expressions
FROM pg_catalog.pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND NOT i.indisprimary
GROUP BY i.indexrelid
ORDER BY i.indexrelid
""")

_AVG_WIDTHS = sql.SQL("SELECT attname::text, avg_width FROM pg_catalog.pg_stats WHERE schemaname = %s AND tablename = %s")

# Longest text form of fixed-size types (what octet_length(value::text) can reach).
_TEXT_WIDTH = {
    "bool": 1, "int2": 6, "int4": 11, "int8": 20, "oid": 10, "float4": 15, "float8": 24,
    "date": 13, "time": 15, "timetz": 21, "timestamp": 29, "timestamptz": 35, "interval": 64,
    "uuid": 36, "pg_lsn": 17, "money": 24,
}


def _column_text_width(typname: str, typmod: int, typlen: int, avg_width: int | None) -> int:
    """Estimated text bytes of one column value when no sample is available."""
    if typname in _TEXT_WIDTH:
        width = _TEXT_WIDTH[typname]
    elif typname == "numeric" and typmod >= 4:
        precision = ((typmod - 4) >> 16) & 0xFFFF
        width = precision + 2  # sign and decimal point
    elif typname in ("varchar", "bpchar") and typmod >= 4:
        width = (typmod - 4) * 4  # up to 4 UTF-8 bytes per character
        if avg_width is not None:
            width = min(width, 2 * avg_width)
    elif avg_width is not None:
        width = 2 * avg_width  # text form of a varlena: quoting and escapes can double it
    elif typlen > 0:
        width = 3 * typlen
    else:
        width = DEFAULT_VARLENA_BYTES
    if avg_width is not None:
        width = max(width, avg_width)
    return width + 2  # quotes a composite's text form may add around the value


def _relation_oid(conn: psycopg.Connection, schema: str, table: str) -> int:
    row = conn.execute(
        "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (schema, table),
    ).fetchone()
    if row is None:
        raise TerminalError(
            f"Table {schema}.{table} does not exist in the connected database; create it first or fix its name."
        )
    return row[0]


def table_cost(
    conn: psycopg.Connection,
    table: str,
    *,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    rows_conn: psycopg.Connection | None = None,
    rows_table: str | None = None,
) -> TableCost:
    """Price one row of ``table`` for the transaction budget.

    Secondary indexes come from ``conn`` (the target, where the writes land). Row sizes come from
    up to ``sample_rows`` rows of ``rows_table`` (default: the same name) on ``rows_conn``
    (default: ``conn``); pass the source connection while the target table is still empty. With
    no rows to sample, sizes come from ``pg_stats`` and column types, doubled for the maximum.

    Args:
        conn: connection to the database whose indexes the writes will maintain.
        table: ``schema.table``.
        sample_rows: rows to measure (the first ones a scan returns).
        rows_conn: connection to read rows from, when they live elsewhere (the source).
        rows_table: ``schema.table`` on ``rows_conn``, when named differently.

    Raises:
        TerminalError: the table does not exist.
    """
    schema, name = split_table_name(table)
    oid = _relation_oid(conn, schema, name)
    index_rows = conn.execute(_INDEXES, (oid,)).fetchall()
    index_columns = tuple(tuple(cols or ()) for _, cols, _ in index_rows)
    expressions = sum(int(n) for _, _, n in index_rows)
    expr_bytes = expressions * EXPRESSION_KEY_BYTES

    rconn = rows_conn or conn
    rschema, rname = split_table_name(rows_table or table)
    measure = _row_bytes_sql("t", (), 0)
    keys = [sql.SQL("octet_length(ROW({})::text)").format(sql.SQL(", ").join(sql.Identifier("t", c) for c in cols))
            for cols in index_columns if cols]
    key_sum = sql.SQL(" + ").join(keys) if keys else sql.SQL("0")
    query = sql.SQL(
        "SELECT count(*), coalesce(avg(r), 0), coalesce(max(r), 0), coalesce(avg(k), 0), coalesce(max(k), 0) "
        "FROM (SELECT {measure} AS r, ({keys})::bigint AS k FROM {table} AS t LIMIT %s) AS s"
    ).format(measure=measure, keys=key_sum, table=sql.Identifier(rschema, rname))
    n, avg_r, max_r, avg_k, max_k = rconn.execute(query, (sample_rows,)).fetchone()
    if n:
        return TableCost(
            table=table, secondary_indexes=len(index_rows),
            avg_row_bytes=math.ceil(avg_r), max_row_bytes=int(max_r),
            index_key_bytes=int(max_k) + expr_bytes, avg_index_key_bytes=math.ceil(avg_k) + expr_bytes,
            index_columns=index_columns, expression_columns=expressions, sampled_rows=int(n), source="sample",
        )

    # Nothing to sample: estimate from statistics, else from column types (the one column reader).
    from reconcile.db.columns import read_columns

    if not (rconn is conn and (rschema, rname) == (schema, name)):
        _relation_oid(rconn, rschema, rname)
    widths_seen = dict(rconn.execute(_AVG_WIDTHS, (rschema, rname)).fetchall())
    columns = [(c.name, c.base, c.typmod, c.typlen, widths_seen.get(c.name))
               for c in read_columns(rconn, tables=[f"{rschema}.{rname}"]).get(f"{rschema}.{rname}", ())]
    widths = {c: _column_text_width(typ, mod, length, avg) for c, typ, mod, length, avg in columns}
    have_stats = any(avg is not None for *_, avg in columns)
    row = 2 + sum(widths.values()) + max(0, len(widths) - 1)
    key = sum(2 + sum(widths.get(c, DEFAULT_VARLENA_BYTES) for c in cols) + max(0, len(cols) - 1)
              for cols in index_columns if cols)
    return TableCost(
        table=table, secondary_indexes=len(index_rows),
        avg_row_bytes=row, max_row_bytes=2 * row,
        index_key_bytes=2 * key + expr_bytes, avg_index_key_bytes=key + expr_bytes,
        index_columns=index_columns, expression_columns=expressions, sampled_rows=0,
        source="stats" if have_stats else "types",
    )
