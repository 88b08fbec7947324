"""Control tables of the audit and schema stages: audit runs, findings, invariants, sequences.

Versions 300-399 are reserved for these steps. They follow the control schema's conventions
(see :mod:`reconcile.control.migrations`): one idempotent DDL statement per step, no SERIAL, no
triggers, explicit types, JSON documents stored as text. :mod:`reconcile.control` imports this
module, so the steps are part of every :func:`reconcile.control.migrate`.
"""

from __future__ import annotations

from reconcile.control.migrations import Migration, register, table_step

__all__ = ["AUDIT_MIGRATIONS", "VERSIONS"]

VERSIONS = range(300, 400)
"""Version numbers reserved for the audit/schema stages."""

AUDIT_MIGRATIONS: tuple[Migration, ...] = (
    # One row per `reconcile audit` run: which source (fingerprint of its schema) and the verdict.
    table_step(300, "audit runs", "audit_runs", """
    run_id uuid PRIMARY KEY,
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    source_fingerprint text NOT NULL,
    source text,
    schemas text,
    checks text,
    blockers integer NOT NULL DEFAULT 0,
    must_change integer NOT NULL DEFAULT 0,
    warnings integer NOT NULL DEFAULT 0,
    infos integer NOT NULL DEFAULT 0,
    exit_code integer NOT NULL DEFAULT 0"""),
    # Every finding of a run; finding_id is code:object, stable across runs.
    table_step(301, "audit findings", "audit_findings", """
    run_id uuid NOT NULL,
    finding_no integer NOT NULL,
    finding_id text NOT NULL,
    code text NOT NULL,
    severity text NOT NULL,
    level text NOT NULL,
    object_type text NOT NULL,
    object text NOT NULL,
    message text NOT NULL,
    why text NOT NULL,
    fix text NOT NULL,
    details text,
    PRIMARY KEY (run_id, finding_no)"""),
    # Invariants the source kept by code (triggers) that the checks must now verify; the latest
    # audit or schema apply wins (upsert by name).
    table_step(302, "invariants", "invariants", """
    name text PRIMARY KEY,
    kind text NOT NULL,
    spec text NOT NULL,
    source_object text,
    run_id uuid,
    recorded_at timestamptz NOT NULL DEFAULT now()"""),
    # Source sequences behind generated keys, recorded by `schema apply`: the target's key
    # generator must start above last_value at cutover.
    table_step(303, "source sequences", "source_sequences", """
    sequence_name text PRIMARY KEY,
    table_name text,
    column_name text,
    last_value bigint,
    strategy text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()"""),
)

for _step in AUDIT_MIGRATIONS:
    register(_step)
