"""Store an audit run and its findings in the control schema on the target.

Writes go through the one retry helper (:func:`reconcile.occ.run_with_retry`) in batches the
transaction budget hands out (:class:`reconcile.budget.Budget`), and are idempotent (``ON
CONFLICT DO NOTHING`` by run and finding number; invariants upsert by name), so a retried or
rerun store never duplicates a row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import psycopg
from psycopg import sql

from reconcile.audit.findings import Finding, sort_findings
from reconcile.audit.report import AuditReport
from reconcile.audit.triggers import Invariant
from reconcile.budget import Budget
from reconcile.control import ident
from reconcile.control import migrate
from reconcile.identity import RunScope
from reconcile.occ import DEFAULT_POLICY, RetryCounters, RetryPolicy, run_with_retry

__all__ = ["load_findings", "store_invariants", "store_report"]

_RUN = sql.SQL(
    "INSERT INTO {} (run_id, started_at, finished_at, source_fingerprint, source, schemas, checks, blockers, "
    "must_change, warnings, infos, exit_code, migration_id, tables) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (run_id) DO NOTHING").format(ident("audit_runs"))
_FINDING = sql.SQL(
    "INSERT INTO {} (run_id, finding_no, finding_id, code, severity, level, object_type, object, message, why, "
    "fix, details) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (run_id, finding_no) DO NOTHING").format(ident("audit_findings"))
_INVARIANT = sql.SQL(
    "INSERT INTO {} (name, kind, spec, source_object, run_id, recorded_at) VALUES (%s, %s, %s, %s, %s, now()) "
    "ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, spec = excluded.spec, "
    "source_object = excluded.source_object, run_id = excluded.run_id, recorded_at = excluded.recorded_at"
).format(ident("invariants"))


def _finding_row(run_id, no: int, f: Finding) -> tuple:
    return (run_id, no, f.id, f.code, f.severity.value, f.level, f.object_type, f.object, f.message, f.why,
            f.fix, json.dumps(dict(f.details), default=str, sort_keys=True))


def _row_bytes(row: Sequence) -> int:
    return sum(len(str(v).encode()) for v in row if v is not None)


def _write_batches(conn: psycopg.Connection, statement: sql.Composable, rows: Sequence[tuple], *, budget: Budget,
                   policy: RetryPolicy, counters: RetryCounters | None, what: str) -> None:
    for batch in budget.batches(rows, lambda r: (1, _row_bytes(r)), what=what):
        items = list(batch)

        def write(c: psycopg.Connection, items=items) -> None:
            with c.cursor() as cur:
                cur.executemany(statement, items)

        run_with_retry(conn, write, policy=policy, counters=counters, label=f"store {what}s")


def store_report(conn: psycopg.Connection, report: AuditReport, *, dialect: str = "postgres",
                 budget: Budget | None = None, policy: RetryPolicy = DEFAULT_POLICY,
                 counters: RetryCounters | None = None, scope: RunScope | None = None) -> int:
    """Write the run, its findings and its invariants; returns the findings written.

    Args:
        conn: an autocommit connection to the target.
        report: the audit.
        scope: the migration the audit belongs to and the tables it covered
            (:func:`reconcile.identity.run_scope` the config); None records neither, and no gate counts it.
        dialect: ``dsql`` or ``postgres`` (for the control-schema migrations).
        budget: transaction budget (default: DSQL's limits at half).
        policy, counters: for the retry helper.
    """
    budget = budget or Budget()
    migrate(conn, dialect=dialect, policy=policy, counters=counters)  # type: ignore[arg-type]
    c = report.counts
    run = (report.run_id, report.started_at, report.finished_at, report.source_fingerprint, report.source,
           json.dumps(list(report.schemas)), json.dumps(report.checks, default=str, sort_keys=True), c["blocker"],
           c["must-change"], c["warning"], c["info"], report.exit_code,
           scope.migration_id if scope else None, scope.tables_json if scope else None)
    run_with_retry(conn, lambda cn: cn.execute(_RUN, run), policy=policy, counters=counters, label="store audit run")
    rows = [_finding_row(report.run_id, no, f) for no, f in enumerate(sort_findings(report.findings), start=1)]
    _write_batches(conn, _FINDING, rows, budget=budget, policy=policy, counters=counters, what="finding")
    store_invariants(conn, report.invariants, run_id=report.run_id, budget=budget, policy=policy,
                     counters=counters, migrate=False, dialect=dialect)
    return len(rows)


def store_invariants(conn: psycopg.Connection, invariants: Sequence[Invariant], *, run_id=None,
                     dialect: str = "postgres", budget: Budget | None = None, policy: RetryPolicy = DEFAULT_POLICY,
                     counters: RetryCounters | None = None, migrate: bool = True) -> None:
    """Upsert invariants by name (the expectations stage reads ``reconcile.invariants``)."""
    if migrate:
        migrate(conn, dialect=dialect, policy=policy, counters=counters)  # type: ignore[arg-type]
    rows = [(i.name, i.kind, json.dumps(i.to_dict(), sort_keys=True), i.spec.get("replaces_trigger"), run_id)
            for i in invariants]
    _write_batches(conn, _INVARIANT, rows, budget=budget or Budget(), policy=policy, counters=counters,
                   what="invariant")


def load_findings(conn: psycopg.Connection, run_id) -> list[dict]:
    """The stored findings of one run, in finding order (as dicts)."""
    cur = conn.execute(sql.SQL("SELECT finding_id, code, severity, level, object, message, details FROM {} "
                               "WHERE run_id = %s ORDER BY finding_no").format(ident("audit_findings")), (run_id,))
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]
