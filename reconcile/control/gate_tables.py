"""Control-schema steps of the cutover gate stage (versions 750-799).

Imported by :mod:`reconcile.control`, so these steps are part of every ``migrate``. One DDL
statement per step (``table_step``, ``register_index``, or an ``ALTER TABLE ... ADD COLUMN``
without inline DEFAULT/NOT NULL); never renumber a shipped step.
"""

from __future__ import annotations

from reconcile.control.migrations import register, register_index, table_step  # noqa: F401
