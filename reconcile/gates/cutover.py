"""Cutover state machine: evaluate, approve, roll back, acknowledge, publish; the public API.

States and transitions::

    shadow ──approve read──► read_cutover ──approve write──► write_cutover
    shadow ◄──rollback────── read_cutover ◄──rollback (the rollback gate) ──

The rollback from ``write_cutover`` is a gate of its own (:mod:`reconcile.gates.rollback_gate`: the reverse
replay caught up, a green reverse reconciliation, no open reverse dead letter), evaluated inside the
rollback's transaction like an approval; ``--override`` stays as a recorded break-glass. The rollback
from ``read_cutover`` needs no evidence (the source never stopped being the system of record).

The state is one row of ``reconcile.gate_state`` per migration (key: :func:`reconcile.identity.cutover_key`,
so two migrations sharing one control schema never move each other's state; a control schema from before
the state was scoped has one row keyed ``'cutover'``: the first migration that opens its gates copies it
and marks it ``adopted`` with its key, and logs that), and every change to it is written through :func:`reconcile.occ.run_with_retry` in the same transaction as its events in the
audit trail (:mod:`reconcile.gates.trail`). Concurrency without locks: a transition reads the state
and writes the new one (``WHERE version = <read version>``) in one REPEATABLE READ transaction, and
appending its events moves the chain head; of two concurrent approvals the later commit fails with
40001 (DSQL's OCC), is retried, sees the new state and is refused cleanly.

Evaluations are recorded as ``reconcile.runs`` rows of kind ``'gate'`` (status ``green`` when every
criterion passes, else ``red``; summary: the evaluation document with its ``evidence_hash``) and as
an ``evaluation`` event. Refusals are recorded too (event ``refusal``), with the failing criteria.

Every function takes the loaded :class:`reconcile.config.Config`; ``conn`` (an autocommit target
connection) is optional and reused when given, else one is opened and closed. Results are JSON-able
dicts (or an :class:`~reconcile.gates.evidence.Evaluation`, whose ``to_dict()`` is).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from reconcile.control import ident, migrate
from reconcile.gates import pin, trail
from reconcile.gates.criteria import EvidenceScope, evaluate_criteria, latest_audit_run
from reconcile.gates.errors import GateError, GateRefused, PublishFailed
from reconcile.gates.evidence import GATES, Evaluation, canonical, iso, jsonable
from reconcile.gates.rollback_gate import HINTS, reverse_snapshot
from reconcile.gates.ssm import publish_ssm, resolve_region
from reconcile.gates.approver import checked_identity, principal
from reconcile.identity import LEGACY_CUTOVER_KEY, cutover_key, migration_of, run_scope, text_problem
from reconcile.occ import policy_from, run_with_retry
from reconcile.schema.dialect import dialect_for

__all__ = ["STATES", "acknowledge", "approve", "clean_text", "current_state", "evaluate", "gate_status", "history", "publish",
           "reject", "retire", "rollback", "same_person"]

log = logging.getLogger(__name__)

STATES = ("shadow", "read_cutover", "write_cutover")
_STEP = {"read": ("shadow", "read_cutover"), "write": ("read_cutover", "write_cutover"),
         "rollback": ("write_cutover", "read_cutover")}
_BACK = {"read_cutover": "shadow", "write_cutover": "read_cutover"}
_NEXT_GATES = {"shadow": ("read", "write"), "read_cutover": ("write",), "write_cutover": ("rollback",)}

_STATE_COLS = ("state", "version", "entered_at", "changed_by", "reason", "last_event_id", "pending",
               "published_state", "published_version", "published_at")
_READ_STATE = sql.SQL("SELECT {} FROM {} WHERE gate_key = %s").format(
    sql.SQL(", ").join(map(sql.Identifier, _STATE_COLS)), ident("gate_state"))
_INIT_STATE = sql.SQL("INSERT INTO {} (gate_key, state, version, entered_at) VALUES (%s, 'shadow', 0, now()) "
                      "ON CONFLICT (gate_key) DO NOTHING").format(ident("gate_state"))
_MOVE_STATE = sql.SQL("UPDATE {} SET state = %s, version = version + 1, entered_at = now(), changed_by = %s, "
                      "reason = %s, last_event_id = %s, pending = NULL, updated_at = now() "
                      "WHERE gate_key = %s AND version = %s").format(ident("gate_state"))
_SET_PENDING = sql.SQL("UPDATE {} SET pending = %s, version = version + 1, updated_at = now() "
                       "WHERE gate_key = %s AND version = %s").format(ident("gate_state"))
_SET_PUBLISHED = sql.SQL("UPDATE {} SET published_state = state, published_version = version, published_at = now() "
                         "WHERE gate_key = %s AND version = %s").format(ident("gate_state"))
_HAS_STATE = sql.SQL("SELECT 1 FROM {} WHERE gate_key = %s").format(ident("gate_state"))
_ADOPT_LEGACY = sql.SQL("INSERT INTO {} (gate_key, {}) SELECT %s, {} FROM {} "
                        "WHERE gate_key = %s AND state <> %s").format(
    ident("gate_state"), sql.SQL(", ").join(map(sql.Identifier, _STATE_COLS)),
    sql.SQL(", ").join(map(sql.Identifier, _STATE_COLS)), ident("gate_state"))
_ADOPTED = "adopted"
_MARK_LEGACY = sql.SQL("UPDATE {} SET state = %s, changed_by = %s, version = version + 1, updated_at = now() "
                       "WHERE gate_key = %s AND state <> %s").format(ident("gate_state"))
_HEAD_ROW = sql.SQL("SELECT seq, head_hash, head_event_id FROM {} WHERE chain = %s").format(ident("gate_chain"))
_GATE_RUN = sql.SQL("INSERT INTO {} (run_id, kind, status, started_at, finished_at, settings, summary, migration_id, "
                    "tables) VALUES (%s, 'gate', %s, %s, now(), %s, %s, %s, %s) ON CONFLICT (run_id) DO NOTHING"
                    ).format(ident("runs"))


class _Refused(Exception):
    """Raised inside a transaction to roll it back; turned into a recorded GateRefused outside.

    ``evaluation``: the fresh evaluation the refusal rests on, recorded with the refusal.
    """

    def __init__(self, message: str, failing: tuple[str, ...] = (), evaluation: Evaluation | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message, self.failing, self.evaluation, self.details = message, failing, evaluation, details or {}


# --- plumbing ---------------------------------------------------------------------------------


def _tx(conn: psycopg.Connection, config: Any, fn: Any, label: str, *, writes: bool = True) -> Any:
    # Writes append to the trail: a commit of unknown outcome (XX000) is not blindly retried.
    return run_with_retry(conn, fn, policy=policy_from(config), idempotent=not writes, label=label)


@contextmanager
def _target(config: Any, conn: psycopg.Connection | None) -> Iterator[psycopg.Connection]:
    """The target connection, with the control schema current and the state and chain rows present."""
    if conn is None:
        from reconcile.connections import connect

        owned = connect(config.target)
    else:
        owned = None
    c = conn if conn is not None else owned
    try:
        migrate(c, dialect=dialect_for(config.target).name, policy=policy_from(config))  # type: ignore[arg-type]

        key = cutover_key(config)

        def init(t: psycopg.Connection) -> bool:
            adopted = False
            if t.execute(_HAS_STATE, (key,)).fetchone() is None:
                # A control schema from before the state was scoped: its one state is this migration's.
                adopted = t.execute(_ADOPT_LEGACY, (key, LEGACY_CUTOVER_KEY, _ADOPTED)).rowcount == 1
                if adopted:  # the old row stays (nothing here deletes), marked with who adopted it
                    t.execute(_MARK_LEGACY, (_ADOPTED, key, LEGACY_CUTOVER_KEY, _ADOPTED))
                else:
                    t.execute(_INIT_STATE, (key,))
            trail.ensure_head(t)
            return adopted

        if _tx(c, config, init, "gate state init", writes=False):
            log.warning("This migration adopted the control schema's unscoped cutover state (%s); a second "
                        "migration sharing this control schema starts in shadow.", key)
        yield c
    finally:
        if owned is not None:
            owned.close()


def _read_state(t: psycopg.Connection, key: str) -> dict[str, Any]:
    row = t.execute(_READ_STATE, (key,)).fetchone()
    if row is None:
        raise GateError("The cutover state row (reconcile.gate_state) is missing; run `reconcile gate status` "
                        "to recreate it and check `reconcile gate history` for a broken trail.")
    st = dict(zip(_STATE_COLS, row))
    st["last_event_id"] = None if st["last_event_id"] is None else str(st["last_event_id"])
    st["pending"] = json.loads(st["pending"]) if st["pending"] else None
    return st


def _check_gate(gate: str) -> None:
    if gate not in GATES:
        raise GateError(f"Unknown gate {gate!r}; use one of: {', '.join(GATES)}.")


_LIMITS = {"--by": 200, "FINDING": 300}
_TEXT_LIMIT = 2000


def clean_text(text: str, what: str) -> str:
    """``text`` stripped; refused (one sentence) when it holds a control character or is too long."""
    text = text.strip()
    problem = text_problem(text)
    if problem:
        raise GateError(f"{what} contains {problem}; write it on one line, without control characters or escape "
                        "sequences (they could forge or hide lines in the audit trail).")
    limit = _LIMITS.get(what, _TEXT_LIMIT)
    if len(text) > limit:
        raise GateError(f"{what} is {len(text)} characters long, more than {limit}; shorten it.")
    return text


def _required(value: str | None, what: str) -> str:
    if value is None or not str(value).strip():
        raise GateError(f"{what} is required and must not be empty; say who acts and why.")
    return clean_text(str(value), what)


def _optional(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not str(value).strip():
        raise GateError(f"{what} needs its own reason; give a non-empty text.")
    return clean_text(str(value), what)


def same_person(a: str | None, b: str | None) -> bool:
    """Whether two approver names are the same person's: compared case-folded, whitespace collapsed.

    >>> same_person("Alice  Smith", " alice smith")
    True
    """
    def norm(name: str | None) -> str:
        return " ".join(str(name or "").split()).casefold()

    return norm(a) == norm(b)


def _record_refusal(c: psycopg.Connection, config: Any, *, gate: str | None, by: str | None, reason: str | None,
                    refusal: _Refused, action: str, identity: dict[str, Any] | None = None) -> GateRefused:
    """Record the refusal (and the fresh evaluation it rests on) in one transaction; the error to raise."""
    ev = refusal.evaluation

    def write(t: psycopg.Connection) -> None:
        events = []
        recorded = None
        if ev is not None:
            recorded, evaluated = _evaluation_record(t, config, ev, by)
            events.append(evaluated)
        events.append({"event": "refusal", "gate": gate, "actor": by, "reason": reason,
                       "evidence_hash": ev.evidence_hash if ev is not None else None,
                       "run_id": recorded.run_id if recorded is not None else None,
                       "details": {"action": action, "refused": refusal.message, "failing": list(refusal.failing),
                                   "authenticated": identity, **refusal.details}})
        trail.append(t, events)

    _tx(c, config, write, "gate refusal event")
    _pin(c, config)
    return GateRefused(refusal.message, refusal.failing)


# --- the chain head outside the database ------------------------------------------------------


def _pins(config: Any) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The chain heads published so far (None: ``[gates] chain_parameter`` unset), or why they could not be read.

    Read before the trail: heads are published after their commit, so every head read first is at or
    before the end of the trail read afterwards.
    """
    try:
        return pin.read_pins(config), None
    except PublishFailed as exc:
        return None, exc.message


def _checked_chain(t: psycopg.Connection, config: Any, pins: tuple[list[dict[str, Any]] | None, str | None],
                   state: str | None, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Inside a transaction: the trail's own check (:func:`trail.verify`) plus its check against the published heads."""
    rows = trail.read_events(t) if events is None else events
    chain = trail.verify(t, rows, state=state)
    published, problem = pins
    name = config.gates.chain_parameter
    if problem is not None:
        chain["breaks"].append({"seq": None, "event_id": None,
                                "problem": f"the chain head published outside the database could not be read, so "
                                           f"a rewrite of the trail cannot be ruled out ({problem.rstrip('.')})"})
        chain["pinned"] = {"parameter": name, "error": problem}
    elif published is None:
        chain["pinned"] = None
    else:
        checked = pin.check_pins(rows, published)
        chain["breaks"] += checked.pop("breaks")
        chain["pinned"] = {"parameter": name, **checked}
    chain["ok"] = not chain["breaks"]
    return chain


def _pin(c: psycopg.Connection, config: Any, *, strict: bool = False) -> dict[str, Any] | None:
    """After a committed append: publish the chain head (``[gates] chain_parameter``); None when unset.

    Not ``strict``, a failure is logged and returned (``{"error": ...}``): the event stands, the trail
    shows it as not pinned yet, and the next event or ``reconcile gate publish`` pins it.
    """
    if not config.gates.chain_parameter:
        return None
    head = _tx(c, config, lambda t: t.execute(_HEAD_ROW, (trail.CHAIN,)).fetchone(), "chain head read", writes=False)
    if head is None:
        return None
    try:
        return pin.publish_head(config, {"seq": head[0], "hash": head[1],
                                         "event_id": None if head[2] is None else str(head[2])})
    except PublishFailed as exc:
        if strict:
            raise
        log.warning("the audit trail's head (event %s) was not published outside the database: %s", head[0],
                    exc.message)
        return {"error": exc.message}


# --- evaluate ---------------------------------------------------------------------------------


def _evaluate_in(t: psycopg.Connection, config: Any, gate: str, st: dict[str, Any] | None = None) -> Evaluation:
    """Inside a transaction (one snapshot): the criteria of ``gate`` against the state ``st`` read in it.

    The rollback gate also reads the reverse replay's state from the source (another database), first.
    """
    reverse = reverse_snapshot(config) if gate == "rollback" else None
    (now,) = t.execute("SELECT now()").fetchone()
    st = _read_state(t, cutover_key(config)) if st is None else st
    criteria = evaluate_criteria(t, gate, config.gates, st, now, EvidenceScope.of(config), reverse)
    return Evaluation(gate, st["state"], iso(now) or "", tuple(criteria))


def _evaluate(c: psycopg.Connection, config: Any, gate: str) -> Evaluation:
    return _tx(c, config, lambda t: _evaluate_in(t, config, gate), f"{gate} gate evaluation", writes=False)


def _evaluation_record(t: psycopg.Connection, config: Any, ev: Evaluation,
                       actor: str | None) -> tuple[Evaluation, dict[str, Any]]:
    """Inside the caller's transaction: store ``ev`` as a 'gate' run; returns it with its run_id, and its event."""
    run_id = str(uuid.uuid4())
    recorded = Evaluation(ev.gate, ev.state, ev.evaluated_at, ev.criteria, run_id)
    settings = canonical({f: getattr(config.gates, f) for f in config.gates.__dataclass_fields__})
    scope = run_scope(config)
    t.execute(_GATE_RUN, (run_id, "green" if ev.passed else "red", ev.evaluated_at, settings,
                          canonical(recorded.to_dict()), scope.migration_id, scope.tables_json))
    event = {"event": "evaluation", "gate": ev.gate, "actor": actor, "run_id": run_id,
             "evidence_hash": ev.evidence_hash,
             "details": {"passed": ev.passed, "failing": list(ev.failing), "state": ev.state}}
    return recorded, event


def _record_evaluation(c: psycopg.Connection, config: Any, ev: Evaluation, actor: str | None) -> Evaluation:
    def write(t: psycopg.Connection) -> Evaluation:
        recorded, event = _evaluation_record(t, config, ev, actor)
        trail.append(t, [event])
        return recorded

    return _tx(c, config, write, "gate evaluation record")


def evaluate(config: Any, gate: str, *, record: bool = True, actor: str | None = None,
             conn: psycopg.Connection | None = None) -> Evaluation:
    """Evaluate every criterion of ``gate`` ('read' or 'write') from the stored history.

    Args:
        config: the loaded configuration (thresholds in ``[gates]``).
        gate: ``read``, ``write`` or ``rollback`` (write_cutover -> read_cutover: :mod:`reconcile.gates.rollback_gate`).
        record: store the evaluation (a ``runs`` row of kind 'gate' and an ``evaluation`` event).
        actor: who asked (recorded with the event).
        conn: an autocommit target connection to reuse.

    Returns:
        The :class:`Evaluation`: ``.passed``, ``.criteria``, ``.evidence_hash``, ``.to_dict()``.
    """
    _check_gate(gate)
    if actor is not None:
        actor = clean_text(str(actor), "--by")
    with _target(config, conn) as c:
        ev = _evaluate(c, config, gate)
        if not record:
            return ev
        recorded = _record_evaluation(c, config, ev, actor)
        _pin(c, config)
        return recorded


# --- reject -----------------------------------------------------------------------------------


def reject(config: Any, gate: str, *, by: str, reason: str, identity: dict[str, Any] | None = None,
           evaluation: Evaluation | dict[str, Any] | None = None,
           conn: psycopg.Connection | None = None) -> dict[str, Any]:
    """Record that ``by`` rejected ``gate`` (e.g. answered Reject in the reconcile_cutover DAG).

    Nothing moves: the state stays as it is. The ``rejection`` event names the responder (``actor`` and
    its authenticated ``identity``), the gate, the step it would have made, the state it was in and the
    evidence the responder was shown (``seen_evidence_hash``, ``seen_run_id``).

    Returns:
        ``{"status": "rejected", "gate", "state", "event", "seen_evidence_hash"}``.
    """
    _check_gate(gate)
    by, reason = _required(by, "--by"), _required(reason, "--reason")
    who = checked_identity(identity)
    seen = _seen(evaluation, gate)
    frm, to = _STEP[gate]
    with _target(config, conn) as c:
        def write(t: psycopg.Connection) -> dict[str, Any]:
            st = _read_state(t, cutover_key(config))
            details = {"from": frm, "to": to, "state": st["state"], "state_version": st["version"],
                       "authenticated": who, "seen_evidence_hash": seen.evidence_hash if seen else None,
                       "seen_run_id": seen.run_id if seen else None, "seen_passed": seen.passed if seen else None}
            (written,) = trail.append(t, [{"event": "rejection", "gate": gate, "actor": by, "reason": reason,
                                           "evidence_hash": seen.evidence_hash if seen else None,
                                           "run_id": seen.run_id if seen else None, "details": details}])
            return {"status": "rejected", "gate": gate, "state": st["state"], "event": written["event_id"],
                    "seen_evidence_hash": details["seen_evidence_hash"]}

        result = _tx(c, config, write, f"reject {gate} gate")
        result["pinned"] = _pin(c, config)
        return result


# --- approve ----------------------------------------------------------------------------------


def _seen(evaluation: Evaluation | dict[str, Any] | None, gate: str) -> Evaluation | None:
    """The evaluation the approver was shown (checked: of this gate, unaltered), or None."""
    if evaluation is None:
        return None
    ev = evaluation if isinstance(evaluation, Evaluation) else Evaluation.from_dict(evaluation)
    if ev.gate != gate:
        raise GateError(f"The evaluation handed in is of the {ev.gate} gate, not the {gate} gate; evaluate the "
                        f"{gate} gate and approve with that.")
    return ev


def _compared(seen: Evaluation | None, fresh: Evaluation) -> dict[str, Any]:
    """What the approval records about the evidence the approver saw versus the fresh evaluation."""
    if seen is None:
        return {"seen_evidence_hash": None, "evidence_changed": None, "changed_criteria": []}
    changed = seen.changed_criteria(fresh)
    return {"seen_evidence_hash": seen.evidence_hash, "seen_evaluated_at": seen.evaluated_at,
            "seen_run_id": seen.run_id, "seen_passed": seen.passed,
            "evidence_changed": seen.substance_hash != fresh.substance_hash, "changed_criteria": changed,
            "verdict_changed": [c.name for c in fresh.criteria if c.name in changed
                                and any(s.name == c.name and s.passed is not c.passed for s in seen.criteria)]}


def _refusal_text(gate: str, ev: Evaluation, chain_problem: str | None, seen: Evaluation | None) -> str:
    """One sentence: what fails now, and what to do."""
    parts = []
    if not ev.passed:
        n = len(ev.failing)
        parts.append(f"{n} {'criterion fails' if n == 1 else 'criteria fail'} ({', '.join(ev.failing)})")
    if chain_problem:
        parts.append(f"the audit trail is broken ({chain_problem})")
    shown = " although the evaluation shown to the approver passed" if seen is not None and seen.passed else ""
    return (f"The {gate} gate refuses approval: re-evaluated now, {' and '.join(parts)}{shown}; fix that and "
            "approve again, or approve with --override REASON (`reconcile gate status` shows the evidence).")


def approve(config: Any, gate: str, *, by: str, reason: str, override_reason: str | None = None,
            evaluation: Evaluation | dict[str, Any] | None = None, identity: dict[str, Any] | None = None,
            conn: psycopg.Connection | None = None) -> dict[str, Any]:
    """Approve ``gate``: record the approval and move the state one step forward, then publish.

    The gate is always evaluated again inside the approval's own transaction, from the same snapshot
    as the state it moves, so an approval rests on the evidence as it is when it is recorded, not on
    an evaluation made before a person took hours to answer. The approval is recorded only when every
    criterion of that fresh evaluation passes, or with ``override_reason`` (recorded as an
    ``override`` event naming the failing criteria), and only when the audit trail checks out (inside
    the database and, with ``[gates] chain_parameter``, against its published head).

    Who approves: ``by`` is the name the caller asserts; ``identity`` is who the caller was
    authenticated as (:mod:`reconcile.gates.approver`: the CLI passes the AWS STS caller, the Airflow
    approval step its responder), recorded with the approval. With ``[gates] two_person`` the first
    approval is recorded as pending and a second approver makes the transition; the rule compares
    authenticated identities (their principals): an approval without one is refused, two names with
    one identity are one person, and so are two names that match case-folded.

    ``evaluation`` is what the approver was shown. Its hash is recorded next to the fresh one
    (``seen_evidence_hash``, ``evidence_hash``), with ``evidence_changed`` (the two differ in a
    criterion's verdict or values, timestamps and ages aside: :attr:`Evaluation.substance`), the
    criteria that changed (``changed_criteria``) and those whose verdict flipped (``verdict_changed``).
    A change alone does not refuse: what decides is the fresh verdict.

    Args:
        config: the loaded configuration.
        gate: ``read`` (shadow -> read_cutover) or ``write`` (read_cutover -> write_cutover).
        by: who approves (one line, no control characters).
        reason: why.
        override_reason: approve although criteria fail (or the trail is broken), and why.
        evaluation: the evaluation of this gate the approver was shown (an Evaluation or its ``to_dict()``).
        identity: the caller's authenticated identity (None: not authenticated).
        conn: an autocommit target connection to reuse.

    Returns:
        ``{"status": "approved" | "pending", "gate", "from", "to", "approvers", "identities", "override",
        "events", "evidence_hash", "evaluation_run_id", "seen_evidence_hash", "evidence_changed",
        "changed_criteria", "failing", "published"}``.

    Raises:
        GateRefused: a criterion fails now (named), the state does not allow this gate, the same person
            approved first, the approval is not authenticated under the two-person rule, or the audit
            trail is broken.
        GateError: ``evaluation`` is of another gate or was altered (its hash does not match), or a
            name or reason holds a control character.
        PublishFailed: the transition was made but publishing it failed (rerun ``gate publish``).
    """
    _check_gate(gate)
    if gate == "rollback":
        raise GateError("The rollback gate is passed by rolling back (`reconcile gate rollback`, "
                        "reconcile.gates.rollback_gate), not by an approval.")
    by, reason = _required(by, "--by"), _required(reason, "--reason")
    override_reason = _optional(override_reason, "--override")
    who = checked_identity(identity)
    seen = _seen(evaluation, gate)
    s = config.gates
    frm, to = _STEP[gate]
    with _target(config, conn) as c:
        pins = _pins(config)

        def transact(t: psycopg.Connection) -> dict[str, Any]:
            st = _read_state(t, cutover_key(config))
            chain = _checked_chain(t, config, pins, st["state"])
            fresh = _evaluate_in(t, config, gate, st)
            compared = _compared(seen, fresh)
            failing = fresh.failing
            chain_problem = None if chain["ok"] else chain["breaks"][0]["problem"]
            if chain_problem:
                failing += ("audit_trail",)
            overriding = bool(failing)
            if overriding and override_reason is None:
                raise _Refused(_refusal_text(gate, fresh, chain_problem, seen), failing, fresh, compared)
            if st["state"] != frm:
                hint = ("approve the read gate first" if gate == "write" and st["state"] == "shadow"
                        else "nothing to approve")
                raise _Refused(f"The {gate} gate moves {frm} to {to}, but the state is {st['state']}; {hint}.",
                               ("state",), fresh, compared)
            if s.two_person and who is None:
                raise _Refused("The two-person rule compares authenticated approvers and this approval has no "
                               "authenticated identity; approve with AWS credentials (`reconcile gate approve` "
                               "records the STS caller) or through the reconcile_cutover DAG.",
                               ("two_person",), fresh, compared)
            ev, evaluated = _evaluation_record(t, config, fresh, by)
            decision = {"event": "override" if overriding else "approval", "gate": gate, "actor": by,
                        "reason": override_reason if overriding else reason, "evidence_hash": ev.evidence_hash,
                        "run_id": ev.run_id,
                        "details": {"from": frm, "to": to, "passed": ev.passed, "failing": list(failing), **compared,
                                    "authenticated": who,
                                    **({"approval_reason": reason} if overriding else {})}}
            out = {"gate": gate, "from": frm, "to": to, "override": overriding, "evidence_hash": ev.evidence_hash,
                   "evaluation_run_id": ev.run_id, "failing": list(failing), **compared}
            approvers, identities = [by], [principal(who)]
            if s.two_person:
                pending = _fresh_pending(st, gate, frm, s)
                if pending is None:
                    written = _record_pending(t, config, st, [evaluated, decision], gate=gate, frm=frm, by=by,
                                              who=who, evidence_hash=ev.evidence_hash, override=overriding,
                                              action="approval")
                    return {**out, "status": "pending", "approvers": [by], "identities": identities,
                            "events": [w["event_id"] for w in written]}
                refusal = _second_approver_problem(pending, by, who, gate)
                if refusal:
                    raise _Refused(refusal, ("two_person",), fresh, compared)
                approvers = [pending["by"], by]
                identities = [principal(pending.get("identity")), principal(who)]
                decision["details"]["first_approval"] = pending["event_id"]
            move = {"event": "transition", "gate": gate, "actor": by, "reason": reason,
                    "evidence_hash": ev.evidence_hash, "run_id": ev.run_id,
                    "details": {"from": frm, "to": to, "version": st["version"] + 1, "approvers": approvers,
                                "approver_identities": identities, "override": overriding}}
            written = trail.append(t, [evaluated, decision, move])
            if t.execute(_MOVE_STATE, (to, by, reason, written[-1]["event_id"], cutover_key(config), st["version"])
                         ).rowcount != 1:
                raise GateError("The cutover state changed during the approval; run the command again.")
            return {**out, "status": "approved", "approvers": approvers, "identities": identities,
                    "events": [w["event_id"] for w in written]}

        try:
            result = _tx(c, config, transact, f"approve {gate} gate")
        except _Refused as refusal:
            raise _record_refusal(c, config, gate=gate, by=by, reason=reason, action=f"approve {gate}",
                                  refusal=refusal, identity=who) from None
        if result["status"] == "approved":
            result["published"] = _publish(c, config, actor=by, after=f"approved the {gate} gate ({frm} -> {to})")
        else:
            result["pinned"] = _pin(c, config)
        return result


def _fresh_pending(st: dict[str, Any], gate: str, frm: str, s: Any) -> dict[str, Any] | None:
    """The state's pending first approval of ``gate`` from ``frm`` when it still counts: fresh (within
    ``approval_ttl_hours``) and authenticated (one recorded before approvals were authenticated is replaced)."""
    pending = st["pending"]
    now = dt.datetime.now(dt.timezone.utc)
    if pending is not None and pending.get("gate") == gate and pending.get("from") == frm \
            and now - dt.datetime.fromisoformat(pending["at"]) <= dt.timedelta(hours=s.approval_ttl_hours) \
            and pending.get("identity") is not None:
        return pending
    return None


def _record_pending(t: psycopg.Connection, config: Any, st: dict[str, Any], events: list[dict[str, Any]], *,
                    gate: str, frm: str, by: str, who: dict[str, Any] | None, evidence_hash: str, override: bool,
                    action: str) -> list[dict[str, Any]]:
    """The first of two approvals (two-person rule): its events, the last one marked as awaiting a second
    approver, appended to the trail, and the pending approval stored on the state (which does not move).
    Returns the written events."""
    events[-1]["details"]["awaiting"] = "a second, different approver"
    written = trail.append(t, events)
    doc = {"gate": gate, "from": frm, "by": by, "identity": who, "at": iso(dt.datetime.now(dt.timezone.utc)),
           "event_id": written[-1]["event_id"], "evidence_hash": evidence_hash, "override": override}
    if t.execute(_SET_PENDING, (canonical(doc), cutover_key(config), st["version"])).rowcount != 1:
        raise GateError(f"The cutover state changed during the {action}; run the command again.")
    return written


def _second_approver_problem(pending: dict[str, Any], by: str, who: dict[str, Any] | None,
                             gate: str) -> str | None:
    """Why ``by`` (authenticated as ``who``) cannot be the second approver after ``pending``; None when fine."""
    first = pending["identity"]
    if same_person(pending["by"], by):
        return f"The two-person rule needs a second, different approver: {pending['by']} approved the {gate} gate already."
    if who is None or first.get("kind") != who.get("kind"):
        return (f"The first approval was authenticated by {first.get('kind')} and this one by "
                f"{(who or {}).get('kind')}, which cannot be told apart as two people; approve the same way the "
                "first approver did.")
    if principal(first) == principal(who):
        return (f"The two-person rule needs a second, different approver: {pending['by']} and {by} are one "
                f"authenticated identity ({principal(who)}).")
    return None


# --- rollback ---------------------------------------------------------------------------------


def _rollback_refusal(ev: Evaluation) -> str:
    """One sentence: the failing rollback criteria and what to run."""
    n = len(ev.failing)
    todo = "; ".join(HINTS.get(name, f"fix {name}") for name in ev.failing)
    return (f"Rolling back from write_cutover would lose writes made on the target: "
            f"{n} rollback {'criterion fails' if n == 1 else 'criteria fail'} ({', '.join(ev.failing)}); {todo}; "
            "then roll back again, or with --override REASON (`reconcile gate status` shows the evidence).")


def rollback(config: Any, *, by: str, reason: str, override_reason: str | None = None,
             identity: dict[str, Any] | None = None, evaluation: Evaluation | dict[str, Any] | None = None,
             conn: psycopg.Connection | None = None) -> dict[str, Any]:
    """Move the state one step back, record it, then publish.

    From ``write_cutover`` the target has been the system of record: the rollback gate
    (:mod:`reconcile.gates.rollback_gate`: ``reverse_replay_lag``, ``reverse_reconciliation_green``,
    ``reverse_dead_letters``) is evaluated again inside the rollback's own transaction, recorded (a 'gate'
    run and an ``evaluation`` event) and the ``rollback`` event carries its evidence hash. It proceeds when
    every criterion passes; otherwise it is refused (recorded, naming the failing criteria and what to run)
    unless ``override_reason`` is given (an ``override`` event naming them: the break-glass). From
    ``read_cutover`` no evidence is needed. A broken audit trail does not block a rollback (the safe
    direction); it does block approvals.

    ``evaluation``: the rollback gate's evaluation the person was shown (its hash is recorded next to the
    fresh one, as for approvals).

    With ``[gates] two_person`` the rollback from ``write_cutover`` (the system of record moves back) needs
    two authenticated people, as the approvals do: the first is recorded as pending (``status: "pending"``,
    the state stays) and a second, different identity makes the rollback. The rollback from
    ``read_cutover`` (the source never stopped being the system of record) stays one person's call.

    Returns:
        ``{"status": "rolled_back" | "pending", "from", "to", "override", "approvers", "identities", "events",
        "published"}`` and, from
        write_cutover, ``"evidence_hash"``, ``"evaluation_run_id"``, ``"failing"``, ``"seen_evidence_hash"``.

    Raises:
        GateRefused: the state is ``shadow``, or ``write_cutover`` while a rollback criterion fails and
            no override is given, or (two-person rule) the rollback is not authenticated or its second
            approver is the first one.
    """
    by, reason = _required(by, "--by"), _required(reason, "--reason")
    override_reason = _optional(override_reason, "--override")
    who = checked_identity(identity)
    seen = _seen(evaluation, "rollback")
    s = config.gates
    with _target(config, conn) as c:
        def transact(t: psycopg.Connection) -> dict[str, Any]:
            st = _read_state(t, cutover_key(config))
            frm = st["state"]
            if frm not in _BACK:
                raise _Refused(f"The state is {frm}; there is nothing to roll back.", ("state",))
            to = _BACK[frm]
            gate = "rollback" if frm == "write_cutover" else "read"
            events: list[dict[str, Any]] = []
            out: dict[str, Any] = {}
            ev = None
            approvers, identities, first_approval = [by], [principal(who)], None
            if frm == "write_cutover":
                fresh = _evaluate_in(t, config, "rollback", st)
                compared = _compared(seen, fresh)
                if not fresh.passed and override_reason is None:
                    raise _Refused(_rollback_refusal(fresh), fresh.failing, fresh, compared)
                ev, evaluated = _evaluation_record(t, config, fresh, by)
                events.append(evaluated)
                out = {"evidence_hash": ev.evidence_hash, "evaluation_run_id": ev.run_id,
                       "failing": list(ev.failing), **compared}
                if not ev.passed:
                    events.append({"event": "override", "gate": gate, "actor": by, "reason": override_reason,
                                   "evidence_hash": ev.evidence_hash, "run_id": ev.run_id,
                                   "details": {"action": "rollback", "from": frm, "to": to, "rollback_reason": reason,
                                               "failing": list(ev.failing), "authenticated": who, **compared}})
                if s.two_person:
                    if who is None:
                        raise _Refused("The two-person rule compares authenticated approvers and this rollback has no "
                                       "authenticated identity; roll back with AWS credentials (`reconcile gate "
                                       "rollback` records the STS caller) or through the reconcile_cutover DAG.",
                                       ("two_person",), fresh, compared)
                    pending = _fresh_pending(st, "rollback", frm, s)
                    if pending is None:  # the first of two: recorded, the state stays
                        if ev.passed:
                            events.append({"event": "approval", "gate": gate, "actor": by, "reason": reason,
                                           "evidence_hash": ev.evidence_hash, "run_id": ev.run_id,
                                           "details": {"action": "rollback", "from": frm, "to": to, "passed": True,
                                                       "failing": [], "authenticated": who, **compared}})
                        written = _record_pending(t, config, st, events, gate=gate, frm=frm, by=by, who=who,
                                                  evidence_hash=ev.evidence_hash, override=not ev.passed,
                                                  action="rollback")
                        return {"status": "pending", "gate": gate, "from": frm, "to": to, "override": not ev.passed,
                                **out, "approvers": [by], "identities": [principal(who)],
                                "events": [w["event_id"] for w in written]}
                    refusal = _second_approver_problem(pending, by, who, gate)
                    if refusal:
                        raise _Refused(refusal, ("two_person",), fresh, compared)
                    approvers, identities = [pending["by"], by], [principal(pending.get("identity")), principal(who)]
                    first_approval = pending["event_id"]
            overriding = ev is not None and not ev.passed
            events.append({"event": "rollback", "gate": gate, "actor": by, "reason": reason,
                           "evidence_hash": ev.evidence_hash if ev is not None else None,
                           "run_id": ev.run_id if ev is not None else None,
                           "details": {"from": frm, "to": to, "version": st["version"] + 1,
                                       "override": overriding, "authenticated": who, "approvers": approvers,
                                       "approver_identities": identities,
                                       **({"first_approval": first_approval} if first_approval else {}),
                                       **({"passed": ev.passed, "failing": list(ev.failing)} if ev else {})}})
            written = trail.append(t, events)
            if t.execute(_MOVE_STATE, (to, by, reason, written[-1]["event_id"], cutover_key(config), st["version"])
                         ).rowcount != 1:
                raise GateError("The cutover state changed during the rollback; run the command again.")
            return {"status": "rolled_back", "gate": gate, "from": frm, "to": to, "override": overriding, **out,
                    "approvers": approvers, "identities": identities, "events": [w["event_id"] for w in written]}

        try:
            result = _tx(c, config, transact, "gate rollback")
        except _Refused as refusal:
            raise _record_refusal(c, config, gate="rollback" if refusal.evaluation is not None else None, by=by,
                                  reason=reason, action="rollback", refusal=refusal, identity=who) from None
        if result["status"] == "pending":
            result["pinned"] = _pin(c, config)
            return result
        result["published"] = _publish(c, config, actor=by, after=f"rolled back ({result['from']} -> {result['to']})")
        return result


# --- acknowledge ------------------------------------------------------------------------------


def acknowledge(config: Any, finding_id: str, *, by: str, reason: str, identity: dict[str, Any] | None = None,
                conn: psycopg.Connection | None = None) -> dict[str, Any]:
    """Acknowledge an audit finding (the write gate needs every must-change finding acknowledged).

    Insert-only: a finding acknowledged already stays as first acknowledged (``status: "already"``).

    Raises:
        GateError: the latest audit run has no such finding.
    """
    finding_id = _required(finding_id, "FINDING")
    by, reason = _required(by, "--by"), _required(reason, "--reason")
    who = checked_identity(identity)
    acks, findings = ident("gate_acknowledgements"), ident("audit_findings")
    with _target(config, conn) as c:
        def transact(t: psycopg.Connection) -> dict[str, Any]:
            latest = latest_audit_run(t, EvidenceScope.of(config))
            row = None if latest is None else t.execute(sql.SQL(
                "SELECT run_id, severity FROM {} WHERE finding_id = %s AND run_id = %s").format(findings),
                (finding_id, latest[0])).fetchone()
            if row is None:
                raise GateError(f"The latest audit run of this migration has no finding {finding_id!r}; copy the id "
                                "(code:object) from `reconcile audit` or `reconcile gate status`.")
            if row[1] == "blocker":
                raise GateError(f"{finding_id} is a blocker: acknowledging does not clear it; retire it on evidence "
                                "(`reconcile gate retire FINDING --by --reason`) when it has a replacement.")
            old = t.execute(sql.SQL("SELECT acknowledged_by, acknowledged_at FROM {} WHERE finding_id = %s").format(
                acks), (finding_id,)).fetchone()
            if old is not None:
                return {"status": "already", "finding_id": finding_id, "acknowledged_by": old[0],
                        "acknowledged_at": iso(old[1])}
            (written,) = trail.append(t, [{"event": "acknowledgement", "gate": "write", "actor": by, "reason": reason,
                                           "details": {"finding_id": finding_id, "severity": row[1],
                                                       "audit_run": str(row[0]), "authenticated": who}}])
            t.execute(sql.SQL("INSERT INTO {} (finding_id, audit_run_id, severity, acknowledged_by, reason, "
                              "acknowledged_at, event_id) VALUES (%s, %s, %s, %s, %s, now(), %s) "
                              "ON CONFLICT (finding_id) DO NOTHING").format(acks),
                      (finding_id, row[0], row[1], by, reason, written["event_id"]))
            return {"status": "acknowledged", "finding_id": finding_id, "severity": row[1], "acknowledged_by": by,
                    "event": written["event_id"]}

        result = _tx(c, config, transact, "finding acknowledgement")
        if result["status"] == "acknowledged":
            result["pinned"] = _pin(c, config)
        return result


# --- retire -----------------------------------------------------------------------------------


def retire(config: Any, finding_id: str, *, by: str, reason: str, identity: dict[str, Any] | None = None,
           conn: psycopg.Connection | None = None) -> dict[str, Any]:
    """Retire an audit blocker on evidence: its replacement expectation has been green (:mod:`reconcile.gates.retirement`).

    Accepted when the blocker (of the latest audit run of this migration) has a replacement the audit derived
    and that expectation passed on the target in every check run of the streak window (at least one);
    recorded as a ``retirement`` event (with the expectation and the vouching check runs) and a
    ``gate_acknowledgements`` row. The ``audit_blockers`` criterion then stops counting the blocker for as long
    as the replacement stays green. Insert-only: a blocker retired already stays as first retired
    (``status: "already"``).

    Returns:
        ``{"status": "retired" | "already", "finding_id", "retired_by", "replacement", "vouching_check_runs",
        "event"}``.

    Raises:
        GateError: the latest audit run has no such finding, or it is not a blocker.
        GateRefused: the blocker has no replacement, or its replacement has not been green (recorded).
    """
    from reconcile.gates.retirement import replacement, vouching

    finding_id = _required(finding_id, "FINDING")
    by, reason = _required(by, "--by"), _required(reason, "--reason")
    who = checked_identity(identity)
    acks, findings = ident("gate_acknowledgements"), ident("audit_findings")
    scope = EvidenceScope.of(config)
    with _target(config, conn) as c:
        def transact(t: psycopg.Connection) -> dict[str, Any]:
            latest = latest_audit_run(t, scope)
            row = None if latest is None else t.execute(sql.SQL(
                "SELECT run_id, severity, details FROM {} WHERE finding_id = %s AND run_id = %s").format(findings),
                (finding_id, latest[0])).fetchone()
            if row is None:
                raise GateError(f"The latest audit run of this migration has no finding {finding_id!r}; copy the id "
                                "(code:object) from `reconcile audit` or `reconcile gate status`.")
            if row[1] != "blocker":
                raise GateError(f"{finding_id} is a {row[1]} finding, not a blocker; acknowledge it instead "
                                "(`reconcile gate acknowledge`).")
            old = t.execute(sql.SQL("SELECT acknowledged_by, acknowledged_at FROM {} WHERE finding_id = %s").format(
                acks), (finding_id,)).fetchone()
            if old is not None:
                return {"status": "already", "finding_id": finding_id, "retired_by": old[0],
                        "retired_at": iso(old[1])}
            repl = replacement(row[2], scope)
            if repl is None:
                raise _Refused(f"{finding_id} has no replacement the audit derived (no invariant an expectation "
                               "checks), so no evidence can retire it; fix it on the source, or pass the gate with "
                               "--override REASON.", ("replacement",))
            (now,) = t.execute("SELECT now()").fetchone()
            proof = vouching(t, scope, config.gates, now, repl)
            if not proof["green"]:
                raise _Refused(f"{finding_id} cannot be retired yet: its replacement {proof['expectation']} has not "
                               f"been green ({proof['reason']}); run `reconcile check` until it is, then retire it.",
                               ("replacement_green",), details={"finding_id": finding_id, "replacement": repl,
                                                                "check_runs": proof["runs"]})
            vouch = [r["run_id"] for r in proof["runs"]]
            (written,) = trail.append(t, [{"event": "retirement", "gate": None, "actor": by, "reason": reason,
                                           "details": {"finding_id": finding_id, "severity": "blocker",
                                                       "audit_run": str(row[0]), "replacement": repl,
                                                       "window_hours": proof["window_hours"],
                                                       "vouching_check_runs": vouch, "authenticated": who}}])
            t.execute(sql.SQL("INSERT INTO {} (finding_id, audit_run_id, severity, acknowledged_by, reason, "
                              "acknowledged_at, event_id) VALUES (%s, %s, 'blocker', %s, %s, now(), %s) "
                              "ON CONFLICT (finding_id) DO NOTHING").format(acks),
                      (finding_id, row[0], by, reason, written["event_id"]))
            return {"status": "retired", "finding_id": finding_id, "retired_by": by, "replacement": repl,
                    "vouching_check_runs": vouch, "event": written["event_id"]}

        try:
            result = _tx(c, config, transact, "blocker retirement")
        except _Refused as refusal:
            raise _record_refusal(c, config, gate=None, by=by, reason=reason, action=f"retire {finding_id}",
                                  refusal=refusal, identity=who) from None
        if result["status"] == "retired":
            result["pinned"] = _pin(c, config)
        return jsonable(result)


# --- publish ----------------------------------------------------------------------------------


def _publish(c: psycopg.Connection, config: Any, *, actor: str | None, after: str | None = None) -> dict[str, Any]:
    s = config.gates
    for _ in range(5):
        st = _tx(c, config, lambda t: _read_state(t, cutover_key(config)), "gate state read", writes=False)
        ssm = None
        try:
            if s.ssm_parameter:
                ssm = publish_ssm(s.ssm_parameter, st["state"], resolve_region(config))
        except PublishFailed as exc:
            if after is None:
                raise
            raise PublishFailed(f"The gate {after}, but publishing failed: {exc.message}") from None

        def write(t: psycopg.Connection) -> dict[str, Any] | None:
            now = _read_state(t, cutover_key(config))
            if now["version"] != st["version"]:
                return None  # the state moved meanwhile: publish the new one
            control = (now["published_state"], now["published_version"]) != (now["state"], now["version"])
            if control:
                t.execute(_SET_PUBLISHED, (cutover_key(config), now["version"]))
            out = {"state": now["state"], "version": now["version"], "control_changed": control,
                   "ssm": ssm, "changed": control or bool(ssm and ssm["changed"])}
            if out["changed"]:
                head = t.execute(sql.SQL("SELECT seq, head_hash FROM {} WHERE chain = %s").format(
                    ident("gate_chain")), (trail.CHAIN,)).fetchone()
                (written,) = trail.append(t, [{"event": "publish", "actor": actor, "reason": after,
                                               "details": {**out, "chain_head": {"seq": head[0], "hash": head[1]}}}])
                out["event"] = written["event_id"]
            return out

        result = _tx(c, config, write, "gate publish")
        if result is not None:
            try:
                result["chain_head"] = _pin(c, config, strict=True)
            except PublishFailed as exc:
                if after is None:
                    raise
                raise PublishFailed(f"The gate {after}, but publishing failed: {exc.message}") from None
            return jsonable(result)
    raise GateError("The cutover state kept changing while it was being published; run `reconcile gate publish`.")


def publish(config: Any, *, actor: str | None = None, conn: psycopg.Connection | None = None) -> dict[str, Any]:
    """Publish the current state: the control table (``published_state``) and, when ``[gates] ssm_parameter``
    is set, the SSM parameter; then, when ``[gates] chain_parameter`` is set, the audit trail's chain head
    (pinning events whose own publish failed). Idempotent: writes (and records a ``publish`` event) only
    what differs.

    Returns:
        ``{"state", "version", "control_changed", "ssm": {...} | None, "changed", "event"?, "chain_head"}``.

    Raises:
        PublishFailed: SSM refused or could not be reached.
    """
    with _target(config, conn) as c:
        return _publish(c, config, actor=actor)


# --- read-only views --------------------------------------------------------------------------


def current_state(config: Any, *, conn: psycopg.Connection | None = None) -> str:
    """``shadow``, ``read_cutover`` or ``write_cutover``."""
    with _target(config, conn) as c:
        return _tx(c, config, lambda t: _read_state(t, cutover_key(config)), "gate state read", writes=False)["state"]


def gate_status(config: Any, *, conn: psycopg.Connection | None = None) -> dict[str, Any]:
    """The current state, the trail check, and every criterion of the next gate(s) with its evidence.

    Nothing is recorded. Returns ``{"state", "version", "entered_at", "changed_by", "reason", "pending",
    "published", "next_gates", "gates": {gate: evaluation dict}, "chain": {"ok", "breaks", ...}}``.
    """
    with _target(config, conn) as c:
        pins = _pins(config)

        def read(t: psycopg.Connection) -> tuple[dict[str, Any], dict[str, Any]]:
            st = _read_state(t, cutover_key(config))
            return st, _checked_chain(t, config, pins, st["state"])

        st, chain = _tx(c, config, read, "gate status", writes=False)
        gates = {g: _evaluate(c, config, g).to_dict() for g in _NEXT_GATES[st["state"]]}
    return jsonable({
        "migration": migration_of(config).describe(),
        "state": st["state"], "version": st["version"], "entered_at": st["entered_at"],
        "changed_by": st["changed_by"], "reason": st["reason"], "pending": st["pending"],
        "published": {"state": st["published_state"], "version": st["published_version"], "at": st["published_at"],
                      "ssm_parameter": config.gates.ssm_parameter},
        "next_gates": list(_NEXT_GATES[st["state"]]), "gates": gates, "chain": chain,
    })


def history(config: Any, *, limit: int | None = None, conn: psycopg.Connection | None = None) -> dict[str, Any]:
    """The audit trail, oldest first (the last ``limit`` events), and the chain check over all of it: inside
    the database and, with ``[gates] chain_parameter``, against every chain head published outside it
    (``chain["pinned"]``: how many, the latest pinned event, events not pinned yet)."""
    with _target(config, conn) as c:
        pins = _pins(config)

        def read(t: psycopg.Connection) -> tuple[list[dict[str, Any]], dict[str, Any]]:
            events = trail.read_events(t)
            return events, _checked_chain(t, config, pins, _read_state(t, cutover_key(config))["state"], events)

        events, chain = _tx(c, config, read, "gate history", writes=False)
    shown = events[-limit:] if limit else events
    return {"chain": jsonable(chain), "events": [trail.public(e) for e in shown]}
