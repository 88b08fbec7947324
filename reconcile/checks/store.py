"""Check runs in the control schema: the ``reconcile.runs`` row and per-expectation results.

Every write goes through :func:`reconcile.occ.run_with_retry`; results are written in batches the
transaction budget hands out, ``ON CONFLICT DO NOTHING`` by (run_id, result_no), so a retried batch
never duplicates a row.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from reconcile.budget import Budget
from reconcile.checks.gxrun import Outcome
from reconcile.control import ident
from reconcile.identity import RunScope
from reconcile.occ import RetryCounters, RetryPolicy, run_with_retry

__all__ = ["acknowledge", "finish_run", "load_results", "start_run", "store_results"]

KIND = "check"

_RESULT = sql.SQL(
    "INSERT INTO {} (run_id, result_no, side, suite, name, expectation, asset, success, observed, details, status, "
    "reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id, result_no) DO NOTHING"
).format(ident("check_results"))




def start_run(target: psycopg.Connection, settings: dict[str, Any], *, policy: RetryPolicy,
              counters: RetryCounters | None = None, scope: RunScope | None = None,
              part_of: str | None = None, direction: str | None = None) -> str:
    """Insert the ``running`` check run; returns its id. ``scope``: its migration and the tables it covers;
    ``part_of``: the diff run of the reconciliation it belongs to; ``direction``: forward or reverse
    (:mod:`reconcile.direction`; None: the ``part_of`` diff run's, else from the cutover state)."""
    from reconcile.direction import direction_of

    if direction is None and part_of is not None:
        row = target.execute(sql.SQL("SELECT direction FROM {} WHERE run_id = %s").format(ident("runs")),
                             (part_of,)).fetchone()
        direction = row[0] if row is not None else None
    direction = direction_of(target, direction, key=scope.cutover_key if scope else None)
    run_id = str(uuid.uuid4())
    q = sql.SQL("INSERT INTO {} (run_id, kind, status, settings, migration_id, tables, part_of, direction) "
                "VALUES (%s, %s, 'running', %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO NOTHING").format(ident("runs"))
    values = (run_id, KIND, json.dumps({**settings, "direction": direction}, default=str),
              scope.migration_id if scope else None, scope.tables_json if scope else None, part_of, direction)
    run_with_retry(target, lambda c: c.execute(q, values), policy=policy, counters=counters, label="check run start")
    return run_id


def finish_run(target: psycopg.Connection, run_id: str, status: str, summary: dict[str, Any], *,
               policy: RetryPolicy, counters: RetryCounters | None = None) -> None:
    q = sql.SQL("UPDATE {} SET status = %s, finished_at = now(), summary = %s WHERE run_id = %s").format(
        ident("runs"))
    run_with_retry(target, lambda c: c.execute(q, (status, json.dumps(summary, default=str), run_id)),
                   policy=policy, counters=counters, label="check run end")


def _row(run_id: str, no: int, o: Outcome) -> tuple:
    details = {"kwargs": o.check.kwargs, "description": o.check.description, "result": o.result,
               "exception": o.exception, "evidence": o.check.evidence}
    return (run_id, no, o.side, o.check.suite, o.check.name, o.check.expectation, o.check.asset, o.success,
            json.dumps(o.observed, default=str), json.dumps(details, default=str, sort_keys=True), o.status,
            o.not_applicable)


def store_results(target: psycopg.Connection, run_id: str, outcomes: Sequence[Outcome], *, budget: Budget,
                  policy: RetryPolicy, counters: RetryCounters | None = None) -> int:
    """Write one row per outcome, batch by batch within the budget; returns the rows written."""
    rows = [_row(run_id, no, o) for no, o in enumerate(outcomes, start=1)]

    def size(row: tuple) -> tuple[int, int]:
        return 1, sum(len(str(v).encode()) for v in row if v is not None) + 64

    for batch in budget.batches(rows, size, what="check result"):
        items = list(batch)

        def write(c: psycopg.Connection, items=items) -> None:
            with c.cursor() as cur:
                cur.executemany(_RESULT, items)

        run_with_retry(target, write, policy=policy, counters=counters, label="store check results")
    return len(rows)


def load_results(target: psycopg.Connection, run_id: str) -> list[dict[str, Any]]:
    """The stored results of one run, in result order."""
    cur = target.execute(sql.SQL("SELECT side, suite, name, expectation, asset, success, observed, details, status, "
                                 "reason FROM {} "
                                 "WHERE run_id = %s ORDER BY result_no").format(ident("check_results")), (run_id,))
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]


def acknowledge(target: psycopg.Connection, kind: str, ref: str, *, by: str, reason: str,
                policy: RetryPolicy, counters: RetryCounters | None = None) -> None:
    """Record that a known problem (``kind='reject'``, the reject id) was reviewed and accepted.

    Raises:
        CheckError: ``ref`` names no reject in ``reconcile.rejects``, or ``by``/``reason`` hold a control
            character (they are shown on lines of their own).
    """
    from reconcile.checks.errors import CheckError
    from reconcile.identity import text_problem

    for label, text in (("--by", by), ("--reason", reason)):
        problem = text_problem(text) if text.strip() else "nothing"
        if problem:
            raise CheckError(f"{label} contains {problem}; write it on one line without control characters")
    found = target.execute(sql.SQL("SELECT 1 FROM {} WHERE reject_id::text = %s").format(ident("rejects")),
                           (ref.strip().lower(),)).fetchone()
    if found is None:
        raise CheckError(f"no reject {ref!r} in reconcile.rejects; list them with `reconcile backfill rejects --json` "
                         "and acknowledge one by its reject_id")
    ref = ref.strip().lower()
    q = sql.SQL("INSERT INTO {} (kind, ref, acknowledged_by, reason) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (kind, ref) DO UPDATE SET acknowledged_by = excluded.acknowledged_by, "
                "reason = excluded.reason, acknowledged_at = now()").format(ident("check_acknowledgements"))
    run_with_retry(target, lambda c: c.execute(q, (kind, ref, by, reason)), policy=policy, counters=counters,
                   label="check acknowledgement")
