"""The cutover criteria, each evaluated from stored history with the evidence behind it.

Whose evidence counts: only rows of this gate's own migration (``migration_id``, :mod:`reconcile.identity`:
the config's name, endpoints, table set and slot) that covered its whole table set (``tables``). A run of
another config sharing the control schema (other tables, another slot) moves nothing here; rows written
before runs recorded their migration never count, and the evidence says how many were left out
(``ignored_without_migration_id``).

What the other stages store (the shared contract) and what each criterion reads:

========================  ==============================================================================
criterion                 evidence read
========================  ==============================================================================
green_diff_streak         reconciliations: ``reconcile.runs`` kind 'diff' (final status green/red/error)
                          with the 'check' run that is ``part_of`` it. A reconciliation counts when its
                          diff is green and complete (the summary's ``tables`` holds every configured
                          table, compared), its ``diff_results`` row ``__balances__`` is green (when the
                          config has a ledger: accounts + entries roles; ``skipped`` or absent does not
                          count) and its expectations run is green. The counting reconciliations finished
                          after the latest red one (a red/error diff, or a red/error expectations run of
                          it) must be >= ``min_green_runs`` spanning >= ``min_green_hours``, the latest
                          finished within ``max_diff_age_hours``. Partial green runs (``reconcile diff
                          --table ...``) and green diffs without a green expectations run of their own
                          (checks crashed or not run) neither count nor break the streak.
latest_diff_clean         the latest complete diff run's summary: ``persistent_mismatches`` and
                          ``balance_differences`` both 0
expectations_green        the latest kind 'check' run: status green (summary ``success`` not false),
                          finished within ``max_check_age_hours``
replay_lag                kind 'replay' runs finished within ``replay_window_hours``, or still running
                          with a summary and started within it (a row left 'running' with no summary by
                          a killed session never counts): the latest neither 'error' nor 'stopped', the
                          highest ``lag_seconds_p99`` below ``max_lag_p99_seconds`` (all null: the
                          latest must report ``caught_up``)
dead_letters              ``reconcile.dead_letters`` of the migration's slot with ``resolved_at IS NULL``: none
full_pass_recent          a complete green diff run vouching every row verified within ``max_all_verified_hours``:
                          a full run (or one without ``coverage``: older runs read everything) at its start, an
                          incremental one by its ``coverage.all_verified_since`` when clean; evidence: repairs
                          (:mod:`reconcile.gates.coverage`)
audit_blockers            the latest ``reconcile.audit_runs`` row: no ``blocker`` finding, except those retired
                          by evidence (acknowledged with ``reconcile gate retire`` and their replacement
                          expectation green on the target in every check run of the streak window:
                          :mod:`reconcile.gates.retirement`)
*write gate also*
read_gate_held            state ``read_cutover`` entered >= ``min_read_hours`` ago (``gate_state``)
occ_conflict_rate         runs within the window (as for replay_lag, whatever tables they covered) whose
                          summary has ``conflicts`` and ``target_commits`` (replay) or ``attempts``
                          (backfill): sum(conflicts) / sum(commits) below ``max_conflict_rate``
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
from reconcile.identity import covers, migration_of

__all__ = ["READ_CRITERIA", "WRITE_CRITERIA", "EvidenceScope", "diff_runs", "evaluate_criteria", "latest_audit_run"]

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


def _runs(conn: psycopg.Connection, kind: str, statuses: tuple[str, ...] | None, scope: EvidenceScope, *,
          since: dt.datetime | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Runs of ``kind`` of this migration, newest first; ``covers``: the run covered the whole table set."""
    where = [sql.SQL("kind = %s"), sql.SQL("migration_id = %s")]
    params: list[Any] = [kind, scope.migration_id]
    if kind in DIRECTED:
        where.append(sql.SQL("coalesce(direction, 'forward') = %s"))
        params.append(scope.direction)
    if statuses is not None:
        where.append(sql.SQL("status IN ({})").format(sql.SQL(", ").join([sql.Placeholder()] * len(statuses))))
        params.extend(statuses)
    if since is not None:
        # A session still running counts only with a summary (its figures so far) and when it started inside
        # the window: a row a killed session left 'running' with no summary, or started long ago, never does.
        where.append(sql.SQL("(finished_at >= %s OR (finished_at IS NULL AND summary IS NOT NULL "
                             "AND started_at >= %s))"))
        params.extend([since, since])
    q = sql.SQL("SELECT run_id, status, started_at, finished_at, summary, tables FROM {} WHERE {} "
                "ORDER BY coalesce(finished_at, started_at) DESC, started_at DESC{}").format(
        ident("runs"), sql.SQL(" AND ").join(where),
        sql.SQL(" LIMIT {}").format(sql.Literal(limit)) if limit else sql.SQL(""))
    return [{"run_id": str(r[0]), "status": r[1], "started_at": r[2], "finished_at": r[3], "summary": _summary(r[4]),
             "covers": covers(r[5], scope.tables)}
            for r in conn.execute(q, params).fetchall()]


def _without_id(conn: psycopg.Connection, table: str, kind: str | None = None) -> int:
    """Rows of ``table`` (of ``kind``) that record no migration: written before runs did; never counted."""
    q = sql.SQL("SELECT count(*) FROM {} WHERE migration_id IS NULL{}").format(
        ident(table), sql.SQL(" AND kind = %s") if kind else sql.SQL(""))
    return int(conn.execute(q, (kind,) if kind else ()).fetchone()[0])


def _legacy(evidence: dict[str, Any], count: int) -> dict[str, Any]:
    """``evidence`` saying how many stored rows were left out for recording no migration (when any were)."""
    if count:
        evidence["ignored_without_migration_id"] = count
    return evidence


def _none_stored(what: str, scope: EvidenceScope, count: int, run: str, when: str = " is stored") -> str:
    """The sentence of a criterion with no evidence of this migration."""
    older = (f" ({count} older row(s) record no migration and do not count)" if count else "")
    return f"no {what} of this migration ({scope.migration_id[:12]}){when}{older}; run `{run}`"


@dataclass(frozen=True)
class EvidenceScope:
    """Whose evidence a gate counts: one migration's runs that covered its whole table set.

    Only complete runs are evidence that the target matches: a green ``reconcile diff --table
    ledger.accounts`` says nothing about the entries, and a run of another migration (another config
    sharing the control schema: other tables, another slot) says nothing about this one.
    """

    migration_id: str
    """:func:`reconcile.identity.migration_of` the config."""
    tables: tuple[str, ...]
    """Every configured table (``config.tables``, in configured order)."""
    balances: bool
    """Whether the config has a ledger (accounts + entries roles), so a complete run diffs the balances."""
    slot: str
    """The replay slot (``[replay] slot_name``): whose dead letters count."""
    covered: frozenset[tuple[str, ...]] = frozenset()
    """(accounts, balance, entries, amount) the ledger suite's balance expectation checks: what replaces a
    balance trigger (:mod:`reconcile.gates.retirement`)."""
    direction: str = "forward"
    """Which reconciliations count (:mod:`reconcile.direction`): forward for the read and write gates,
    reverse for the rollback gate. Diff and check runs record theirs; older rows are forward."""

    @classmethod
    def of(cls, config: Any) -> EvidenceScope:
        from reconcile.checks.generate import ledger_balance

        identity = migration_of(config)
        return cls(identity.id, tuple(t.name for t in config.tables), layout_of(config) is not None, identity.slot,
                   frozenset(ledger_balance(config)))


DIRECTED = ("diff", "check")
"""Run kinds that record a direction (``runs.direction``)."""
COMPARED = ("green", "red")
"""Statuses of a table (or the balance diff) that was actually compared (``error``/``skipped`` were not)."""
_RED_CHECK = ("red", "error")


def _diff_runs(conn: psycopg.Connection, scope: EvidenceScope, where: sql.Composable, params: list[Any], *,
               limit: int | None = None) -> list[dict[str, Any]]:
    """Diff runs of this migration matching ``where``, newest first.

    Each with ``gaps`` (what it did not compare), ``complete``, ``balances`` (its balance diff's status),
    ``checks`` (the status of the expectations run of the same reconciliation, None when none is linked)
    and ``counts``: a complete green diff whose balance diff and expectations also completed green.
    """
    end = sql.SQL("coalesce(r.finished_at, r.started_at)")
    q = sql.SQL("SELECT r.run_id, r.status, r.started_at, r.finished_at, r.summary, "
                "(SELECT d.status FROM {results} d WHERE d.run_id = r.run_id AND d.table_name = %s), "
                "(SELECT c.status FROM {runs} c WHERE c.part_of = r.run_id AND c.kind = 'check' "
                "AND c.migration_id = r.migration_id ORDER BY c.started_at DESC LIMIT 1) "
                "FROM {runs} r WHERE r.kind = 'diff' AND r.migration_id = %s "
                "AND coalesce(r.direction, 'forward') = %s AND {where} "
                "ORDER BY {end} DESC, r.started_at DESC{limit}").format(
        results=ident("diff_results"), runs=ident("runs"), where=where, end=end,
        limit=sql.SQL(" LIMIT {}").format(sql.Literal(limit)) if limit else sql.SQL(""))
    out = []
    for r in conn.execute(q, [BALANCES, scope.migration_id, scope.direction, *params]).fetchall():
        summary = _summary(r[4])
        tables = summary.get("tables") if isinstance(summary.get("tables"), dict) else {}
        gaps = [t for t in scope.tables if not (isinstance(tables.get(t), dict) and tables[t].get("status") in COMPARED)]
        if scope.balances and r[5] not in COMPARED:
            gaps.append("balances")
        balances_green = not scope.balances or r[5] == "green"
        out.append({"run_id": str(r[0]), "status": r[1], "started_at": r[2], "finished_at": r[3], "summary": summary,
                    "gaps": gaps, "complete": not gaps, "balances": r[5], "checks": r[6],
                    "counts": r[1] == "green" and not gaps and balances_green and r[6] == "green"})
    return out


diff_runs = _diff_runs
"""Public name for the rollback gate (:mod:`reconcile.gates.rollback_gate`)."""


def _end(run: dict[str, Any]) -> dt.datetime:
    return run["finished_at"] or run["started_at"]


def _diff_history(conn: psycopg.Connection, scope: EvidenceScope) -> dict[str, Any]:
    """The diff runs (of this migration) the two diff criteria read.

    ``recent``: the latest final runs (any scope); ``bad``: the latest red reconciliation (a red/error
    diff run, or one whose expectations run was red/error) or None; ``greens``: every green run finished
    after it, newest first (counting or not); ``legacy``: diff runs that record no migration.
    """
    final = sql.SQL("r.status IN ({})").format(sql.SQL(", ").join([sql.Placeholder()] * len(FINAL_DIFF)))
    recent = _diff_runs(conn, scope, final, list(FINAL_DIFF), limit=_SCANNED)
    red = sql.SQL("(r.status IN ('red', 'error') OR EXISTS (SELECT 1 FROM {} c WHERE c.part_of = r.run_id "
                  "AND c.kind = 'check' AND c.status IN ('red', 'error')))").format(ident("runs"))
    bad = _diff_runs(conn, scope, red, [], limit=1)
    after = sql.SQL("r.status = 'green' AND coalesce(r.finished_at, r.started_at) > %s")
    greens = _diff_runs(conn, scope, after, [_end(bad[0]) if bad else dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)])
    return {"recent": recent, "bad": bad[0] if bad else None, "greens": greens,
            "legacy": _without_id(conn, "runs", "diff")}


def _diff_streak(history: dict[str, Any], s: GateSettings, now: dt.datetime, scope: EvidenceScope) -> Criterion:
    name = "green_diff_streak"
    recent, bad, greens = history["recent"], history["bad"], history["greens"]
    if not recent:
        return Criterion(name, False, _legacy({"runs": 0}, history["legacy"]),
                         _none_stored("finished diff run", scope, history["legacy"], "reconcile diff"))
    full = [g for g in greens if g["counts"]]
    partial = [g for g in greens if not g["complete"]]
    unverified = [g for g in greens if g["complete"] and not g["counts"]]
    count = len(full)
    span = _hours(_end(full[0]) - full[-1]["started_at"]) if full else 0.0
    latest = recent[0]
    evidence: dict[str, Any] = {
        "consecutive_green": count, "required_runs": s.min_green_runs, "span_hours": span,
        "required_hours": s.min_green_hours, "streak_started_at": iso(full[-1]["started_at"]) if full else None,
        "latest_run_id": latest["run_id"], "latest_status": latest["status"], "latest_finished_at": iso(_end(latest)),
        "max_age_hours": s.max_diff_age_hours, "recent_green_run_ids": [r["run_id"] for r in full[:_LISTED]],
        "partial_green_runs": len(partial), "partial_green_run_ids": [r["run_id"] for r in partial[:_LISTED]],
        "unverified_green_runs": len(unverified),
        "unverified_green_run_ids": [r["run_id"] for r in unverified[:_LISTED]],
    }
    _legacy(evidence, history["legacy"])
    if bad is not None:
        evidence["streak_broken_by"] = {"run_id": bad["run_id"], "status": bad["status"], "checks": bad["checks"],
                                        "finished_at": iso(bad["finished_at"]), "complete": bad["complete"]}
    if count < s.min_green_runs:
        msg = f"{count} consecutive complete green reconciliation(s), {s.min_green_runs} needed"
        if latest["status"] != "green":
            msg += f" (the latest diff is {latest['status']})"
        elif latest["checks"] in _RED_CHECK:
            msg += f" (the latest reconciliation's expectations run is {latest['checks']})"
        elif unverified:
            msg += (f"; {len(unverified)} green diff run(s) have no green expectations run and balance diff of "
                    "their own (the checks or balances step failed, was skipped or did not run): run the whole "
                    "reconciliation (the reconcile_reconcile DAG)")
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
                         f"the latest complete reconciliation finished {age:g} h ago, more than "
                         f"{s.max_diff_age_hours:g} h")
    return Criterion(name, True, evidence, f"{count} consecutive complete green reconciliations spanning {span:g} h")


def _diff_clean(history: dict[str, Any], scope: EvidenceScope) -> Criterion:
    name = "latest_diff_clean"
    recent = history["recent"]
    latest = next((r for r in recent if r["complete"]), None)
    if latest is None:
        if not recent:
            return Criterion(name, False, _legacy({}, history["legacy"]),
                             _none_stored("finished diff run", scope, history["legacy"], "reconcile diff"))
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


def _expectations(conn: psycopg.Connection, s: GateSettings, now: dt.datetime, scope: EvidenceScope) -> Criterion:
    name = "expectations_green"
    checks = [r for r in _runs(conn, "check", ("green", "red", "error"), scope, limit=_SCANNED) if r["covers"]]
    legacy = _without_id(conn, "runs", "check")
    if not checks:
        return Criterion(name, False, _legacy({"runs": 0}, legacy),
                         _none_stored("finished expectations run", scope, legacy, "reconcile check"))
    run = checks[0]
    summary = run["summary"]
    end = run["finished_at"] or run["started_at"]
    age = _hours(now - end)
    failed_suites = sorted(k for k, v in (summary.get("suites") or {}).items()
                           if isinstance(v, dict) and v.get("success") is False)
    evidence = _legacy({"run_id": run["run_id"], "status": run["status"], "finished_at": iso(end), "age_hours": age,
                        "max_age_hours": s.max_check_age_hours, "evaluated": summary.get("evaluated"),
                        "failed": summary.get("failed"), "failed_suites": failed_suites[:_LISTED],
                        "data_docs": summary.get("data_docs")}, legacy)
    if run["status"] != "green" or summary.get("success") is False:
        return Criterion(name, False, evidence, f"the latest expectations run is {run['status']}"
                         + (f" ({', '.join(failed_suites[:3])} failed)" if failed_suites else ""))
    if age > s.max_check_age_hours:
        return Criterion(name, False, evidence,
                         f"the latest expectations run finished {age:g} h ago, more than {s.max_check_age_hours:g} h")
    return Criterion(name, True, evidence, "every expectation passed in the latest run")


def _replay_lag(replays: list[dict[str, Any]], s: GateSettings, scope: EvidenceScope, legacy: int) -> Criterion:
    name = "replay_lag"
    if not replays:
        return Criterion(name, False, _legacy({"runs": 0, "window_hours": s.replay_window_hours}, legacy),
                         _none_stored("replay run", scope, legacy, "reconcile replay",
                                      f" on slot {scope.slot} in the last {s.replay_window_hours:g} h"))
    lags = [(r["summary"].get("lag_seconds_p99"), r["run_id"]) for r in replays]
    known = [(float(v), rid) for v, rid in lags if isinstance(v, (int, float)) and not isinstance(v, bool)]
    latest = replays[0]
    worst = max(known) if known else None
    evidence = _legacy({"runs": len(replays), "window_hours": s.replay_window_hours,
                        "max_lag_seconds": s.max_lag_p99_seconds, "lag_seconds_p99": worst[0] if worst else None,
                        "worst_run_id": worst[1] if worst else None, "latest_run_id": latest["run_id"],
                        "latest_status": latest["status"], "latest_caught_up": latest["summary"].get("caught_up")},
                       legacy)
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


def _dead_letters(conn: psycopg.Connection, scope: EvidenceScope) -> Criterion:
    name = "dead_letters"
    rows = conn.execute(sql.SQL("SELECT dead_letter_id, xid, table_name, reason FROM {} WHERE resolved_at IS NULL "
                                "AND slot_name = %s ORDER BY created_at").format(ident("dead_letters")),
                        (scope.slot,)).fetchall()
    evidence = {"slot": scope.slot, "open": len(rows),
                "dead_letters": [{"id": str(r[0]), "xid": r[1], "table": r[2], "reason": r[3]} for r in rows[:_LISTED]]}
    if rows:
        return Criterion(name, False, evidence, f"{len(rows)} dead letter(s) of slot {scope.slot} are open; resolve "
                                                "them first")
    return Criterion(name, True, evidence, f"no open dead letter on slot {scope.slot}")


def latest_audit_run(conn: psycopg.Connection, scope: EvidenceScope) -> tuple[str, dt.datetime] | None:
    """The latest audit run of this migration that covered its whole table set: ``(run_id, started_at)``."""
    rows = conn.execute(sql.SQL("SELECT run_id, started_at, tables FROM {} WHERE migration_id = %s "
                                "ORDER BY started_at DESC LIMIT {}").format(ident("audit_runs"), sql.Literal(_SCANNED)),
                        (scope.migration_id,)).fetchall()
    return next(((str(r[0]), r[1]) for r in rows if covers(r[2], scope.tables)), None)


def _latest_audit(conn: psycopg.Connection, scope: EvidenceScope) -> dict[str, Any]:
    """``{"run": {run_id, started_at, blockers, must_change} | None, "legacy": n}``."""
    legacy = _without_id(conn, "audit_runs")
    found = latest_audit_run(conn, scope)
    if found is None:
        return {"run": None, "legacy": legacy}
    run_id, started = found
    findings = conn.execute(sql.SQL("SELECT finding_id, severity, message, details FROM {} WHERE run_id = %s "
                                    "AND severity IN ('blocker', 'must-change') ORDER BY finding_no").format(
        ident("audit_findings")), (run_id,)).fetchall()
    return {"legacy": legacy, "run": {
        "run_id": run_id, "started_at": started,
        "blockers": [{"finding_id": f[0], "message": f[2], "details": f[3]} for f in findings if f[1] == "blocker"],
        "must_change": [{"finding_id": f[0], "message": f[2]} for f in findings if f[1] == "must-change"]}}


def _no_audit(name: str, audited: dict[str, Any], s: GateSettings, scope: EvidenceScope) -> Criterion:
    if s.require_audit_run:
        return Criterion(name, False, _legacy({"audit_run": None}, audited["legacy"]),
                         _none_stored("audit run", scope, audited["legacy"], "reconcile audit"))
    return Criterion(name, True, _legacy({"audit_run": None}, audited["legacy"]),
                     "no audit run of this migration is stored (not required by [gates] require_audit_run)")


def _audit_blockers(conn: psycopg.Connection, audited: dict[str, Any], s: GateSettings, scope: EvidenceScope,
                    now: dt.datetime) -> Criterion:
    """No blocker in the latest audit, except those retired by evidence (:mod:`reconcile.gates.retirement`)."""
    from reconcile.gates.retirement import retirements

    name = "audit_blockers"
    audit = audited["run"]
    if audit is None:
        return _no_audit(name, audited, s, scope)
    blockers = audit["blockers"]
    retired, still = retirements(conn, blockers, scope, s, now)
    evidence = _legacy({"audit_run": audit["run_id"], "audited_at": iso(audit["started_at"]),
                        "blockers": len(still), "blocker_ids": [b["finding_id"] for b in still[:_LISTED]],
                        "retired": retired[:_LISTED]}, audited["legacy"])
    unproven = [b for b in still if b.get("not_retired_because")]
    if unproven:
        evidence["not_retired"] = unproven[:_LISTED]
    if still:
        first = still[0]
        why = (f" (retired by {first['retired_by']}, but {first['not_retired_because']})"
               if first.get("not_retired_because") else "")
        return Criterion(name, False, evidence, f"the latest audit has {len(still)} blocker(s) not retired by "
                                                f"evidence, e.g. {first['finding_id']}{why}")
    if retired:
        return Criterion(name, True, evidence, f"the latest audit's {len(retired)} blocker(s) are retired by "
                                               f"evidence ({', '.join(r['finding_id'] for r in retired[:3])})")
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


def _conflict_rate(conn: psycopg.Connection, s: GateSettings, since: dt.datetime, scope: EvidenceScope) -> Criterion:
    """Every run of this migration counts here, whatever tables it covered (a backfill maps one run per chunk)."""
    name = "occ_conflict_rate"
    per_kind: dict[str, dict[str, int]] = {}
    for kind, commits_key in (("replay", "target_commits"), ("backfill", "attempts")):
        for run in _runs(conn, kind, None, scope, since=since):
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
        return Criterion(name, False, evidence, f"no replay run of this migration in the last "
                                                f"{s.replay_window_hours:g} h reported conflicts and target_commits; "
                                                "run `reconcile replay`")
    if rate is not None and rate >= s.max_conflict_rate:
        return Criterion(name, False, evidence,
                         f"OCC conflict rate {rate:.2%} on the target, the limit is {s.max_conflict_rate:.2%}")
    return Criterion(name, True, evidence, f"OCC conflict rate {(rate or 0):.2%} ({conflicts} of {commits} commits)")


def _acknowledged(conn: psycopg.Connection, audited: dict[str, Any], s: GateSettings,
                  scope: EvidenceScope) -> Criterion:
    name = "must_change_acknowledged"
    audit = audited["run"]
    if audit is None:
        return _no_audit(name, audited, s, scope)
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
                      now: dt.datetime, scope: EvidenceScope, reverse: Any = None) -> list[Criterion]:
    """Inside one read transaction: every criterion of ``gate`` ('read', 'write' or 'rollback'), in a fixed order.

    ``scope`` says whose runs count and which are complete (:meth:`EvidenceScope.of` the config);
    ``reverse``: the rollback gate's :class:`~reconcile.gates.rollback_gate.ReverseSnapshot` of the source.
    """
    if gate == "rollback":
        from reconcile.gates.rollback_gate import rollback_criteria

        return rollback_criteria(conn, s, state, now, scope, reverse)
    diffs = _diff_history(conn, scope)
    since = now - dt.timedelta(hours=s.replay_window_hours)
    replays = [r for r in _runs(conn, "replay", None, scope, since=since) if r["covers"]]
    audit = _latest_audit(conn, scope)
    repairs = repairs_evidence(conn, since, scope.migration_id)
    out = [_diff_streak(diffs, s, now, scope), _diff_clean(diffs, scope), _expectations(conn, s, now, scope),
           _replay_lag(replays, s, scope, _without_id(conn, "runs", "replay")), _dead_letters(conn, scope),
           _audit_blockers(conn, audit, s, scope, now), full_pass_recent(diffs, s, now, repairs)]
    if gate == "write":
        out += [_read_held(state, s, now), _conflict_rate(conn, s, since, scope), _acknowledged(conn, audit, s, scope),
                full_diff_recent(diffs, s, now, repairs)]
    return out
