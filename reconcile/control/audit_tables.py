"""Control tables of the audit and schema stages: audit runs, findings, invariants, sequences.

Versions 300-399 are reserved for these steps. They follow the control schema's conventions
(see :mod:`reconcile.control.migrations`): one idempotent DDL statement per step, no SERIAL, no
triggers, explicit types, JSON documents stored as text.

How they run: :func:`ensure` migrates the control schema with the core steps *and* these, in
version order, through :func:`reconcile.control.migrate` (one DDL per transaction, bookkeeping
in ``reconcile.schema_migrations``). They are not appended to the global
:data:`reconcile.control.MIGRATIONS` on import, so importing the audit never changes what a bare
``migrate(conn)`` does; :func:`register_all` appends them there for a caller that wants one list.
"""

from __future__ import annotations

from typing import LiteralString

import psycopg
from psycopg import sql

from reconcile.control.migrations import MIGRATIONS, Dialect, Migration, ident, migrate, register
from reconcile.occ import DEFAULT_POLICY, RetryCounters, RetryPolicy

__all__ = ["AUDIT_MIGRATIONS", "VERSIONS", "all_migrations", "ensure", "register_all"]

VERSIONS = range(300, 400)
"""Version numbers reserved for the audit/schema stages."""


def _table(version: int, name: str, table: str, body: LiteralString) -> Migration:
    return Migration(version, name,
                     sql.SQL("CREATE TABLE IF NOT EXISTS {} (" + body + "\n)").format(ident(table)))


AUDIT_MIGRATIONS: tuple[Migration, ...] = (
    # One row per `reconcile audit` run: which source (fingerprint of its schema) and the verdict.
    _table(300, "audit runs", "audit_runs", """
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
    _table(301, "audit findings", "audit_findings", """
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
    _table(302, "invariants", "invariants", """
    name text PRIMARY KEY,
    kind text NOT NULL,
    spec text NOT NULL,
    source_object text,
    run_id uuid,
    recorded_at timestamptz NOT NULL DEFAULT now()"""),
    # Source sequences behind generated keys, recorded by `schema apply`: the target's key
    # generator must start above last_value at cutover.
    _table(303, "source sequences", "source_sequences", """
    sequence_name text PRIMARY KEY,
    table_name text,
    column_name text,
    last_value bigint,
    strategy text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()"""),
)


def all_migrations() -> list[Migration]:
    """The core control steps and these, each version once, in version order."""
    steps = {m.version: m for m in MIGRATIONS}
    for m in AUDIT_MIGRATIONS:
        steps.setdefault(m.version, m)
    return [steps[v] for v in sorted(steps)]


def ensure(conn: psycopg.Connection, *, dialect: Dialect = "postgres", policy: RetryPolicy = DEFAULT_POLICY,
           counters: RetryCounters | None = None) -> list[int]:
    """Bring the control schema up to date, audit tables included; returns the versions applied."""
    return migrate(conn, dialect=dialect, migrations=all_migrations(), policy=policy, counters=counters)


def register_all() -> None:
    """Append these steps to the global :data:`~reconcile.control.MIGRATIONS` (once)."""
    present = {m.version for m in MIGRATIONS}
    for m in AUDIT_MIGRATIONS:
        if m.version not in present:
            register(m)
