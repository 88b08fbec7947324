"""Audit blockers retired by evidence: a blocker whose replacement invariant has been checked green.

Some blockers have a replacement the audit derived: a trigger that keeps a running balance cannot move to
DSQL, but the application can post the balance itself, and the audit hands the invariant it kept true
(``balance = sum(entries)``) to the expectations (``details["invariant"]`` of the finding;
:func:`reconcile.checks.generate.replacement_of` names the expectation that checks it). Such a blocker
stops blocking the ``audit_blockers`` criterion when both hold:

* a person retired it (``reconcile gate retire FINDING --by --reason``: a ``retirement`` event in the audit
  trail and a ``reconcile.gate_acknowledgements`` row with severity ``blocker``), and
* its replacement expectation passed on the target in every check run of this migration over the gate's
  streak window (finished within ``[gates] min_green_hours`` of now; with none in it, the latest check run
  when it finished within ``max_check_age_hours``), and at least one such run exists.

Both are read at every evaluation: a replacement that turns red brings the blocker back. A blocker without
a replacement cannot be retired (only an override passes it).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
from psycopg import sql

from reconcile.control import ident
from reconcile.gates.evidence import iso
from reconcile.gates.settings import GateSettings
from reconcile.identity import covers

__all__ = ["replacement", "retirements", "vouching"]

_LISTED = 10
_SCANNED = 200


def replacement(details: Any, scope: Any) -> dict[str, Any] | None:
    """``{"suite", "name", "invariant"}``: the expectation replacing a finding (its stored ``details``), or None."""
    from reconcile.checks.generate import replacement_of

    if isinstance(details, str):
        try:
            details = json.loads(details)
        except ValueError:
            return None
    inv = details.get("invariant") if isinstance(details, dict) else None
    found = replacement_of(inv, set(scope.covered), set(scope.tables))
    if found is None:
        return None
    return {"suite": found[0], "name": found[1], "invariant": inv.get("name")}


def vouching(conn: psycopg.Connection, scope: Any, s: GateSettings, now: dt.datetime,
             check: dict[str, Any]) -> dict[str, Any]:
    """The check runs over the streak window and whether ``check`` passed on the target in each.

    Returns ``{"green", "window_hours", "runs": [{"run_id", "finished_at", "result"}], "reason"}``; ``result``
    is ``passed``, ``failed``, ``error``, ``not_applicable`` or ``absent`` (the run did not evaluate it).
    """
    rows = conn.execute(sql.SQL(
        "SELECT run_id, finished_at, tables FROM {} WHERE kind = 'check' AND migration_id = %s "
        "AND status IN ('green', 'red', 'error') AND finished_at IS NOT NULL "
        "ORDER BY finished_at DESC LIMIT {}").format(ident("runs"), sql.Literal(_SCANNED)),
        (scope.migration_id,)).fetchall()
    runs = [(str(r[0]), r[1]) for r in rows if covers(r[2], scope.tables)]
    since = now - dt.timedelta(hours=s.min_green_hours)
    window = [r for r in runs if r[1] >= since]
    if not window and runs and now - runs[0][1] <= dt.timedelta(hours=s.max_check_age_hours):
        window = runs[:1]
    out: dict[str, Any] = {"window_hours": s.min_green_hours, "expectation": f"{check['suite']}/{check['name']}",
                           "runs": []}
    for run_id, finished in window:
        row = conn.execute(sql.SQL(
            "SELECT coalesce(status, CASE WHEN success THEN 'passed' ELSE 'failed' END) FROM {} "
            "WHERE run_id = %s AND side = 'target' AND suite = %s AND name = %s ORDER BY result_no DESC LIMIT 1"
        ).format(ident("check_results")), (run_id, check["suite"], check["name"])).fetchone()
        out["runs"].append({"run_id": run_id, "finished_at": iso(finished), "result": row[0] if row else "absent"})
    bad = [r for r in out["runs"] if r["result"] != "passed"]
    if not out["runs"]:
        out["reason"] = (f"no check run of this migration finished within {s.min_green_hours:g} h (or the latest "
                         f"within {s.max_check_age_hours:g} h); run `reconcile check`")
    elif bad:
        out["reason"] = (f"{check['suite']}/{check['name']} was {bad[0]['result']} on the target in check run "
                         f"{bad[0]['run_id']} ({len(bad)} of {len(out['runs'])} run(s) in the window)")
    out["green"] = bool(out["runs"]) and not bad
    out["runs"] = out["runs"][:_LISTED]
    return out


def retirements(conn: psycopg.Connection, blockers: list[dict[str, Any]], scope: Any, s: GateSettings,
                now: dt.datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split ``blockers`` (``{finding_id, message, details}``) into (retired, open).

    A retired one carries who retired it, why, when, its replacement and the check runs that vouch; an
    open one that was retired but whose replacement is not green now carries ``not_retired_because``.
    """
    ids = [b["finding_id"] for b in blockers]
    acks = {}
    if ids:
        acks = {r[0]: r[1:] for r in conn.execute(sql.SQL(
            "SELECT finding_id, acknowledged_by, reason, acknowledged_at, event_id FROM {} "
            "WHERE finding_id = ANY(%s) AND severity = 'blocker'").format(ident("gate_acknowledgements")),
            (ids,)).fetchall()}
    retired, still = [], []
    for b in blockers:
        ack = acks.get(b["finding_id"])
        if ack is None:
            still.append({"finding_id": b["finding_id"]})
            continue
        repl = replacement(b.get("details"), scope)
        proof = vouching(conn, scope, s, now, repl) if repl is not None else {"green": False,
                                                                              "reason": "it has no replacement"}
        if not proof["green"]:
            still.append({"finding_id": b["finding_id"], "retired_by": ack[0],
                          "not_retired_because": proof["reason"]})
            continue
        retired.append({"finding_id": b["finding_id"], "retired_by": ack[0], "reason": ack[1],
                        "retired_at": iso(ack[2]), "event_id": None if ack[3] is None else str(ack[3]),
                        "replacement": {"suite": repl["suite"], "name": repl["name"], "invariant": repl["invariant"]},
                        "window_hours": proof["window_hours"],
                        "vouching_check_runs": [r["run_id"] for r in proof["runs"]]})
    return retired, still
