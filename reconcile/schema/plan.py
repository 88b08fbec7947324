"""The target schema plan: DDL that Aurora DSQL accepts and that keeps every value exactly.

Built from the source :class:`~reconcile.audit.catalog.Catalog` (and the observed sizes of plain
``numeric`` columns) in one code path for both dialects (:mod:`reconcile.schema.dialect`). The
plan is a list of single statements, each run in its own transaction, each citing the audit
findings it answers (``code:object`` ids):

1. ``pre-load``: schemas, free-standing sequences, tables (primary key, UNIQUE and CHECK inline:
   DSQL cannot add them later), indexes (``CREATE INDEX ASYNC`` on DSQL);
2. ``post-load``: foreign keys, ``ADD CONSTRAINT ... NOT VALID`` then ``VALIDATE`` (ASYNC on DSQL).
   Enforced from the moment they are added, so they go on after the backfill.

Types come from :func:`reconcile.audit.translate.translate_column`. What the plan cannot carry
(triggers, procedural code, rules, exclusion constraints, materialized views, views, partitions,
non-btree indexes) is listed in ``left_out`` with its finding; a balance trigger also yields its
replacement invariant. Generated keys keep the source's values; their sequences are recorded
(``sequences``) so the key generator can start above them at cutover.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from psycopg import sql

from reconcile.audit.carry import SpecialValues, carry_findings
from reconcile.audit.catalog import Catalog, Index, Table
from reconcile.audit.checks import QUOTAS, catalog_findings
from reconcile.audit.findings import Finding, make
from reconcile.audit.translate import (
    IDENTITY_CACHE,
    ColumnTranslation,
    IdStrategy,
    NumericProfile,
    expression_follows,
    rewrite_expression,
    translate_column,
)
from reconcile.audit.triggers import Invariant
from reconcile.config import TableSpec
from reconcile.db.names import split_name
from reconcile.errors import TerminalError
from reconcile.keyrule import rule_sentence
from reconcile.schema.contract import special_refusal
from reconcile.schema.dialect import Dialect, get_dialect
from reconcile.errors import NotFound

__all__ = ["PHASES", "LeftOut", "PlannedStatement", "SchemaPlan", "SequenceRecord", "TablePlan", "build_plan"]

Phase = Literal["pre-load", "post-load"]
PHASES: tuple[Phase, ...] = ("pre-load", "post-load")


@dataclass(frozen=True)
class PlannedStatement:
    """One DDL statement of the plan, run alone in its own transaction."""

    number: int
    phase: Phase
    kind: str
    """schema, sequence, table, index, foreign_key, validate."""
    object: str
    """What it creates: ``schema``, ``schema.table``, ``schema.index``, ``schema.table.constraint``."""
    statement: sql.Composed
    table: str | None = None
    answers: tuple[str, ...] = ()
    """Finding ids (``code:object``) this statement answers."""
    notes: tuple[str, ...] = ()
    returns_job: bool = False
    """On this dialect the statement returns a background job id to wait for."""

    @property
    def sql(self) -> str:
        return self.statement.as_string(None)

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "phase": self.phase, "kind": self.kind, "object": self.object,
                "table": self.table, "sql": self.sql, "answers": list(self.answers), "notes": list(self.notes),
                "returns_job": self.returns_job}


@dataclass(frozen=True)
class TablePlan:
    """A target table: its columns as translated, and its keys."""

    name: str
    columns: tuple[ColumnTranslation, ...]
    primary_key: tuple[str, ...] = ()
    source: str | None = None
    """The source table, when it differs (never, today)."""
    refused: Mapping[str, str] = field(default_factory=dict)
    """Column -> why the pipeline cannot carry its values (NaN or infinity in a numeric column)."""

    def column_map(self) -> list[dict[str, Any]]:
        """How each column travels: ``{"name", "type", "source_type", "conversion", "copy_expression", "refused"}``."""
        return [{"name": c.name, "type": c.target_type, "source_type": c.source_type, "conversion": c.conversion,
                 "copy_expression": c.copy_expression, "refused": self.refused.get(c.name)} for c in self.columns]


@dataclass(frozen=True)
class LeftOut:
    """A source object the plan does not create, and the finding saying why."""

    object_type: str
    object: str
    finding: str
    replacement: str | None = None
    """What replaces it (an invariant's name), when something does."""


@dataclass(frozen=True)
class SequenceRecord:
    """A generated key: the source sequence behind it and its value when the plan was made."""

    sequence: str
    table: str
    column: str
    last_value: int | None
    strategy: str
    """``bigint`` (plain column, values copied) or ``identity``."""


@dataclass(frozen=True)
class SchemaPlan:
    """The target DDL and everything needed to review and apply it."""

    dialect: str
    source_fingerprint: str
    statements: tuple[PlannedStatement, ...]
    tables: tuple[TablePlan, ...] = ()
    left_out: tuple[LeftOut, ...] = ()
    sequences: tuple[SequenceRecord, ...] = ()
    invariants: tuple[Invariant, ...] = ()
    findings: tuple[Finding, ...] = field(default=(), compare=False)
    """The catalog findings (plus the plan's own): every id cited above is one of these."""

    @property
    def schemas(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(split_name(t.name)[0] for t in self.tables))

    def table(self, name: str) -> TablePlan:
        for t in self.tables:
            if t.name == name:
                return t
        raise NotFound(f"the plan has no table {name}; it plans {', '.join(t.name for t in self.tables) or 'no table'}")

    def phase(self, phase: str) -> list[PlannedStatement]:
        return [s for s in self.statements if phase in ("all", s.phase)]

    def render(self) -> str:
        """The plan as an SQL script: one statement per transaction, a comment per change."""
        out = [
            "-- Target schema for Aurora DSQL, generated by `reconcile schema plan` from the source catalog.",
            "-- Generated file: do not edit by hand; regenerate it after changing the source or the settings.",
            f"-- source fingerprint: {self.source_fingerprint}",
            f"-- dialect: {self.dialect}"
            + (" (indexes and validations run as background jobs: wait for each)" if self.dialect == "dsql"
               else " (local stand-in / PostgreSQL: synchronous indexes)"),
            "-- Run every statement in its own transaction (DSQL: one DDL per transaction, never with DML);",
            "-- `reconcile schema apply` does, skipping what the target already has.",
            "",
        ]
        total = len(self.statements)
        for s in self.statements:
            out.append(f"-- [{s.number}/{total}] {s.phase}: {s.kind} {s.object}")
            for note in s.notes:
                out.append(f"--   {note}")
            if s.answers:
                out.append(f"--   answers: {', '.join(s.answers)}")
            out.append(s.sql + ";")
            out.append("")
        if self.left_out:
            out.append("-- Left out of the plan (each answers the finding named):")
            for lo in self.left_out:
                extra = f"; replaced by invariant {lo.replacement}" if lo.replacement else ""
                out.append(f"--   {lo.object_type} {lo.object}: {lo.finding}{extra}")
            out.append("")
        if self.sequences:
            out.append("-- Generated keys: the source sequences, to start the target's keys above at cutover:")
            for r in self.sequences:
                value = "never used" if r.last_value is None else f"last value {r.last_value}"
                out.append(f"--   {r.table}.{r.column} <- {r.sequence} ({value}; {r.strategy})")
            out.append("")
        contract = [c for c in self.contract() if c.converted or c.refused]
        if contract:
            out.append("-- Column contract (stored by `schema apply`; backfill, replay and diff all read through it):")
            out += [f"--   {c.table}.{c.describe()}" for c in contract]
            out.append("")
        return "\n".join(out)

    def contract(self) -> list[Any]:
        """Every planned column's :class:`~reconcile.schema.contract.ColumnContract`."""
        from reconcile.schema.contract import contract_from_plan

        return contract_from_plan(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dialect": self.dialect,
            "source_fingerprint": self.source_fingerprint,
            "statements": [s.to_dict() for s in self.statements],
            "tables": [{"name": t.name, "primary_key": list(t.primary_key), "columns": t.column_map()}
                       for t in self.tables],
            "left_out": [lo.__dict__ for lo in self.left_out],
            "sequences": [r.__dict__ for r in self.sequences],
            "invariants": [i.to_dict() for i in self.invariants],
            "column_contract": [c.to_dict() for c in self.contract()],
        }


_NOT_VALID = re.compile(r"\s+NOT\s+VALID\s*$", re.I)


def _raw(text: str) -> sql.SQL:
    # Expressions and constraint bodies printed by the source server's own catalog functions
    # (pg_get_constraintdef, pg_get_expr, pg_get_indexdef), rewritten for DSQL: not user input.
    return sql.SQL(text)  # type: ignore[arg-type]


def _check_names(table: Table, columns: Sequence[ColumnTranslation]) -> dict[str, str]:
    """Explicit names for the CHECKs the plan adds to columns (enum labels, inlined domains): left unnamed,
    PostgreSQL would call one ``<table>_<column>_check``, which a source constraint may already be called."""
    taken = {con.name for con in table.constraints}
    out: dict[str, str] = {}
    for c in columns:
        if not c.check:
            continue
        name, n = f"{table.name}_{c.name}_type_check"[:63], 1
        while name in taken:
            n += 1
            name = f"{table.name}_{c.name}_type_check{n}"[:63]
        taken.add(name)
        out[c.name] = name
    return out


def _column_sql(c: ColumnTranslation, check_name: str | None = None) -> sql.Composed:
    parts: list[sql.Composable] = [sql.Identifier(c.name), sql.SQL(" "), _raw(c.target_type)]
    if c.identity:
        parts += [sql.SQL(" "), _raw(c.identity)]
    if c.default is not None:
        parts += [sql.SQL(" DEFAULT "), _raw(c.default)]
    if c.not_null:
        parts.append(sql.SQL(" NOT NULL"))
    if c.check:
        if check_name:
            parts += [sql.SQL(" CONSTRAINT "), sql.Identifier(check_name)]
        parts += [sql.SQL(" CHECK ("), _raw(c.check), sql.SQL(")")]
    return sql.Composed(parts)


def _selected_tables(catalog: Catalog, tables: Sequence[TableSpec | str] | None) -> tuple[list[Table], list[str]]:
    if tables is None:
        return [t for t in catalog.tables if t.persistence != "t"], []
    chosen: list[Table] = []
    missing: list[str] = []
    for spec in tables:
        name = spec if isinstance(spec, str) else spec.name
        if catalog.has_table(name):
            chosen.append(catalog.table(name))
        else:
            missing.append(name)
    return chosen, missing


def build_plan(
    catalog: Catalog,
    *,
    dialect: str | Dialect = "dsql",
    tables: Sequence[TableSpec | str] | None = None,
    numeric: Mapping[str, NumericProfile] | None = None,
    id_strategy: IdStrategy = "bigint",
    findings: Sequence[Finding] | None = None,
    invariants: Sequence[Invariant] | None = None,
    special: Mapping[str, SpecialValues] | None = None,
) -> SchemaPlan:
    """The target DDL for the source catalog.

    Args:
        catalog: the source catalog (:func:`reconcile.audit.read_catalog`).
        dialect: ``dsql`` or ``postgres`` (the stand-in), or a :class:`Dialect`.
        tables: the tables to create, in order (TableSpec or ``schema.table``); None: every table
            of the catalog. Configured keys become primary keys where the source has none.
        numeric: observed profiles of plain numeric columns (``schema.table.column``).
        id_strategy: generated keys as plain ``bigint`` (default) or ``identity``.
        findings, invariants: the catalog findings to cite (default: computed here).
        special: NaN and infinity counts of numeric columns (``schema.table.column``), from
            :func:`reconcile.audit.carry.special_numeric_scan`: such columns are refused.

    Raises:
        TerminalError: a configured table does not exist in the source.
    """
    d = get_dialect(dialect)
    numeric = numeric or {}
    chosen, missing = _selected_tables(catalog, tables)
    if missing:
        raise TerminalError(
            f"Configured table(s) {', '.join(missing)} do not exist in the source "
            f"(schemas {', '.join(catalog.schemas)}); fix [[tables]] in the configuration.")
    keys = {t.name: tuple(t.key) for t in tables or () if isinstance(t, TableSpec)}
    if findings is None or invariants is None:
        computed, found_invariants = catalog_findings(catalog, keys=keys, numeric=numeric, id_strategy=id_strategy)
        findings = computed if findings is None else findings
        invariants = found_invariants if invariants is None else invariants
    known = {f.id for f in findings}
    extra: list[Finding] = [f for f in carry_findings(catalog, keys=keys, special=special) if f.id not in known]
    known |= {f.id for f in extra}
    special = special or {}

    def cite(code: str, obj: str) -> str:
        fid = f"{code}:{obj}"
        if fid not in known:
            raise AssertionError(f"plan cites {fid}, which the audit did not report")  # a bug, not user error
        return fid

    planned_names = {t.qualified for t in chosen if not t.partition_of and len(t.columns) <= QUOTAS["columns"]}
    statements: list[dict[str, Any]] = []
    left_out: list[LeftOut] = []
    table_plans: list[TablePlan] = []
    seq_records: list[SequenceRecord] = []
    used_sequences: set[str] = set()

    for schema in dict.fromkeys(t.schema for t in chosen):
        statements.append(dict(phase="pre-load", kind="schema", object=schema,
                               statement=sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))))

    table_statements: list[dict[str, Any]] = []
    index_statements: list[dict[str, Any]] = []
    fk_statements: list[dict[str, Any]] = []
    for table in chosen:
        q = table.qualified
        if table.partition_of:
            left_out.append(LeftOut("table", q, cite("partition", q)))
            continue
        if len(table.columns) > QUOTAS["columns"]:
            left_out.append(LeftOut("table", q, cite("quota_columns", q)))  # DSQL would refuse it
            continue
        ident = sql.Identifier(table.schema, table.name)
        columns = [translate_column(c, table, catalog, numeric=numeric.get(f"{q}.{c.name}"), id_strategy=id_strategy)
                   for c in table.columns]
        answers: list[str] = []
        notes: list[str] = []
        refused: dict[str, str] = {}
        if table.persistence == "u":
            answers.append(cite("unlogged_table", q))
            notes.append("UNLOGGED dropped: an ordinary table")
        if table.kind == "p":
            answers.append(cite("partitioned_table", q))
            notes.append(f"partitioning {table.partition_key} dropped: one table")
        if table.inherits:
            answers.append(cite("inherited_table", q))
        for c in columns:
            profile = numeric.get(f"{q}.{c.name}")
            if profile is not None and not profile.fits_anywhere:
                unfit = make("numeric_unfit", f"{q}.{c.name}", f"{q}.{c.name} holds values no DSQL numeric holds "
                             f"({profile.infinities} infinite, up to {profile.max_integer_digits} integer digits)",
                             level="data", profile=profile.__dict__)
                extra.append(unfit)
                known.add(unfit.id)
                answers.append(unfit.id)
                notes.append(f"{c.name}: WARNING some values fit no numeric column; the copy will reject them")
            for code, obj in c.answers:
                answers.append(cite(code, obj))
            notes += [f"{c.name}: {n}" for n in c.notes]
            why = special_refusal(*special[f"{q}.{c.name}"]) if f"{q}.{c.name}" in special else None
            if why is not None:
                refused[c.name] = why
                if f"numeric_special:{q}.{c.name}" in known:
                    answers.append(cite("numeric_special", f"{q}.{c.name}"))
                notes.append(f"{c.name}: REFUSED: {why}; the backfill and the replay refuse the table until it is fixed")
            if f"key_conversion:{q}.{c.name}" in known:
                answers.append(cite("key_conversion", f"{q}.{c.name}"))
            if c.identity or any(code in ("serial", "identity") for code, _ in c.answers):
                col = table.column(c.name)
                seq_name = (col.default_sequences or (col.identity_sequence,))[0]
                if seq_name:
                    used_sequences.add(seq_name)
                    seq = catalog.sequence(seq_name)
                    seq_records.append(SequenceRecord(seq_name, q, c.name, seq.last_value if seq else None,
                                                      "identity" if c.identity else "bigint"))
        check_names = _check_names(table, columns)
        elements: list[sql.Composable] = [_column_sql(c, check_names.get(c.name)) for c in columns]
        json_columns = {c.name for c in columns if c.target_type == "json"}
        pk = table.primary_key
        primary_key: tuple[str, ...] = ()
        if pk is not None:
            primary_key = pk.columns
            elements.append(sql.SQL("CONSTRAINT {} {}").format(
                sql.Identifier(pk.name), _raw(rewrite_expression(pk.definition, catalog))))
        elif keys.get(q) and all(any(c.name == k for c in table.columns) for k in keys[q]):
            primary_key = keys[q]
            answers.append(cite("no_primary_key", q))
            notes.append(f"primary key ({', '.join(primary_key)}) from the configuration: "
                         f"{rule_sentence(q, primary_key)}")
            elements.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, primary_key))))
        else:
            answers.append(cite("no_primary_key", q))
            notes.append("no primary key: DSQL adds a hidden one; reconcile needs a configured key")
        for con in table.constraints:
            if con.inherited:
                continue
            cq = f"{q}.{con.name}"
            if con.kind == "u":
                if set(con.columns) & json_columns:
                    extra.append(make("custom_type", cq, f"unique constraint {con.name} covers a column stored as "
                                                         "json, which cannot be indexed", why="json values have no "
                                                         "equality operator on DSQL.", fix="Left out of the plan; "
                                                         "enforce uniqueness on a hash column in the application."))
                    left_out.append(LeftOut("constraint", cq, f"custom_type:{cq}"))
                    continue
                elements.append(sql.SQL("CONSTRAINT {} {}").format(sql.Identifier(con.name),
                                                                   _raw(rewrite_expression(con.definition, catalog))))
            elif con.kind == "c":
                changed = [c.name for c in columns
                           if c.name in con.columns and not expression_follows(c.conversion, table.column(c.name))]
                if changed:
                    found = make("check_on_converted_column", cq, f"check {con.name} on {q} ({con.definition}) refers "
                                 f"to {', '.join(changed)}, whose type changes on the target", table=q,
                                 columns=changed, definition=con.definition)
                    extra.append(found)
                    known.add(found.id)
                    left_out.append(LeftOut("constraint", cq, found.id))
                    continue
                body = _NOT_VALID.sub("", rewrite_expression(con.definition, catalog))
                if not con.validated:
                    answers.append(cite("check_not_valid", cq))
                elements.append(sql.SQL("CONSTRAINT {} {}").format(sql.Identifier(con.name), _raw(body)))
            elif con.kind == "x":
                left_out.append(LeftOut("constraint", cq, cite("exclusion_constraint", cq)))
            elif con.kind == "f":
                if con.ref_table not in planned_names:
                    code = "foreign_key" if catalog.has_table(con.ref_table or "") else "foreign_key_outside"
                    left_out.append(LeftOut("constraint", cq, cite(code, cq)))
                    continue
                definition = _NOT_VALID.sub("", rewrite_expression(con.definition, catalog))
                fk_statements.append(dict(
                    phase="post-load", kind="foreign_key", object=cq, table=q, answers=[cite("foreign_key", cq)],
                    notes=["added NOT VALID (enforced for new writes at once), then validated"],
                    statement=sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
                        ident, sql.Identifier(con.name), _raw(definition))))
                fk_statements.append(dict(
                    phase="post-load", kind="validate", object=cq, table=q, answers=[cite("foreign_key", cq)],
                    statement=d.validate_constraint(table=ident, name=con.name), returns_job=d.async_ddl))
        for trig in table.triggers:
            tq = f"{q}.{trig.name}"
            code = "trigger_balance" if any(i.spec.get("replaces_trigger") == tq for i in invariants) else "trigger"
            replacement = next((i.name for i in invariants if i.spec.get("replaces_trigger") == tq), None)
            left_out.append(LeftOut("trigger", tq, cite(code, tq), replacement))
        for rule in table.rules:
            left_out.append(LeftOut("rule", f"{q}.{rule.name}", cite("rule", f"{q}.{rule.name}")))
        table_statements.append(dict(
            phase="pre-load", kind="table", object=q, table=q, answers=list(dict.fromkeys(answers)), notes=notes,
            statement=sql.SQL("CREATE TABLE IF NOT EXISTS {} (\n    {}\n)").format(
                ident, sql.SQL(",\n    ").join(elements))))
        table_plans.append(TablePlan(q, tuple(columns), tuple(primary_key), refused=refused))
        # DSQL counts every index, the unique constraints' and the primary key's included.
        room = QUOTAS["indexes"] - sum(1 for i in table.indexes if i.backs_constraint in ("p", "u"))
        for idx in table.indexes:
            spec = _index_statement(idx, table, catalog, d, json_columns, cite, left_out, extra)
            if spec and room <= 0:
                left_out.append(LeftOut("index", spec["object"], cite("quota_indexes", q)))
            elif spec:
                index_statements.append(spec)
                room -= 1

    # free-standing sequences of the planned schemas
    schemas = {t.schema for t in chosen}
    seq_statements = []
    for seq in catalog.sequences:
        if seq.schema not in schemas or seq.qualified in used_sequences or seq.owned_by or seq.identity:
            continue
        if any(seq.qualified in c.default_sequences for t in catalog.tables for c in t.columns):
            continue  # feeds a table that is not migrated
        start = (seq.last_value + seq.increment) if seq.last_value is not None else seq.start
        seq_statements.append(dict(
            phase="pre-load", kind="sequence", object=seq.qualified, answers=[cite("sequence", seq.qualified)],
            notes=[f"bigint, CACHE {IDENTITY_CACHE}, starting after the source's value"],
            statement=sql.SQL("CREATE SEQUENCE IF NOT EXISTS {} AS bigint START WITH {} INCREMENT BY {} "
                              "CACHE {}").format(
                sql.Identifier(seq.schema, seq.name), sql.Literal(int(start)), sql.Literal(int(seq.increment)),
                sql.Literal(IDENTITY_CACHE))))

    # Objects outside tables that the plan does not create (types are translated per column).
    for f in findings:
        if f.code in ("procedural_function", "procedure", "sql_function", "materialized_view", "view",
                      "extension", "enum", "domain"):
            left_out.append(LeftOut(f.object_type, f.object, f.id))

    ordered = statements + seq_statements + table_statements + index_statements + fk_statements
    planned = tuple(
        PlannedStatement(number=n, phase=s["phase"], kind=s["kind"], object=s["object"], statement=s["statement"],
                         table=s.get("table"), answers=tuple(s.get("answers", ())), notes=tuple(s.get("notes", ())),
                         returns_job=s.get("returns_job", False))
        for n, s in enumerate(ordered, start=1))
    return SchemaPlan(dialect=d.name, source_fingerprint=catalog.fingerprint(), statements=planned,
                      tables=tuple(table_plans), left_out=tuple(left_out), sequences=tuple(seq_records),
                      invariants=tuple(invariants), findings=tuple(findings) + tuple(extra))


def _index_statement(idx: Index, table: Table, catalog: Catalog, d: Dialect, json_columns: set[str], cite,
                     left_out: list[LeftOut], extra: list[Finding]) -> dict[str, Any] | None:
    iq = f"{table.schema}.{idx.name}"
    if idx.backs_constraint in ("p", "u", "x") or idx.primary or idx.exclusion or idx.inherited:
        return None  # created inline with its constraint, or left out with it
    if idx.method not in ("btree", "hash"):
        left_out.append(LeftOut("index", iq, cite("index_method", iq)))
        return None
    if idx.key_count > QUOTAS["key_columns"]:
        left_out.append(LeftOut("index", iq, cite("quota_key_columns", iq)))
        return None
    covered = {c for c in idx.key_columns if c} | set(idx.include)
    if covered & json_columns:
        extra.append(make("custom_type", iq, f"index {iq} covers a column stored as json",
                          why="json values cannot be indexed on DSQL (no btree operator class).",
                          fix="Left out of the plan; index a scalar extracted into its own column instead."))
        left_out.append(LeftOut("index", iq, f"custom_type:{iq}"))
        return None
    answers = [cite("index_async", iq)]
    notes = []
    if idx.method == "hash":
        answers.append(cite("index_method", iq))
        notes.append("hash index created as btree")
    if any(o & 3 for o in idx.options):
        answers.append(cite("index_order", iq))
        notes.append("DESC / NULLS FIRST dropped")
    keys = [sql.SQL("({})").format(_raw(rewrite_expression(k, catalog))) if is_expr else sql.Identifier(col)
            for k, is_expr, col in zip(idx.keys, idx.key_is_expression, idx.key_columns)]
    predicate = _raw(rewrite_expression(idx.predicate, catalog)) if idx.predicate else None
    statement = d.create_index(name=idx.name, table=sql.Identifier(table.schema, table.name), keys=keys,
                               unique=idx.unique, include=idx.include, predicate=predicate)
    return dict(phase="pre-load", kind="index", object=iq, table=table.qualified, answers=answers, notes=notes,
                statement=statement, returns_job=d.async_ddl)


def copy_columns(plan: SchemaPlan, table: str) -> list[tuple[str, str | None]]:
    """(column, copy expression or None) of a planned table, in column order."""
    return [(c.name, c.copy_expression) for c in plan.table(table).columns]


def cited(plan: SchemaPlan) -> set[str]:
    """Every finding id the plan's statements and left-out objects cite."""
    out = {a for s in plan.statements for a in s.answers}
    out |= {lo.finding for lo in plan.left_out}
    return out

