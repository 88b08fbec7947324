"""The gate criteria that need a recent full verification, and the repairs in the gate evidence.

Which gates need a recent full pass, and why (also in README, "Continuous reconciliation"):

* **read gate** (``full_pass_recent``): every row of every configured table verified, by green table diffs,
  within ``[gates] max_all_verified_hours``: either a full diff run, or incremental runs whose rolling sweep
  completed a pass (each slice verified green) since then. Changed keys are verified run by run; the sweep is
  what finds a cold row corrupted on the target, so reads may only move once it has covered everything.
* **write gate** (``full_pass_recent`` and ``full_diff_recent``): additionally a single full diff run (every row
  of every table in one run), complete and green, within the same hours. After the write cutover the source
  stops being the system of record; the last word before it is one comparison of everything, not a pass
  stitched from N runs under a moving workload.

A diff run summary without ``coverage`` (older runs) read every row: it counts as a full diff. Both criteria
carry the repairs recorded within ``replay_window_hours`` as evidence (count, outcomes, and the latest), so an
approver sees what was repaired, automatically or by hand, and what a repair could not fix.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg import sql

from reconcile.control import ident
from reconcile.gates.evidence import Criterion, iso

__all__ = ["full_diff_recent", "full_pass_recent", "repairs_evidence"]


def _parse(text: Any) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def _verified(run: dict[str, Any]) -> tuple[dt.datetime | None, str]:
    """When a complete green run vouches every row was verified (green), and how (``full`` / ``sweep``)."""
    cov = run["summary"].get("coverage")
    if not isinstance(cov, dict) or cov.get("mode", "full") == "full":
        return run["started_at"], "full"
    if cov.get("all_verified_clean") is not True:
        return None, "sweep"
    return _parse(cov.get("all_verified_since")), "sweep"


def repairs_evidence(conn: psycopg.Connection, since: dt.datetime, migration_id: str) -> dict[str, Any]:
    """Repair runs (and decisions not to repair) of migration ``migration_id`` finished since ``since``."""
    rows = conn.execute(sql.SQL("SELECT run_id::text, status, finished_at, summary FROM {} WHERE kind = 'repair' "
                                "AND migration_id = %s AND finished_at >= %s ORDER BY finished_at DESC"
                                ).format(ident("runs")), (migration_id, since)).fetchall()
    import json

    outcomes: dict[str, int] = {}
    by_status: dict[str, int] = {}
    for _, status, _, summary in rows:
        by_status[status] = by_status.get(status, 0) + 1
        doc = json.loads(summary) if summary else {}
        for k, v in (doc.get("outcomes") or {}).items() if isinstance(doc, dict) else ():
            outcomes[k] = outcomes.get(k, 0) + int(v or 0)
    latest = rows[0] if rows else None
    return {"repairs": len(rows), "by_status": by_status, "outcomes": outcomes,
            "latest_run_id": latest[0] if latest else None, "latest_finished_at": iso(latest[2]) if latest else None}


def full_pass_recent(history: dict[str, Any], s: Any, now: dt.datetime, repairs: dict[str, Any]) -> Criterion:
    name = "full_pass_recent"
    best: tuple[dt.datetime, str, str] | None = None
    for run in history["recent"]:
        if not run["complete"] or run["status"] != "green":
            continue
        when, how = _verified(run)
        if when is not None and (best is None or when > best[0]):
            best = (when, how, run["run_id"])
    evidence: dict[str, Any] = {"max_hours": s.max_all_verified_hours, "repairs": repairs}
    if best is None:
        return Criterion(name, False, evidence, "no complete green diff run has verified every row yet: run "
                                                "`reconcile diff --full`, or let the incremental sweep finish a pass")
    age = round((now - best[0]).total_seconds() / 3600, 3)
    evidence.update(verified_since=iso(best[0]), how=best[1], run_id=best[2], age_hours=age)
    if age > s.max_all_verified_hours:
        return Criterion(name, False, evidence, f"every row was last verified {age:g} h ago, more than "
                                                f"{s.max_all_verified_hours:g} h: run `reconcile diff --full`")
    how = "a full diff" if best[1] == "full" else "a completed sweep pass"
    return Criterion(name, True, evidence, f"every row verified green by {how} {age:g} h ago")


def full_diff_recent(history: dict[str, Any], s: Any, now: dt.datetime, repairs: dict[str, Any]) -> Criterion:
    name = "full_diff_recent"
    full = [r for r in history["recent"] if r["complete"] and r["status"] == "green" and _verified(r)[1] == "full"]
    evidence: dict[str, Any] = {"max_hours": s.max_all_verified_hours, "repairs": repairs}
    if not full:
        return Criterion(name, False, evidence, "no complete green full diff run is stored: the write gate needs one "
                                                "(`reconcile diff --full`, or the DAG with mode=full)")
    run = full[0]
    age = round((now - run["started_at"]).total_seconds() / 3600, 3)
    evidence.update(run_id=run["run_id"], started_at=iso(run["started_at"]), age_hours=age)
    if age > s.max_all_verified_hours:
        return Criterion(name, False, evidence, f"the latest complete green full diff started {age:g} h ago, more "
                                                f"than {s.max_all_verified_hours:g} h: run `reconcile diff --full`")
    return Criterion(name, True, evidence, f"a complete green full diff started {age:g} h ago")
