"""Evidence as values: criteria, evaluations and their hashes.

The hash of a piece of evidence is the SHA-256 of its canonical JSON: keys sorted, no whitespace,
UTF-8, datetimes as ISO 8601 in UTC, Decimals and UUIDs as strings. The same evidence always hashes
the same, so an approval can name the evaluation it rests on and anyone can recompute the hash
from the stored document (``reconcile.runs.summary`` of the ``gate`` run).

>>> canonical({"b": 1, "a": [True, None]})
'{"a":[true,null],"b":1}'
>>> sha256_hex("{}")[:12]
'44136fa355b3'
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from reconcile.errors import NotFound
from reconcile.gates.errors import GateError

__all__ = ["GATES", "Criterion", "Evaluation", "canonical", "iso", "jsonable", "sha256_hex", "steady"]

GATES = ("read", "write", "rollback")
"""The gates: read and write move forward, rollback moves write_cutover back to read_cutover."""


def iso(value: dt.datetime | None) -> str | None:
    """A timestamp as ISO 8601 in UTC (None stays None)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat()


def jsonable(value: Any) -> Any:
    """``value`` with every datetime, Decimal, UUID and tuple turned into plain JSON types."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dt.datetime):
        return iso(value)
    if isinstance(value, (Decimal, uuid.UUID, dt.date)):
        return str(value)
    return value


NOW_DERIVED = frozenset({"age_hours", "latest_age_hours", "held_hours"})
"""Evidence keys measured from the evaluation time: they change on every evaluation."""


def steady(value: Any) -> Any:
    """``value`` (JSON) without timestamps (keys ending in ``_at``) and ages from now (:data:`NOW_DERIVED`).

    >>> steady({"run_id": "r1", "finished_at": "2026-01-01", "age_hours": 3.2, "runs": [{"started_at": 1, "n": 2}]})
    {'run_id': 'r1', 'runs': [{'n': 2}]}
    """
    if isinstance(value, dict):
        return {k: steady(v) for k, v in value.items() if not (k.endswith("_at") or k in NOW_DERIVED)}
    if isinstance(value, list):
        return [steady(v) for v in value]
    return value


def canonical(value: Any) -> str:
    """The canonical JSON text of ``value`` (what is hashed)."""
    return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    """SHA-256 of UTF-8 text, as 64 hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Criterion:
    """One criterion of a gate: whether it passed, the evidence behind it, one sentence."""

    name: str
    passed: bool
    evidence: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": bool(self.passed), "evidence": jsonable(self.evidence),
                "message": self.message}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Criterion:
        return cls(d["name"], bool(d["passed"]), dict(d.get("evidence") or {}), d.get("message", ""))


@dataclass(frozen=True)
class Evaluation:
    """A gate's criteria evaluated at one moment against the stored history."""

    gate: str
    state: str
    """The cutover state when evaluated."""
    evaluated_at: str
    """ISO 8601 UTC (the target's clock)."""
    criteria: tuple[Criterion, ...]
    run_id: str | None = None
    """The ``reconcile.runs`` row (kind 'gate') this evaluation was recorded as, when recorded."""

    @property
    def passed(self) -> bool:
        return bool(self.criteria) and all(c.passed for c in self.criteria)

    @property
    def failing(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.criteria if not c.passed)

    @property
    def evidence(self) -> dict[str, Any]:
        """The document hashed into :attr:`evidence_hash`."""
        return {"gate": self.gate, "state": self.state, "evaluated_at": self.evaluated_at,
                "criteria": [c.to_dict() for c in self.criteria]}

    @property
    def evidence_hash(self) -> str:
        return sha256_hex(canonical(self.evidence))

    @property
    def substance(self) -> dict[str, Any]:
        """What the evidence says, without when it was read: every criterion's verdict and values, minus
        timestamps (``evaluated_at``, any ``*_at``) and ages measured from the evaluation time. Two
        evaluations of unchanged history have the same substance hours apart (their ``evidence_hash``
        differs); a new run, finding or dead letter changes it."""
        return {"gate": self.gate, "state": self.state,
                "criteria": [{"name": c.name, "passed": bool(c.passed), "evidence": steady(jsonable(c.evidence))}
                             for c in self.criteria]}

    @property
    def substance_hash(self) -> str:
        return sha256_hex(canonical(self.substance))

    def changed_criteria(self, other: Evaluation) -> list[str]:
        """Criteria of ``other`` whose verdict or values differ from this evaluation's (timestamps aside)."""
        mine = {c["name"]: c for c in self.substance["criteria"]}
        return [c["name"] for c in other.substance["criteria"] if mine.get(c["name"]) != c]

    def criterion(self, name: str) -> Criterion:
        for c in self.criteria:
            if c.name == name:
                return c
        raise NotFound(f"the {self.gate} gate has no criterion {name!r}; its criteria are "
                       f"{', '.join(c.name for c in self.criteria)}")

    def to_dict(self) -> dict[str, Any]:
        return {**self.evidence, "passed": self.passed, "failing": list(self.failing),
                "evidence_hash": self.evidence_hash, "run_id": self.run_id}

    def summary(self) -> str:
        """One line: which gate, passed or not, and the failing criteria."""
        if self.passed:
            return f"{self.gate} gate: all {len(self.criteria)} criteria pass"
        return f"{self.gate} gate: {len(self.failing)} of {len(self.criteria)} criteria fail ({', '.join(self.failing)})"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evaluation:
        """Rebuild an evaluation (e.g. passed between Airflow tasks); a stated hash must match.

        Raises:
            GateError: the document does not hash to the ``evidence_hash`` it carries.
        """
        ev = cls(d["gate"], d["state"], d["evaluated_at"], tuple(Criterion.from_dict(c) for c in d["criteria"]),
                 d.get("run_id"))
        stated = d.get("evidence_hash")
        if stated is not None and stated != ev.evidence_hash:
            raise GateError("The evaluation handed in does not match its evidence hash (it was changed after it "
                            "was made); evaluate the gate again and approve with the new evaluation.")
        return ev
