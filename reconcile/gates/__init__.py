"""Cutover gates: criteria from stored history, human approval, an append-only audit trail, publishing.

Public API (used by the Airflow cutover DAG, the demo and ``reconcile gate``; results are JSON-able):

- :func:`gate_status` ``(config) -> dict``: state, trail check, the next gate(s)' criteria with evidence.
- :func:`evaluate` ``(config, gate, *, record=True, actor=None) -> Evaluation`` (gate ``read``, ``write`` or
  ``rollback``: write_cutover -> read_cutover, :mod:`reconcile.gates.rollback_gate`).
- :func:`approve` ``(config, gate, *, by, reason, override_reason=None, evaluation=None, identity=None) -> dict``
  (``identity``: the caller's authenticated identity, :mod:`reconcile.gates.approver`).
- :func:`rollback` ``(config, *, by, reason, override_reason=None, identity=None, evaluation=None) -> dict``
  (from write_cutover only when the rollback gate passes, or with ``override_reason``).
- :func:`reject` ``(config, gate, *, by, reason, identity=None, evaluation=None) -> dict`` (a Reject, recorded).
- :func:`acknowledge` ``(config, finding_id, *, by, reason) -> dict`` (must-change findings; a blocker is retired).
- :func:`retire` ``(config, finding_id, *, by, reason, identity=None) -> dict``: retire an audit blocker whose
  replacement expectation has been green (:mod:`reconcile.gates.retirement`).
- :func:`current_state` ``(config) -> str``, :func:`publish` ``(config) -> dict``, :func:`history`.

Every function also takes ``conn=`` (an autocommit target connection to reuse). Modules: ``settings``
([gates] thresholds), ``criteria`` (what is read from the control schema, per the shared contract),
``evidence`` (Criterion, Evaluation, canonical hashing), ``trail`` (the hash-chained audit_events),
``cutover`` (the state machine), ``rollback_gate`` (the rollback gate's criteria), ``ssm`` (publishing to AWS SSM), ``approver`` (authenticated identities:
STS caller, Airflow responder), ``pin`` (the chain head published outside the database).
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use: reading the [gates] settings (reconcile.config imports reconcile.gates.settings)
# must not pull in the database driver and the control schema.
_EXPORTS = {
    "STATES": "cutover", "acknowledge": "cutover", "approve": "cutover", "current_state": "cutover",
    "evaluate": "cutover", "gate_status": "cutover", "history": "cutover", "publish": "cutover",
    "rollback": "cutover", "reject": "cutover", "retire": "cutover", "READ_CRITERIA": "criteria", "WRITE_CRITERIA": "criteria",
    "ROLLBACK_CRITERIA": "rollback_gate", "GateError": "errors",
    "GateRefused": "errors", "PublishFailed": "errors", "GATES": "evidence", "Criterion": "evidence",
    "Evaluation": "evidence", "GateSettings": "settings",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"reconcile.gates.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'reconcile.gates' has no attribute {name!r}")


__all__ = [
    "GATES",
    "READ_CRITERIA",
    "ROLLBACK_CRITERIA",
    "STATES",
    "WRITE_CRITERIA",
    "Criterion",
    "Evaluation",
    "GateError",
    "GateRefused",
    "GateSettings",
    "PublishFailed",
    "acknowledge",
    "approve",
    "current_state",
    "evaluate",
    "gate_status",
    "history",
    "publish",
    "reject",
    "retire",
    "rollback",
]
