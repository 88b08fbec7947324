"""Apply a schema plan to the target: one DDL per transaction, idempotent, with a drift report.

1. Introspect the target (schemas, tables and their columns, indexes, constraints, sequences).
2. Run each planned statement whose object the target lacks, alone in its own transaction,
   through the retry helper (every statement is ``IF NOT EXISTS`` or guarded by the
   introspection, so a retried or repeated one is harmless). On DSQL an index build or a
   validation returns a job id: the next statement waits for it (``sys.wait_for_job``), outside
   any transaction.
3. Introspect again and report drift: planned tables or columns missing, columns the plan does
   not know, different types or nullability, missing indexes and foreign keys. Existing tables are
   never altered (DSQL cannot change a column's type): drift is for a person to resolve.

A second run finds every object present, runs nothing, and says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from reconcile.budget import Budget
from reconcile.control import ident
from reconcile.db.columns import read_columns
from reconcile.errors import InvalidArgument, MigrationFailed
from reconcile.schema.errors import SchemaApplyFailed
from reconcile.occ import DEFAULT_POLICY, RetryCounters, RetryPolicy, run_with_retry
from reconcile.schema.plan import PlannedStatement, SchemaPlan
from reconcile.errors import InvalidArgument

__all__ = ["ApplyReport", "Drift", "StatementResult", "TargetState", "apply_plan", "drift", "introspect",
           "record_plan"]

log = logging.getLogger(__name__)

PhaseChoice = Literal["all", "pre-load", "post-load"]


@dataclass(frozen=True)
class TargetState:
    """What the target has, as far as a plan is concerned."""

    schemas: frozenset[str]
    tables: dict[str, dict[str, tuple[str, bool]]] = field(default_factory=dict)
    """``schema.table`` -> column -> (type as format_type prints it, not null)."""
    indexes: frozenset[str] = frozenset()
    """``schema.index``."""
    constraints: dict[str, bool] = field(default_factory=dict)
    """``schema.table.constraint`` -> validated."""
    sequences: frozenset[str] = frozenset()


def introspect(conn: psycopg.Connection, schemas: Iterable[str]) -> TargetState:
    """Read the target's catalog for ``schemas`` (plain pg_catalog queries DSQL answers)."""
    names = list(dict.fromkeys(schemas))
    present = {r[0] for r in conn.execute(
        "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname = ANY(%s)", (names,))}
    tables = {name: {c.name: (c.type, c.not_null) for c in cols}
              for name, cols in read_columns(conn, schemas=names).items()}
    indexes = frozenset(f"{s}.{i}" for s, i in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s) AND c.relkind IN ('i', 'I')", (names,)))
    constraints = {f"{s}.{t}.{c}": bool(v) for s, t, c, v in conn.execute(
        "SELECT n.nspname, r.relname, con.conname, con.convalidated FROM pg_catalog.pg_constraint con "
        "JOIN pg_catalog.pg_class r ON r.oid = con.conrelid JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace "
        "WHERE n.nspname = ANY(%s)", (names,))}
    sequences = frozenset(f"{s}.{q}" for s, q in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s) AND c.relkind = 'S'", (names,)))
    return TargetState(frozenset(present), tables, indexes, constraints, sequences)


def _exists(s: PlannedStatement, state: TargetState) -> bool:
    if s.kind == "schema":
        return s.object in state.schemas
    if s.kind == "table":
        return s.object in state.tables
    if s.kind == "index":
        return s.object in state.indexes
    if s.kind == "sequence":
        return s.object in state.sequences
    if s.kind == "foreign_key":
        return s.object in state.constraints
    if s.kind == "validate":
        return state.constraints.get(s.object, False)
    raise ValueError(f"unknown planned statement kind {s.kind!r}")


@dataclass(frozen=True)
class Drift:
    """One difference between the plan and the target."""

    object: str
    kind: str
    """missing_table, missing_column, extra_column, type, nullability, missing_index, missing_constraint,
    not_validated, pending_pre_load (a pre-load statement the target lacks, seen by a post-load apply)."""
    planned: str | None = None
    actual: str | None = None

    def __str__(self) -> str:
        text = {
            "missing_table": "table is missing",
            "missing_column": f"column is missing (planned {self.planned})",
            "extra_column": f"column is not in the plan (target has {self.actual})",
            "type": f"type differs: planned {self.planned}, target has {self.actual}",
            "nullability": f"nullability differs: planned {self.planned}, target has {self.actual}",
            "missing_index": "index is missing",
            "missing_constraint": "constraint is missing",
            "not_validated": "foreign key is not validated yet",
            "pending_pre_load": f"{self.planned} is planned in the pre-load phase but missing on the target; "
                                "run `reconcile schema apply --phase pre-load`",
        }[self.kind]
        return f"{self.object}: {text}"


def _norm(type_sql: str) -> str:
    return "".join(type_sql.lower().split())


def drift(plan: SchemaPlan, state: TargetState, *, phase: PhaseChoice = "all") -> list[Drift]:
    """Differences between ``plan`` (restricted to ``phase``) and ``state``."""
    out: list[Drift] = []
    wanted = {s.object for s in plan.phase(phase)}
    for t in plan.tables:
        if t.name not in wanted:
            continue
        actual = state.tables.get(t.name)
        if actual is None:
            out.append(Drift(t.name, "missing_table"))
            continue
        planned_names = {c.name for c in t.columns}
        for c in t.columns:
            obj = f"{t.name}.{c.name}"
            if c.name not in actual:
                out.append(Drift(obj, "missing_column", planned=c.target_type))
                continue
            typ, notnull = actual[c.name]
            if _norm(typ) != _norm(c.target_type):
                out.append(Drift(obj, "type", planned=c.target_type, actual=typ))
            want_notnull = c.not_null or c.name in t.primary_key
            if notnull != want_notnull:
                out.append(Drift(obj, "nullability", planned="NOT NULL" if want_notnull else "NULL",
                                 actual="NOT NULL" if notnull else "NULL"))
        for name, (typ, _) in actual.items():
            if name not in planned_names:
                out.append(Drift(f"{t.name}.{name}", "extra_column", actual=typ))
    for s in plan.phase(phase):
        if s.kind == "index" and s.object not in state.indexes:
            out.append(Drift(s.object, "missing_index"))
        elif s.kind == "foreign_key" and s.object not in state.constraints:
            out.append(Drift(s.object, "missing_constraint"))
        elif s.kind == "validate" and s.object in state.constraints and not state.constraints[s.object]:
            out.append(Drift(s.object, "not_validated"))
    return out


@dataclass(frozen=True)
class StatementResult:
    number: int
    kind: str
    object: str
    status: str
    """applied, exists (skipped: the target has it), would-apply (dry run)."""
    seconds: float = 0.0
    job_id: str | None = None


@dataclass(frozen=True)
class ApplyReport:
    """What an apply did, and the drift left afterwards."""

    dialect: str
    phase: str
    dry_run: bool
    results: tuple[StatementResult, ...]
    drift: tuple[Drift, ...]

    @property
    def applied(self) -> list[StatementResult]:
        return [r for r in self.results if r.status == "applied"]

    @property
    def pending(self) -> list[StatementResult]:
        return [r for r in self.results if r.status == "would-apply"]

    @property
    def changed(self) -> bool:
        return bool(self.applied)

    @property
    def exit_code(self) -> int:
        """0 when the target matches the plan, 1 when drift remains."""
        return 1 if self.drift else 0

    def summary(self) -> str:
        existing = sum(1 for r in self.results if r.status == "exists")
        if self.dry_run:
            head = (f"dry run: {len(self.pending)} statement(s) would run, {existing} already present"
                    if self.pending else f"dry run: nothing to do, the target has all {existing} planned objects")
        elif self.applied:
            head = f"applied {len(self.applied)} statement(s) ({existing} already present)"
        else:
            head = f"nothing to do: the target already has all {existing} planned objects (no change made)"
        tail = f"; drift: {len(self.drift)} difference(s)" if self.drift else "; no drift"
        return head + tail

    def to_dict(self) -> dict[str, Any]:
        return {"dialect": self.dialect, "phase": self.phase, "dry_run": self.dry_run, "changed": self.changed,
                "results": [r.__dict__ for r in self.results],
                "drift": [d.__dict__ | {"text": str(d)} for d in self.drift],
                "summary": self.summary()}


def _run(conn: psycopg.Connection, s: PlannedStatement, *, policy: RetryPolicy,
         counters: RetryCounters | None) -> str | None:
    def ddl(c: psycopg.Connection) -> str | None:
        cur = c.execute(s.statement)
        if s.returns_job and cur.description:
            row = cur.fetchone()
            return str(row[0]) if row else None
        return None

    try:
        job = run_with_retry(conn, ddl, policy=policy, counters=counters, label=f"schema statement {s.number}")
    except psycopg.Error as exc:
        reason = (exc.diag.message_primary if exc.diag else None) or str(exc)
        raise SchemaApplyFailed(
            f"Statement {s.number} ({s.kind} {s.object}) failed on the target with SQLSTATE {exc.sqlstate}: "
            f"{reason}; the statements before it are applied. Fix the cause (see `reconcile schema plan`), "
            "then rerun `reconcile schema apply`: it resumes where this stopped.") from exc
    if job is not None:
        # Outside any transaction: the build can outlast a transaction's 5 minutes.
        (ok,) = conn.execute("SELECT sys.wait_for_job(%s)", (job,)).fetchone()
        if not ok:
            raise MigrationFailed(
                f"Statement {s.number} ({s.kind} {s.object}): background job {job} failed; see sys.jobs on "
                "the target (a UNIQUE index fails on duplicate keys), fix the cause, then rerun `schema apply`.")
    return job


def apply_plan(conn: psycopg.Connection, plan: SchemaPlan, *, phase: PhaseChoice = "all", dry_run: bool = False,
               policy: RetryPolicy = DEFAULT_POLICY, counters: RetryCounters | None = None) -> ApplyReport:
    """Apply ``plan`` to the target (see the module docstring).

    Args:
        conn: an autocommit connection to the target (a DsqlConnection).
        plan: the schema plan, built for the target's dialect.
        phase: ``pre-load`` (schemas, sequences, tables, indexes), ``post-load`` (foreign keys) or ``all``.
        dry_run: introspect and report what would run, change nothing.
        policy, counters: for the retry helper.

    Returns:
        What ran, what was already there, and the drift left.

    Raises:
        MigrationFailed: a DSQL background job (index build, validation) failed.
        SchemaApplyFailed: a statement failed (not retryable).
    """
    if phase not in ("all", "pre-load", "post-load"):
        raise InvalidArgument(f"phase must be all, pre-load or post-load, got {phase!r}; pass one of those")
    state = introspect(conn, plan.schemas)
    results: list[StatementResult] = []
    for s in plan.phase(phase):
        if _exists(s, state):
            results.append(StatementResult(s.number, s.kind, s.object, "exists"))
            continue
        if dry_run:
            results.append(StatementResult(s.number, s.kind, s.object, "would-apply"))
            continue
        log.info("STEP %d: %s %s", s.number, s.kind, s.object)
        t0 = time.monotonic()
        job = _run(conn, s, policy=policy, counters=counters)
        results.append(StatementResult(s.number, s.kind, s.object, "applied", round(time.monotonic() - t0, 3), job))
    after = state if dry_run else introspect(conn, plan.schemas)
    found = drift(plan, after, phase=phase)
    if phase == "post-load":
        # A post-load apply also says what the pre-load phase planned that the target still lacks (e.g. an
        # index the plan gained since the pre-load ran), instead of staying silent about it.
        found += [Drift(s.object, "pending_pre_load", planned=s.kind) for s in plan.phase("pre-load")
                  if not _exists(s, after)]
    if dry_run:
        # What the pending statements would create is not drift; differences in what exists are.
        pending = {r.object for r in results if r.status == "would-apply"}
        found = [d for d in found if not (d.kind in ("missing_table", "missing_index", "missing_constraint",
                                                     "not_validated") and d.object in pending)]
    return ApplyReport(plan.dialect, phase, dry_run, tuple(results), tuple(found))


_SEQUENCE = sql.SQL(
    "INSERT INTO {} (sequence_name, table_name, column_name, last_value, strategy, recorded_at) "
    "VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (sequence_name) DO UPDATE SET table_name = excluded.table_name, "
    "column_name = excluded.column_name, last_value = excluded.last_value, strategy = excluded.strategy, "
    "recorded_at = excluded.recorded_at").format(ident("source_sequences"))


def record_plan(conn: psycopg.Connection, plan: SchemaPlan, *, budget: Budget | None = None,
                policy: RetryPolicy = DEFAULT_POLICY, counters: RetryCounters | None = None) -> None:
    """Record the plan's column contract, source sequences and invariants in the control schema on the target.

    The column contract (``reconcile.column_plan``) is how every stage reads, converts and compares
    each column; the sequences' last values are what cutover needs to start the target's keys above;
    the invariants are what the balance checks verify. All upsert, so recording twice is harmless.
    """
    from reconcile.audit.store import store_invariants
    from reconcile.control import migrate
    from reconcile.schema.contract import store_contract

    budget = budget or Budget()
    migrate(conn, dialect=plan.dialect, policy=policy, counters=counters)  # type: ignore[arg-type]
    rows = [(r.sequence, r.table, r.column, r.last_value, r.strategy) for r in plan.sequences]
    for batch in budget.batches(rows, lambda r: (1, 200), what="sequence record"):
        items = list(batch)

        def write(c: psycopg.Connection, items=items) -> None:
            with c.cursor() as cur:
                cur.executemany(_SEQUENCE, items)

        run_with_retry(conn, write, policy=policy, counters=counters, label="record source sequences")
    store_invariants(conn, plan.invariants, budget=budget, policy=policy, counters=counters, migrate=False)
    store_contract(conn, plan.contract(), fingerprint=plan.source_fingerprint, budget=budget, policy=policy,
                   counters=counters)
