"""Findings: what the audit reports, one immutable record per problem and object.

A finding says *what* was found (``message``), *why* it matters on Aurora DSQL (``why``) and the
*fix* (what to do, or what ``reconcile schema plan`` does about it). Its ``id`` is
``code:object``, stable across runs, so the schema plan can name the finding each statement
answers, and two audits of an unchanged source give the same ids.

Severities, from worst:

* ``blocker``: cannot move as it is and the schema plan cannot fix it (application code, data or a
  person must act before cutover): triggers, procedural code, rules, exclusion constraints,
  materialized views, data that fits no target column, objects over DSQL quotas.
* ``must-change``: the target must differ from the source; the schema plan makes the change
  (review it): SERIAL to bigint, plain numeric to an explicit precision, enums to text + CHECK,
  arrays/jsonb to json, collations to C, synchronous to asynchronous indexes...
* ``warning``: migrates, but behaviour can differ in a way that bites (text keys that sort
  differently under C, statements near the transaction limits).
* ``info``: noted for completeness (how foreign keys will be created, objects left for review).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["CODES", "LEVELS", "Code", "Finding", "Severity", "counts", "make", "sort_findings"]

LEVELS = ("statement", "catalog", "data", "workload")
"""Where a finding comes from: dsql-lint over the DDL, the catalog, a data scan, pg_stat_statements."""


class Severity(str, enum.Enum):
    """How urgent a finding is; compares by urgency (``BLOCKER`` is the largest)."""

    BLOCKER = "blocker"
    MUST_CHANGE = "must-change"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for blocker ... 3 for info (sort key: most urgent first)."""
        return _RANK[self]

    def __str__(self) -> str:
        return self.value


_RANK = {Severity.BLOCKER: 0, Severity.MUST_CHANGE: 1, Severity.WARNING: 2, Severity.INFO: 3}


@dataclass(frozen=True)
class Code:
    """The fixed part of a kind of finding: its severity, why it matters on DSQL and the usual fix."""

    severity: Severity
    object_type: str
    why: str
    fix: str


@dataclass(frozen=True)
class Finding:
    """One problem with one object.

    >>> f = make("plain_numeric", "ledger.journal.fx_rate", "plain numeric")
    >>> f.id, f.severity.value
    ('plain_numeric:ledger.journal.fx_rate', 'must-change')
    """

    code: str
    """Kind of finding (a key of :data:`CODES`, or ``lint.<rule>`` for a dsql-lint rule)."""
    severity: Severity
    level: str
    """One of :data:`LEVELS`."""
    object_type: str
    """table, column, trigger, function, index, constraint, sequence, type, extension, ..."""
    object: str
    """Qualified name: ``schema.table``, ``schema.table.column``, ``schema.table.trigger``..."""
    message: str
    """What was found, with the evidence."""
    why: str
    """Why it matters on Aurora DSQL."""
    fix: str
    """What to do, or what the schema plan does about it."""
    details: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """JSON-able evidence (lint rules that confirmed it, sampled values, the invariant...)."""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"finding level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        object.__setattr__(self, "severity", Severity(self.severity))

    @property
    def id(self) -> str:
        """``code:object``: stable across runs; the schema plan cites it."""
        return f"{self.code}:{self.object}"

    def with_details(self, **extra: Any) -> Finding:
        """A copy with ``extra`` merged into ``details``."""
        return replace(self, details={**self.details, **extra})

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "code": self.code, "severity": self.severity.value, "level": self.level,
            "object_type": self.object_type, "object": self.object, "message": self.message,
            "why": self.why, "fix": self.fix, "details": dict(self.details),
        }


def counts(findings: Iterable[Finding]) -> dict[str, int]:
    """Findings per severity, every severity present (zeros included)."""
    out = {s.value: 0 for s in Severity}
    for f in findings:
        out[f.severity.value] += 1
    return out


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Most urgent first, then by object and code (a stable, readable order)."""
    return sorted(findings, key=lambda f: (f.severity.rank, f.object, f.code))


B, M, W, I = Severity.BLOCKER, Severity.MUST_CHANGE, Severity.WARNING, Severity.INFO

CODES: dict[str, Code] = {
    # --- procedural code --------------------------------------------------------------------
    "trigger_balance": Code(
        B, "trigger",
        "Aurora DSQL has no triggers: this trigger keeps a stored balance in step with the posted "
        "entries, and after cutover nothing would update the balance.",
        "Post the balance update in the application, in the same transaction as the entry insert; "
        "the plan leaves the trigger out and hands the invariant below to the balance checks."),
    "trigger": Code(
        B, "trigger",
        "Aurora DSQL has no triggers: what this trigger does would silently stop happening.",
        "Reimplement what it does in the application (or drop it if obsolete); the plan leaves it out."),
    "procedural_function": Code(
        B, "function",
        "Aurora DSQL runs LANGUAGE sql functions only; PL/pgSQL and other procedural languages are refused.",
        "Rewrite it as a LANGUAGE sql function or move the logic into the application; the plan leaves it out."),
    "procedure": Code(
        B, "procedure",
        "Aurora DSQL has no CREATE PROCEDURE (and no CALL of user procedures).",
        "Move the logic into the application (one transaction per call, within 3,000 rows); "
        "the plan leaves it out."),
    "sql_function": Code(
        I, "function",
        "LANGUAGE sql functions are supported on Aurora DSQL.",
        "The plan does not recreate functions: review it and create it on the target if the "
        "application needs it."),
    "rule": Code(
        B, "rule",
        "Aurora DSQL has no rewrite rules: the statement rewriting this rule does would stop happening.",
        "Reimplement the rule's effect in the application; the plan leaves it out."),
    # --- keys and generated values ----------------------------------------------------------
    "serial": Code(
        M, "column",
        "Aurora DSQL has no SERIAL/BIGSERIAL and no nextval() column defaults of this kind.",
        "The plan declares the column plain bigint and keeps the source's values; the source "
        "sequence's last value is recorded so the key generator can start above it at cutover "
        "(or plan with --id-strategy identity: bigint GENERATED BY DEFAULT AS IDENTITY, CACHE 65536)."),
    "identity": Code(
        M, "column",
        "Identity columns on Aurora DSQL are bigint only, with CACHE 1 or >= 65536; GENERATED ALWAYS "
        "would refuse the source's values during the copy.",
        "The plan declares bigint GENERATED BY DEFAULT AS IDENTITY with a valid CACHE; restart it "
        "above the recorded last value at cutover."),
    "sequence": Code(
        M, "sequence",
        "Sequences on Aurora DSQL are bigint only and need CACHE 1 or CACHE >= 65536.",
        "The plan creates it as bigint with CACHE 65536, starting after the source's last value."),
    "generated_column": Code(
        M, "column",
        "A stored generated column cannot take the source's values during the copy.",
        "The plan declares a plain column holding the copied values; compute it in the "
        "application (or a view) after cutover."),
    "default_function": Code(
        M, "column",
        "The column default calls a user-defined function, which the plan does not create on DSQL.",
        "The plan drops the default; set the value in the application."),
    "no_primary_key": Code(
        M, "table",
        "Aurora DSQL cannot add a primary key after CREATE TABLE, and reconcile copies, diffs and "
        "replays rows by key.",
        "Declare a unique, not-null key for the table in the configuration ([[tables]] key); the "
        "plan makes it the primary key."),
    "key_not_unique": Code(
        B, "table",
        "The table has no primary key and its configured key holds duplicate values or NULLs on the "
        "source: rows cannot be copied, replayed or compared one by one, and the target's primary key "
        "on it would refuse them.",
        "Remove the duplicates and NULLs on the source, or configure a key that is unique and not null "
        "([[tables]] key); every stage refuses the table until then."),
    # --- types ------------------------------------------------------------------------------
    "plain_numeric": Code(
        M, "column",
        "Aurora DSQL turns a plain numeric into numeric(18,6) and enforces it: values with more "
        "than 6 decimals are rounded and values with more than 12 integer digits are rejected (the "
        "silent money trap).",
        "The plan declares an explicit numeric(P,S) large enough for every value the source holds."),
    "enum": Code(
        M, "type",
        "Aurora DSQL has no CREATE TYPE, enums included.",
        "The plan stores the column as text with a CHECK listing the labels (text sorts "
        "alphabetically, not in label order)."),
    "domain": Code(
        I, "type",
        "Aurora DSQL supports domains, but the plan keeps each column's DDL self-contained.",
        "The plan declares the domain's base type with its CHECK inlined on each column."),
    "custom_type": Code(
        M, "column",
        "The column's type (composite, range, extension or network type) is not a storable type on "
        "Aurora DSQL.",
        "The plan stores its text form in a text column (the copy casts value::text); queries "
        "using the type's operators must change."),
    "array_column": Code(
        M, "column",
        "Array column types are not supported on Aurora DSQL.",
        "The plan stores the array as a JSON array in a json column (the copy uses "
        "array_to_json); queries using array operators must change."),
    "jsonb_column": Code(
        M, "column",
        "jsonb is reported to work at query time only on Aurora DSQL; json stores (at most 1 MiB "
        "per value).",
        "The plan declares json and the copy casts jsonb::json (jsonb's normalized text); jsonb "
        "operators and GIN indexes must change."),
    "money_column": Code(
        M, "column",
        "Aurora DSQL has no money type, and its text form depends on the server's lc_monetary.",
        "The plan stores the exact amount as numeric(38,6) (the copy and the replay cast money::numeric); "
        "the currency symbol is not stored, so code formatting the value must add it."),
    "key_conversion": Code(
        B, "column",
        "This key column's type changes on the target: keys would sort and compare differently on the two "
        "sides, so keyset chunks, the replay's upserts and the diff's key ranges could not agree.",
        "Configure a key whose type DSQL stores as it is (an integer, text, uuid...), or change the column's "
        "type on the source before the copy."),
    "extension": Code(
        M, "extension",
        "Aurora DSQL supports no extensions.",
        "Left out of the plan: columns of its types become text, and calls of its functions must "
        "change in the application."),
    "monitoring_extension": Code(
        I, "extension",
        "Monitoring extension: it does not exist on Aurora DSQL (use CloudWatch metrics instead).",
        "Nothing to migrate."),
    # --- tables -----------------------------------------------------------------------------
    "unlogged_table": Code(
        M, "table",
        "Aurora DSQL has no unlogged tables.",
        "The plan creates an ordinary (durable) table."),
    "temp_table": Code(
        I, "table",
        "Aurora DSQL has no temporary tables.",
        "Session data only: nothing to migrate; code that creates temporary tables must change."),
    "partitioned_table": Code(
        M, "table",
        "Aurora DSQL has no declarative partitioning (it distributes rows itself).",
        "The plan creates one ordinary table with the parent's columns and keys; the rows of every "
        "partition are copied into it."),
    "partition": Code(
        I, "table",
        "A partition of a partitioned table.",
        "Not created on the target: its rows land in the parent's table."),
    "inherited_table": Code(
        M, "table",
        "Aurora DSQL has no table inheritance.",
        "The plan creates it as an independent table with all of its columns."),
    "materialized_view": Code(
        B, "view",
        "Aurora DSQL has no materialized views.",
        "Replace it with a view or a table the application refreshes; the plan leaves it out."),
    "view": Code(
        I, "view",
        "Views are supported on Aurora DSQL.",
        "The plan does not recreate views: create it on the target after review."),
    # --- constraints and indexes ------------------------------------------------------------
    "exclusion_constraint": Code(
        B, "constraint",
        "Aurora DSQL has no exclusion constraints (and no GiST indexes): the rule it enforces "
        "would stop being enforced.",
        "Enforce it in the writing transaction in the application (DSQL's optimistic concurrency "
        "makes a read-then-write check safe when both writers touch the same row); the plan "
        "leaves it out."),
    "foreign_key": Code(
        I, "constraint",
        "Aurora DSQL enforces foreign keys; on an existing table one is added NOT VALID and "
        "validated by an asynchronous job.",
        "The plan adds it after the tables (ADD CONSTRAINT ... NOT VALID, then VALIDATE: ASYNC on "
        "DSQL, waited for); apply it after the backfill with `schema apply --phase post-load`."),
    "check_on_converted_column": Code(
        W, "constraint",
        "The CHECK refers to a column whose type changes on the target (an array stored as json, money as "
        "numeric...), so its expression cannot run there as written.",
        "Left out of the plan; the generated expectation keeps checking it on the source. Enforce it in the "
        "application, or re-express it over the target's type and add it by hand."),
    "foreign_key_outside": Code(
        W, "constraint",
        "The foreign key references a table that is not migrated.",
        "Left out of the plan; migrate the referenced table too, or enforce the reference in the "
        "application."),
    "check_not_valid": Code(
        W, "constraint",
        "The CHECK constraint is NOT VALID on the source: old rows may violate it, and on the "
        "target it is declared in CREATE TABLE, where it applies to every copied row.",
        "Validate it on the source (ALTER TABLE ... VALIDATE CONSTRAINT) before the copy, or fix "
        "the violating rows."),
    "index_async": Code(
        M, "index",
        "Aurora DSQL refuses a plain CREATE INDEX: indexes are built by a background job "
        "(CREATE INDEX ASYNC).",
        "The plan uses CREATE INDEX ASYNC and waits for each job (sys.wait_for_job); on the local "
        "stand-in the synchronous form."),
    "index_method": Code(
        M, "index",
        "Aurora DSQL builds btree indexes only.",
        "Hash indexes become btree; GIN, GiST, BRIN and SP-GiST indexes are left out (queries "
        "using them will scan)."),
    "index_order": Code(
        M, "index",
        "Aurora DSQL does not support DESC or NULLS FIRST/LAST index keys.",
        "The plan creates the index ascending; a descending scan of an ascending btree is "
        "equivalent for most queries."),
    "inline_keys": Code(
        I, "table",
        "Primary keys and unique constraints cannot be added to a DSQL table after creation; "
        "pg_dump adds them with ALTER TABLE.",
        "The plan declares them inline in CREATE TABLE."),
    # --- collation --------------------------------------------------------------------------
    "database_collation": Code(
        M, "database",
        "Aurora DSQL compares and sorts text with the C collation only (byte order).",
        "Text columns are created without a collation (C): ORDER BY, < and > on text, and LIKE "
        "ranges can give different results; queries relying on locale order must change."),
    "column_collation": Code(
        M, "column",
        "Aurora DSQL supports the C collation only: COLLATE clauses are refused.",
        "The plan declares the column without a collation (C)."),
    "collation_key_order": Code(
        W, "column",
        "This text key sorts differently under C than under the source's collation: keyset "
        "pagination, range scans, ORDER BY ... LIMIT and min/max give different answers on DSQL.",
        "Compare and page these keys with COLLATE \"C\" on the source (reconcile's key ranges do); "
        "review application queries that page or range-scan on this key."),
    # --- quotas -----------------------------------------------------------------------------
    "quota_columns": Code(
        B, "table", "Aurora DSQL allows at most 255 columns per table.",
        "Split the table (e.g. move rarely used columns to a 1:1 side table)."),
    "quota_indexes": Code(
        B, "table", "Aurora DSQL allows at most 24 indexes per table (building ones included).",
        "Drop or merge indexes until 24 remain."),
    "quota_key_columns": Code(
        B, "index", "Aurora DSQL allows at most 8 key columns per index.",
        "Reduce the key (move columns to INCLUDE); the plan leaves the index out."),
    "quota_key_size": Code(
        W, "index", "Aurora DSQL allows at most 1 KiB per index key.",
        "Run `reconcile audit --scan-data` to find values over the limit; shorten the key or "
        "index a hash of it."),
    # --- data -------------------------------------------------------------------------------
    "numeric_exceeds_dsql_default": Code(
        M, "column",
        "Values here do not fit numeric(18,6), which is what DSQL makes of a plain numeric: they "
        "would be rounded or rejected.",
        "The plan's explicit numeric(P,S) holds them: apply the plan, never a plain numeric."),
    "numeric_unfit": Code(
        B, "column",
        "Values here fit no DSQL numeric column (infinity, or more than 1000 digits).",
        "Fix or move these values (e.g. store them as text) before the copy."),
    "numeric_special": Code(
        B, "column",
        "Aurora DSQL numeric columns hold finite numbers only: NaN and +-Infinity cannot be stored in a "
        "numeric(p,s) column (PostgreSQL refuses infinity there too), so the copy would refuse these rows.",
        "Replace them on the source (e.g. with NULL) or store the column as double precision if NaN is "
        "meaningful, then plan again; until then the backfill refuses the table."),
    "json_too_large": Code(
        B, "column", "Aurora DSQL stores JSON values of at most 1 MiB.",
        "Shrink or split these documents, or move them to object storage, before the copy."),
    "value_too_large": Code(
        B, "column", "Aurora DSQL allows at most 1 MiB per column value outside an index.",
        "Shrink or move these values (e.g. to object storage) before the copy."),
    "row_too_large": Code(
        B, "table", "Aurora DSQL allows at most 2 MiB per row.",
        "Split these rows (move large columns to a side table) before the copy."),
    "index_key_too_large": Code(
        B, "index", "Aurora DSQL allows at most 1 KiB per index key.",
        "Shorten these keys, index a hash of the value, or drop the index, before the copy."),
    # --- workload ---------------------------------------------------------------------------
    "workload_rows": Code(
        M, "statement",
        "A DSQL transaction modifies at most 3,000 rows: this statement modifies more per call on "
        "average and would fail with SQLSTATE 54000.",
        "Split the work into batches of under 3,000 rows (and under 10 MiB), each its own transaction."),
    "workload_bytes": Code(
        M, "statement",
        "A DSQL transaction writes at most 10 MiB: this statement writes more per call (estimated).",
        "Split the work into smaller transactions."),
    "workload_near_limit": Code(
        W, "statement",
        "This statement modifies more than half of DSQL's 3,000 rows per transaction per call: "
        "larger calls, or several in one transaction, will fail with 54000.",
        "Cap the batch size in the application."),
    "workload_unavailable": Code(
        I, "database",
        "pg_stat_statements is not available, so statement sizes were not checked.",
        "Load pg_stat_statements (shared_preload_libraries) and rerun the audit."),
    # --- statement level (dsql-lint) --------------------------------------------------------
    "lint_parse_error": Code(
        W, "statement",
        "dsql-lint could not parse this statement, and no catalog check covers it.",
        "Review the statement by hand against ../shared/dsql.md."),
    "lint_unavailable": Code(
        W, "database",
        "The statement-level checks (pg_dump + dsql-lint) could not run.",
        "Install the project's dependencies (uv sync) and check that pg_dump can reach the source."),
}


def make(code: str, obj: str, message: str, *, level: str = "catalog", fix: str | None = None,
         why: str | None = None, severity: Severity | None = None, **details: Any) -> Finding:
    """A finding of a known ``code``, taking severity, object type, why and fix from :data:`CODES`."""
    c = CODES[code]
    return Finding(code=code, severity=severity or c.severity, level=level, object_type=c.object_type,
                   object=obj, message=message, why=why or c.why, fix=fix or c.fix, details=details)
