"""The gate audit trail: ``reconcile.audit_events`` as an append-only, hash-chained log.

Every gate event (evaluation, approval, override, transition, rollback, refusal, acknowledgement,
publish) is one row: who (``actor``), when (``occurred_at``), why (``reason``), what (``event``,
``gate``, ``details`` as canonical JSON) and the hash of the evidence it rests on
(``evidence_hash``). Rows carry a sequence number ``seq`` (1, 2, ...), the previous row's hash
(``prev_hash``; 64 zeros for the first) and their own ``event_hash``: the SHA-256 of the canonical
JSON of every other field. Changing, removing or inserting a row breaks the chain, and
:func:`verify` says where.

Appending never forks the chain: the head (last ``seq`` and hash) lives in ``reconcile.gate_chain``
and every append updates it in the same transaction as the insert. Two concurrent appends both
write the head row, so the later commit fails with 40001 (DSQL's OCC; the local stand-in's
REPEATABLE READ) and :func:`reconcile.occ.run_with_retry` runs it again on the new head; a unique
index on ``seq`` backs this up.

This module holds every statement that touches ``audit_events``, and they are INSERT and SELECT
only: the tool has no path that updates or deletes the trail (DSQL has no triggers to forbid it
server-side; the chain makes any such change visible instead). The hash chain alone is tamper-evident,
not tamper-proof: someone able to rewrite every row and the head consistently could forge it. So the
head is also published outside the database after every event (:mod:`reconcile.gates.pin`, ``[gates]
chain_parameter``), and the gate checks the trail against every head published there.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import psycopg
from psycopg import sql

from reconcile.control import ident
from reconcile.gates.errors import GateError
from reconcile.gates.evidence import canonical, iso, jsonable, sha256_hex

__all__ = ["CHAIN", "GENESIS", "append", "ensure_head", "event_hash", "read_events", "verify"]

CHAIN = "audit_events"
GENESIS = "0" * 64
"""``prev_hash`` of the first event."""

_COLUMNS = ("event_id", "seq", "occurred_at", "gate", "event", "actor", "run_id", "reason", "details",
            "evidence_hash", "prev_hash", "event_hash")

_INSERT = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
    ident("audit_events"), sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)),
    sql.SQL(", ").join([sql.Placeholder()] * len(_COLUMNS)))
_SELECT = sql.SQL("SELECT {} FROM {} ORDER BY seq NULLS FIRST, occurred_at, event_id").format(
    sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)), ident("audit_events"))
_HEAD = sql.SQL("SELECT seq, head_hash FROM {} WHERE chain = %s").format(ident("gate_chain"))
_HEAD_INIT = sql.SQL("INSERT INTO {} (chain, seq, head_hash) VALUES (%s, 0, %s) ON CONFLICT (chain) DO NOTHING"
                     ).format(ident("gate_chain"))
_HEAD_MOVE = sql.SQL("UPDATE {} SET seq = %s, head_hash = %s, head_event_id = %s, updated_at = now() "
                     "WHERE chain = %s AND seq = %s").format(ident("gate_chain"))

_HASHED = ("seq", "event_id", "occurred_at", "gate", "event", "actor", "run_id", "reason", "details",
           "evidence_hash", "prev_hash")


def event_hash(row: dict[str, Any]) -> str:
    """The hash of one event: SHA-256 of the canonical JSON of its fields (``event_hash`` left out)."""
    doc = {k: row.get(k) for k in _HASHED}
    doc["occurred_at"] = iso(row["occurred_at"]) if isinstance(row.get("occurred_at"), dt.datetime) \
        else row.get("occurred_at")
    doc["event_id"] = str(row["event_id"])
    doc["run_id"] = None if row.get("run_id") is None else str(row["run_id"])
    return sha256_hex(canonical(doc))


def ensure_head(conn: psycopg.Connection) -> None:
    """Inside a transaction: create the chain head (seq 0) if it does not exist yet."""
    conn.execute(_HEAD_INIT, (CHAIN, GENESIS))


def append(conn: psycopg.Connection, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Inside the caller's transaction: append ``events`` to the chain, in order.

    Each event is a dict with ``event`` and optionally ``gate``, ``actor``, ``run_id``, ``reason``,
    ``details`` (any JSON-able value) and ``evidence_hash``. Call from within a
    :func:`reconcile.occ.run_with_retry` transaction: a concurrent append makes it fail with 40001
    and run again.

    Returns:
        The rows written (with ``event_id``, ``seq``, ``occurred_at``, ``prev_hash``, ``event_hash``).
    """
    head = conn.execute(_HEAD, (CHAIN,)).fetchone()
    if head is None:
        raise GateError("The audit chain head (reconcile.gate_chain) is missing; run any `reconcile gate` "
                        "command once to create it, then retry.")
    seq0, prev = head
    seq = seq0
    now = dt.datetime.now(dt.timezone.utc)
    written = []
    for e in events:
        seq += 1
        row = {
            "event_id": str(uuid.uuid4()), "seq": seq, "occurred_at": now, "gate": e.get("gate"),
            "event": e["event"], "actor": e.get("actor"),
            "run_id": None if e.get("run_id") is None else str(e["run_id"]), "reason": e.get("reason"),
            "details": canonical(e.get("details") or {}), "evidence_hash": e.get("evidence_hash"),
            "prev_hash": prev,
        }
        row["event_hash"] = prev = event_hash(row)
        written.append(row)
    if not written:
        return written
    # Move the head first: a concurrent append that committed meanwhile makes this UPDATE fail with
    # 40001 (retried), where an INSERT of the same seq would fail with a unique violation (not retried).
    moved = conn.execute(_HEAD_MOVE, (seq, prev, written[-1]["event_id"], CHAIN, seq0)).rowcount
    if moved != 1:
        raise GateError("The audit chain head moved during the append; retry the command.")
    for row in written:
        conn.execute(_INSERT, tuple(row[c] for c in _COLUMNS))
    return written


def read_events(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every row of ``audit_events``, in chain order (rows outside the chain first)."""
    cur = conn.execute(_SELECT)
    return [dict(zip(_COLUMNS, r)) for r in cur.fetchall()]


def public(row: dict[str, Any]) -> dict[str, Any]:
    """An event as plain JSON (details parsed back into a value)."""
    out = jsonable(row)
    try:
        out["details"] = json.loads(row["details"]) if row.get("details") else None
    except ValueError:
        pass
    return out


def verify(conn: psycopg.Connection, events: list[dict[str, Any]] | None = None,
           state: str | None = None) -> dict[str, Any]:
    """Check the whole chain (and, given the current ``state``, that it matches the last transition).

    Returns:
        ``{"ok", "events", "head_seq", "breaks": [{"seq", "event_id", "problem"}]}``; ``ok`` is
        false when any row was changed, removed or inserted outside the tool.
    """
    rows = read_events(conn) if events is None else events
    head = conn.execute(_HEAD, (CHAIN,)).fetchone()
    breaks: list[dict[str, Any]] = []

    def broken(row: dict[str, Any] | None, problem: str) -> None:
        breaks.append({"seq": row.get("seq") if row else None,
                       "event_id": str(row["event_id"]) if row else None, "problem": problem})

    expected, prev = 1, GENESIS
    last_state_change: dict[str, Any] | None = None
    for row in rows:
        if row["seq"] is None:
            broken(row, "written outside the gate tool: it has no place in the chain")
            continue
        if row["seq"] != expected:
            broken(row, f"sequence jumps from {expected - 1} to {row['seq']}: events were removed")
            expected = row["seq"]
        if row["prev_hash"] != prev:
            broken(row, f"prev_hash does not match the hash of event {expected - 1}")
        if event_hash(row) != row["event_hash"]:
            broken(row, "its contents were changed after it was written (hash mismatch)")
        prev, expected = row["event_hash"], expected + 1
        if row["event"] in ("transition", "rollback"):
            last_state_change = row
    head_seq, head_hash = head if head else (0, GENESIS)
    if head_seq != expected - 1 or head_hash != prev:
        broken(None, f"the chain head records event {head_seq} but the trail ends at event {expected - 1}: "
                     "events were removed or added at the end")
    if state is not None:
        recorded = "shadow"
        if last_state_change is not None:
            try:
                recorded = json.loads(last_state_change["details"])["to"]
            except (ValueError, KeyError, TypeError):
                recorded = None
        if recorded != state:
            broken(last_state_change, f"the state table says {state!r} but the trail's last transition leads to "
                                      f"{recorded!r}: the state was changed outside the gate tool")
    return {"ok": not breaks, "events": len(rows), "head_seq": head_seq, "head_hash": head_hash, "breaks": breaks}
