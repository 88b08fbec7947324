"""The pipeline's own state on the target: the ``reconcile`` schema and its migrations.

Tables (see :mod:`reconcile.control.migrations` for their columns): ``runs``, ``chunks`` (backfill
checkpoints), ``replay_state`` (the replay watermark), ``dead_letters``, ``rejects``,
``audit_events`` (the gate trail) and ``schema_migrations`` (which steps have run).
Control writes obey the same budget and retry rules as data writes (:mod:`reconcile.budget`,
:mod:`reconcile.occ`).
"""

from reconcile.control.migrations import (
    BOOKKEEPING_TABLE,
    DIALECTS,
    MIGRATIONS,
    SCHEMA,
    Migration,
    applied_versions,
    create_index,
    current_version,
    ident,
    migrate,
    pending,
    register,
    register_index,
    render,
)

__all__ = [
    "BOOKKEEPING_TABLE",
    "DIALECTS",
    "MIGRATIONS",
    "SCHEMA",
    "Migration",
    "applied_versions",
    "create_index",
    "current_version",
    "ident",
    "migrate",
    "pending",
    "register",
    "register_index",
    "render",
]
