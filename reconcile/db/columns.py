"""Columns as a server has them, and the conversions a column may go through between two servers.

:func:`read_columns` is the one reader of column types every running stage uses, on either side
(source or target): the backfill, the replay, the diff, the budget and the schema apply's drift
check all get their columns here, in one query for any number of tables, with plain pg_catalog
queries DSQL answers. (The schema *plan* reads the source through the full catalog reader,
:func:`reconcile.audit.catalog.read_catalog`; what it decides is stored as the column contract,
:mod:`reconcile.schema.contract`.)

A :class:`Conversion` says how a source value becomes a target value, once, for every stage:

==================  ==========================  =======================================================
conversion          source read (the backfill   replay of pgoutput's text form
                    SELECTs it)
==================  ==========================  =======================================================
``none``            the column                  cast on the target to the target type
``text``            ``c::text``                 the text form is the value (enum, citext, hstore,
                                                ranges, bit, xml, composite... all print their output
                                                function's text, which ``::text`` gives too)
``inet_text``       ``abbrev(c)``               same (``inet::text`` always adds ``/32``; ``abbrev``
                                                prints exactly what the output function does)
``jsonb_json``      ``c::json``                 same (jsonb's text form is valid json)
``array_json``      ``array_to_json(c)``        on the source: ``array_to_json(CAST(t AS type[]))``
``money_numeric``   ``c::numeric``              on the source: ``CAST(t AS money)::numeric``
==================  ==========================  =======================================================

Conversions whose replay is ``source`` run the read expression on the source over the decoded
text (in the replay's own source session, which pins the same text forms as the backfill's), so
the backfill and the replay write the same target value by construction: an array literal
``{a,"b c",NULL}`` becomes exactly the json ``array_to_json`` gives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql

__all__ = [
    "CONVERSIONS",
    "CatalogColumn",
    "Conversion",
    "conversion_for",
    "read_columns",
    "type_without_modifier",
]


@dataclass(frozen=True)
class Conversion:
    """How values of one column travel (see the module docstring)."""

    name: str
    read: str
    """The source read expression, ``{}`` standing for the column (code-owned text, never user input)."""
    replay: str
    """``target``: pgoutput's text form is cast on the target; ``source``: it is converted on the source first."""
    what: str
    """One line for people (the plan's comments, the report)."""

    def read_sql(self, ref: sql.Composable) -> sql.Composable:
        """The read expression over ``ref`` (a column reference or a cast placeholder).

        >>> CONVERSIONS["array_json"].read_sql(sql.Identifier("t", "tags")).as_string()
        'array_to_json("t"."tags")'
        """
        if self.read == "{}":
            return ref
        return sql.SQL(self.read).format(ref)  # type: ignore[arg-type]

    def shown(self, column: str) -> str:
        """The read expression over a column name, for people: ``array_to_json(tags)``."""
        return self.read.replace("{}", column)


CONVERSIONS: dict[str, Conversion] = {c.name: c for c in (
    Conversion("none", "{}", "target", "copied as it is"),
    Conversion("text", "{}::text", "target", "stored as its text form"),
    Conversion("inet_text", "abbrev({})", "target", "stored as its text form (as the output function prints it)"),
    Conversion("jsonb_json", "{}::json", "target", "jsonb stored as json"),
    Conversion("array_json", "array_to_json({})", "source", "array stored as a JSON array"),
    Conversion("money_numeric", "{}::numeric", "source", "money stored as an exact numeric"),
)}

_INTEGERS = ("int2", "int4", "int8")
_TEXTS = ("text", "varchar")


def conversion_for(source_base: str, source_category: str, target: str) -> str | None:
    """The conversion from a source column to a target column, by pg_type names; None: none is known.

    Args:
        source_base: typname of the source column's type, or of its base type for a domain.
        source_category: pg_type.typcategory of that type (``A`` for arrays).
        target: typname of the target column's type (its base type for a domain).

    >>> conversion_for("_text", "A", "json"), conversion_for("int4", "N", "int8"), conversion_for("status", "E", "text")
    ('array_json', 'none', 'text')
    >>> conversion_for("inet", "I", "text"), conversion_for("money", "N", "numeric"), conversion_for("bpchar", "S", "text")
    ('inet_text', 'money_numeric', None)
    """
    if source_base == target:
        return "none"
    if source_category == "A":
        return "array_json" if target in ("json", "jsonb") else ("text" if target == "text" else None)
    if source_base == "jsonb" and target == "json":
        return "jsonb_json"
    if source_base == "money" and target == "numeric":
        return "money_numeric"
    if source_base in _INTEGERS and (target in _INTEGERS[_INTEGERS.index(source_base):] or target == "numeric"):
        return "none"
    if source_base in _TEXTS and target in _TEXTS:
        return "none"
    if target == "text":
        if source_base == "inet":
            return "inet_text"
        if source_base in ("bpchar", "bool", "name", "char"):
            return None  # their ::text is not their output form (padding, 'true', ...): keep the type
        return "text"
    return None


def type_without_modifier(type_sql: str) -> str:
    """A ``format_type`` text without its modifier, for casts that must not truncate.

    >>> type_without_modifier("numeric(38,6)"), type_without_modifier("character varying(20)[]")
    ('numeric', 'character varying[]')
    >>> type_without_modifier("timestamp(3) with time zone")
    'timestamp with time zone'
    """
    out, depth = [], 0
    for ch in type_sql:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return " ".join("".join(out).split()).replace(" []", "[]")


@dataclass(frozen=True)
class CatalogColumn:
    """One column of a table, as the server it lives on has it."""

    name: str
    position: int
    """attnum: the column's place in the table."""
    type: str
    """``format_type(atttypid, atttypmod)``: ``numeric(18,2)``, ``text[]``, ``legacy.status``."""
    cast: str
    """The same without its modifier (``format_type(atttypid, -1)``): what values are cast to."""
    typname: str
    base: str
    """typname of the type, or of a domain's base type."""
    category: str
    """pg_type.typcategory of ``base`` (``A`` array, ``N`` numeric, ``S`` string...)."""
    typmod: int
    typlen: int
    not_null: bool
    collatable: bool
    generated: bool
    """A stored generated column (computed, never written)."""
    identity_always: bool
    """GENERATED ALWAYS AS IDENTITY (writes need OVERRIDING SYSTEM VALUE)."""


_COLUMNS = """
SELECT n.nspname, c.relname, a.attname::text, a.attnum, pg_catalog.format_type(a.atttypid, a.atttypmod),
       pg_catalog.format_type(a.atttypid, -1), t.typname::text, coalesce(bt.typname, t.typname)::text,
       coalesce(bt.typcategory, t.typcategory)::text, a.atttypmod, t.typlen, a.attnotnull, a.attcollation <> 0,
       a.attgenerated <> '', a.attidentity = 'a'
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_type bt ON bt.oid = t.typbasetype AND t.typtype = 'd'
WHERE c.relkind IN ('r', 'p') AND {where}
ORDER BY n.nspname, c.relname, a.attnum
"""


def read_columns(conn: psycopg.Connection, *, tables: Iterable[str] = (),
                 schemas: Iterable[str] = ()) -> dict[str, tuple[CatalogColumn, ...]]:
    """Every column of the named tables (``schema.table``) and of every table in ``schemas``.

    Returns ``schema.table`` -> its columns in order (empty for a table without columns); a table that
    does not exist is absent.
    """
    from reconcile.budget import split_table_name
    from reconcile.db.names import qualify

    names = [split_table_name(n) for n in tables]
    wanted_schemas = list(dict.fromkeys(schemas))
    conds = []
    params: list = []
    if names:
        conds.append("(n.nspname, c.relname) IN (SELECT s, t FROM unnest(%s::text[], %s::text[]) AS u(s, t))")
        params += [[s for s, _ in names], [t for _, t in names]]
    if wanted_schemas:
        conds.append("n.nspname = ANY(%s)")
        params.append(wanted_schemas)
    if not conds:
        return {}
    query = _COLUMNS.format(where="(" + " OR ".join(conds) + ")")
    out: dict[str, list[CatalogColumn]] = {}
    for (schema, table, name, num, typ, cast, typname, base, category, typmod, typlen, notnull, collatable,
         generated, always) in conn.execute(query, params):  # type: ignore[arg-type]
        cols = out.setdefault(qualify(schema, table), [])
        if name is None:
            continue  # a table without columns
        cols.append(CatalogColumn(
            name, int(num), typ, cast, typname, base, category, int(typmod), int(typlen), bool(notnull),
            bool(collatable), bool(generated), bool(always)))
    return {k: tuple(v) for k, v in out.items()}
