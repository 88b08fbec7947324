"""DSQL CDC values → the text form the source's column type parses, exactly (DSQL user guide, "Data type
serialization").

The decoding is driven by the *source* column's type, read from the source catalog
(:func:`source_columns`): a JSON number under a ``timestamptz`` column is microseconds since the epoch,
under a ``bigint`` an integer, under a ``date`` days. Types DSQL's CDC cannot carry back without loss are
refused before anything is read (:func:`unsupported`): ``interval`` (months approximated as 30.4375 days),
``timetz`` (the offset is dropped), arrays, ranges, composites and other types DSQL does not store.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg

from reconcile.budget import split_table_name

TS_PLUS_INFINITY = 9223372036825200000
TS_MINUS_INFINITY = -9223372036832400000
DATE_PLUS_INFINITY = 2147483647 + 10957
DATE_MINUS_INFINITY = -2147483648 + 10957
_EPOCH = dt.datetime(1970, 1, 1)
_DATE_EPOCH = dt.date(1970, 1, 1)

INTS = frozenset({"int2", "int4", "int8", "oid"})
FLOATS = frozenset({"float4", "float8"})
STRINGS = frozenset({"text", "varchar", "bpchar", "name", "char", "uuid", "citext"})
SUPPORTED = INTS | FLOATS | STRINGS | {"numeric", "bool", "bytea", "json", "jsonb", "date", "timestamp",
                                      "timestamptz", "time"}
LOSSY = {"interval": "DSQL approximates a month as 30.4375 days", "timetz": "DSQL drops the time zone offset"}


class DecodeRefused(ValueError):
    """A value whose JSON form does not fit its source column (dead-lettered with its transaction)."""


@dataclass(frozen=True)
class Column:
    name: str
    typname: str
    """Base type name (a domain's base type)."""
    typtype: str
    """``b`` base, ``e`` enum, ...; enums travel as their label."""
    category: str


_COLUMNS = """
SELECT a.attname::text, CASE WHEN t.typtype = 'd' THEN bt.typname::text ELSE t.typname::text END,
       CASE WHEN t.typtype = 'd' THEN bt.typtype::text ELSE t.typtype::text END,
       CASE WHEN t.typtype = 'd' THEN bt.typcategory::text ELSE t.typcategory::text END
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type bt ON bt.oid = t.typbasetype
WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""


def source_columns(conn: psycopg.Connection, table: str) -> dict[str, Column]:
    """The source columns of ``table`` (empty when the table does not exist)."""
    schema, name = split_table_name(table)
    qualified = psycopg.sql.SQL("{}").format(psycopg.sql.Identifier(schema, name)).as_string(conn)
    return {r[0]: Column(*r) for r in conn.execute(_COLUMNS, (qualified,)).fetchall()}


def unsupported(table: str, columns: dict[str, Column]) -> list[str]:
    """One sentence per column whose values DSQL's CDC cannot bring back exactly."""
    out = []
    for c in columns.values():
        if c.typname in SUPPORTED or c.typtype == "e":
            continue
        why = LOSSY.get(c.typname) or ("arrays do not exist on DSQL" if c.category == "A"
                                       else "DSQL's CDC has no exact form for it")
        out.append(f"{table}.{c.name} ({c.typname}): {why}")
    return out


def to_text(col: Column, v: Any) -> str | None:
    """The source text form of one DSQL CDC value.

    >>> ts = Column("t", "timestamptz", "b", "D")
    >>> to_text(ts, 1500000), to_text(Column("d", "date", "b", "D"), 10), to_text(Column("n", "numeric", "b", "N"), "1.50")
    ('1970-01-01 00:00:01.500000+00', '1970-01-11', '1.50')
    >>> to_text(Column("b", "bytea", "b", "U"), "QUI="), to_text(Column("x", "int8", "b", "N"), 9223372036854775807)
    ('\\\\x4142', '9223372036854775807')
    """
    if v is None:
        return None
    t = col.typname
    try:
        if t in INTS:
            if isinstance(v, bool) or not isinstance(v, int):
                raise DecodeRefused(f"expected an integer, got {v!r}")
            return str(v)
        if t in FLOATS:
            if isinstance(v, str):
                if v not in ("NaN", "Infinity", "-Infinity"):
                    raise DecodeRefused(f"expected a number, got {v!r}")
                return v
            return str(v)
        if t == "numeric":
            if isinstance(v, (int, Decimal)) and not isinstance(v, bool):
                return str(v)
            if not isinstance(v, str):
                raise DecodeRefused(f"expected a numeric string, got {v!r}")
            Decimal(v)  # NaN / Infinity parse too
            return v
        if t == "bool":
            if not isinstance(v, bool):
                raise DecodeRefused(f"expected true or false, got {v!r}")
            return "true" if v else "false"
        if t == "bytea":
            return "\\x" + base64.b64decode(v, validate=True).hex()
        if t == "date":
            days = _int(v)
            if days >= DATE_PLUS_INFINITY:
                return "infinity"
            if days <= DATE_MINUS_INFINITY:
                return "-infinity"
            return (_DATE_EPOCH + dt.timedelta(days=days)).isoformat()
        if t in ("timestamp", "timestamptz"):
            us = _int(v)
            if us >= TS_PLUS_INFINITY:
                return "infinity"
            if us <= TS_MINUS_INFINITY:
                return "-infinity"
            text = (_EPOCH + dt.timedelta(microseconds=us)).strftime("%Y-%m-%d %H:%M:%S.%f")
            return text + ("+00" if t == "timestamptz" else "")
        if t == "time":
            us = _int(v)
            secs, micro = divmod(us, 1_000_000)
            return f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{micro:06d}"
        if isinstance(v, str):
            return v  # text types, uuid, json (raw text), enum labels
    except (ValueError, OverflowError, base64.binascii.Error) as exc:  # type: ignore[attr-defined]
        raise DecodeRefused(f"column {col.name} ({t}): {exc}") from None
    raise DecodeRefused(f"column {col.name} ({t}) cannot take the JSON value {v!r}")


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, Decimal)) or int(v) != v:
        raise DecodeRefused(f"expected an integer, got {v!r}")
    return int(v)


def key_text(columns: dict[str, Column], key: Sequence[str], image: dict[str, Any]) -> tuple[str, ...]:
    """The key of a row image in source text forms (a change without its whole key is refused)."""
    out = []
    for k in key:
        if k not in image or image[k] is None:
            raise DecodeRefused(f"the change carries no value for key column {k}")
        out.append(to_text(columns[k], image[k]))
    return tuple(out)  # type: ignore[arg-type]
