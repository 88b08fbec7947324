"""Control-schema steps of verification coverage and repair outcomes, written by the diff (versions 660-699).

Imported by :mod:`reconcile.control`, so these steps are part of every ``migrate``. One DDL statement
per step; never renumber a shipped step.

What they hold (:mod:`reconcile.diff.coverage`):

* ``diff_coverage`` (660): per slot and table, ``verified_lsn`` (every change the replay applied at or
  below it has been verified by a diff run), the rolling sweep's current pass (``pass_no``, its
  ``pass_slices`` and slice boundaries ``pass_bounds`` as JSON text forms, the ``next_slice`` to verify,
  ``pass_clean`` while every slice so far was verified by a green table diff), the last complete pass
  (started, finished, clean) and the last full diff of the table (run, time, clean).
* ``diff_slices`` (661): per slot, table and slice of the current pass, its key range and when, by
  which run and mode, and with which table status it was last fully verified.
* ``repair_results`` (680): per repair run and key, what the repair did and what re-verifying the key
  found (``repaired``, ``still_differs``, ``in_flight``, ``not_applied``).
"""

from __future__ import annotations

from reconcile.control.migrations import register, table_step

register(table_step(660, "diff_coverage", "diff_coverage", """
    slot_name text NOT NULL,
    table_name text NOT NULL,
    verified_lsn bigint,
    verified_run_id uuid,
    verified_at timestamptz,
    pass_no integer NOT NULL DEFAULT 0,
    pass_slices integer,
    pass_bounds text,
    pass_started_at timestamptz,
    next_slice integer NOT NULL DEFAULT 0,
    pass_clean boolean,
    last_pass_started_at timestamptz,
    last_pass_finished_at timestamptz,
    last_pass_clean boolean,
    last_full_run_id uuid,
    last_full_at timestamptz,
    last_full_clean boolean,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot_name, table_name)"""))

register(table_step(661, "diff_slices", "diff_slices", """
    slot_name text NOT NULL,
    table_name text NOT NULL,
    slice_no integer NOT NULL,
    pass_no integer NOT NULL,
    lo text,
    hi text,
    last_verified_at timestamptz,
    last_run_id uuid,
    last_mode text,
    last_status text,
    PRIMARY KEY (slot_name, table_name, slice_no)"""))

register(table_step(680, "repair_results", "repair_results", """
    repair_id uuid NOT NULL,
    table_name text NOT NULL,
    row_key text NOT NULL,
    kind text,
    outcome text NOT NULL,
    detail text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repair_id, table_name, row_key)"""))
