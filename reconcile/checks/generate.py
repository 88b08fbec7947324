"""Generated per-table expectations: the source's constraints and dropped triggers, re-expressed.

For every configured table found in the source catalog (:func:`reconcile.audit.read_catalog`), one
suite named for the table (``ledger.accounts``) with:

* primary key: unique (``ExpectColumnValuesToBeUnique``, or ``ExpectCompoundColumnsToBeUnique`` for a
  composite key); UNIQUE constraints the same way (NULLs ignored, as PostgreSQL does);
* every NOT NULL column: ``ExpectColumnValuesToNotBeNull``;
* CHECK constraints: ``col IN (...)`` shapes as ``ExpectColumnValuesToBeInSet``, anything else as an
  ``UnexpectedRowsExpectation`` selecting the rows where the expression is false (NULL passes, as in
  PostgreSQL);
* foreign keys: an ``UnexpectedRowsExpectation`` for child rows with no parent (on the target the
  constraint may be missing, or added ``NOT VALID``);
* invariants that replace dropped triggers (``reconcile.invariants``, and those recognised in the
  catalog's trigger bodies): a running balance kept by a trigger becomes "balance equals the sum of
  entries". One the ledger suite already checks (same tables and columns) is left out here.

The same suites run on the source and on the target: the target keeps the source's table and column
names (:mod:`reconcile.schema`), but not always their types (the column contract,
:mod:`reconcile.schema.contract`: an enum is text there, an array json, money numeric). So each check
is written for the types of the side it runs on: a CHECK expression runs on the target as the plan
rewrote it for the target (enum and domain casts become their stored types), and a check over a
column whose type changes in a way the expression cannot follow (a uniqueness test of a json column,
``cardinality(tags)`` over a json array) runs on the source only, saying so in its evidence. The
target's real types come from its catalog when a target connection is given (else from the plan's
own decision, :func:`reconcile.audit.translate.translate_column`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from reconcile.audit.catalog import Catalog, Constraint, Table, qualified_schemas, read_catalog
from reconcile.audit.translate import expression_follows, rewrite_expression
from reconcile.audit.triggers import Invariant, describe_trigger_body
from reconcile.checks.ledger import balance_chunking, balance_query
from reconcile.checks.spec import ROW_WISE, Check, Chunking, escape_query, ident, qualified
from reconcile.config import Config

__all__ = ["generate_suite", "ledger_balance", "read_invariants", "replacement_of", "table_checks"]

_IN_SET = re.compile(r"^CHECK \(\(?\(?(?P<col>\"[^\"]+\"|\w+)\)? = ANY \(\(?ARRAY\[(?P<items>.*)\]\)?(?:::[\w.\"]+(?:\[\])?)?\)\)\)?$")
_ITEM = re.compile(r"^'(?P<v>(?:[^']|'')*)'(?:::[\w .\"]+)?$")


def generate_suite(config: Config, *, catalog: Catalog | None = None, invariants: Sequence[Invariant] | None = None,
                   source: psycopg.Connection | None = None, target: psycopg.Connection | None = None) -> list[Check]:
    """The generated expectations of every configured table, one suite per table.

    Args:
        config: the tables (and ledger roles, to leave out invariants the ledger suite covers).
        catalog: the source catalog; None reads it through ``source`` (or a new source connection).
        invariants: invariants replacing triggers; None reads ``reconcile.invariants`` through ``target``
            when given (a target without the table has none) and adds those the catalog's triggers show.
        source, target: open autocommit connections to use instead of new ones.

    Returns:
        The checks, suite by suite in the configured table order.
    """
    if catalog is None:
        catalog = _read(config, source)
    found = list(invariants) if invariants is not None else (read_invariants(target) if target is not None else [])
    if invariants is None:
        found += _trigger_invariants(catalog)
    covered = _ledger_balance(config)
    checks: list[Check] = []
    targets = _target_columns(target, [t.name for t in config.tables]) if target is not None else {}
    for spec in config.tables:
        if not catalog.has_table(spec.name):
            continue
        table = catalog.table(spec.name)
        checks += table_checks(table, catalog, conversions=target_conversions(table, catalog, targets.get(spec.name)))
    seen: set[str] = set()
    for inv in found:
        if inv.name in seen or inv.kind != "balance_equals_sum_of_entries":
            continue
        seen.add(inv.name)
        check = _invariant_check(inv, covered, {t.name for t in config.tables})
        if check is not None:
            checks.append(check)
    order = {t.name: i for i, t in enumerate(config.tables)}
    return sorted(checks, key=lambda c: order.get(c.suite, len(order)))


def _read(config: Config, source: psycopg.Connection | None) -> Catalog:
    schemas = qualified_schemas([t.name for t in config.tables])
    if source is not None:
        return read_catalog(source, schemas)
    from reconcile.connections import connect

    with connect(config.source) as conn:
        return read_catalog(conn, schemas)


def read_invariants(target: psycopg.Connection) -> list[Invariant]:
    """The invariants recorded in ``reconcile.invariants`` (empty when the table does not exist)."""
    exists = target.execute("SELECT to_regclass('reconcile.invariants') IS NOT NULL").fetchone()[0]
    if not exists:
        return []
    rows = target.execute(sql.SQL("SELECT name, kind, spec FROM {} ORDER BY name").format(
        sql.Identifier("reconcile", "invariants"))).fetchall()
    out = []
    for name, kind, spec in rows:
        try:
            doc = json.loads(spec) if spec else {}
        except ValueError:
            doc = {}
        out.append(Invariant(name, kind, {k: v for k, v in doc.items() if k not in ("name", "kind")}))
    return out


def _trigger_invariants(catalog: Catalog) -> list[Invariant]:
    out = []
    for table in catalog.tables:
        for trig in table.triggers:
            _, inv = describe_trigger_body(trig.body, table=table.qualified, events=trig.events,
                                           trigger=f"{table.qualified}.{trig.name}")
            if inv is not None:
                out.append(inv)
    return out


def replacement_of(invariant: dict[str, Any] | None, covered: set[tuple[str, ...]],
                   tables: set[str]) -> tuple[str, str] | None:
    """The expectation (suite, name) that checks ``invariant`` (an audit finding's ``details["invariant"]``)
    in every check run, or None when no expectation does (another kind, or a table outside the migration).

    The ledger suite's ``balance_equals_sum_of_entries`` when it covers the same columns (``covered``:
    :func:`ledger_balance`), else the generated ``invariant:<name>`` check of the accounts table's suite.

    >>> inv = {"name": "balance_equals_sum_of_entries:a.acc.bal", "kind": "balance_equals_sum_of_entries",
    ...        "accounts": "a.acc", "balance_column": "bal", "account_key": "id", "entries": "a.ent",
    ...        "amount_column": "amt", "entry_account_column": "acc_id"}
    >>> replacement_of(inv, set(), {"a.acc", "a.ent"})
    ('a.acc', 'invariant:balance_equals_sum_of_entries:a.acc.bal')
    >>> replacement_of(inv, {("a.acc", "bal", "a.ent", "amt")}, {"a.acc", "a.ent"})
    ('ledger', 'balance_equals_sum_of_entries')
    """
    if not isinstance(invariant, dict) or invariant.get("kind") != "balance_equals_sum_of_entries":
        return None
    spec = {k: v for k, v in invariant.items() if k not in ("name", "kind")}
    if (spec.get("accounts"), spec.get("balance_column"), spec.get("entries"), spec.get("amount_column")) in covered:
        from reconcile.checks.ledger import SUITE

        return SUITE, "balance_equals_sum_of_entries"
    check = _invariant_check(Invariant(str(invariant.get("name")), invariant["kind"], spec), covered, tables)
    return None if check is None else (check.suite, check.name)


def ledger_balance(config: Config) -> set[tuple[str, ...]]:
    """(accounts, balance, entries, amount) the ledger suite's balance invariant covers (empty: none)."""
    return _ledger_balance(config)


def _ledger_balance(config: Config) -> set[tuple[str, ...]]:
    """(accounts, balance, entries, amount) the ledger suite's balance invariant covers."""
    if "ledger" not in config.checks.suites:
        return set()
    accounts, entries = config.tables_with_role("accounts"), config.tables_with_role("entries")
    if not accounts or not entries:
        return set()
    return {(accounts[0].name, accounts[0].balance_column, entries[0].name, entries[0].amount_column)}


def _invariant_check(inv: Invariant, covered: set[tuple[str, ...]], tables: set[str]) -> Check | None:
    s = inv.spec
    needed = ("accounts", "balance_column", "account_key", "entries", "amount_column", "entry_account_column")
    if any(not s.get(k) for k in needed) or s["accounts"] not in tables:
        return None
    if (s["accounts"], s["balance_column"], s["entries"], s["amount_column"]) in covered:
        return None
    query = balance_query(s["accounts"], s["account_key"], s["balance_column"], s["entries"],
                          s["entry_account_column"], s["amount_column"])
    return Check(s["accounts"], f"invariant:{inv.name}", "UnexpectedRowsExpectation",
                 {"unexpected_rows_query": query},
                 f"{s['accounts']}.{s['balance_column']} differs from the sum of {s['entries']}.{s['amount_column']} "
                 f"(kept by trigger {s.get('replaces_trigger')} on the source)",
                 table=s["accounts"], evidence={"invariant": inv.to_dict()},
                 chunking=balance_chunking(s["account_key"], s["entries"], s["entry_account_column"]))


def _target_columns(target: psycopg.Connection, tables: Sequence[str]) -> dict[str, dict[str, Any]]:
    from reconcile.db.columns import read_columns  # the one column reader

    return {t: {c.name: c for c in cols} for t, cols in read_columns(target, tables=tables).items()}


def target_conversions(table: Table, catalog: Catalog, target: dict[str, Any] | None = None) -> dict[str, str]:
    """Column -> the column contract's conversion (``none`` where the target keeps the source's type).

    From the target's catalog when given (its real types), else from the plan's decision.
    """
    from reconcile.audit.translate import translate_column
    from reconcile.db.columns import conversion_for

    out: dict[str, str] = {}
    for col in table.columns:
        if target is not None:
            t = target.get(col.name)
            if t is None:
                continue
            base = col.base_type_name if col.type_kind == "d" else col.type_name
            category = col.base_category if col.type_kind == "d" else col.category
            out[col.name] = conversion_for(base or "", category or "", t.base) or "unknown"
        else:
            out[col.name] = translate_column(col, table, catalog).conversion
    return out


def table_checks(table: Table, catalog: Catalog | None = None,
                 conversions: dict[str, str] | None = None) -> list[Check]:
    """Expectations re-expressing one table's keys, NOT NULL columns, CHECKs and foreign keys.

    ``conversions`` (column -> the column contract's conversion) makes each check fit the target's
    types; without it every column is taken to keep its type.
    """
    name = table.qualified
    checks: list[Check] = []
    conversions = conversions or {}

    def changed(columns: Sequence[str]) -> list[str]:
        return [c for c in columns if not expression_follows(conversions.get(c, "none"), table.column(c))]

    def add(check_name: str, cls: str, kwargs: dict[str, Any], what: str, con: Constraint | None = None,
            sides: tuple[str, ...] = ("source", "target"), chunking: Chunking = ROW_WISE, **extra: Any) -> None:
        evidence = {"constraint": con.name, "definition": con.definition} if con is not None else {}
        checks.append(Check(name, check_name, cls, kwargs, what, table=name, evidence=evidence | extra, sides=sides,
                            chunking=chunking))

    def source_only(columns: Sequence[str]) -> dict[str, Any]:
        moved = changed(columns)
        if not moved:
            return {}
        return {"sides": ("source",), "target_note": f"runs on the source only: {', '.join(moved)} change type on "
                                                     "the target (column contract)"}

    for con in table.constraints:
        if con.kind in ("p", "u") and con.columns:
            label = "primary key" if con.kind == "p" else f"unique constraint {con.name}"
            if len(con.columns) == 1:
                add(f"unique:{con.columns[0]}", "ExpectColumnValuesToBeUnique", {"column": con.columns[0]},
                    f"two rows of {name} share {con.columns[0]} ({label})", con, chunking=Chunking(con.columns[0]),
                    **source_only(con.columns))
            else:
                add(f"unique:{','.join(con.columns)}", "ExpectCompoundColumnsToBeUnique",
                    {"column_list": list(con.columns), "ignore_row_if": "any_value_is_missing"},
                    f"two rows of {name} share ({', '.join(con.columns)}) ({label})", con,
                    chunking=Chunking(con.columns[0]), **source_only(con.columns))  # equal tuples share a first column
    for col in table.columns:
        if col.not_null and not col.generated:
            add(f"not_null:{col.name}", "ExpectColumnValuesToNotBeNull", {"column": col.name},
                f"{name}.{col.name} is NULL (NOT NULL on the source)")
    for con in table.constraints:
        if con.kind == "c":
            moved = changed(con.columns)
            target_definition = rewrite_expression(con.definition, catalog) if catalog is not None else con.definition
            if moved:
                check = _check_constraint(name, con)
                checks.append(dataclasses.replace(check, sides=("source",), evidence=check.evidence | {
                    "target_note": f"runs on the source only: {', '.join(moved)} change type on the target, where "
                                   "the plan leaves this CHECK out (finding check_on_converted_column)"}))
            elif target_definition != con.definition:
                # Enum or domain casts in the definition: the target has text / the base type instead.
                checks.append(dataclasses.replace(_check_constraint(name, con), sides=("source",)))
                target_con = dataclasses.replace(con, definition=target_definition)
                checks.append(dataclasses.replace(_check_constraint(name, target_con), sides=("target",),
                                                  evidence={"constraint": con.name, "definition": con.definition,
                                                            "target_definition": target_definition}))
            else:
                checks.append(_check_constraint(name, con))
        elif con.kind == "f" and con.ref_table and con.columns and len(con.columns) == len(con.ref_columns):
            if catalog is not None and not catalog.has_table(con.ref_table):
                continue
            child = " AND ".join(f"c.{ident(c)} IS NOT NULL" for c in con.columns)
            match = " AND ".join(f"p.{ident(p)} = c.{ident(c)}" for c, p in zip(con.columns, con.ref_columns))
            add(f"foreign_key:{con.name}", "UnexpectedRowsExpectation",
                {"unexpected_rows_query": f"SELECT c.* FROM (SELECT * FROM {{batch}}) AS c WHERE {child} AND NOT EXISTS "
                                          f"(SELECT 1 FROM {qualified(con.ref_table)} AS p WHERE {match})"},
                f"a row of {name} has no parent in {con.ref_table} (foreign key {con.name})", con)
    return checks


def _check_constraint(table: str, con: Constraint) -> Check:
    definition = con.definition.removesuffix(" NOT VALID")
    evidence = {"constraint": con.name, "definition": con.definition}
    in_set = _in_set(definition)
    if in_set is not None:
        column, values = in_set
        return Check(table, f"check:{con.name}", "ExpectColumnValuesToBeInSet",
                     {"column": column, "value_set": values},
                     f"{table}.{column} holds a value outside {values} (CHECK {con.name})", table=table,
                     evidence=evidence, chunking=ROW_WISE)
    expression = definition.removeprefix("CHECK ").strip()
    query = f"SELECT t.* FROM (SELECT * FROM {{batch}}) AS t WHERE NOT coalesce({escape_query(expression)}, true)"
    return Check(table, f"check:{con.name}", "UnexpectedRowsExpectation", {"unexpected_rows_query": query},
                 f"a row of {table} breaks CHECK {con.name}: {expression}", table=table, evidence=evidence,
                 chunking=ROW_WISE)


def _in_set(definition: str) -> tuple[str, list[str]] | None:
    """``CHECK ((kind = ANY (ARRAY['a'::text, 'b'::text])))`` -> ("kind", ["a", "b"]); else None."""
    m = _IN_SET.match(definition)
    if not m:
        return None
    values = []
    for item in _split(m["items"]):
        im = _ITEM.match(item.strip())
        if not im:
            return None
        values.append(im["v"].replace("''", "'"))
    col = m["col"]
    return (col[1:-1].replace('""', '"') if col.startswith('"') else col), values


def _split(items: str) -> Iterable[str]:
    part, quoted = "", False
    for ch in items:
        if ch == "'":
            quoted = not quoted
        if ch == "," and not quoted:
            yield part
            part = ""
        else:
            part += ch
    if part.strip():
        yield part
