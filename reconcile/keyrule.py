"""The one rule for a table's key, shared by the audit, the schema plan, replay init, the backfill and
``reconcile config check``, so all of them require the same thing and say it in the same words.

reconcile copies, replays and diffs rows by the configured key (``[[tables]] key``):

* A table **with a primary key** is keyed by it: the configured key must be the primary key's columns,
  or the columns of a unique index over NOT NULL columns (the plan carries both to the target).
* A table **without a primary key** is keyed by the configured key, which must be **unique and not
  null on the source**. That is proven by the catalog (every key column NOT NULL and a unique index
  within the key) or else by a data check that counts the key values appearing more than once and the
  rows with a NULL in the key (:func:`count_violations`, one aggregate over the table). The schema
  plan makes the key the target's primary key, inline in ``CREATE TABLE`` (pre-load: DSQL cannot add
  one later); the backfill needs no index on the source for it (a chunk read sorts its range); replay
  needs the key's old values in every UPDATE and DELETE, which such a table sends only with a replica
  identity (``reconcile replay init --replica-identity-full``).

:func:`rule_sentence` and :func:`violation_message` are the words every stage uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from reconcile.budget import qualified, split_table_name
from reconcile.errors import TerminalError

__all__ = ["KeyCounts", "KeyFacts", "KeyNotUsable", "count_violations", "key_problem", "read_key_facts",
           "require_unique_key", "rule_sentence", "unusable_type", "verify_key", "violation_message"]

# Types a key cannot have on the target: the plan stores arrays, jsonb and hstore as json, which has no
# equality on DSQL, and xml, geometric and composite values have no btree order to range over.
_UNUSABLE_TYPES = frozenset({"json", "jsonb", "xml", "hstore"})


class KeyNotUsable(TerminalError):
    """A configured key cannot identify the rows of its table (missing, not unique, NULLs, wrong type)."""


@dataclass(frozen=True)
class KeyFacts:
    """What one side's catalog says about a table's configured key."""

    table: str
    key: tuple[str, ...]
    exists: bool
    columns: dict[str, tuple[str, str, bool]]
    """Every column: name -> (type as format_type prints it, pg_type category, NOT NULL)."""
    unusable: dict[str, str]
    """Key columns whose type cannot be a key -> that type."""
    primary_key: tuple[str, ...] | None
    unique: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Unique, non-partial indexes on plain columns: (index name, its key columns)."""

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(k for k in self.key if k not in self.columns)

    @property
    def nullable(self) -> tuple[str, ...]:
        return tuple(k for k in self.key if k in self.columns and not self.columns[k][2])

    def unique_on_exactly_key(self) -> str | None:
        """The name of the primary key or a unique index whose columns are exactly the key's, or None."""
        want = set(self.key)
        return next((name for name, cols in self.unique if set(cols) == want), None)

    def proven_unique(self) -> str | None:
        """How the catalog proves the key unique and not null (an index name), or None when it cannot."""
        if self.nullable:
            return None
        want = set(self.key)
        return next((name for name, cols in self.unique if set(cols) <= want), None)


@dataclass(frozen=True)
class KeyCounts:
    """The data check of a key: rows, key values appearing more than once (and their rows), NULL keys."""

    rows: int
    duplicate_values: int
    duplicate_rows: int
    null_rows: int

    @property
    def ok(self) -> bool:
        return self.duplicate_values == 0 and self.null_rows == 0


_COLUMNS = """
SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod),
       coalesce(bt.typcategory, t.typcategory)::text, coalesce(bt.typname, t.typname)::text,
       coalesce(bt.typtype, t.typtype)::text, a.attnotnull
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_type bt ON bt.oid = t.typbasetype AND t.typtype = 'd'
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_UNIQUE = """
SELECT ic.relname::text, i.indisprimary, array_agg(a.attname::text ORDER BY k.ord)
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL AND k.ord <= i.indnkeyatts
GROUP BY ic.relname, i.indisprimary
HAVING bool_and(k.attnum <> 0)
ORDER BY i.indisprimary DESC, ic.relname
"""


def unusable_type(category: str, type_name: str, type_kind: str) -> bool:
    """Whether a column of this type (pg_type category, name, typtype; a domain's base) cannot be a key."""
    return category == "A" or type_name in _UNUSABLE_TYPES or category == "G" or type_kind == "c"


def read_key_facts(conn: psycopg.Connection, table: str, key: Sequence[str]) -> KeyFacts:
    """The catalog's facts about ``table`` and its configured ``key`` (catalog queries only)."""
    schema, name = split_table_name(table)
    row = conn.execute(
        "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')", (schema, name)).fetchone()
    key = tuple(key)
    if row is None:
        return KeyFacts(table, key, False, {}, {}, None)
    oid = row[0]
    columns: dict[str, tuple[str, str, bool]] = {}
    unusable: dict[str, str] = {}
    for col, type_sql, category, type_name, type_kind, notnull in conn.execute(_COLUMNS, (oid,)):
        columns[col] = (type_sql, category, notnull)
        if col in key and unusable_type(category, type_name, type_kind):
            unusable[col] = type_sql
    primary: tuple[str, ...] | None = None
    unique: list[tuple[str, tuple[str, ...]]] = []
    for index, is_primary, cols in conn.execute(_UNIQUE, (oid,)):
        if is_primary:
            primary = tuple(cols)
        unique.append((index, tuple(cols)))
    return KeyFacts(table, key, True, columns, unusable, primary, tuple(unique))


def count_violations(conn: psycopg.Connection, table: str, key: Sequence[str]) -> KeyCounts:
    """One aggregate over ``table``: its rows, the key values found more than once, and NULL keys.

    Key values are grouped as the source compares them; a NULL in any key column makes the row a NULL
    key (GROUP BY puts all-NULL patterns together, so such groups are counted as NULL rows, never as
    duplicates).
    """
    cols = [sql.Identifier(k) for k in key]
    any_null = sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(c) for c in cols)
    query = sql.SQL(
        "WITH g AS (SELECT count(*) AS n, bool_or({any_null}) AS has_null FROM {t} GROUP BY {cols}) "
        "SELECT coalesce(sum(n), 0), count(*) FILTER (WHERE n > 1 AND NOT has_null), "
        "coalesce(sum(n) FILTER (WHERE n > 1 AND NOT has_null), 0), coalesce(sum(n) FILTER (WHERE has_null), 0) "
        "FROM g").format(any_null=any_null, t=qualified(table), cols=sql.SQL(", ").join(cols))
    rows, dup_values, dup_rows, nulls = conn.execute(query).fetchone()
    return KeyCounts(int(rows), int(dup_values), int(dup_rows), int(nulls))


def _cols(key: Sequence[str]) -> str:
    return ", ".join(key)


def rule_sentence(table: str, key: Sequence[str]) -> str:
    """What every stage requires of a table without a primary key (no trailing period).

    >>> rule_sentence("legacy.postings", ("ref", "line"))
    'legacy.postings has no primary key, so reconcile identifies its rows by the configured key (ref, line), which must be unique and not null on the source'
    """
    return (f"{table} has no primary key, so reconcile identifies its rows by the configured key "
            f"({_cols(key)}), which must be unique and not null on the source")


def violation_message(table: str, key: Sequence[str], counts: KeyCounts) -> str:
    """The one sentence every stage says when the data check of a key fails, with its counts.

    >>> violation_message("s.t", ("ref",), KeyCounts(rows=10, duplicate_values=2, duplicate_rows=5, null_rows=1))
    's.t has no primary key, so reconcile identifies its rows by the configured key (ref), which must be unique and not null on the source: 2 key value(s) appear more than once (5 rows) and 1 row(s) have a NULL in the key (of 10 rows); remove the duplicates and NULLs on the source, or set tables.key for s.t to columns that are unique and not null'
    """
    return (f"{rule_sentence(table, key)}: {counts.duplicate_values:,} key value(s) appear more than once "
            f"({counts.duplicate_rows:,} rows) and {counts.null_rows:,} row(s) have a NULL in the key "
            f"(of {counts.rows:,} rows); remove the duplicates and NULLs on the source, or set tables.key for "
            f"{table} to columns that are unique and not null")


def key_problem(facts: KeyFacts) -> str | None:
    """What the catalog alone shows wrong with the configured key, as one sentence with the fix; None if nothing.

    A table without a primary key whose key the catalog cannot prove unique is *not* a problem here: it
    needs the data check (:func:`verify_key`).
    """
    table, key = facts.table, facts.key
    if not facts.exists:
        return None  # the caller reports a missing table in its own words
    if facts.missing:
        return (f"key column(s) {', '.join(facts.missing)} of {table} do not exist on this side; fix tables.key "
                f"for {table} (its columns: {', '.join(facts.columns)})")
    if facts.unusable:
        listed = ", ".join(f"{c} ({t})" for c, t in facts.unusable.items())
        return (f"key column(s) {listed} of {table} cannot be a key: the target stores such values as json or text "
                f"forms that cannot be compared or ordered; set tables.key for {table} to scalar columns")
    if facts.primary_key is not None and set(facts.primary_key) != set(key):
        if facts.unique_on_exactly_key() and not facts.nullable:
            return None
        return (f"{table}'s configured key ({_cols(key)}) is neither its primary key ({_cols(facts.primary_key)}) "
                f"nor a unique key of NOT NULL columns; set key = {list(facts.primary_key)} for {table}")
    return None


def verify_key(conn: psycopg.Connection, facts: KeyFacts) -> tuple[str, KeyCounts | None]:
    """Prove a key unique and not null on the source: by the catalog when it can, else by the data check.

    Returns:
        (how it was proven: "primary key", "unique index <name> on NOT NULL columns" or "data check",
        the counts of the data check or None when the catalog proved it).
    """
    if facts.primary_key is not None:
        return "primary key", None
    index = facts.proven_unique()
    if index is not None:
        return f"unique index {index} on NOT NULL columns", None
    return "data check", count_violations(conn, facts.table, facts.key)


def require_unique_key(conn: psycopg.Connection, table: str, key: Sequence[str]) -> str:
    """Refuse a key that breaks the rule on the source (the backfill calls this before it plans a table).

    Returns:
        How the key was proven (see :func:`verify_key`).

    Raises:
        KeyNotUsable: with :func:`key_problem`'s or :func:`violation_message`'s sentence.
    """
    facts = read_key_facts(conn, table, key)
    if not facts.exists:
        raise KeyNotUsable(f"table {table} does not exist on the source; fix the table name in the config")
    problem = key_problem(facts)
    if problem:
        raise KeyNotUsable(problem)
    how, counts = verify_key(conn, facts)
    if counts is not None and not counts.ok:
        raise KeyNotUsable(violation_message(table, key, counts))
    return how
