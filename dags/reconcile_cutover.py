"""reconcile_cutover: evaluate a gate, ask a person, then move the cutover state and publish it.

Manual, one gate per run (``read``: shadow -> read_cutover, ``write``: read_cutover -> write_cutover,
``rollback``: write_cutover -> read_cutover, passed when the reverse replay is caught up, the latest reverse
reconciliation is green and no reverse dead letter is open; its transition is reconcile.gates.rollback).
evaluate_gate -> approve_gate (Airflow's human-in-the-loop ApprovalOperator; its body is the
evidence summary) -> transition (the responder is recorded as the approver, with the Airflow user id
as the authenticated identity the two-person rule compares) -> publish -> verify. Reject skips
transition and everything after it, so the state stays as it was, and record_reject (it runs only
when transition was skipped) writes the rejection, its responder and the evidence they saw to the
audit trail. The gate's criteria come from
the stored history (reconcile.gates); a failing gate stops at evaluate_gate unless the run is
triggered with override_reason. The approval may come hours after evaluate_gate, so transition
evaluates the gate again in the transaction that moves the state: if a criterion fails by then,
the transition is refused (unless override_reason), and the hash of the evidence the approver was
shown is recorded next to the fresh one. Logic lives in reconcile.pipeline.gates.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task
from reconcile_common import DEFAULT_ARGS, START_DATE, TAGS, reconcile_errors, task_config

EVALUATION = "ti.xcom_pull(task_ids='evaluate_gate')"


class AnsweredApproval(ApprovalOperator):
    """An ApprovalOperator that keeps every answer in XCom (key ``response``): on Reject the base class
    skips downstream before its return value is pushed, and the rejection must still name its responder."""

    def execute_complete(self, context, event):
        if "chosen_options" in event:
            context["ti"].xcom_push(key="response", value={
                "chosen_options": list(event["chosen_options"] or []),
                "responded_by_user": dict(event.get("responded_by_user") or {}),
                "responded_at": str(event.get("responded_at"))})
        return super().execute_complete(context, event)


@dag(
    dag_id="reconcile_cutover",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=TAGS,
    doc_md=__doc__,
    params={
        "gate": Param("read", type="string", enum=["read", "write", "rollback"],
                      description="The gate to pass (rollback: write_cutover -> read_cutover)."),
        "reason": Param("cutover approved in Airflow", type="string", minLength=1,
                        description="Why this gate is being passed (recorded in the audit trail)."),
        "override_reason": Param(None, type=["null", "string"],
                                 description="Go ahead although criteria fail, and why (recorded as an override)."),
    },
)
def reconcile_cutover():
    @task
    def evaluate_gate(params=None, run_id=None) -> dict:
        from reconcile.pipeline.gates import gate_evaluate

        with reconcile_errors():
            return gate_evaluate(task_config(), params["gate"], actor=f"airflow:{run_id}",
                                 override_reason=params["override_reason"])

    approve_gate = AnsweredApproval(
        task_id="approve_gate",
        subject="Approve the {{ params.gate }} gate? {{ " + EVALUATION + "['summary'] }}",
        body="{{ " + EVALUATION + "['body'] }}",
        response_timeout=timedelta(hours=24),
        retries=0,
    )

    @task(retries=3)
    def transition(evaluation: dict, response: dict, params=None) -> dict:
        from reconcile.pipeline.gates import gate_transition, responder

        by, identity = responder(response)
        with reconcile_errors():
            return gate_transition(task_config(), params["gate"], by=by, reason=params["reason"],
                                   override_reason=params["override_reason"], evaluation=evaluation,
                                   identity=identity)

    @task(retries=3, trigger_rule="all_skipped")
    def record_reject(params=None, ti=None, run_id=None) -> dict:
        from reconcile.pipeline.gates import gate_rejected

        with reconcile_errors():
            return gate_rejected(task_config(), params["gate"], ti.xcom_pull(task_ids="approve_gate", key="response"),
                                 ti.xcom_pull(task_ids="evaluate_gate"), run=run_id)

    @task(retries=3)
    def publish(moved: dict) -> dict:
        from reconcile.pipeline.gates import gate_publish

        with reconcile_errors():
            return gate_publish(task_config(), actor=(moved.get("approvers") or [None])[-1])

    @task
    def verify(moved: dict, published: dict, params=None) -> dict:
        from reconcile.pipeline.gates import gate_verify

        with reconcile_errors():
            return gate_verify(task_config(), params["gate"], transition=moved)

    evaluation = evaluate_gate()
    evaluation >> approve_gate
    moved = transition(evaluation, approve_gate.output)
    verify(moved, publish(moved))
    moved >> record_reject()


reconcile_cutover()
