"""Control-schema steps of the diff and balance stage (versions 600-699).

Imported by :mod:`reconcile.control`, so these steps are part of every ``migrate``. One DDL
statement per step (``table_step``, ``register_index``, or an ``ALTER TABLE ... ADD COLUMN``
without inline DEFAULT/NOT NULL); never renumber a shipped step.

Tables (a diff run itself is a ``reconcile.runs`` row with kind ``diff``):

* ``diff_results``: one row per (run, table), plus one named ``__balances__`` for the balance
  diff; written when that table's diff ends, so ``finish_diff`` (possibly in another Airflow task)
  builds the verdict from persisted state. ``details`` is a JSON document (settings used, columns
  present on one side only, balance tables).
* ``diff_findings``: persistent differences of a run, at most ``[diff] max_findings`` per table;
  ``finding_id`` is derived from (table, kind, key), so a re-run of the same table replaces its
  rows instead of duplicating them. Values are JSON text (exact decimals as strings).
* ``diff_lag_waits`` (620): every wait of a run for the replay watermark, from any task: the table
  (or ``__balances__``) that waited, the source LSN it waited for, the run-wide deadline it shared,
  the outcome (``passed``, ``timed_out``, or ``skipped``: not waited because an earlier wait of the
  run timed out and the watermark has not moved since; NULL while waiting), the watermark at the
  end, the seconds waited and why (the replay slot's state). A run waits at most
  ``lag_wait_seconds`` in total for a replay that does not advance, however many tables are red.
"""

from __future__ import annotations

from reconcile.control.migrations import register, register_index, table_step

register(table_step(600, "diff_results", "diff_results", """
    run_id uuid NOT NULL,
    table_name text NOT NULL,
    status text NOT NULL,
    missing bigint NOT NULL DEFAULT 0,
    extra bigint NOT NULL DEFAULT 0,
    changed bigint NOT NULL DEFAULT 0,
    in_flight bigint NOT NULL DEFAULT 0,
    rows_source bigint,
    rows_target bigint,
    queries bigint,
    duration_ms bigint,
    error text,
    details text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, table_name)"""))

register(table_step(601, "diff_findings", "diff_findings", """
    run_id uuid NOT NULL,
    finding_id text NOT NULL,
    table_name text NOT NULL,
    kind text NOT NULL,
    row_key text NOT NULL,
    columns text,
    source_values text,
    target_values text,
    money_delta numeric(38,10),
    currency text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, finding_id)"""))

register_index(602, "diff findings by table", table="diff_findings", index="diff_findings_table_idx",
               columns=["run_id", "table_name", "kind"])

register(table_step(620, "diff_lag_waits", "diff_lag_waits", """
    run_id uuid NOT NULL,
    wait_id uuid NOT NULL,
    table_name text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    deadline_at timestamptz,
    finished_at timestamptz,
    outcome text,
    target_lsn bigint,
    watermark bigint,
    waited_seconds numeric(12,3),
    reason text,
    PRIMARY KEY (run_id, wait_id)"""))
