"""Control-schema steps that tie every run to its migration (versions 900-949).

Imported by :mod:`reconcile.control`, so these steps are part of every ``migrate``. One DDL
statement per step, ``ALTER TABLE ... ADD COLUMN`` without inline DEFAULT or NOT NULL (DSQL's
rule); never renumber a shipped step.

Columns (see :mod:`reconcile.identity`):

* ``runs.migration_id``, ``audit_runs.migration_id``: the id of the migration the run belongs to
  (:func:`reconcile.identity.migration_of` the config it ran with); NULL on rows written before
  this step, which no gate counts.
* ``runs.tables``, ``audit_runs.tables``: the tables the run covered, a sorted JSON list of names.
* ``runs.direction`` (907): ``forward`` or ``reverse`` (:mod:`reconcile.direction`), diff and check runs.
* ``runs.part_of``: the run this one is a step of: the expectations ('check') run of a
  reconciliation names its diff run, so a gate counts a reconciliation only when its diff, its
  balance diff and its expectations all completed green.
"""

from __future__ import annotations

from psycopg import sql

from reconcile.control.migrations import Migration, ident, register, register_index

__all__ = ["VERSIONS"]

VERSIONS = range(900, 950)
"""Version numbers reserved for these steps."""


def _add_column(version: int, table: str, column: str, type_: str) -> Migration:
    return Migration(version, f"{table}.{column}", sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
        ident(table), sql.Identifier(column), sql.SQL(type_)))  # type: ignore[arg-type]


register(_add_column(900, "runs", "migration_id", "text"))
register(_add_column(901, "runs", "tables", "text"))
register(_add_column(902, "runs", "part_of", "uuid"))
register(_add_column(903, "audit_runs", "migration_id", "text"))
register(_add_column(904, "audit_runs", "tables", "text"))
register_index(905, "runs by migration", table="runs", index="runs_migration_kind_idx",
               columns=["migration_id", "kind", "started_at"])
register_index(906, "runs by the run they are part of", table="runs", index="runs_part_of_idx", columns=["part_of"])
register(_add_column(907, "runs", "direction", "text"))
