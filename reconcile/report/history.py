"""History across diff runs: the recent runs and, for every finding, the first and last run it was seen in.

A finding keeps its id from run to run (``diff_findings.finding_id`` is derived from its table, kind and
key), so "when did this appear, is it still there" is one GROUP BY over the findings of the recent runs,
keyed by the primary key's leading ``run_id``. Both queries are bounded: at most :data:`RUNS` runs, and
the resolved findings are capped at :data:`RESOLVED` (the open ones are the latest run's, at most
``[diff] max_findings`` per table).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import psycopg
from psycopg import sql

from reconcile.control import ident

__all__ = ["RUNS", "finding_id", "findings_seen", "recent_runs"]

RUNS = 60
"""Diff runs the history covers (newest first)."""
RESOLVED = 1_000
"""Resolved findings (seen before, not in the latest run) listed, newest first."""


def finding_id(table: str, kind: str, key: Any) -> str:
    """The id :mod:`reconcile.diff.store` gives a finding (stable across runs)."""
    from reconcile.diff.store import dumps

    return hashlib.md5(dumps([table, kind, key]).encode()).hexdigest()


def _summary(text: str | None) -> dict[str, Any]:
    try:
        doc = json.loads(text) if text else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def recent_runs(conn: psycopg.Connection, *, limit: int = RUNS) -> list[dict[str, Any]]:
    """The latest finished diff runs, oldest first: ``{run_id, status, started_at, finished_at, summary}``."""
    rows = conn.execute(sql.SQL(
        "SELECT run_id::text, status, started_at, finished_at, summary FROM {} WHERE kind = 'diff' "
        "AND status <> 'running' ORDER BY started_at DESC LIMIT %s").format(ident("runs")), (limit,)).fetchall()
    return [{"run_id": r[0], "status": r[1], "started_at": r[2], "finished_at": r[3], "summary": _summary(r[4])}
            for r in reversed(rows)]


def findings_seen(conn: psycopg.Connection, runs: list[dict[str, Any]], latest: str) -> dict[str, Any]:
    """First and last sighting of the findings of ``runs`` (oldest first) up to run ``latest``.

    Returns ``{"open": {finding_id: seen}, "resolved": [seen...], "resolved_total": n}`` where ``seen`` is
    ``{finding_id, table, kind, key, currency, first_run, first_at, last_run, last_at, runs}``; open findings
    are the ones in ``latest``, resolved ones were seen in an earlier run of the window and not in it.
    """
    ids = [r["run_id"] for r in runs]
    if latest not in ids:
        ids.append(latest)
    by_time = {r["started_at"]: r["run_id"] for r in runs}
    window = sql.SQL(", ").join(sql.Placeholder() * len(ids))
    base = sql.SQL(
        "SELECT f.finding_id, max(f.table_name), max(f.kind), max(f.row_key), max(f.currency), min(r.started_at), "
        "max(r.started_at), count(*) FROM {findings} f JOIN {runs} r ON r.run_id = f.run_id "
        "WHERE f.run_id IN ({window}) AND {which} GROUP BY f.finding_id")
    in_latest = sql.SQL("f.finding_id IN (SELECT finding_id FROM {} WHERE run_id = %s)").format(ident("diff_findings"))
    not_latest = sql.SQL("f.finding_id NOT IN (SELECT finding_id FROM {} WHERE run_id = %s)").format(ident("diff_findings"))

    def seen(row: tuple) -> dict[str, Any]:
        return {"finding_id": row[0], "table": row[1], "kind": row[2], "key": json.loads(row[3]), "currency": row[4],
                "first_run": by_time.get(row[5]), "first_at": row[5], "last_run": by_time.get(row[6]),
                "last_at": row[6], "runs": int(row[7])}

    open_rows = conn.execute(base.format(findings=ident("diff_findings"), runs=ident("runs"), window=window,
                                         which=in_latest), [*ids, latest]).fetchall()
    opened = {r[0]: seen(r) for r in open_rows}
    for s in opened.values():   # the latest run may not be in ``runs`` yet (it is being closed)
        s["first_run"] = s["first_run"] or latest
        s["last_run"] = latest
    (resolved_total,) = conn.execute(sql.SQL(
        "SELECT count(DISTINCT f.finding_id) FROM {} f WHERE f.run_id IN ({}) AND {}").format(
        ident("diff_findings"), window, not_latest), [*ids, latest]).fetchone()
    resolved = [seen(r) for r in conn.execute(
        base.format(findings=ident("diff_findings"), runs=ident("runs"), window=window, which=not_latest)
        + sql.SQL(" ORDER BY max(r.started_at) DESC, f.finding_id LIMIT %s"), [*ids, latest, RESOLVED]).fetchall()]
    return {"open": opened, "resolved": resolved, "resolved_total": int(resolved_total)}
