"""Control-schema steps of the cutover gate stage (versions 750-799).

Imported by :mod:`reconcile.control`, so these steps are part of every ``migrate``. One DDL
statement per step (``table_step``, ``register_index``, or an ``ALTER TABLE ... ADD COLUMN``
without inline DEFAULT/NOT NULL); never renumber a shipped step.

Tables:

* ``gate_state``: one row per migration (key: :func:`reconcile.identity.cutover_key`): the current state (``shadow``,
  ``read_cutover``, ``write_cutover``), a version bumped by every write (the optimistic-concurrency
  guard), when it was entered and by whom, a pending first approval (JSON, two-person rule), and
  what was last published (``published_state``/``published_version``: where applications read).
* ``gate_chain``: one row keyed by a constant (``'audit_events'``): the head of the hash chain over
  ``audit_events`` (last sequence number and hash). Every append updates it in the same
  transaction, so two concurrent appends conflict (40001) instead of forking the chain.
* ``gate_acknowledgements``: must-change audit findings a person acknowledged before the write gate
  (the audit tables have no acknowledgement of their own). Insert-only.
* ``audit_events`` (core step 8) gains ``seq``, ``reason``, ``evidence_hash``, ``prev_hash`` and
  ``event_hash``: the tamper-evident chain (see :mod:`reconcile.gates.trail`).
"""

from __future__ import annotations

from psycopg import sql

from reconcile.control.migrations import Migration, ident, register, register_index, table_step

register(table_step(750, "gate state", "gate_state", """
    gate_key text PRIMARY KEY,
    state text NOT NULL,
    version bigint NOT NULL,
    entered_at timestamptz NOT NULL,
    changed_by text,
    reason text,
    last_event_id uuid,
    pending text,
    published_state text,
    published_version bigint,
    published_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()"""))

register(table_step(751, "gate chain head", "gate_chain", """
    chain text PRIMARY KEY,
    seq bigint NOT NULL,
    head_hash text NOT NULL,
    head_event_id uuid,
    updated_at timestamptz NOT NULL DEFAULT now()"""))

register(table_step(752, "gate acknowledgements", "gate_acknowledgements", """
    finding_id text PRIMARY KEY,
    audit_run_id uuid,
    severity text,
    acknowledged_by text NOT NULL,
    reason text NOT NULL,
    acknowledged_at timestamptz NOT NULL,
    event_id uuid"""))


def _add_column(version: int, column: str, type_: str) -> Migration:
    return Migration(version, f"audit_events.{column}", sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
        ident("audit_events"), sql.Identifier(column), sql.SQL(type_)))  # type: ignore[arg-type]


register(_add_column(753, "seq", "bigint"))
register(_add_column(754, "reason", "text"))
register(_add_column(755, "evidence_hash", "text"))
register(_add_column(756, "prev_hash", "text"))
register(_add_column(757, "event_hash", "text"))

# One event per chain position: a second writer that slipped past the head row would fail here.
register_index(758, "audit events by chain position", table="audit_events", index="audit_events_seq_idx",
               columns=["seq"], unique=True)
