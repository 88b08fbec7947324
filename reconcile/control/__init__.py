"""The pipeline's own state on the target: the ``reconcile`` schema and its migrations.

Tables (see :mod:`reconcile.control.migrations` for their columns): ``runs``, ``chunks`` (backfill
checkpoints), ``replay_state`` (the replay watermark), ``dead_letters``, ``rejects``,
``audit_events`` (the gate trail), ``column_plan`` (the column contract, :mod:`reconcile.schema.contract`)
and ``schema_migrations`` (which steps have run).
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

# Every stage's steps, so MIGRATIONS (and a bare migrate()) always covers the whole schema.
from reconcile.control import audit_tables as _audit_tables  # noqa: E402,F401
from reconcile.control import backfill_tables as _backfill_tables  # noqa: E402,F401
from reconcile.control import replay_tables as _replay_tables  # noqa: E402,F401
from reconcile.control import diff_tables as _diff_tables  # noqa: E402,F401
from reconcile.control import check_tables as _check_tables  # noqa: E402,F401
from reconcile.control import gate_tables as _gate_tables  # noqa: E402,F401
from reconcile.control import column_tables as _column_tables  # noqa: E402,F401
from reconcile.control import migration_tables as _migration_tables  # noqa: E402,F401
from reconcile.control import reverse_tables as _reverse_tables  # noqa: E402,F401
from reconcile.control import change_tables as _change_tables  # noqa: E402,F401
from reconcile.control import coverage_tables as _coverage_tables  # noqa: E402,F401

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
