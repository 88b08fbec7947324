"""SQL builders of the diff: pure functions returning ``psycopg.sql.Composed`` plus parameters.

Nothing here touches a connection; the algorithm (:mod:`reconcile.diff.hashdiff`) calls these
through :class:`reconcile.diff.side.Side`. The same SQL runs on PostgreSQL and Aurora DSQL: it
uses only ``md5``, ``substr``, ``trim_scale``, casts, ``count`` and ``sum``.

Row normalisation, so that equal values hash equal on both servers:

* numeric: ``trim_scale(c)::text`` (``1.0`` and ``1.00`` both become ``1``), except when both
  sides declare the same ``numeric(p,s)`` with an explicit scale: every value then already prints
  with exactly ``s`` decimals on both servers, so ``c::text`` is canonical and cheaper;
* timestamptz, date, time: their text form in a session with ``TimeZone=UTC`` and
  ``DateStyle=ISO`` (set by :class:`~reconcile.diff.side.Side`), i.e. UTC to the microsecond;
* json: ``c::jsonb::text`` (canonical key order and spacing); jsonb: ``c::text``;
* bytea: ``encode(c, 'hex')`` (whatever the session's ``bytea_output``);
* integers, floats (shortest exact text), booleans, uuids: ``c::text``. Their text is never
  empty and never holds ``|``, so ``coalesce(x, '')`` marks NULL unambiguously;
* text-like and every other type: ``octet_length(x) || ':' || x`` (a length prefix), NULL as
  ``''``, so an empty string (``0:``) never equals NULL and no value can fake a separator;
* the last text-like column of the layout needs no length (nothing follows it): ``':' || x``,
  NULL as ``''`` (so ``''`` is ``:`` and NULL is nothing).

A converted column (the column contract, :mod:`reconcile.schema.contract`) is read on the source
*through its read expression* (``array_to_json(tags)``, ``price::numeric``) and then normalised by
the target type's kind on both sides, so a source ``text[]`` and a target ``json`` holding the same
elements hash equal; its :attr:`Column.conversion` names the expression.

Columns are joined with ``|`` in the *hash layout* of :func:`hash_layout` (the same on both
sides: never-empty kinds first, then text-like columns, the last one marked rather than
length-prefixed); the row hash is the first 60 bits of the md5 of that text,
``('0x' || substr(md5(row), 1, 15))::bigint`` (hex integer input, PostgreSQL 16+ and DSQL);
a bucket's checksum is ``count(*)`` and ``sum(hash)``, which is order-independent, so no
sort is needed and the aggregate state is two numbers per bucket. Per row that is one ``md5``
and one output function per column (measured: the output functions are ~2/3 of the cost).

Key ranges are half-open ``[lo, hi)`` with ``None`` for an open end. Text key columns are
compared under ``COLLATE "C"`` on both sides (byte order of UTF-8, the same everywhere), also
inside row comparisons of composite keys: ``(a COLLATE "C", b) >= (%s, %s)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

PLAIN_KINDS = frozenset({"int", "float", "bool", "uuid", "timestamptz", "timestamp", "date", "time"})
"""Kinds whose text form is never empty and never contains ``|``."""


@dataclass(frozen=True)
class Column:
    """A column and the kind that decides its normalisation.

    ``kind``: int, numeric, float, bool, uuid, timestamptz, timestamp, date, time, json, jsonb,
    text (char/varchar/text) or other.
    """

    name: str
    kind: str
    type_name: str = ""
    form: str = ""
    """How :func:`value_text` renders it: "" by kind (the general rule above), "plain" (``c::text``,
    for a numeric whose text is already canonical) or "last" (``':' || c``, only for the final field
    of a row); set by :func:`hash_layout`."""
    conversion: str = "none"
    """The column contract's conversion: the value is read through its expression (source side only)."""

    def ref(self, alias: str | None = None) -> sql.Composable:
        """The column's value: the column itself, or its read expression over it.

        >>> Column("tags", "json", conversion="array_json").ref().as_string()
        'array_to_json("tags")'
        """
        ident = sql.Identifier(alias, self.name) if alias else sql.Identifier(self.name)
        if self.conversion == "none":
            return ident
        from reconcile.db.columns import CONVERSIONS

        return CONVERSIONS[self.conversion].read_sql(ident)

    @property
    def collate_c(self) -> bool:
        """True when comparisons of this column must be forced to byte order."""
        return self.kind == "text"


def kind_of(type_name: str) -> str:
    """Map a ``format_type`` name to a normalisation kind.

    >>> kind_of("numeric(18,2)"), kind_of("timestamp with time zone"), kind_of("character(3)")
    ('numeric', 'timestamptz', 'text')
    """
    t = type_name.lower()
    if t in ("smallint", "integer", "bigint"):
        return "int"
    if t.startswith("numeric") or t.startswith("decimal"):
        return "numeric"
    if t in ("real", "double precision"):
        return "float"
    if t == "boolean":
        return "bool"
    if t == "uuid":
        return "uuid"
    if t.startswith("timestamp") and "with time zone" in t:
        return "timestamptz"
    if t.startswith("timestamp"):
        return "timestamp"
    if t == "date":
        return "date"
    if t.startswith("time"):
        return "time"
    if t == "json":
        return "json"
    if t == "jsonb":
        return "jsonb"
    if t == "bytea":
        return "bytea"
    if t == "text" or t.startswith("character") or t.startswith("varchar") or t.startswith("bpchar"):
        return "text"
    return "other"


def value_text(col: Column, alias: str | None = None) -> sql.Composed:
    """The normalised, never-NULL text of one column (see the module docstring).

    >>> value_text(Column("amount", "numeric")).as_string()
    'coalesce(trim_scale("amount")::text, \\'\\')'
    """
    ref = col.ref(alias)
    if col.conversion != "none":
        ref = sql.SQL("({})").format(ref)
    if col.form == "plain":
        return sql.SQL("coalesce({}::text, '')").format(ref)
    if col.form == "last":
        return sql.SQL("coalesce(':' || {}, '')").format(_text(col, ref))
    if col.kind == "numeric":
        return sql.SQL("coalesce(trim_scale({})::text, '')").format(ref)
    if col.kind in PLAIN_KINDS:
        return sql.SQL("coalesce({}::text, '')").format(ref)
    inner = _text(col, ref)
    return sql.SQL("coalesce(octet_length({i})::text || ':' || {i}, '')").format(i=inner)


def _text(col: Column, ref: sql.Composable) -> sql.Composed:
    if col.kind == "json":
        return sql.SQL("{}::jsonb::text").format(ref)
    if col.kind == "bytea":
        return sql.SQL("encode({}, 'hex')").format(ref)
    return sql.SQL("{}::text").format(ref)


TEXT_LIKE = frozenset({"text", "json", "jsonb", "bytea", "other"})
"""Kinds whose text may be empty or hold ``|``: length-prefixed (or marked when last)."""


def _fixed_scale(type_name: str) -> bool:
    """True for ``numeric(p,s)`` / ``decimal(p,s)`` with an explicit scale."""
    t = type_name.lower().replace(" ", "")
    return (t.startswith("numeric(") or t.startswith("decimal(")) and "," in t


def hash_layout(source: Sequence[Column], target: Sequence[Column]) -> tuple[list[Column], list[Column]]:
    """The columns to hash on each side, paired by position: same order, same forms on both sides.

    A numeric column declared identically with an explicit scale on both sides is hashed as
    plain text (no ``trim_scale``); never-empty kinds come first, text-like columns after them,
    and the very last text-like column is marked (``':' || x``) instead of length-prefixed.

    >>> s = [Column("id", "int", "bigint"), Column("cur", "text", "character(3)"),
    ...      Column("amt", "numeric", "numeric(18,2)")]
    >>> src, tgt = hash_layout(s, s)
    >>> [(c.name, c.form) for c in src]
    [('id', ''), ('amt', 'plain'), ('cur', 'last')]
    >>> print(row_text(src).as_string())
    coalesce("id"::text, '') || '|' || coalesce("amt"::text, '') || '|' || coalesce(':' || "cur"::text, '')
    """
    if len(source) != len(target):
        raise ValueError("hash_layout needs the same columns on both sides")
    pairs = list(zip(source, target))
    plain = [(s, t) for s, t in pairs if s.kind not in TEXT_LIKE and t.kind not in TEXT_LIKE]
    texts = [(s, t) for s, t in pairs if s.kind in TEXT_LIKE or t.kind in TEXT_LIKE]
    out_s: list[Column] = []
    out_t: list[Column] = []
    for s, t in plain:
        form = ""
        if s.kind == t.kind == "numeric" and s.type_name.lower() == t.type_name.lower() and _fixed_scale(s.type_name):
            form = "plain"
        out_s.append(Column(s.name, s.kind, s.type_name, form, s.conversion))
        out_t.append(Column(t.name, t.kind, t.type_name, form, t.conversion))
    for i, (s, t) in enumerate(texts):
        form = "last" if i == len(texts) - 1 else ""
        out_s.append(Column(s.name, s.kind, s.type_name, form, s.conversion))
        out_t.append(Column(t.name, t.kind, t.type_name, form, t.conversion))
    return out_s, out_t


def row_text(columns: Sequence[Column]) -> sql.Composed:
    """All columns' normalised text joined by ``|``."""
    return sql.SQL(" || '|' || ").join(value_text(c) for c in columns)  # type: ignore[return-value]


def row_hash(columns: Sequence[Column]) -> sql.Composed:
    """The 60-bit row hash, a bigint.

    >>> row_hash([Column("id", "int")]).as_string()
    '(\\'0x\\' || substr(md5(coalesce("id"::text, \\'\\')), 1, 15))::bigint'
    """
    return sql.SQL("('0x' || substr(md5({}), 1, 15))::bigint").format(row_text(columns))


def key_ref(key: Sequence[Column]) -> sql.Composable:
    """The key as a comparable expression: a column, or a row of columns; text under COLLATE "C"."""
    parts = [sql.SQL('{} COLLATE "C"').format(sql.Identifier(c.name)) if c.collate_c else sql.Identifier(c.name)
             for c in key]
    if len(parts) == 1:
        return parts[0]
    return sql.SQL("({})").format(sql.SQL(", ").join(parts))


def key_value(key: Sequence[Column]) -> sql.Composable:
    """Placeholders matching :func:`key_ref`: ``%s`` or ``(%s, %s)``."""
    if len(key) == 1:
        return sql.SQL("%s")
    return sql.SQL("({})").format(sql.SQL(", ").join(sql.SQL("%s") for _ in key))


def range_where(key: Sequence[Column], lo: tuple | None, hi: tuple | None) -> tuple[sql.Composable, list[Any]]:
    """``WHERE`` condition of the half-open range ``[lo, hi)`` and its parameters.

    >>> cond, params = range_where([Column("id", "int")], (1,), (9,))
    >>> cond.as_string(), params
    ('"id" >= %s AND "id" < %s', [1, 9])
    """
    conds: list[sql.Composable] = []
    params: list[Any] = []
    ref, val = key_ref(key), key_value(key)
    if lo is not None:
        conds.append(sql.SQL("{} >= {}").format(ref, val))
        params.extend(lo)
    if hi is not None:
        conds.append(sql.SQL("{} < {}").format(ref, val))
        params.extend(hi)
    if not conds:
        return sql.SQL("TRUE"), params
    return sql.SQL(" AND ").join(conds), params


@dataclass(frozen=True)
class Arithmetic:
    """Buckets of an integer key: bucket = (k - origin) / width (integer division)."""

    origin: int
    width: int


def bucket_expr(key: Sequence[Column], bucketing: Arithmetic | Sequence[tuple]) -> tuple[sql.Composable, list[Any]]:
    """The bucket number of a row: arithmetic for an integer key, else a binary CASE tree.

    ``bucketing`` as a list of inner boundaries ``b1 < b2 < ...`` numbers buckets 0..len: bucket
    i holds keys in ``[b_i, b_{i+1})``. The CASE tree has depth log2(len), so each row costs a few
    comparisons.

    >>> e, p = bucket_expr([Column("k", "text")], [("m",)])
    >>> e.as_string(), p
    ('CASE WHEN "k" COLLATE "C" < %s THEN 0 ELSE 1 END', ['m'])
    """
    if isinstance(bucketing, Arithmetic):
        (col,) = key
        return (sql.SQL("(({} - {}::bigint) / {}::bigint)").format(
            sql.Identifier(col.name), sql.Literal(bucketing.origin), sql.Literal(bucketing.width)), [])
    bounds = list(bucketing)
    ref, val = key_ref(key), key_value(key)
    params: list[Any] = []

    def tree(first: int, last: int) -> sql.Composable:
        # Buckets first..last; the boundaries between them are bounds[first .. last-1].
        if first == last:
            return sql.Literal(first)
        mid = (first + last + 1) // 2  # keys < bounds[mid-1] go left
        params.extend(bounds[mid - 1])  # the condition's placeholders come before both branches
        left = tree(first, mid - 1)
        right = tree(mid, last)
        return sql.SQL("CASE WHEN {} < {} THEN {} ELSE {} END").format(ref, val, left, right)

    return tree(0, len(bounds)), params


def checksum_query(table: sql.Composable, columns: Sequence[Column], key: Sequence[Column],
                   lo: tuple | None, hi: tuple | None,
                   bucketing: Arithmetic | Sequence[tuple]) -> tuple[sql.Composed, list[Any]]:
    """Per bucket of ``[lo, hi)``: bucket number, row count and sum of row hashes."""
    bexpr, bparams = bucket_expr(key, bucketing)
    where, wparams = range_where(key, lo, hi)
    q = sql.SQL("SELECT {b} AS bucket, count(*), sum({h}) FROM {t} WHERE {w} GROUP BY 1").format(
        b=bexpr, h=row_hash(columns), t=table, w=where)
    return q, bparams + wparams


def hashes_query(table: sql.Composable, columns: Sequence[Column], key: Sequence[Column],
                 lo: tuple | None, hi: tuple | None, bucketing: Arithmetic | Sequence[tuple] | None = None,
                 buckets: Sequence[int] | None = None) -> tuple[sql.Composed, list[Any]]:
    """Every row of ``[lo, hi)`` as (key columns..., row hash); only those of ``buckets`` when given.

    With ``buckets``, the rows of several buckets of one bucketing come back in one round trip
    (``bucket IN (...)``); only those rows are hashed.

    >>> q, p = hashes_query(sql.Identifier("t"), [Column("id", "int")], [Column("id", "int")], (0,), (100,),
    ...                     Arithmetic(0, 10), [2, 5])
    >>> "IN (2, 5)" in q.as_string(), p
    (True, [0, 100])
    """
    where, params = range_where(key, lo, hi)
    if buckets is not None:
        if bucketing is None:
            raise ValueError("buckets need their bucketing")
        bexpr, bparams = bucket_expr(key, bucketing)
        where = sql.SQL("{} AND {} IN ({})").format(where, bexpr, sql.SQL(", ").join(sql.Literal(int(b)) for b in buckets))
        params = params + bparams
    q = sql.SQL("SELECT {k}, {h} FROM {t} WHERE {w}").format(
        k=sql.SQL(", ").join(sql.Identifier(c.name) for c in key), h=row_hash(columns), t=table, w=where)
    return q, params


def boundaries_query(table: sql.Composable, key: Sequence[Column], lo: tuple | None, hi: tuple | None,
                     step: int, limit: int) -> tuple[sql.Composed, list[Any]]:
    """Every ``step``-th key of ``[lo, hi)`` in byte order (at most ``limit``): bucket boundaries."""
    where, params = range_where(key, lo, hi)
    q = sql.SQL("SELECT {k} FROM (SELECT {k}, row_number() OVER (ORDER BY {o}) AS rn FROM {t} WHERE {w}) s "
                "WHERE rn %% {step} = 0 ORDER BY rn LIMIT {limit}").format(
        k=sql.SQL(", ").join(sql.Identifier(c.name) for c in key),
        o=sql.SQL(", ").join(sql.SQL('{} COLLATE "C"').format(sql.Identifier(c.name)) if c.collate_c
                             else sql.Identifier(c.name) for c in key),
        t=table, w=where, step=sql.Literal(step), limit=sql.Literal(limit))
    return q, params


def rows_query(table: sql.Composable, columns: Sequence[Column], key: Sequence[Column],
               keys: Sequence[tuple]) -> tuple[sql.Composed, list[Any]]:
    """The full rows whose key is in ``keys`` (equality, so no collation matters); converted columns are
    read through their expression, so both sides return values of the target's types.

    >>> q, p = rows_query(sql.Identifier("t"), [Column("id", "int"), Column("tags", "json", conversion="array_json")],
    ...                   [Column("id", "int")], [(1,)])
    >>> q.as_string()
    'SELECT "id", array_to_json("tags") FROM "t" WHERE "id" IN (%s)'
    """
    if len(key) == 1:
        ref: sql.Composable = sql.Identifier(key[0].name)
    else:
        ref = sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(c.name) for c in key))
    one = key_value(key)
    q = sql.SQL("SELECT {c} FROM {t} WHERE {k} IN ({vals})").format(
        c=sql.SQL(", ").join(c.ref() for c in columns), t=table, k=ref,
        vals=sql.SQL(", ").join(one for _ in keys))
    return q, [v for k in keys for v in k]


def hashes_by_key_query(table: sql.Composable, columns: Sequence[Column], key: Sequence[Column],
                        keys: Sequence[tuple]) -> tuple[sql.Composed, list[Any]]:
    """(key columns..., row hash) of the rows whose key is in ``keys`` (text forms or values: a text form is
    sent untyped, so the server reads it as the key column's type; a single key column with a known type
    takes the keys as one array cast to that type).

    >>> hashes_by_key_query(sql.Identifier("t"), [Column("id", "int")], [Column("id", "int", "bigint")],
    ...                     [("1",), ("2",)])[1]
    [['1', '2']]

    >>> q, p = hashes_by_key_query(sql.Identifier("t"), [Column("id", "int")], [Column("a", "int"), Column("b", "text")],
    ...                            [("1", "x"), ("2", "y")])
    >>> q.as_string()[-49:], p
    ('FROM "t" WHERE ("a", "b") IN ((%s, %s), (%s, %s))', ['1', 'x', '2', 'y'])
    """
    if len(key) == 1 and key[0].type_name:
        # One array parameter, cast to the key's type: thousands of keys per statement, one index probe each.
        q = sql.SQL("SELECT {k}, {h} FROM {t} WHERE {k} = ANY(CAST(%s AS {ty}[]))").format(
            k=sql.Identifier(key[0].name), h=row_hash(columns), t=table,
            ty=sql.SQL(key[0].type_name))  # type: ignore[arg-type]  # format_type() text of the catalog
        return q, [[k[0] for k in keys]]
    if len(key) == 1:
        ref: sql.Composable = sql.Identifier(key[0].name)
    else:
        ref = sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(c.name) for c in key))
    one = key_value(key)
    q = sql.SQL("SELECT {k}, {h} FROM {t} WHERE {r} IN ({vals})").format(
        k=sql.SQL(", ").join(sql.Identifier(c.name) for c in key), h=row_hash(columns), t=table, r=ref,
        vals=sql.SQL(", ").join(one for _ in keys))
    return q, [v for k in keys for v in k]


def quantiles_query(table: sql.Composable, key: Sequence[Column], step: int, limit: int) -> sql.Composed:
    """Every ``step``-th key of the table in byte order, as the key columns' text forms (at most ``limit``):
    the boundaries of the sweep's slices.

    >>> quantiles_query(sql.Identifier("t"), [Column("k", "text")], 10, 3).as_string()  # doctest: +NORMALIZE_WHITESPACE
    'SELECT "k"::text FROM (SELECT "k", row_number() OVER (ORDER BY "k" COLLATE "C") AS rn FROM "t") s
     WHERE mod(rn, 10) = 0 ORDER BY rn LIMIT 3'
    """
    return sql.SQL("SELECT {kt} FROM (SELECT {k}, row_number() OVER (ORDER BY {o}) AS rn FROM {t}) s "
                   "WHERE mod(rn, {step}) = 0 ORDER BY rn LIMIT {limit}").format(
        kt=sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c.name)) for c in key),
        k=sql.SQL(", ").join(sql.Identifier(c.name) for c in key),
        o=sql.SQL(", ").join(sql.SQL('{} COLLATE "C"').format(sql.Identifier(c.name)) if c.collate_c
                             else sql.Identifier(c.name) for c in key),
        t=table, step=sql.Literal(step), limit=sql.Literal(limit))


def min_max_query(table: sql.Composable, key_col: Column) -> sql.Composed:
    """Smallest and largest value of a single integer key, and the planner's row estimate."""
    return sql.SQL("SELECT min({k}), max({k}) FROM {t}").format(k=sql.Identifier(key_col.name), t=table)
