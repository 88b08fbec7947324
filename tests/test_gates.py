"""Cutover gates against a real target database: criteria from stored history, approvals, rollbacks,
overrides, the two-person rule, concurrent approvals, publishing (SSM through moto) and the
tamper-evident audit trail.

History is built by inserting ``reconcile.runs`` rows (kinds diff/check/replay), audit runs and dead
letters directly, with timestamps in the past, as the other stages would have written them.
"""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from reconcile import control
from reconcile.config import Config, PostgresEndpoint
from reconcile.connections import connect
from reconcile.gates import (GateError, GateRefused, GateSettings, PublishFailed, READ_CRITERIA, acknowledge, approve,
                             current_state, evaluate, gate_status, history, publish, rollback)
from reconcile.gates import cutover, trail
from reconcile.identity import RunScope, migration_of, run_scope

LEDGER = ("ledger.accounts", "ledger.journal", "ledger.entries")
"""The configured tables (the demo ledger, the default config)."""
GREEN_TABLE = {"status": "green", "missing": 0, "extra": 0, "changed": 0, "in_flight": 0}
GREEN_DIFF = {"verdict": "green", "persistent_mismatches": 0, "balance_differences": 0, "in_flight": 2,
              "tables": {t: GREEN_TABLE for t in LEDGER}}
"""A complete green diff run: every configured table compared (add_run also records its balance diff)."""
GREEN_CHECK = {"success": True, "evaluated": 12, "failed": 0, "suites": {"ledger.entries": {"success": True,
                                                                                         "failed": []}}}
REPLAY = {"txns_applied": 500, "target_commits": 400, "conflicts": 3, "lag_seconds_p99": 2.5, "caught_up": True}
MUST_CHANGE = "plain_numeric:ledger.journal.fx_rate"


def settings(**kw) -> GateSettings:
    base = dict(min_green_runs=3, min_green_hours=24.0, min_read_hours=0.0, max_lag_p99_seconds=30.0)
    return GateSettings(**{**base, **kw})


def make_config(cfg: Config, **kw) -> Config:
    return dataclasses.replace(cfg, stages={"gates": settings(**kw)})


@pytest.fixture
def cfg(target_db, local_stack) -> Config:
    return Config(source=PostgresEndpoint("source", local_stack["source"]), target=PostgresEndpoint("target", target_db),
                  stages={"gates": settings()})


_BOUND: dict[int, RunScope] = {}
"""Connection -> the migration scope its planted runs record (see :func:`bind`)."""
LEGACY = RunScope(None, ())
"""The scope of a row written before runs recorded their migration."""


def bind(conn, config: Config):
    """Make the runs :func:`add_run` and :func:`add_audit` plant on ``conn`` belong to ``config``'s migration."""
    _BOUND[id(conn)] = run_scope(config)
    return conn


def _scope_of(conn, scope: RunScope | None) -> RunScope:
    if scope is not None:
        return scope
    assert id(conn) in _BOUND, "bind(conn, config) first: planted runs must name their migration"
    return _BOUND[id(conn)]


@pytest.fixture
def conn(cfg):
    c = connect(cfg.target)
    control.migrate(c)
    bind(c, cfg)
    yield c
    _BOUND.pop(id(c), None)
    c.close()


def add_run(conn, kind: str, status: str, hours_ago: float, summary: dict | None, minutes: float = 5, *,
            balances: str | None = "green", running: bool = False, checks: str | None = "green",
            scope: RunScope | None = None) -> str:
    """A ``reconcile.runs`` row that finished ``hours_ago`` (``running``: started then, not finished).

    For a diff run, ``balances`` is the status of its balance diff (a ``diff_results`` row
    ``__balances__``, as reconcile.diff writes it; None: the balance diff never ran) and ``checks`` the
    status of the expectations run of the same reconciliation (a 'check' run ``part_of`` it; None: none).
    ``scope``: the migration and tables the run records (default: the connection's, see :func:`bind`).
    """
    scope = _scope_of(conn, scope)
    run_id = str(uuid.uuid4())
    conn.execute("INSERT INTO reconcile.runs (run_id, kind, status, started_at, finished_at, summary, migration_id, "
                 "tables) VALUES (%s, %s, %s, now() - make_interval(secs => %s), "
                 "CASE WHEN %s THEN NULL ELSE now() - make_interval(secs => %s) END, %s, %s, %s)",
                 (run_id, kind, status, hours_ago * 3600 + (0 if running else minutes * 60), running,
                  hours_ago * 3600, None if summary is None else json.dumps(summary), scope.migration_id,
                  scope.tables_json if scope.tables else None))
    if kind == "diff" and balances is not None:
        conn.execute("INSERT INTO reconcile.diff_results (run_id, table_name, status) VALUES (%s, '__balances__', %s)",
                     (run_id, balances))
    if kind == "diff" and checks is not None:
        conn.execute("INSERT INTO reconcile.runs (run_id, kind, status, started_at, finished_at, summary, "
                     "migration_id, tables, part_of) VALUES (%s, 'check', %s, now() - make_interval(secs => %s), "
                     "now() - make_interval(secs => %s), %s, %s, %s, %s)",
                     (str(uuid.uuid4()), checks, hours_ago * 3600 + 60, hours_ago * 3600,
                      json.dumps({**GREEN_CHECK, "success": checks == "green"}), scope.migration_id,
                      scope.tables_json if scope.tables else None, run_id))
    return run_id


def add_audit(conn, *, blockers: int = 0, must_change: tuple[str, ...] = (MUST_CHANGE,), hours_ago: float = 48,
              scope: RunScope | None = None) -> str:
    scope = _scope_of(conn, scope)
    run_id = str(uuid.uuid4())
    conn.execute("INSERT INTO reconcile.audit_runs (run_id, started_at, finished_at, source_fingerprint, blockers, "
                 "must_change, migration_id, tables) VALUES (%s, now() - make_interval(hours => %s), now(), 'fp', %s, "
                 "%s, %s, %s)", (run_id, int(hours_ago), blockers, len(must_change), scope.migration_id,
                                 scope.tables_json if scope.tables else None))
    findings = [(f"trigger:ledger.t{i}", "blocker") for i in range(blockers)] + [(f, "must-change") for f in must_change]
    findings.append(("c_collation:ledger.accounts.name", "warning"))
    for no, (fid, sev) in enumerate(findings, start=1):
        conn.execute("INSERT INTO reconcile.audit_findings (run_id, finding_no, finding_id, code, severity, level, "
                     "object_type, object, message, why, fix) VALUES (%s, %s, %s, %s, %s, 'catalog', 'column', %s, "
                     "'m', 'w', 'f')", (run_id, no, fid, fid.split(":")[0], sev, fid.split(":")[1]))
    return run_id


def green_history(conn, *, audit: bool = True) -> None:
    for hours in (30, 20, 1):
        add_run(conn, "diff", "green", hours, GREEN_DIFF)
    add_run(conn, "diff", "red", 40, {**GREEN_DIFF, "verdict": "red", "persistent_mismatches": 4})
    add_run(conn, "check", "green", 1, GREEN_CHECK)
    add_run(conn, "replay", "done", 2, REPLAY)
    add_run(conn, "replay", "done", 0.5, {**REPLAY, "lag_seconds_p99": 4.0})
    if audit:
        add_audit(conn)


def events(conn) -> list[tuple]:
    return conn.execute("SELECT seq, event, gate, actor, reason, details FROM reconcile.audit_events "
                        "ORDER BY seq").fetchall()


def state_row(conn) -> tuple:
    return conn.execute("SELECT state, published_state FROM reconcile.gate_state").fetchone()


# --- criteria ---------------------------------------------------------------------------------


def test_empty_history_fails_every_read_criterion_and_approval_is_refused(cfg, conn):
    ev = evaluate(cfg, "read", conn=conn)
    assert not ev.passed
    assert set(ev.failing) == set(READ_CRITERIA) - {"dead_letters"}  # none open: that one has its evidence
    with pytest.raises(GateRefused) as refused:
        approve(cfg, "read", by="ana", reason="go", conn=conn)
    assert set(refused.value.failing) == set(ev.failing)
    assert "green_diff_streak" in str(refused.value) and "--override" in str(refused.value)
    assert state_row(conn) == ("shadow", None)
    kinds = [e[1] for e in events(conn)]
    assert kinds == ["evaluation", "evaluation", "refusal"]
    run = conn.execute("SELECT status, summary FROM reconcile.runs WHERE kind = 'gate' ORDER BY finished_at "
                       "LIMIT 1").fetchone()
    assert run[0] == "red" and json.loads(run[1])["evidence_hash"] == ev.evidence_hash


def _red_latest_diff(conn):
    add_run(conn, "diff", "red", 0.1, {**GREEN_DIFF, "verdict": "red"})


def _mismatch(conn):
    add_run(conn, "diff", "green", 0.1, {**GREEN_DIFF, "persistent_mismatches": 2})


def _balance(conn):
    add_run(conn, "diff", "green", 0.1, {**GREEN_DIFF, "balance_differences": 1})


def _check_red(conn):
    add_run(conn, "check", "red", 0.1, {**GREEN_CHECK, "success": False, "failed": 1,
                                         "suites": {"ledger.entries": {"success": False, "failed": ["x"]}}})


def _lag(conn):
    add_run(conn, "replay", "done", 0.1, {**REPLAY, "lag_seconds_p99": 45.0})


def _replay_stopped(conn):
    add_run(conn, "replay", "stopped", 0.1, {**REPLAY, "dead_letters_open": 1})


def _dead_letter(conn):
    conn.execute("INSERT INTO reconcile.dead_letters (slot_name, xid, reason) VALUES ('reconcile', 77, 'too big')")


def _blocker(conn):
    add_audit(conn, blockers=1, hours_ago=1)


@pytest.mark.parametrize("plant, criterion", [
    (_red_latest_diff, "green_diff_streak"),
    (_mismatch, "latest_diff_clean"),
    (_balance, "latest_diff_clean"),
    (_check_red, "expectations_green"),
    (_lag, "replay_lag"),
    (_replay_stopped, "replay_lag"),
    (_dead_letter, "dead_letters"),
    (_blocker, "audit_blockers"),
])
def test_each_planted_fault_fails_exactly_its_criterion(cfg, conn, plant, criterion):
    green_history(conn)
    assert evaluate(cfg, "read", record=False, conn=conn).passed
    plant(conn)
    ev = evaluate(cfg, "read", record=False, conn=conn)
    assert ev.failing == (criterion,)
    assert ev.criterion(criterion).message
    with pytest.raises(GateRefused, match=criterion) as refused:
        approve(cfg, "read", by="ana", reason="go", conn=conn)
    assert refused.value.failing == (criterion,) and current_state(cfg, conn=conn) == "shadow"


def test_streak_length_span_and_freshness_are_settings(cfg, conn):
    for hours in (3, 2, 1):
        add_run(conn, "diff", "green", hours, GREEN_DIFF)  # each with its green expectations run
    add_run(conn, "replay", "done", 1, REPLAY)
    add_audit(conn, must_change=())
    ev = evaluate(make_config(cfg, max_check_age_hours=0.5), "read", record=False, conn=conn)
    assert ev.failing == ("green_diff_streak", "expectations_green")
    streak = ev.criterion("green_diff_streak").evidence
    assert streak["consecutive_green"] == 3 and 1.9 < streak["span_hours"] < 2.2
    assert "24 h needed" in ev.criterion("green_diff_streak").message
    demo = make_config(cfg, min_green_runs=1, min_green_hours=0.0)
    assert evaluate(demo, "read", record=False, conn=conn).passed


# --- approve, publish -------------------------------------------------------------------------


@pytest.fixture
def ssm(monkeypatch):
    from moto import mock_aws

    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    with mock_aws():
        import boto3

        yield boto3.client("ssm", region_name="eu-west-1")


def test_approve_read_transitions_and_publishes_to_table_and_ssm_idempotently(cfg, conn, ssm):
    green_history(conn)
    cfg = make_config(cfg, ssm_parameter="/reconcile/cutover/state", ssm_region="eu-west-1")
    result = approve(cfg, "read", by="ana", reason="two weeks green", conn=conn)
    assert (result["status"], result["from"], result["to"], result["override"]) == \
        ("approved", "shadow", "read_cutover", False)
    assert state_row(conn) == ("read_cutover", "read_cutover")
    assert ssm.get_parameter(Name="/reconcile/cutover/state")["Parameter"]["Value"] == "read_cutover"
    assert result["published"]["ssm"]["changed"] is True
    assert [e[1] for e in events(conn)] == ["evaluation", "approval", "transition", "publish"]
    approval = events(conn)[1]
    assert approval[3:5] == ("ana", "two weeks green")
    assert json.loads(approval[5])["passed"] is True
    assert current_state(cfg, conn=conn) == "read_cutover"

    version = ssm.get_parameter(Name="/reconcile/cutover/state")["Parameter"]["Version"]
    again = publish(cfg, conn=conn)
    assert again["changed"] is False and again["ssm"]["changed"] is False and "event" not in again
    assert ssm.get_parameter(Name="/reconcile/cutover/state")["Parameter"]["Version"] == version
    assert len(events(conn)) == 4
    # the parameter drifted (someone wrote it by hand): publishing repairs it and records that
    ssm.put_parameter(Name="/reconcile/cutover/state", Value="shadow", Type="String", Overwrite=True)
    fixed = publish(cfg, conn=conn)
    assert fixed["ssm"]["changed"] is True and fixed["control_changed"] is False
    assert ssm.get_parameter(Name="/reconcile/cutover/state")["Parameter"]["Value"] == "read_cutover"
    assert history(cfg, conn=conn)["chain"]["ok"]
    for doc in (result, gate_status(cfg, conn=conn), history(cfg, conn=conn), fixed):
        json.dumps(doc)  # JSON-able as is (the DAG passes them through XCom)


def test_a_failed_publish_keeps_the_transition_and_a_rerun_publishes(cfg, conn, ssm, monkeypatch):
    green_history(conn)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    cfg = make_config(cfg, ssm_parameter="/reconcile/cutover/state")
    with pytest.raises(PublishFailed, match="approved the read gate .* but publishing failed: No AWS region"):
        approve(cfg, "read", by="ana", reason="green", conn=conn)
    assert state_row(conn) == ("read_cutover", None)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    result = publish(cfg, conn=conn)
    assert result["changed"] and result["control_changed"] and result["ssm"]["value"] == "read_cutover"
    assert ssm.get_parameter(Name="/reconcile/cutover/state")["Parameter"]["Value"] == "read_cutover"
    assert state_row(conn) == ("read_cutover", "read_cutover")


def test_write_cutover_cannot_be_reached_without_read_cutover(cfg, conn):
    green_history(conn)
    acknowledge(cfg, MUST_CHANGE, by="ana", reason="reviewed the plan", conn=conn)
    with pytest.raises(GateRefused) as refused:
        approve(cfg, "write", by="ana", reason="skip ahead", conn=conn)
    assert refused.value.failing == ("read_gate_held",)
    with pytest.raises(GateRefused) as by_state:
        approve(cfg, "write", by="ana", reason="skip ahead", override_reason="I insist", conn=conn)
    assert by_state.value.failing == ("state",) and "approve the read gate first" in str(by_state.value)
    assert current_state(cfg, conn=conn) == "shadow"
    assert "transition" not in [e[1] for e in events(conn)]


def test_write_gate_needs_held_read_gate_low_conflicts_and_acknowledged_findings(cfg, conn):
    green_history(conn)
    approve(cfg, "read", by="ana", reason="green", conn=conn)
    held = make_config(cfg, min_read_hours=1.0)
    assert evaluate(held, "write", record=False, conn=conn).failing == ("read_gate_held", "must_change_acknowledged")
    ev = evaluate(cfg, "write", record=False, conn=conn)
    assert ev.failing == ("must_change_acknowledged",)
    assert ev.criterion("must_change_acknowledged").evidence["unacknowledged"] == [MUST_CHANGE]
    assert ev.criterion("occ_conflict_rate").evidence["rate"] == pytest.approx(6 / 800)
    with pytest.raises(GateError, match="no finding"):
        acknowledge(cfg, "nope:x", by="ana", reason="r", conn=conn)
    assert acknowledge(cfg, MUST_CHANGE, by="bo", reason="plan reviewed", conn=conn)["status"] == "acknowledged"
    assert acknowledge(cfg, MUST_CHANGE, by="cy", reason="again", conn=conn)["acknowledged_by"] == "bo"
    add_run(conn, "replay", "done", 0.1, {**REPLAY, "conflicts": 100, "target_commits": 1000})
    ev = evaluate(cfg, "write", record=False, conn=conn)
    assert ev.failing == ("occ_conflict_rate",) and "limit is 5.00%" in ev.criterion("occ_conflict_rate").message
    add_run(conn, "replay", "done", 0.05, {**REPLAY, "conflicts": 0, "target_commits": 5000})
    result = approve(cfg, "write", by="ana", reason="read held, all green", conn=conn)
    assert (result["from"], result["to"]) == ("read_cutover", "write_cutover")
    assert current_state(cfg, conn=conn) == "write_cutover"


def test_override_is_recorded_with_its_own_reason_and_the_failing_criteria(cfg, conn):
    with pytest.raises(GateError, match="own reason"):
        approve(cfg, "read", by="ana", reason="demo", override_reason="  ", conn=conn)
    result = approve(cfg, "read", by="ana", reason="demo day", override_reason="staging only, no real money",
                     conn=conn)
    assert result["override"] is True and current_state(cfg, conn=conn) == "read_cutover"
    override = [e for e in events(conn) if e[1] == "override"]
    assert len(override) == 1 and not [e for e in events(conn) if e[1] == "approval"]
    assert override[0][4] == "staging only, no real money"
    details = json.loads(override[0][5])
    assert details["approval_reason"] == "demo day" and "green_diff_streak" in details["failing"]


def test_rollback_steps_back_and_refuses_write_cutover_without_reverse_evidence_or_override(cfg, conn):
    with pytest.raises(GateRefused, match="nothing to roll back"):
        rollback(cfg, by="ana", reason="oops", conn=conn)
    green_history(conn)
    acknowledge(cfg, MUST_CHANGE, by="ana", reason="ok", conn=conn)
    approve(cfg, "read", by="ana", reason="green", conn=conn)
    assert rollback(cfg, by="bo", reason="latency on reads", conn=conn)["to"] == "shadow"
    assert state_row(conn) == ("shadow", "shadow")
    approve(cfg, "read", by="ana", reason="fixed", conn=conn)
    approve(cfg, "write", by="ana", reason="held", conn=conn)
    with pytest.raises(GateRefused, match="would lose writes made on the target") as refused:
        rollback(cfg, by="bo", reason="bad numbers", conn=conn)  # no reverse replay, no reverse reconciliation
    assert refused.value.failing == ("reverse_replay_lag", "reverse_reconciliation_green")
    assert current_state(cfg, conn=conn) == "write_cutover"
    result = rollback(cfg, by="bo", reason="bad numbers", override_reason="writes copied back by hand", conn=conn)
    assert (result["from"], result["to"], result["override"]) == ("write_cutover", "read_cutover", True)
    kinds = [e[1] for e in events(conn)]
    assert kinds.count("rollback") == 2 and kinds[-4:] == ["evaluation", "override", "rollback", "publish"]
    assert [e[1] for e in events(conn) if e[1] == "refusal"] == ["refusal", "refusal"]
    assert gate_status(cfg, conn=conn)["chain"]["ok"]


def test_two_person_rule_compares_authenticated_identities(cfg, conn):
    from reconcile.gates.approver import airflow_responder

    green_history(conn)
    two = make_config(cfg, two_person=True)
    with pytest.raises(GateRefused, match="no authenticated identity") as unauthenticated:
        approve(two, "read", by="ana", reason="green", conn=conn)
    assert unauthenticated.value.failing == ("two_person",)
    ana, bo = airflow_responder({"id": "u-ana", "name": "ana"}), airflow_responder({"id": "u-bo", "name": "bo"})
    first = approve(two, "read", by="ana", reason="green", identity=ana, conn=conn)
    assert first["status"] == "pending" and current_state(two, conn=conn) == "shadow"
    assert gate_status(two, conn=conn)["pending"]["by"] == "ana"
    with pytest.raises(GateRefused, match="second, different approver") as same:
        approve(two, "read", by="ana", reason="me again", identity=bo, conn=conn)
    assert same.value.failing == ("two_person",)
    for alias in ("Ana", "  ANA ", "aNa\u00a0"):  # names are compared case-folded, whitespace collapsed
        with pytest.raises(GateRefused, match="second, different approver"):
            approve(two, "read", by=alias, reason="me again, louder", identity=bo, conn=conn)
    with pytest.raises(GateRefused, match=r"ana and bo are one authenticated identity \(airflow:u-ana\)"):
        approve(two, "read", by="bo", reason="a second name, one login", identity=ana, conn=conn)
    aws = {"kind": "aws", "arn": "arn:aws:iam::1:user/bo", "account": "1", "user_id": "X", "principal": "arn:aws:iam::1:user/bo"}
    with pytest.raises(GateRefused, match="authenticated by airflow and this one by aws"):
        approve(two, "read", by="bo", reason="from the CLI", identity=aws, conn=conn)
    assert current_state(two, conn=conn) == "shadow"
    second = approve(two, "read", by="bo", reason="agree", identity=bo, conn=conn)
    assert second["status"] == "approved" and second["approvers"] == ["ana", "bo"]
    assert second["identities"] == ["airflow:u-ana", "airflow:u-bo"]
    assert current_state(two, conn=conn) == "read_cutover"
    assert gate_status(two, conn=conn)["pending"] is None
    transition = _event(conn, "transition")
    assert transition["approver_identities"] == second["identities"]
    assert _event(conn, "approval")["authenticated"] == bo


def test_two_concurrent_approvals_transition_once(cfg, conn, monkeypatch):
    """The loser's transaction read the old state; the winner commits first; the loser gets 40001,
    is retried, sees read_cutover and is refused cleanly."""
    green_history(conn)
    other = connect(cfg.target)
    original = trail.append
    raced = []

    def racing_append(t, evs):
        if any(e["event"] == "approval" and e["actor"] == "ana" for e in evs) and not raced:
            # ana's transaction has read the state (shadow): bo approves and commits in between
            raced.append(True)
            approve(cfg, "read", by="bo", reason="winner", conn=other)
        return original(t, evs)

    monkeypatch.setattr(trail, "append", racing_append)
    counters = []
    real_retry = cutover.run_with_retry

    def counting(*a, **kw):
        from reconcile.occ import RetryCounters

        kw["counters"] = RetryCounters()
        counters.append(kw["counters"])
        return real_retry(*a, **kw)

    monkeypatch.setattr(cutover, "run_with_retry", counting)
    try:
        with pytest.raises(GateRefused, match="the state is read_cutover"):
            approve(cfg, "read", by="ana", reason="loser", conn=conn)
    finally:
        other.close()
    assert raced and current_state(cfg, conn=conn) == "read_cutover"
    assert sum(c.conflicts for c in counters) >= 1  # the loser's transaction met 40001 and was retried
    kinds = [e[1] for e in events(conn)]
    assert kinds.count("transition") == 1
    assert [e[3] for e in events(conn) if e[1] == "transition"] == ["bo"]
    assert history(cfg, conn=conn)["chain"]["ok"]


def _event(conn, kind: str) -> dict:
    """The last event of ``kind``: its columns, details parsed."""
    row = conn.execute("SELECT actor, reason, evidence_hash, run_id, details FROM reconcile.audit_events "
                       "WHERE event = %s ORDER BY seq DESC LIMIT 1", (kind,)).fetchone()
    return {"actor": row[0], "reason": row[1], "evidence_hash": row[2], "run_id": str(row[3]) if row[3] else None,
            **json.loads(row[4])}


def test_approval_re_evaluates_and_refuses_when_criteria_fail_by_then(cfg, conn):
    """The approver saw a passing evaluation; by the time the approval is recorded a dead letter is open."""
    green_history(conn)
    seen = evaluate(cfg, "read", actor="airflow", conn=conn).to_dict()
    assert seen["passed"]
    _dead_letter(conn)
    with pytest.raises(GateRefused) as refused:
        approve(cfg, "read", by="ana", reason="looked green", evaluation=seen, conn=conn)
    assert refused.value.failing == ("dead_letters",)
    text = str(refused.value)
    assert "re-evaluated now, 1 criterion fails (dead_letters)" in text and "shown to the approver passed" in text
    assert current_state(cfg, conn=conn) == "shadow"
    assert [e[1] for e in events(conn)] == ["evaluation", "evaluation", "refusal"]
    refusal = _event(conn, "refusal")
    assert refusal["seen_evidence_hash"] == seen["evidence_hash"] != refusal["evidence_hash"]
    assert refusal["changed_criteria"] == ["dead_letters"] and refusal["seen_passed"] is True
    fresh = conn.execute("SELECT status, summary FROM reconcile.runs WHERE run_id = %s", (refusal["run_id"],)).fetchone()
    assert fresh[0] == "red" and json.loads(fresh[1])["evidence_hash"] == refusal["evidence_hash"]
    # with an override it goes ahead, recorded as an override resting on the fresh evidence
    result = approve(cfg, "read", by="ana", reason="looked green", override_reason="letter is a known test txn",
                     evaluation=seen, conn=conn)
    assert result["override"] is True and result["failing"] == ["dead_letters"]
    assert _event(conn, "override")["evidence_hash"] == result["evidence_hash"] != seen["evidence_hash"]


def test_approval_records_the_evidence_seen_and_the_fresh_one_and_catches_tampering(cfg, conn):
    green_history(conn)
    _dead_letter(conn)
    seen = evaluate(cfg, "read", actor="airflow", conn=conn).to_dict()
    assert seen["failing"] == ["dead_letters"]
    forged = json.loads(json.dumps(seen))
    forged["criteria"][0]["passed"] = not forged["criteria"][0]["passed"]
    with pytest.raises(GateError, match="does not match its evidence hash"):
        approve(cfg, "read", by="ana", reason="r", evaluation=forged, conn=conn)
    with pytest.raises(GateError, match="of the read gate, not the write gate"):
        approve(cfg, "write", by="ana", reason="r", evaluation=seen, conn=conn)
    conn.execute("UPDATE reconcile.dead_letters SET resolved_at = now()")  # fixed while the approver read
    result = approve(cfg, "read", by="ana", reason="r", evaluation=seen, conn=conn)
    assert result["status"] == "approved" and result["override"] is False
    assert result["seen_evidence_hash"] == seen["evidence_hash"] != result["evidence_hash"]
    assert result["evidence_changed"] is True and result["changed_criteria"] == ["dead_letters"]
    assert result["evaluation_run_id"] != seen["run_id"]
    approval = _event(conn, "approval")
    assert approval["evidence_hash"] == result["evidence_hash"] and approval["run_id"] == result["evaluation_run_id"]
    assert (approval["seen_evidence_hash"], approval["seen_run_id"]) == (seen["evidence_hash"], seen["run_id"])
    assert _event(conn, "transition")["evidence_hash"] == result["evidence_hash"]
    (summary,) = conn.execute("SELECT summary FROM reconcile.runs WHERE run_id = %s",
                              (result["evaluation_run_id"],)).fetchone()
    assert json.loads(summary)["evidence_hash"] == result["evidence_hash"] and json.loads(summary)["passed"]


def test_partial_diff_runs_do_not_count_toward_the_streak(cfg, conn):
    cfg = make_config(cfg, min_green_hours=0.0)
    add_run(conn, "check", "green", 1, GREEN_CHECK)
    add_run(conn, "replay", "done", 1, REPLAY)
    add_audit(conn)
    add_run(conn, "diff", "green", 5, GREEN_DIFF)
    only_accounts = {**GREEN_DIFF, "tables": {"ledger.accounts": GREEN_TABLE}}  # reconcile diff --table ...
    add_run(conn, "diff", "green", 4, only_accounts, balances=None)
    add_run(conn, "diff", "green", 3, GREEN_DIFF, balances=None)  # the balance diff never ran
    add_run(conn, "diff", "green", 2, GREEN_DIFF, balances="skipped")  # [diff] balances off
    errored = {**GREEN_DIFF, "tables": {**GREEN_DIFF["tables"], "ledger.entries": {**GREEN_TABLE, "status": "error"}}}
    add_run(conn, "diff", "green", 1, errored)
    ev = evaluate(cfg, "read", record=False, conn=conn)
    assert ev.failing == ("green_diff_streak",)
    streak = ev.criterion("green_diff_streak")
    assert streak.evidence["consecutive_green"] == 1 and streak.evidence["partial_green_runs"] == 4
    assert "left out balances, ledger.entries, ledger.journal" in streak.message
    for hours in (0.5, 0.2):
        add_run(conn, "diff", "green", hours, GREEN_DIFF)
    assert evaluate(cfg, "read", record=False, conn=conn).passed
    # a partial run that found a difference breaks the streak; the clean check reads the latest complete run
    add_run(conn, "diff", "red", 0.1, {**only_accounts, "verdict": "red", "persistent_mismatches": 1}, balances=None)
    ev = evaluate(cfg, "read", record=False, conn=conn)
    assert ev.failing == ("green_diff_streak",) and ev.criterion("green_diff_streak").evidence["consecutive_green"] == 0
    assert ev.criterion("latest_diff_clean").evidence["persistent_mismatches"] == 0


def test_only_complete_diff_runs_are_read_for_the_latest_clean_diff(cfg, conn):
    green_history(conn)
    for _ in range(3):  # newer partial runs, clean by their own numbers: not evidence for the whole ledger
        add_run(conn, "diff", "green", 0.1, {**GREEN_DIFF, "tables": {"ledger.accounts": GREEN_TABLE}}, balances=None)
    _mismatch(conn)  # the latest complete run has mismatches
    for _ in range(2):
        add_run(conn, "diff", "green", 0.05, {**GREEN_DIFF, "tables": {"ledger.journal": GREEN_TABLE}}, balances=None)
    ev = evaluate(cfg, "read", record=False, conn=conn)
    assert ev.failing == ("latest_diff_clean",)
    assert ev.criterion("latest_diff_clean").evidence["persistent_mismatches"] == 2


def test_orphaned_and_stale_replay_rows_do_not_count(cfg, conn):
    add_audit(conn)
    # a session killed mid-way (running, no summary), a session 'running' since long before the window
    # with a bad lag, and nothing else: no replay evidence
    add_run(conn, "replay", "running", 0.01, None, running=True)
    add_run(conn, "replay", "running", 30, {**REPLAY, "lag_seconds_p99": 45.0, "conflicts": 900,
                                            "target_commits": 1000}, running=True)
    ev = evaluate(cfg, "write", record=False, conn=conn)
    assert ev.criterion("replay_lag").evidence["runs"] == 0
    assert ev.criterion("replay_lag").message == (f"no replay run of this migration ({migration_of(cfg).id[:12]}) "
                                                  "on slot reconcile in the last 24 h; run `reconcile replay`")
    assert ev.criterion("occ_conflict_rate").evidence["by_kind"] == {}
    green_history(conn, audit=False)
    ev = evaluate(cfg, "write", record=False, conn=conn)
    assert ev.criterion("replay_lag").passed and ev.criterion("replay_lag").evidence["runs"] == 2
    assert ev.criterion("occ_conflict_rate").evidence["by_kind"]["replay"]["runs"] == 2
    # a current session reporting its figures so far still counts
    add_run(conn, "replay", "running", 0.2, {**REPLAY, "lag_seconds_p99": 45.0}, running=True)
    assert evaluate(cfg, "read", record=False, conn=conn).failing == ("replay_lag",)


# --- the audit trail ----------------------------------------------------------------------------


def _xmins(conn) -> dict:
    return dict(conn.execute("SELECT event_id, xmin::text FROM reconcile.audit_events").fetchall())


def test_no_tool_path_updates_or_deletes_the_trail(cfg, conn):
    green_history(conn)
    evaluate(cfg, "read", conn=conn)
    approve(cfg, "read", by="ana", reason="green", conn=conn)
    before = _xmins(conn)
    # every operation the tool offers
    gate_status(cfg, conn=conn)
    history(cfg, conn=conn)
    publish(cfg, conn=conn)
    acknowledge(cfg, MUST_CHANGE, by="ana", reason="ok", conn=conn)
    evaluate(cfg, "write", conn=conn)
    approve(cfg, "write", by="ana", reason="go", conn=conn)
    with pytest.raises(GateRefused):
        rollback(cfg, by="ana", reason="no", conn=conn)
    rollback(cfg, by="ana", reason="yes", override_reason="synced back", conn=conn)
    rollback(cfg, by="ana", reason="again", conn=conn)
    after = _xmins(conn)
    assert {k: after.get(k) for k in before} == before  # nothing removed, no row version replaced
    assert len(after) > len(before)
    # statically: every statement the gate modules hold that names audit_events is an INSERT or a
    # SELECT, and no gate source holds a DELETE at all
    import re
    from pathlib import Path

    from psycopg import sql

    import reconcile.gates as package
    from reconcile.gates import criteria

    on_trail = []
    for module in (trail, cutover, criteria):
        for value in vars(module).values():
            if isinstance(value, sql.Composable) and "audit_events" in value.as_string():
                on_trail.append(value.as_string().split()[0])
    assert sorted(on_trail) == ["INSERT", "SELECT"]
    sources = list(Path(package.__file__).parent.glob("*.py")) + [Path(cutover.__file__).parents[1] / "cli/gate_cmd.py"]
    assert not [p.name for p in sources if re.search(r"\bDELETE\b", p.read_text())]


def test_tampered_removed_and_foreign_rows_break_the_chain(cfg, conn):
    green_history(conn)
    approve(cfg, "read", by="ana", reason="green", conn=conn)
    assert gate_status(cfg, conn=conn)["chain"]["ok"]
    conn.execute("UPDATE reconcile.audit_events SET reason = 'nobody approved this' WHERE event = 'approval'")
    chain = gate_status(cfg, conn=conn)["chain"]
    assert not chain["ok"] and chain["breaks"][0]["seq"] == 2 and "changed" in chain["breaks"][0]["problem"]
    with pytest.raises(GateRefused, match="audit trail is broken") as refused:
        approve(cfg, "write", by="ana", reason="go", conn=conn)
    assert "audit_trail" in refused.value.failing


def test_deleting_the_last_event_is_detected(cfg, conn):
    green_history(conn)
    approve(cfg, "read", by="ana", reason="green", conn=conn)
    conn.execute("DELETE FROM reconcile.audit_events WHERE event = 'publish'")
    problems = [b["problem"] for b in history(cfg, conn=conn)["chain"]["breaks"]]
    assert len(problems) == 1 and "removed or added at the end" in problems[0]


def test_a_state_changed_behind_the_tools_back_is_detected(cfg, conn):
    conn.execute("INSERT INTO reconcile.audit_events (event, actor) VALUES ('approval', 'mallory')")
    evaluate(cfg, "read", record=False, conn=conn)  # creates the state row
    conn.execute("UPDATE reconcile.gate_state SET state = 'write_cutover'")
    problems = [b["problem"] for b in history(cfg, conn=conn)["chain"]["breaks"]]
    assert any("outside the gate tool" in p and "no place" in p for p in problems)
    assert any("the state table says 'write_cutover'" in p for p in problems)


# --- the chain head published outside the database ---------------------------------------------


def _rewrite(conn, change) -> None:
    """Rewrite every row of the trail consistently: ``change(row)`` edits a row, every hash and the head follow."""
    prev = trail.GENESIS
    for row in trail.read_events(conn):
        row = {**change(row), "prev_hash": prev}
        row["event_hash"] = prev = trail.event_hash(row)
        conn.execute("UPDATE reconcile.audit_events SET actor = %s, reason = %s, prev_hash = %s, event_hash = %s "
                     "WHERE event_id = %s", (row["actor"], row["reason"], row["prev_hash"], row["event_hash"],
                                             row["event_id"]))
    conn.execute("UPDATE reconcile.gate_chain SET head_hash = %s", (prev,))


def test_a_consistent_rewrite_of_every_row_and_the_head_is_caught_by_the_published_head(cfg, conn, ssm):
    green_history(conn)
    pinned = make_config(cfg, chain_parameter="/reconcile/cutover/chain-head", ssm_region="eu-west-1")
    evaluate(pinned, "read", conn=conn)
    approve(pinned, "read", by="ana", reason="two weeks green", conn=conn)
    chain = history(pinned, conn=conn)["chain"]
    assert chain["ok"] and chain["pinned"]["unpinned_events"] == 0 and chain["pinned"]["pinned_seq"] == chain["head_seq"]
    versions = ssm.get_parameter_history(Name="/reconcile/cutover/chain-head")["Parameters"]
    assert len(versions) >= 2 and json.loads(versions[-1]["Value"])["seq"] == chain["head_seq"]
    assert gate_status(pinned, conn=conn)["chain"]["ok"]

    # mallory rewrites who approved, and every hash after it, and the head: consistent inside the database
    _rewrite(conn, lambda r: {**r, "actor": "mallory" if r["actor"] == "ana" else r["actor"]})
    assert trail.verify(conn)["ok"] and history(cfg, conn=conn)["chain"]["ok"]  # without the published head: unseen
    chain = history(pinned, conn=conn)["chain"]
    assert not chain["ok"]
    problems = [b["problem"] for b in chain["breaks"]]
    assert problems and all("the trail was rewritten" in p for p in problems)
    assert "SSM version" in problems[-1]
    assert not gate_status(pinned, conn=conn)["chain"]["ok"]
    with pytest.raises(GateRefused, match="the audit trail is broken .*rewritten"):
        approve(pinned, "write", by="bo", reason="go", conn=conn)


def test_removed_events_are_caught_and_unpinned_ones_reported_until_published(cfg, conn, ssm):
    green_history(conn)
    evaluate(cfg, "read", conn=conn)  # written before the head was published anywhere
    evaluate(cfg, "read", conn=conn)
    pinned = make_config(cfg, chain_parameter="/reconcile/cutover/chain-head", ssm_region="eu-west-1")
    chain = history(pinned, conn=conn)["chain"]
    assert chain["ok"] and chain["pinned"] == {"parameter": "/reconcile/cutover/chain-head", "pins": 0,
                                               "pinned_seq": 0, "unpinned_events": 2}
    publish(pinned, conn=conn)  # pins what is there (and records the publish)
    chain = history(pinned, conn=conn)["chain"]
    assert chain["ok"] and chain["pinned"]["unpinned_events"] == 0
    # the last event removed and the head moved back to match: consistent inside, caught outside
    last = conn.execute("SELECT seq, prev_hash FROM reconcile.audit_events ORDER BY seq DESC LIMIT 1").fetchone()
    conn.execute("DELETE FROM reconcile.audit_events WHERE seq = %s", (last[0],))
    conn.execute("UPDATE reconcile.gate_chain SET seq = %s, head_hash = %s", (last[0] - 1, last[1]))
    assert trail.verify(conn)["ok"]
    chain = history(pinned, conn=conn)["chain"]
    assert not chain["ok"] and f"is event {last[0]}, but the trail ends at event {last[0] - 1}" in \
        chain["breaks"][0]["problem"]


def test_an_unreadable_published_head_is_a_break_not_a_pass(cfg, conn, monkeypatch):
    green_history(conn)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    pinned = make_config(cfg, chain_parameter="/reconcile/cutover/chain-head")  # no region: SSM cannot be asked
    chain = history(pinned, conn=conn)["chain"]
    assert not chain["ok"] and "could not be read" in chain["breaks"][0]["problem"]


def test_evidence_changed_compares_criteria_and_values_not_timestamps(cfg, conn):
    green_history(conn)
    seen = evaluate(cfg, "read", conn=conn).to_dict()
    conn.execute("UPDATE reconcile.gate_state SET updated_at = now()")  # time passes, nothing else changes
    result = approve(cfg, "read", by="ana", reason="as shown", evaluation=seen, conn=conn)
    assert result["seen_evidence_hash"] != result["evidence_hash"]  # the evaluation time differs...
    assert result["evidence_changed"] is False and result["changed_criteria"] == []  # ...the evidence does not
    # a new green reconciliation (diff + its expectations run) changes values (run ids), not a verdict
    rolled = rollback(cfg, by="ana", reason="again", conn=conn)
    assert rolled["to"] == "shadow"
    seen = evaluate(cfg, "read", conn=conn).to_dict()
    add_run(conn, "diff", "green", 0.01, GREEN_DIFF)
    result = approve(cfg, "read", by="ana", reason="as shown", evaluation=seen, conn=conn)
    assert result["evidence_changed"] is True
    # the new diff is a full pass, so the full-pass criterion's evidence (its run id) changes too
    assert result["changed_criteria"] == ["green_diff_streak", "latest_diff_clean", "expectations_green",
                                          "full_pass_recent"]
    assert result["verdict_changed"] == []


def test_control_characters_are_refused_in_every_name_and_reason(cfg, conn):
    from reconcile.gates import reject
    from reconcile.pipeline.gates import gate_transition

    green_history(conn)
    for call in (lambda: approve(cfg, "read", by="ana\nbo", reason="r", conn=conn),
                 lambda: approve(cfg, "read", by="ana", reason="r\x00", conn=conn),
                 lambda: reject(cfg, "read", by="bob\x1b]0;x\x07", reason="r", conn=conn),
                 lambda: rollback(cfg, by="ana", reason="line\u2028break", conn=conn),
                 lambda: acknowledge(cfg, MUST_CHANGE, by="ana", reason="ok\x9bA", conn=conn),
                 lambda: evaluate(cfg, "read", actor="airflow:\nforged", conn=conn)):
        with pytest.raises(GateError, match=r"contains a control character \(U\+[0-9A-F]{4}\); write it on one line"):
            call()
    with pytest.raises(GateError, match="--by contains a control character"):  # an Airflow user name, too
        gate_transition(cfg, "read", by="alice\r\nseq 99", reason="r")
    assert events(conn) == []
    assert approve(cfg, "read", by="Zoë Ñúñez 山田", reason="ünïcode is fine — “quotes” too", conn=conn)[
        "status"] == "approved"
