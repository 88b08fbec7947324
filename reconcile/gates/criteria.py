"""The cutover criteria, each evaluated from stored history with the evidence behind it.

What the other stages store (the shared contract) and what each criterion reads:

========================  ==============================================================================
criterion                 evidence read
========================  ==============================================================================
green_diff_streak         ``reconcile.runs`` kind 'diff' (final status green/red/error): the complete
                          green runs finished after the latest red/error run (of any scope) must be
                          >= ``min_green_runs`` runs spanning >= ``min_green_hours``, the latest finished
                          within ``max_diff_age_hours``. Complete: the summary's ``tables`` holds every
                          configured table (compared: status green/red) and, when the config has a
                          ledger (accounts + entries roles), the run's ``diff_results`` row
                          ``__balances__`` is green/red (the balance diff ran; ``skipped`` does not
                          count). Partial green runs (``reconcile diff --table ...``) neither count nor
                          break the streak; a partial red/error run breaks it.
latest_diff_clean         the latest complete diff run's summary: ``persistent_mismatches`` and
                          ``balance_differences`` both 0
expectations_green        the latest kind 'check' run: status green (summary ``success`` not false),
                          finished within ``max_check_age_hours``
replay_lag                kind 'replay' runs finished within ``replay_window_hours``, or still running
                          with a summary and started within it (a row left 'running' with no summary by
                          a killed session never counts): the latest neither 'error' nor 'stopped', the
                          highest ``lag_seconds_p99`` below ``max_lag_p99_seconds`` (all null: the
                          latest must report ``caught_up``)
dead_letters              ``reconcile.dead_letters`` with ``resolved_at IS NULL``: none
full_pass_recent          a complete green diff run vouching every row verified within ``max_all_verified_hours``:
                          a full run (or one without ``coverage``: older runs read everything) at its start, an
                          incremental one by its ``coverage.all_verified_since`` when clean; evidence: repairs
                          (:mod:`reconcile.gates.coverage`)
audit_blockers            the latest ``reconcile.audit_runs`` row: no ``blocker`` finding
*write gate also*
read_gate_held            state ``read_cutover`` entered >= ``min_read_hours`` ago (``gate_state``)
occ_conflict_rate         runs within the window (as for replay_lag) whose summary has ``conflicts``
                          and ``target_commits`` (replay) or ``attempts`` (backfill):
                          sum(conflicts) / sum(commits) below ``max_conflict_rate``
must_change_acknowledged  every ``must-change`` finding of the latest audit run is in
                          ``reconcile.gate_acknowledgements``
full_diff_recent          a complete green *full* diff run started within ``max_all_verified_hours``
========================  ==============================================================================

No evidence is never a pass: a criterion with nothing stored to read fails and says what to run.
Everything runs in one read transaction (one snapshot), timed by the target's clock.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from reconcile.control import ident
from reconcile.diff.balances import layout_of
from reconcile.diff.store import BALANCES
from reconcile.gates.coverage import full_diff_recent, full_pass_recent, repairs_evidence
from reconcile.gates.evidence import Criterion, iso
from reconcile.gates.settings import GateSettings

__all__ = ["READ_CRITERIA", "WRITE_CRITERIA", "DiffScope", "evaluate_criteria"]

READ_CRITERIA = ("green_diff_streak", "latest_diff_clean", "expectations_green", "replay_lag", "dead_letters",
                 "audit_blockers", "full_pass_recent")
WRITE_CRITERIA = READ_CRITERIA + ("read_gate_held", "occ_conflict_rate", "must_change_acknowledged",
                                  "full_diff_recent")

FINAL_DIFF = ("green", "red", "error")
_LISTED = 10
"""At most this many ids are listed in one piece of evidence."""
_SCANNED = 50
"""The latest complete diff run is looked for among this many recent runs."""


def _summary(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _hours(delta: dt.timedelta) -> float:
    return round(delta.total_seconds() / 3600, 3)


def _runs(conn: psycopg.Connection, kind: str, statuses: tuple[str, ...] | None, *, since: dt.datetime | None = None,
          limit: int | None = None) -> list[dict[str, Any]]:
    where = [sql.SQL("kind = %s")]
    params: list[Any] = [kind]
    if statuses is not None:
        where.append(sql.SQL("status IN ({})").format(sql.SQL(", ").join([sql.Placeholder()] * len(statuses))))
        params.extend(statuses)
    if since is not None:
        # A session still running counts only with a summary (its figures so far) and when it started inside
        # the window: a row a killed session left 'running' with no summary, or started long ago, never does.
        where.append(sql.SQL("(finished_at >= %s OR (finished_at IS NULL AND summary IS NOT NULL "
                             "AND started_at >= %s))"))
        params.extend([since, since])
    q = sql.SQL("SELECT run_id, status, started_at, finished_at, summary FROM {} WHERE {} "
                "ORDER BY coalesce(finished_at, started_at) DESC, started_at DESC{}").format(
        ident("runs"), sql.SQL(" AND ").join(where),
        sql.SQL(" LIMIT {}").format(sql.Literal(limit)) if limit else sql.SQL(""))
    return [{"run_id": str(r[0]), "status": r[1], "started_at": r[2], "finished_at": r[3], "summary": _summary(r[4])}
            for r in conn.execute(q, params).fetchall()]


@dataclass(frozen=True)
class DiffScope:
    """What a complete diff run covers: every configured table and, with a ledger, the balance diff.

    Only complete runs are evidence that the target matches: a green ``reconcile diff --table
    ledger.accounts`` says nothing about the entries.
    """

    tables: tuple[str, ...]
    """Every configured table (``config.tables``)."""
    balances: bool
    """Whether the config has a ledger (accounts + entries roles), so a complete run diffs the balances."""

    @classmethod
    def of(cls, config: Any) -> DiffScope:
        return cls(tuple(t.name for t in config.tables), layout_of(config) is not None)


COMPARED = ("green", "red")
"""Statuses of a table (or the balance diff) that was actually compared (``error``/``skipped`` were not)."""

def _diff_runs(conn: psycopg.Connection, scope: DiffScope, where: sql.Composable, params: list[Any], *,
               limit: int | None = None) -> list[dict[str, Any]]:
    """Diff runs matching ``where``, newest first, each with ``gaps`` (what it did not compare) and ``complete``."""
    end = sql.SQL("coalesce(r.finished_at, r.started_at)")
    q = sql.SQL("SELECT r.run_id, r.status, r.started_at, r.finished_at, r.summary, "
                "(SELECT d.status FROM {results} d WHERE d.run_id = r.run_id AND d.table_name = %s) "
                "FROM {runs} r WHERE r.kind = 'diff' AND {where} ORDER BY {end} DESC, r.started_at DESC{limit}").format(
        results=ident("diff_results"), runs=ident("runs"), where=where, end=end,
        limit=sql.SQL(" LIMIT {}").format(sql.Literal(limit)) if limit else sql.SQL(""))
    out = []
    for r in conn.execute(q, [BALANCES, *params]).fetchall():
        summary = _summary(r[4])
        tables = summary.get("tables") if isinstance(summary.get("tables"), dict) else {}
        gaps = [t for t in scope.tables if not (isinstance(tables.get(t), dict) and tables[t].get("status") in COMPARED)]
        if scope.balances and r[5] not in COMPARED:
            gaps.append("balances")
        out.append({"run_id": str(r[0]), "status": r[1], "started_at": r[2], "finished_at": r[3], "summary": summary,
                    "gaps": gaps, "complete": not gaps})
    return out


def _end(run: dict[str, Any]) -> dt.datetime:
    return run["finished_at"] or run["started_at"]


def _diff_history(conn: psycopg.Connection, scope: DiffScope) -> dict[str, Any]:
    """The diff runs the two diff criteria read.

    ``recent``: the latest final runs (any scope); ``bad``: the latest red/error run (any scope) or None;
    ``greens``: every green run finished after it, newest first (complete or not).
    """
    final = sql.SQL("r.status IN ({})").format(sql.SQL(", ").join([sql.Placeholder()] * len(FINAL_DIFF)))
    recent = _diff_runs(conn, scope, final, list(FINAL_DIFF), limit=_SCANNED)
    bad = _diff_runs(conn, scope, sql.SQL("r.status IN ('red', 'error')"), [], limit=1)
    after = sql.SQL("r.status = 'green' AND coalesce(r.finished_at, r.started_at) > %s")
    greens = _diff_runs(conn, scope, after, [_end(bad[0]) if bad else dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)])
    return {"recent": recent, "bad": bad[0] if bad else None, "greens": greens}


def _diff_streak(history: dict[str, Any], s: GateSettings, now: dt.datetime) -> Criterion:
    name = "green_diff_streak"
    recent, bad, greens = history["recent"], history["bad"], history["greens"]
    if not recent:
        return Criterion(name, False, {"runs": 0}, "no finished diff run is stored; run `reconcile diff`")
    full = [g for g in greens if g["complete"]]
    partial = [g for g in greens if not g["complete"]]
    count = len(full)
    span = _hours(_end(full[0]) - full[-1]["started_at"]) if full else 0.0
    latest = recent[0]
    evidence: dict[str, Any] = {
        "consecutive_green": count, "required_runs": s.min_green_runs, "span_hours": span,
        "required_hours": s.min_green_hours, "streak_started_at": iso(full[-1]["started_at"]) if full else None,
        "latest_run_id": latest["run_id"], "latest_status": latest["status"], "latest_finished_at": iso(_end(latest)),
        "max_age_hours": s.max_diff_age_hours, "recent_green_run_ids": [r["run_id"] for r in full[:_LISTED]],
        "partial_green_runs": len(partial), "partial_green_run_ids": [r["run_id"] for r in partial[:_LISTED]],
    }
    if bad is not None:
        evidence["streak_broken_by"] = {"run_id": bad["run_id"], "status": bad["status"],
                                        "finished_at": iso(bad["finished_at"]), "complete": bad["complete"]}
    if count < s.min_green_runs:
        msg = f"{count} consecutive complete green diff run(s), {s.min_green_runs} needed"
        if latest["status"] != "green":
            msg += f" (the latest is {latest['status']})"
        elif partial:
            gaps = sorted({g for r in partial for g in r["gaps"]})
            msg += (f"; {len(partial)} green run(s) left out {', '.join(gaps[:3])}: run `reconcile diff` over "
                    "every table")
        return Criterion(name, False, evidence, msg)
    age = _hours(now - _end(full[0]))
    evidence["latest_age_hours"] = age
    if span < s.min_green_hours:
        return Criterion(name, False, evidence,
                         f"the green streak spans {span:g} h, {s.min_green_hours:g} h needed")
    if age > s.max_diff_age_hours:
        return Criterion(name, False, evidence,
                         f"the latest complete diff finished {age:g} h ago, more than {s.max_diff_age_hours:g} h")
    return Criterion(name, True, evidence, f"{count} consecutive complete green diff runs spanning {span:g} h")


def _diff_clean(history: dict[str, Any]) -> Criterion:
    name = "latest_diff_clean"
    recent = history["recent"]
    latest = next((r for r in recent if r["complete"]), None)
    if latest is None:
        if not recent:
            return Criterion(name, False, {}, "no finished diff run is stored; run `reconcile diff`")
        return Criterion(name, False, {"runs_scanned": len(recent), "latest_gaps": recent[0]["gaps"]},
                         f"none of the last {len(recent)} diff run(s) compared every table and the balances; run "
                         "`reconcile diff` over every table")
    summary = latest["summary"]
    persistent, balances = summary.get("persistent_mismatches"), summary.get("balance_differences")
    evidence = {"run_id": latest["run_id"], "status": latest["status"], "persistent_mismatches": persistent,
                "balance_differences": balances, "in_flight": summary.get("in_flight"),
                "report_dir": summary.get("report_dir")}
    if persistent is None or balances is None:
        return Criterion(name, False, evidence, "the latest complete diff run's summary lacks persistent_mismatches "
                                                "or balance_differences; run `reconcile diff` again")
    if persistent or balances:
        return Criterion(name, False, evidence, f"the latest complete diff has {persistent} persistent row "
                                                f"mismatch(es) and {balances} balance difference(s)")
    return Criterion(name, True, evidence, "the latest complete diff has no persistent mismatch and no balance "
                                           "difference")


def _expectations(conn: psycopg.Connection, s: GateSettings, now: dt.datetime) -> Criterion:
    name = "expectations_green"
    checks = _runs(conn, "check", ("green", "red", "error"), limit=1)
    if not checks:
        return Criterion(name, False, {"runs": 0}, "no finished expectations run is stored; run `reconcile check`")
    run = checks[0]
    summary = run["summary"]
    end = run["finished_at"] or run["started_at"]
    age = _hours(now - end)
    failed_suites = sorted(k for k, v in (summary.get("suites") or {}).items()
                           if isinstance(v, dict) and v.get("success") is False)
    evidence = {"run_id": run["run_id"], "status": run["status"], "finished_at": iso(end), "age_hours": age,
                "max_age_hours": s.max_check_age_hours, "evaluated": summary.get("evaluated"),
                "failed": summary.get("failed"), "failed_suites": failed_suites[:_LISTED],
                "data_docs": summary.get("data_docs")}
    if run["status"] != "green" or summary.get("success") is False:
        return Criterion(name, False, evidence, f"the latest expectations run is {run['status']}"
                         + (f" ({', '.join(failed_suites[:3])} failed)" if failed_suites else ""))
    if age > s.max_check_age_hours:
        return Criterion(name, False, evidence,
                         f"the latest expectations run finished {age:g} h ago, more than {s.max_check_age_hours:g} h")
    return Criterion(name, True, evidence, "every expectation passed in the latest run")


def _replay_lag(replays: list[dict[str, Any]], s: GateSettings) -> Criterion:
    name = "replay_lag"
    if not replays:
        return Criterion(name, False, {"runs": 0, "window_hours": s.replay_window_hours},
                         f"no replay run in the last {s.replay_window_hours:g} h; run `reconcile replay`")
    lags = [(r["summary"].get("lag_seconds_p99"), r["run_id"]) for r in replays]
    known = [(float(v), rid) for v, rid in lags if isinstance(v, (int, float)) and not isinstance(v, bool)]
    latest = replays[0]
    worst = max(known) if known else None
    evidence = {"runs": len(replays), "window_hours": s.replay_window_hours, "max_lag_seconds": s.max_lag_p99_seconds,
                "lag_seconds_p99": worst[0] if worst else None, "worst_run_id": worst[1] if worst else None,
                "latest_run_id": latest["run_id"], "latest_status": latest["status"],
                "latest_caught_up": latest["summary"].get("caught_up")}
    if latest["status"] in ("error", "stopped"):
        return Criterion(name, False, evidence, f"the latest replay run {latest['status']}"
                         + (" on a dead letter" if latest["status"] == "stopped" else ""))
    if worst is None:
        if latest["summary"].get("caught_up") is True:
            return Criterion(name, True, evidence, "no source transaction needed replaying and the replay is caught up")
        return Criterion(name, False, evidence, "no replay run reported a lag and the latest is not caught up")
    if worst[0] >= s.max_lag_p99_seconds:
        return Criterion(name, False, evidence,
                         f"replay lag p99 reached {worst[0]:g} s, the limit is {s.max_lag_p99_seconds:g} s")
    return Criterion(name, True, evidence, f"replay lag p99 at most {worst[0]:g} s (limit {s.max_lag_p99_seconds:g} s)")


def _dead_letters(conn: psycopg.Connection) -> Criterion:
    name = "dead_letters"
    rows = conn.execute(sql.SQL("SELECT dead_letter_id, xid, table_name, reason FROM {} WHERE resolved_at IS NULL "
                                "ORDER BY created_at").format(ident("dead_letters"))).fetchall()
    evidence = {"open": len(rows), "dead_letters": [{"id": str(r[0]), "xid": r[1], "table": r[2], "reason": r[3]}
                                                    for r in rows[:_LISTED]]}
    if rows:
        return Criterion(name, False, evidence, f"{len(rows)} dead letter(s) are open; resolve them first")
    return Criterion(name, True, evidence, "no open dead letter")


def _latest_audit(conn: psycopg.Connection) -> dict[str, Any] | None:
    row = conn.execute(sql.SQL("SELECT run_id, started_at, blockers, must_change FROM {} "
                               "ORDER BY started_at DESC LIMIT 1").format(ident("audit_runs"))).fetchone()
    if row is None:
        return None
    findings = conn.execute(sql.SQL("SELECT finding_id, severity, message FROM {} WHERE run_id = %s "
                                    "AND severity IN ('blocker', 'must-change') ORDER BY finding_no").format(
        ident("audit_findings")), (row[0],)).fetchall()
    return {"run_id": str(row[0]), "started_at": row[1],
            "blockers": [{"finding_id": f[0], "message": f[2]} for f in findings if f[1] == "blocker"],
            "must_change": [{"finding_id": f[0], "message": f[2]} for f in findings if f[1] == "must-change"]}


def _audit_blockers(audit: dict[str, Any] | None, s: GateSettings) -> Criterion:
    name = "audit_blockers"
    if audit is None:
        return Criterion(name, not s.require_audit_run, {"audit_run": None},
                         "no audit run is stored; run `reconcile audit`" if s.require_audit_run
                         else "no audit run is stored (not required by [gates] require_audit_run)")
    blockers = audit["blockers"]
    evidence = {"audit_run": audit["run_id"], "audited_at": iso(audit["started_at"]), "blockers": len(blockers),
                "blocker_ids": [b["finding_id"] for b in blockers[:_LISTED]]}
    if blockers:
        return Criterion(name, False, evidence, f"the latest audit has {len(blockers)} blocker(s), e.g. "
                                                f"{blockers[0]['finding_id']}")
    return Criterion(name, True, evidence, "the latest audit has no blocker")


def _read_held(state: dict[str, Any], s: GateSettings, now: dt.datetime) -> Criterion:
    name = "read_gate_held"
    evidence = {"state": state["state"], "entered_at": iso(state["entered_at"]), "required_hours": s.min_read_hours,
                "state_version": state["version"], "transition_event_id": state.get("last_event_id")}
    if state["state"] != "read_cutover":
        msg = ("the read gate has not been approved (state shadow)" if state["state"] == "shadow"
               else f"the state is {state['state']}, not read_cutover")
        return Criterion(name, False, evidence, msg)
    held = _hours(now - state["entered_at"])
    evidence["held_hours"] = held
    if held < s.min_read_hours:
        return Criterion(name, False, evidence, f"the read gate has held {held:g} h, {s.min_read_hours:g} h needed")
    return Criterion(name, True, evidence, f"the read gate has held {held:g} h")


def _conflict_rate(conn: psycopg.Connection, s: GateSettings, since: dt.datetime) -> Criterion:
    name = "occ_conflict_rate"
    per_kind: dict[str, dict[str, int]] = {}
    for kind, commits_key in (("replay", "target_commits"), ("backfill", "attempts")):
        for run in _runs(conn, kind, None, since=since):
            summ = run["summary"]
            conflicts, commits = summ.get("conflicts"), summ.get(commits_key)
            if not isinstance(conflicts, int) or not isinstance(commits, int):
                continue
            agg = per_kind.setdefault(kind, {"runs": 0, "conflicts": 0, "commits": 0})
            agg["runs"] += 1
            agg["conflicts"] += conflicts
            agg["commits"] += commits
    conflicts = sum(a["conflicts"] for a in per_kind.values())
    commits = sum(a["commits"] for a in per_kind.values())
    rate = conflicts / commits if commits else None
    evidence = {"window_hours": s.replay_window_hours, "conflicts": conflicts, "commits": commits,
                "rate": None if rate is None else round(rate, 6), "max_rate": s.max_conflict_rate, "by_kind": per_kind}
    if "replay" not in per_kind:
        return Criterion(name, False, evidence, f"no replay run in the last {s.replay_window_hours:g} h reported "
                                                "conflicts and target_commits; run `reconcile replay`")
    if rate is not None and rate >= s.max_conflict_rate:
        return Criterion(name, False, evidence,
                         f"OCC conflict rate {rate:.2%} on the target, the limit is {s.max_conflict_rate:.2%}")
    return Criterion(name, True, evidence, f"OCC conflict rate {(rate or 0):.2%} ({conflicts} of {commits} commits)")


def _acknowledged(conn: psycopg.Connection, audit: dict[str, Any] | None, s: GateSettings) -> Criterion:
    name = "must_change_acknowledged"
    if audit is None:
        return Criterion(name, not s.require_audit_run, {"audit_run": None},
                         "no audit run is stored; run `reconcile audit`" if s.require_audit_run
                         else "no audit run is stored (not required by [gates] require_audit_run)")
    acked = {r[0] for r in conn.execute(sql.SQL("SELECT finding_id FROM {}").format(ident("gate_acknowledgements")))}
    ids = [f["finding_id"] for f in audit["must_change"]]
    missing = [i for i in ids if i not in acked]
    evidence = {"audit_run": audit["run_id"], "must_change": len(ids), "acknowledged": len(ids) - len(missing),
                "unacknowledged": missing[:_LISTED]}
    if missing:
        return Criterion(name, False, evidence, f"{len(missing)} must-change finding(s) not acknowledged, e.g. "
                                                f"{missing[0]} (`reconcile gate acknowledge FINDING --by --reason`)")
    return Criterion(name, True, evidence, f"all {len(ids)} must-change finding(s) acknowledged")


def evaluate_criteria(conn: psycopg.Connection, gate: str, s: GateSettings, state: dict[str, Any],
                      now: dt.datetime, scope: DiffScope) -> list[Criterion]:
    """Inside one read transaction: every criterion of ``gate`` ('read' or 'write'), in a fixed order.

    ``scope`` says which diff runs are complete (:meth:`DiffScope.of` the config).
    """
    diffs = _diff_history(conn, scope)
    since = now - dt.timedelta(hours=s.replay_window_hours)
    replays = _runs(conn, "replay", None, since=since)
    audit = _latest_audit(conn)
    repairs = repairs_evidence(conn, since)
    out = [_diff_streak(diffs, s, now), _diff_clean(diffs), _expectations(conn, s, now), _replay_lag(replays, s),
           _dead_letters(conn), _audit_blockers(audit, s), full_pass_recent(diffs, s, now, repairs)]
    if gate == "write":
        out += [_read_held(state, s, now), _conflict_rate(conn, s, since), _acknowledged(conn, audit, s),
                full_diff_recent(diffs, s, now, repairs)]
    return out
