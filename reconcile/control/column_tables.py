"""Control table of the column contract: how every column of a replicated table travels (800-829).

``column_plan`` holds one row per source column of each planned table, written by
``reconcile schema apply`` (:func:`reconcile.schema.contract.store_contract`) and read by every stage
through :func:`reconcile.schema.contract.load_contracts`: source and target type, the named
conversion (its source read expression and replay mode are code-owned, stored here for people to
read), the diff's normalisation, and why a column is refused when the pipeline cannot carry it.
Imported by :mod:`reconcile.control`, so the step is part of every ``migrate``.
"""

from __future__ import annotations

from reconcile.control.migrations import register, table_step

__all__ = ["VERSIONS"]

VERSIONS = range(800, 830)
"""Version numbers reserved for the column contract."""

register(table_step(800, "column plan", "column_plan", """
    table_name text NOT NULL,
    column_name text NOT NULL,
    ordinal integer NOT NULL,
    source_type text NOT NULL,
    target_type text NOT NULL,
    conversion text NOT NULL,
    read_expression text NOT NULL,
    replay text NOT NULL,
    normalise text NOT NULL,
    not_null boolean NOT NULL,
    refused text,
    source_fingerprint text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, column_name)"""))
