"""Cutover as orchestrated steps: evaluate -> (a person approves) -> transition -> publish -> verify.

The human decision sits between :func:`gate_evaluate` and :func:`gate_transition`; in Airflow it is an
``ApprovalOperator`` whose body is :func:`approval_body` (the evidence summary) and whose responder
(:func:`responder`: the name becomes ``by``, the Airflow user id the authenticated identity) is recorded
with the approval, or with the rejection (:func:`gate_rejected`). Each step is safe to retry:

- :func:`gate_evaluate` records a new evaluation (a ``runs`` row of kind 'gate') each time;
- :func:`gate_transition` re-evaluates the gate inside the approval's transaction (the answer may
  come hours after :func:`gate_evaluate`), does nothing when the state already is the gate's target
  state (a retry after a commit whose answer was lost), and leaves publishing to
  :func:`gate_publish` when the transition committed but publishing failed;
- :func:`gate_publish` is idempotent (:func:`reconcile.gates.publish`);
- :func:`gate_verify` only reads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from reconcile import metrics
from reconcile.config import Config
from reconcile.errors import TerminalError

__all__ = [
    "GATE_TARGET",
    "CutoverNotReady",
    "CutoverNotVerified",
    "approval_body",
    "gate_evaluate",
    "gate_evidence",
    "gate_publish",
    "gate_rejected",
    "gate_transition",
    "gate_verify",
]

log = logging.getLogger("reconcile.pipeline.gates")

GATE_TARGET = {"read": ("shadow", "read_cutover"), "write": ("read_cutover", "write_cutover"),
               "rollback": ("write_cutover", "read_cutover")}
"""Gate -> (state it starts from, state it moves to). The rollback gate's transition is
:func:`reconcile.gates.rollback` (the reverse replay caught up, a green reverse reconciliation, no open
reverse dead letter: :mod:`reconcile.gates.rollback_gate`)."""


class CutoverNotReady(TerminalError):
    """The gate cannot be approved now (criteria fail without an override, or the state does not allow it)."""


class CutoverNotVerified(TerminalError):
    """After a transition, the state or its published copy is not what the gate should have produced."""


def _check_gate(gate: str) -> tuple[str, str]:
    if gate not in GATE_TARGET:
        raise CutoverNotReady(f"Unknown gate {gate!r}; trigger the cutover with gate 'read', 'write' or 'rollback'.")
    return GATE_TARGET[gate]


def _report_lines(report: Mapping[str, Any] | None) -> list[str]:
    """The reconciliation run the decision rests on: its faults / unexplained counts and its page."""
    if not report:
        return []
    counts = ""
    if report.get("faults") is not None:
        counts = (f": **{report['faults']} fault(s)**, **{report['unexplained']} unexplained difference(s)**"
                  f" ({report.get('explained')} of {report.get('balance_differences')} balance differences explained"
                  " by a fault)")
    lines = ["", f"Reconciliation run `{report['run_id']}` is **{str(report.get('verdict')).upper()}**{counts}."]
    if report.get("report_page"):
        lines.append(f"Run page: `{report['report_page']}`"
                     + (f" · history: `{report['history_page']}`" if report.get("history_page") else ""))
    return lines


def approval_body(evaluation: Mapping[str, Any], *, override_reason: str | None = None,
                  report: Mapping[str, Any] | None = None) -> str:
    """The evidence summary a person reads before approving (Markdown); ``report``: the diff run it rests on
    (:func:`reconcile.report.evidence.run_link`), linked with its faults and unexplained differences."""
    gate = evaluation["gate"]
    frm, to = GATE_TARGET[gate]
    verdict = "**all criteria pass**" if evaluation["passed"] else \
        f"**{len(evaluation['failing'])} criteria fail**: {', '.join(evaluation['failing'])}"
    lines = [f"### {gate} gate: {frm} → {to}", "",
             f"Evaluated {evaluation['evaluated_at']} in state `{evaluation['state']}`: {verdict}.", "",
             "| criterion | result | detail |", "|---|---|---|"]
    for c in evaluation["criteria"]:
        detail = str(c.get("message") or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {c['name']} | {'pass' if c['passed'] else '**FAIL**'} | {detail} |")
    lines += _report_lines(report)
    lines += ["", f"Evidence hash `{evaluation['evidence_hash']}` (evaluation run `{evaluation.get('run_id')}`)."]
    if override_reason:
        lines += ["", f"Approving **overrides** the failing criteria, recorded with the reason: {override_reason}"]
    lines += ["", f"Approve to move the cutover state to `{to}` and publish it; reject to leave it `{frm}`."]
    return "\n".join(lines)


def gate_evaluate(config: Config, gate: str, *, actor: str | None = None,
                  override_reason: str | None = None) -> dict[str, Any]:
    """Evaluate ``gate`` from the stored history and record the evaluation.

    Returns:
        The evaluation dict (``gate, state, evaluated_at, criteria, passed, failing, evidence_hash,
        run_id``) plus ``from``, ``to``, ``summary`` (one line) and ``body`` (the approval text).

    Raises:
        CutoverNotReady: the state is not the gate's starting state, or criteria fail and no
            ``override_reason`` was given (approving would be refused anyway).
    """
    from reconcile import gates

    frm, to = _check_gate(gate)
    ev = gates.evaluate(config, gate, record=True, actor=actor)
    doc = ev.to_dict()
    log.info("%s (evidence %s)", ev.summary(), ev.evidence_hash[:12])
    for c in doc["criteria"]:
        log.info("  %-4s %s: %s", "ok" if c["passed"] else "FAIL", c["name"], c["message"])
    if doc["state"] != frm:
        raise CutoverNotReady(f"The {gate} gate moves {frm} to {to}, but the cutover state is {doc['state']}; "
                              f"{'approve the read gate first' if gate == 'write' and doc['state'] == 'shadow' else 'nothing to approve'}.")
    if not ev.passed and not override_reason:
        raise CutoverNotReady(f"The {gate} gate's criteria fail ({', '.join(ev.failing)}); fix them and run the "
                              "cutover again, or trigger it with override_reason set to why it may go ahead anyway.")
    report = _report_link(config, doc)
    if report:
        log.info("diff run %s: %s, %s fault(s), %s unexplained difference(s); run page: %s", report["run_id"],
                 report.get("verdict"), report.get("faults"), report.get("unexplained"), report.get("report_page"))
    return {**doc, "from": frm, "to": to, "summary": ev.summary(), "report": report,
            "body": approval_body(doc, override_reason=override_reason, report=report)}


def _report_link(config: Config, evaluation: Mapping[str, Any]) -> dict[str, Any] | None:
    from reconcile.connections import connect
    from reconcile.gates.evidence import jsonable
    from reconcile.report.evidence import run_link

    with connect(config.target) as conn:
        link = run_link(conn, dict(evaluation))
    return jsonable(link) if link else None


def responder(response: Mapping[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    """The name and authenticated identity of who answered an approval step (its ``responded_by_user``)."""
    from reconcile.gates.approver import airflow_responder

    user = (response or {}).get("responded_by_user") or {}
    name = user.get("name") or user.get("id") or "unknown approver"
    return str(name), airflow_responder(user)


def gate_transition(config: Config, gate: str, *, by: str, reason: str, override_reason: str | None = None,
                    evaluation: Mapping[str, Any] | None = None,
                    identity: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Record the approval by ``by`` (authenticated as ``identity``) and move the state (:func:`reconcile.gates.approve`;
    for the rollback gate :func:`reconcile.gates.rollback`, which evaluates the rollback gate in its own transaction).

    The gate is evaluated again when the approval is recorded (the person may have answered hours
    after ``evaluation`` was made): criteria failing by then refuse it unless ``override_reason``.
    ``evaluation`` is what the approver was shown; its evidence hash is recorded next to the fresh one.

    Returns:
        approve()'s result (``status``, ``from``, ``to``, ``approvers``, ``published``...), or
        ``{"status": "already", "state": ...}`` when a previous attempt made the transition already.
        ``published`` is None when the transition committed but publishing failed (``gate_publish`` retries it).
    """
    from reconcile import gates

    _, to = _check_gate(gate)
    state = gates.current_state(config)
    if state == to:
        log.info("the cutover state is %s already (an earlier attempt made the transition)", state)
        return {"status": "already", "gate": gate, "to": to, "state": state, "approvers": [by]}
    try:
        if gate == "rollback":
            result = gates.rollback(config, by=by, reason=reason, override_reason=override_reason,
                                    evaluation=dict(evaluation) if evaluation is not None else None,
                                    identity=dict(identity) if identity is not None else None)
            result.setdefault("approvers", [by])
        else:
            result = gates.approve(config, gate, by=by, reason=reason, override_reason=override_reason,
                                   evaluation=dict(evaluation) if evaluation is not None else None,
                                   identity=dict(identity) if identity is not None else None)
    except gates.PublishFailed as exc:
        log.warning("transition made, publishing failed (the publish step retries it): %s", exc)
        return {"status": "approved", "gate": gate, "to": to, "approvers": [by], "published": None}
    log.info("%s gate %s by %s: %s -> %s", gate, result["status"], ", ".join(result.get("approvers", [by])),
             result.get("from"), result.get("to"))
    return result


def gate_rejected(config: Config, gate: str, response: Mapping[str, Any] | None,
                  evaluation: Mapping[str, Any] | None = None, *, run: str | None = None) -> dict[str, Any]:
    """Record a Reject answered in the approval step (:func:`reconcile.gates.reject`): who, what they saw.

    Returns ``{"status": "not rejected"}`` when the response was not a Reject (nothing is recorded).
    """
    from reconcile import gates

    chosen = list((response or {}).get("chosen_options") or [])
    if chosen != ["Reject"]:
        log.info("the approval step was not answered with Reject (%s): nothing to record", chosen or "no answer")
        return {"status": "not rejected", "chosen": chosen}
    by, identity = responder(response)
    reason = "answered Reject in the approval step" + (f" of Airflow run {run}" if run else "")
    result = gates.reject(config, gate, by=by, reason=reason, identity=identity,
                          evaluation=dict(evaluation) if evaluation is not None else None)
    log.info("%s gate rejected by %s; the state stays %s (event %s)", gate, by, result["state"], result["event"])
    return result


def gate_publish(config: Config, *, actor: str | None = None) -> dict[str, Any]:
    """Publish the current state (control table and, when configured, SSM); idempotent."""
    from reconcile import gates

    result = gates.publish(config, actor=actor)
    log.info("published state %s (version %s)%s", result["state"], result["version"],
             "" if result.get("changed") else ": already published")
    metrics.after_gate_evidence(config, {"state": result["state"]})
    return result


def gate_verify(config: Config, gate: str, *, pending_ok: bool = True,
                transition: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check that the state and its published copy are the gate's target state.

    With two-person approval a first approval leaves the state as it was (``status: pending``); that is
    reported, not failed, when ``pending_ok``.

    Raises:
        CutoverNotVerified: the state or the published state differs from the expected one.
    """
    from reconcile import gates

    frm, to = _check_gate(gate)
    expected = frm if transition is not None and transition.get("status") == "pending" and pending_ok else to
    status = gates.gate_status(config)
    published = status["published"]["state"]
    out = {"expected": expected, "state": status["state"], "published": published,
           "version": status["version"], "chain_ok": status["chain"]["ok"]}
    if status["state"] != expected or published != expected:
        raise CutoverNotVerified(f"After the {gate} gate the cutover state is {status['state']} and the published "
                                 f"state is {published}, but both should be {expected}; run `reconcile gate status` "
                                 "and `reconcile gate publish`, then check the trail with `reconcile gate history`.")
    if not status["chain"]["ok"]:
        raise CutoverNotVerified("The cutover state is as expected but the audit trail is broken; run "
                                 "`reconcile gate history` to find the break before going on.")
    log.info("verified: state and published state are %s", expected)
    return out


def gate_evidence(config: Config, *, actor: str | None = None) -> dict[str, Any]:
    """Record an evaluation of the next gate (read from shadow, write from read_cutover, rollback from
    write_cutover: a reverse reconciliation is the rollback gate's evidence) as evidence.

    Returns:
        The evaluation dict, or ``{"gate": None, "state": ...}`` when no gate applies.
    """
    from reconcile import gates

    state = gates.current_state(config)
    gate = {"shadow": "read", "read_cutover": "write", "write_cutover": "rollback"}.get(state)
    if gate is None:
        log.info("cutover state is %s: no gate left to gather evidence for", state)
        metrics.after_gate_evidence(config, {"gate": None, "state": state})
        return {"gate": None, "state": state}
    ev = gates.evaluate(config, gate, record=True, actor=actor)
    log.info("gate evidence recorded: %s (evidence %s, run %s)", ev.summary(), ev.evidence_hash[:12], ev.run_id)
    metrics.after_gate_evidence(config, ev.to_dict())
    return ev.to_dict()
