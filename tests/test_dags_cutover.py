"""reconcile_cutover under dag.test(): the approval step answered from a helper thread, both ways."""
# ruff: noqa: F811  (pytest fixtures imported from tests.airflow_support are used as parameters)

from __future__ import annotations

import pytest

from tests.airflow_support import HitlResponder, run_dag, task_states, xcom
from tests.airflow_support import airflow_env, dagbag  # noqa: F401  (pytest fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

gates = pytest.importorskip("reconcile.gates.cutover", reason="reconcile.gates.cutover (evaluate/approve) missing")


@pytest.fixture
def cutover_config(source_db, target_db, tmp_path, monkeypatch):
    path = tmp_path / "reconcile.toml"
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n\n'
                    f'[target]\nkind = "postgres"\nconninfo = "{target_db}"\n')
    monkeypatch.setenv("RECONCILE_CONFIG", str(path))
    for side in ("SOURCE", "TARGET"):
        monkeypatch.delenv(f"AIRFLOW_CONN_RECONCILE_{side}", raising=False)
    from reconcile.config import load_config

    return load_config(path)


def test_approve_moves_the_state_publishes_it_and_records_the_responder(dagbag, cutover_config):
    responder = HitlResponder("reconcile_cutover", "approve_gate", "Approve", user="alice")
    dr = run_dag(dagbag, "reconcile_cutover", {"gate": "read", "reason": "diffs green for a week",
                                               "override_reason": "test ledger has no history yet"},
                 respond=[responder])
    states = task_states(dr)
    assert dr.state == "success", states
    assert responder.seen is not None
    assert "read gate: shadow → read_cutover" in responder.seen["body"]  # the evidence summary is shown
    assert "| criterion | result | detail |" in responder.seen["body"]
    assert responder.seen["options"] == ["Approve", "Reject"]
    moved = xcom(dr, "transition")
    assert moved["status"] == "approved" and moved["approvers"] == ["alice"] and moved["override"] is True
    assert xcom(dr, "verify") == {"expected": "read_cutover", "state": "read_cutover", "published": "read_cutover",
                                  "version": 1, "chain_ok": True}
    from reconcile.gates import current_state, history

    assert current_state(cutover_config) == "read_cutover"
    events = history(cutover_config)["events"]
    override = next(e for e in events if e["event"] == "override")
    assert override["actor"] == "alice" and override["reason"] == "test ledger has no history yet"
    assert override["details"]["authenticated"] == {"kind": "airflow", "id": "alice", "name": "alice",
                                                    "principal": "alice"}
    assert states["record_reject"] == "skipped" and not any(e["event"] == "rejection" for e in events)


def test_reject_leaves_the_state_alone_skips_the_transition_and_records_who_rejected(dagbag, cutover_config):
    responder = HitlResponder("reconcile_cutover", "approve_gate", "Reject", user="bob", user_id="b-42")
    dr = run_dag(dagbag, "reconcile_cutover", {"gate": "read", "override_reason": "testing the reject path"},
                 respond=[responder])
    states = task_states(dr)
    assert states["approve_gate"] == "success", states
    assert states["transition"] == states["publish"] == states["verify"] == "skipped", states
    assert states["record_reject"] == "success", states
    from reconcile.gates import current_state, history

    assert current_state(cutover_config) == "shadow"
    trail = history(cutover_config)
    rejection = [e for e in trail["events"] if e["event"] == "rejection"]
    assert len(rejection) == 1 and trail["chain"]["ok"]
    shown = xcom(dr, "evaluate_gate")
    assert rejection[0]["actor"] == "bob" and rejection[0]["gate"] == "read"
    assert rejection[0]["evidence_hash"] == shown["evidence_hash"] and rejection[0]["run_id"] == shown["run_id"]
    assert rejection[0]["details"]["authenticated"]["id"] == "b-42"
    assert rejection[0]["details"]["from"] == "shadow" and rejection[0]["details"]["to"] == "read_cutover"
    assert xcom(dr, "record_reject")["status"] == "rejected"


def test_failing_criteria_stop_before_asking_anyone(dagbag, cutover_config):
    dr = run_dag(dagbag, "reconcile_cutover", {"gate": "read"}, timeout=60)
    states = task_states(dr)
    assert dr.state == "failed"
    assert states["evaluate_gate"] == "failed" and states["approve_gate"] == "upstream_failed", states
    from reconcile.gates import current_state

    assert current_state(cutover_config) == "shadow"


def test_evidence_that_turns_red_while_the_approval_waits_refuses_the_transition(dagbag, cutover_config):
    """The approver saw every criterion pass; a dead letter opens before the answer: the transition
    re-evaluates, refuses, and records the evidence shown next to the fresh one."""
    import json

    from reconcile import control
    from reconcile.connections import connect
    from tests.test_gates import _dead_letter, bind, green_history

    with bind(connect(cutover_config.target), cutover_config) as conn:
        control.migrate(conn)
        green_history(conn)

    def dead_letter_meanwhile():
        with connect(cutover_config.target) as conn:
            _dead_letter(conn)

    responder = HitlResponder("reconcile_cutover", "approve_gate", "Approve", user="alice",
                              before_answer=dead_letter_meanwhile)
    dr = run_dag(dagbag, "reconcile_cutover", {"gate": "read", "reason": "all green"}, respond=[responder])
    states = task_states(dr)
    assert states["evaluate_gate"] == states["approve_gate"] == "success", states
    assert states["transition"] == "failed" and states["verify"] == "upstream_failed", states
    seen = xcom(dr, "evaluate_gate")
    assert seen["passed"] and "**all criteria pass**" in responder.seen["body"]
    from reconcile.gates import current_state

    assert current_state(cutover_config) == "shadow"
    with connect(cutover_config.target) as conn:
        actor, details = conn.execute("SELECT actor, details FROM reconcile.audit_events WHERE event = 'refusal'"
                                      ).fetchone()
    details = json.loads(details)
    assert actor == "alice" and details["failing"] == ["dead_letters"]
    assert details["seen_evidence_hash"] == seen["evidence_hash"] and details["changed_criteria"] == ["dead_letters"]


def test_the_rollback_gate_goes_through_the_same_approval_and_trail(dagbag, cutover_config):
    """write_cutover -> read_cutover: evaluated (reverse replay caught up, a green reverse reconciliation, no
    reverse dead letter), approved by a person, rolled back with the evidence hash, published, verified."""
    from reconcile import control
    from reconcile.connections import connect
    from reconcile.gates import approve, current_state, history
    from tests.test_gates import bind
    from tests.test_gates_rollback import reverse_run, reverse_state

    for gate in ("read", "write"):
        approve(cutover_config, gate, by="ana", reason="test", override_reason="no history in a test")
    with bind(connect(cutover_config.target), cutover_config) as conn:
        control.migrate(conn)
        reverse_run(conn)
    reverse_state(cutover_config, caught_up_seconds_ago=1)
    responder = HitlResponder("reconcile_cutover", "approve_gate", "Approve", user="carol")
    dr = run_dag(dagbag, "reconcile_cutover", {"gate": "rollback", "reason": "latency on DSQL"}, respond=[responder])
    states = task_states(dr)
    assert dr.state == "success", states
    assert "rollback gate: write_cutover → read_cutover" in responder.seen["body"]
    assert "reverse_reconciliation_green" in responder.seen["body"]
    moved, shown = xcom(dr, "transition"), xcom(dr, "evaluate_gate")
    assert (moved["status"], moved["from"], moved["to"], moved["override"]) == \
        ("rolled_back", "write_cutover", "read_cutover", False)
    assert moved["seen_evidence_hash"] == shown["evidence_hash"]
    assert xcom(dr, "verify")["state"] == "read_cutover" and current_state(cutover_config) == "read_cutover"
    trail = history(cutover_config)
    (rolled,) = [e for e in trail["events"] if e["event"] == "rollback"]
    assert rolled["actor"] == "carol" and rolled["evidence_hash"] == moved["evidence_hash"]
    assert rolled["details"]["authenticated"]["id"] == "carol" and trail["chain"]["ok"]
