"""Diff runs and findings in the control schema (``reconcile.runs``, ``diff_results``, ``diff_findings``).

Every write is one target transaction through :func:`reconcile.occ.run_with_retry`, sized by the
transaction budget (:mod:`reconcile.budget`): findings are written in batches that fit the
budget's fraction of DSQL's row and byte limits. Writes are idempotent (upserts keyed by run,
table and a finding id derived from the key), so a killed diff task can simply run again.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from reconcile.budget import Budget
from reconcile.control.migrations import ident
from reconcile.diff.compare import Finding
from reconcile.identity import RunScope
from reconcile.occ import RetryPolicy, run_with_retry

BALANCES = "__balances__"
"""``diff_results.table_name`` of the balance diff."""




def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def finding_id(f: Finding) -> str:
    return hashlib.md5(dumps([f.table, f.kind, f.key]).encode()).hexdigest()


def insert_run(conn: psycopg.Connection, run_id: str, settings: dict, policy: RetryPolicy,
               scope: RunScope | None = None, direction: str = "forward") -> None:
    """Open a diff run; ``scope``: its migration and the tables it covers (None: no gate counts the run);
    ``direction``: forward or reverse (:mod:`reconcile.direction`)."""
    q = sql.SQL("INSERT INTO {} (run_id, kind, status, started_at, settings, migration_id, tables, direction) "
                "VALUES (%s, 'diff', 'running', now(), %s, %s, %s, %s) ON CONFLICT (run_id) DO NOTHING").format(
        ident("runs"))
    values = (run_id, dumps(settings), scope.migration_id if scope else None, scope.tables_json if scope else None,
              direction)
    run_with_retry(conn, lambda c: c.execute(q, values), policy=policy, label="diff run start")


def get_run(conn: psycopg.Connection, run_id: str) -> dict | None:
    """The run ``run_id`` (None when there is none, or ``run_id`` is not a run id at all: a uuid)."""
    try:
        uuid.UUID(str(run_id))
    except ValueError:
        return None
    row = conn.execute(sql.SQL("SELECT run_id::text, kind, status, started_at, finished_at, settings, summary "
                               "FROM {} WHERE run_id = %s").format(ident("runs")), (run_id,)).fetchone()
    if row is None:
        return None
    return {"run_id": row[0], "kind": row[1], "status": row[2], "started_at": row[3], "finished_at": row[4],
            "settings": json.loads(row[5]) if row[5] else {}, "summary": json.loads(row[6]) if row[6] else None}


def finish_run(conn: psycopg.Connection, run_id: str, status: str, summary: dict, policy: RetryPolicy) -> None:
    q = sql.SQL("UPDATE {} SET status = %s, finished_at = now(), summary = %s WHERE run_id = %s").format(ident("runs"))
    run_with_retry(conn, lambda c: c.execute(q, (status, dumps(summary), run_id)), policy=policy,
                   label="diff run finish")


def _finding_cost(budget: Budget, f: Finding) -> tuple[int, int]:
    nbytes = 300 + len(dumps(f.key)) + len(dumps(f.source)) + len(dumps(f.target)) + len(dumps(f.columns))
    return (2 if budget.count_index_tuples else 1), nbytes


def save_table(conn: psycopg.Connection, run_id: str, table: str, result: dict, findings: Sequence[Finding], *,
               budget: Budget, policy: RetryPolicy) -> None:
    """Replace the stored findings and result of one table of a run (idempotent)."""
    new_ids = {finding_id(f): f for f in findings}
    old = {r[0] for r in conn.execute(
        sql.SQL("SELECT finding_id FROM {} WHERE run_id = %s AND table_name = %s").format(ident("diff_findings")),
        (run_id, table)).fetchall()}
    stale = sorted(old - set(new_ids))
    step = max(1, min(500, budget.row_cap // (2 if budget.count_index_tuples else 1)))
    for i in range(0, len(stale), step):
        part = stale[i:i + step]
        delete = sql.SQL("DELETE FROM {} WHERE run_id = %s AND finding_id IN ({})").format(
            ident("diff_findings"), sql.SQL(", ").join(sql.SQL("%s") for _ in part))
        run_with_retry(conn, lambda c, q=delete, p=part: c.execute(q, (run_id, *p)), policy=policy,
                       label="diff findings cleanup")
    upsert = sql.SQL(
        "INSERT INTO {} (run_id, finding_id, table_name, kind, row_key, columns, source_values, target_values, "
        "money_delta, currency) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id, finding_id) DO UPDATE "
        "SET kind = excluded.kind, columns = excluded.columns, source_values = excluded.source_values, "
        "target_values = excluded.target_values, money_delta = excluded.money_delta, currency = excluded.currency"
    ).format(ident("diff_findings"))
    for batch in budget.batches(list(new_ids.items()), lambda item: _finding_cost(budget, item[1]), what="finding"):
        params = [(run_id, fid, f.table, f.kind, dumps(f.key), dumps(f.columns),
                   dumps(f.source) if f.source is not None else None,
                   dumps(f.target) if f.target is not None else None, f.money_delta, f.currency)
                  for fid, f in batch]

        def write(c: psycopg.Connection, rows=params) -> None:
            with c.cursor() as cur:
                cur.executemany(upsert, rows)
        run_with_retry(conn, write, policy=policy, label="diff findings")
    q = sql.SQL(
        "INSERT INTO {} (run_id, table_name, status, missing, extra, changed, in_flight, rows_source, rows_target, "
        "queries, duration_ms, error, details, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now()) "
        "ON CONFLICT (run_id, table_name) DO UPDATE SET status = excluded.status, missing = excluded.missing, "
        "extra = excluded.extra, changed = excluded.changed, in_flight = excluded.in_flight, "
        "rows_source = excluded.rows_source, rows_target = excluded.rows_target, queries = excluded.queries, "
        "duration_ms = excluded.duration_ms, error = excluded.error, details = excluded.details, updated_at = now()"
    ).format(ident("diff_results"))
    values = (run_id, table, result["status"], result.get("missing", 0), result.get("extra", 0),
              result.get("changed", 0), result.get("in_flight", 0), result.get("rows_source"),
              result.get("rows_target"), result.get("queries"), result.get("duration_ms"), result.get("error"),
              dumps(result.get("details") or {}))
    run_with_retry(conn, lambda c: c.execute(q, values), policy=policy, label="diff result")


def load_results(conn: psycopg.Connection, run_id: str) -> list[dict]:
    rows = conn.execute(sql.SQL(
        "SELECT table_name, status, missing, extra, changed, in_flight, rows_source, rows_target, queries, duration_ms, "
        "error, details FROM {} WHERE run_id = %s ORDER BY table_name").format(ident("diff_results")), (run_id,)).fetchall()
    out = []
    for r in rows:
        out.append({"table": r[0], "status": r[1], "missing": r[2], "extra": r[3], "changed": r[4], "in_flight": r[5],
                    "rows_source": r[6], "rows_target": r[7], "queries": r[8], "duration_ms": r[9], "error": r[10],
                    "details": json.loads(r[11]) if r[11] else {}})
    return out


def load_findings(conn: psycopg.Connection, run_id: str, *, limit: int | None = None) -> list[dict]:
    """Findings of a run, largest absolute money difference first, then by table, kind and key."""
    q = sql.SQL(
        "SELECT table_name, kind, row_key, columns, source_values, target_values, money_delta, currency FROM {} "
        "WHERE run_id = %s ORDER BY abs(coalesce(money_delta, 0)) DESC, table_name, kind, row_key {}").format(
        ident("diff_findings"), sql.SQL("LIMIT %s") if limit else sql.SQL(""))
    params: tuple = (run_id, limit) if limit else (run_id,)
    out = []
    for r in conn.execute(q, params).fetchall():
        delta = r[6]
        out.append({"table": r[0], "kind": r[1], "key": json.loads(r[2]), "columns": json.loads(r[3]) if r[3] else [],
                    "source": json.loads(r[4]) if r[4] else None, "target": json.loads(r[5]) if r[5] else None,
                    "money_delta": None if delta is None else _plain(delta), "currency": r[7]})
    return out


def _plain(d: Any) -> str:
    """A Decimal as plain text without exponent or trailing zeros (``-5.0000000000`` -> ``-5``)."""
    text = format(d.normalize(), "f")
    return text


def list_runs(conn: psycopg.Connection, *, limit: int = 20) -> list[dict]:
    if conn.execute("SELECT to_regclass('reconcile.runs') IS NULL").fetchone()[0]:
        return []
    rows = conn.execute(sql.SQL("SELECT run_id::text, status, started_at, finished_at, summary FROM {} "
                                "WHERE kind = 'diff' ORDER BY started_at DESC LIMIT %s").format(ident("runs")),
                        (limit,)).fetchall()
    return [{"run_id": r[0], "status": r[1], "started_at": r[2].isoformat() if r[2] else None,
             "finished_at": r[3].isoformat() if r[3] else None, "summary": json.loads(r[4]) if r[4] else None}
            for r in rows]


def new_run_id() -> str:
    return str(uuid.uuid4())


# -- lag waits (diff_lag_waits): one row per wait of a run for the replay watermark -------------------


def start_wait(conn: psycopg.Connection, run_id: str, table: str, *, seconds: float, target_lsn: int | None,
               watermark: int | None, reason: str, policy: RetryPolicy) -> tuple[str, float]:
    """Record a wait that begins now and lasts at most ``seconds``; returns (wait_id, seconds until its deadline)."""
    wait_id = str(uuid.uuid4())
    q = sql.SQL("INSERT INTO {} (run_id, wait_id, table_name, started_at, deadline_at, target_lsn, watermark, reason) "
                "VALUES (%s, %s, %s, now(), now() + %s * interval '1 second', %s, %s, %s) "
                "ON CONFLICT (run_id, wait_id) DO NOTHING").format(ident("diff_lag_waits"))
    run_with_retry(conn, lambda c: c.execute(q, (run_id, wait_id, table, seconds, target_lsn, watermark, reason)),
                   policy=policy, label="diff lag wait start")
    return wait_id, seconds


def finish_wait(conn: psycopg.Connection, run_id: str, wait_id: str, outcome: str, *, watermark: int | None,
                waited: float, reason: str | None = None, policy: RetryPolicy) -> None:
    q = sql.SQL("UPDATE {} SET outcome = %s, finished_at = now(), watermark = %s, waited_seconds = %s, "
                "reason = coalesce(%s, reason) WHERE run_id = %s AND wait_id = %s").format(ident("diff_lag_waits"))
    run_with_retry(conn, lambda c: c.execute(q, (outcome, watermark, round(waited, 3), reason, run_id, wait_id)),
                   policy=policy, label="diff lag wait end")


def record_wait(conn: psycopg.Connection, run_id: str, table: str, outcome: str, *, target_lsn: int | None,
                watermark: int | None, reason: str, policy: RetryPolicy) -> None:
    """Record a wait that did not happen (``skipped``), finished at once."""
    q = sql.SQL("INSERT INTO {} (run_id, wait_id, table_name, started_at, deadline_at, finished_at, outcome, "
                "target_lsn, watermark, waited_seconds, reason) VALUES (%s, %s, %s, now(), now(), now(), %s, %s, %s, "
                "0, %s) ON CONFLICT (run_id, wait_id) DO NOTHING").format(ident("diff_lag_waits"))
    run_with_retry(conn, lambda c: c.execute(q, (run_id, str(uuid.uuid4()), table, outcome, target_lsn, watermark,
                                                 reason)), policy=policy, label="diff lag wait skipped")


def load_waits(conn: psycopg.Connection, run_id: str) -> list[dict]:
    """The run's waits in start order; ``remaining`` is the seconds left until a wait's deadline (negative: past)."""
    rows = conn.execute(sql.SQL(
        "SELECT wait_id::text, table_name, started_at, outcome, target_lsn, watermark, waited_seconds, reason, "
        "extract(epoch FROM deadline_at - now()) FROM {} WHERE run_id = %s ORDER BY started_at, wait_id").format(
        ident("diff_lag_waits")), (run_id,)).fetchall()
    return [{"wait_id": r[0], "table": r[1], "started_at": r[2], "outcome": r[3], "target_lsn": r[4],
             "watermark": r[5], "waited_seconds": float(r[6]) if r[6] is not None else None, "reason": r[7],
             "remaining": float(r[8]) if r[8] is not None else None} for r in rows]
