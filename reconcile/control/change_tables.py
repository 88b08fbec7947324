"""Control-schema steps of changed-key tracking and live repair, written by the replay (versions 560-599).

Imported by :mod:`reconcile.control`, so these steps are part of every ``migrate``. One DDL statement
per step; never renumber a shipped step.

What they hold:

* ``change_windows`` (560): per slot and table, the keys the replay applied in a *window* of source
  commits (``first_lsn`` .. ``last_lsn``, LSNs as integers). ``form`` says how ``keys`` (JSON) reads:
  ``ranges`` (closed key ranges ``[lo, hi]`` of a single integer or text key; a lone key is ``[k, k]``),
  ``keys`` (exact keys, each a list of text forms) or ``all`` (too many changes to list within
  ``[replay] track_bytes``: the whole table changed in the window). Written in the same target
  transaction as the changes it covers (:mod:`reconcile.replay.tracking`).
* ``change_tracking`` (561): per slot, ``tracked_from``: every source transaction committed after this
  LSN and applied by the replay is in ``change_windows`` (a replay with tracking off deletes the row).
* ``repair_chunks`` (570), ``repair_rows`` (572), ``repair_seen`` (573), ``repair_marks`` (574): the
  DBLog protocol of :mod:`reconcile.repair`: a chunk of keys (or, for a whole-table copy, of key
  order) copied from the source between a low and a high watermark (``repair_chunks``: written by the
  repair, its ``status`` ``requested`` -> ``copied`` -> ``emitted``, or ``abandoned``); the copied rows
  (``row_data`` NULL: the source has no such key, a delete); the keys the replay saw change between the
  two watermarks (dropped from the copy); and what the replay did (``repair_marks``, written only by
  the replay, in its apply transactions: ``low_lsn`` when the chunk opened, ``high_lsn`` and the counts
  when it was applied, ``outcome`` ``applied`` or ``not_applied``).
"""

from __future__ import annotations

from reconcile.control.migrations import register, register_index, table_step

register(table_step(560, "change_windows", "change_windows", """
    slot_name text NOT NULL,
    table_name text NOT NULL,
    window_no bigint NOT NULL,
    first_lsn bigint NOT NULL,
    last_lsn bigint NOT NULL,
    first_commit_ts timestamptz,
    last_commit_ts timestamptz,
    changes bigint NOT NULL DEFAULT 0,
    form text NOT NULL,
    entries bigint NOT NULL DEFAULT 0,
    keys text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot_name, table_name, window_no)"""))

register(table_step(561, "change_tracking", "change_tracking", """
    slot_name text PRIMARY KEY,
    tracked_from bigint NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()"""))

register(table_step(570, "repair_chunks", "repair_chunks", """
    chunk_id uuid PRIMARY KEY,
    repair_id uuid NOT NULL,
    slot_name text NOT NULL,
    table_name text NOT NULL,
    chunk_no integer NOT NULL,
    mode text NOT NULL,
    keys text,
    columns text,
    status text NOT NULL,
    reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()"""))

register_index(571, "repair chunks by slot and status", table="repair_chunks", index="repair_chunks_slot_idx",
               columns=["slot_name", "status"])

register(table_step(572, "repair_rows", "repair_rows", """
    chunk_id uuid NOT NULL,
    row_no integer NOT NULL,
    row_key text NOT NULL,
    row_data text,
    PRIMARY KEY (chunk_id, row_no)"""))

register(table_step(573, "repair_seen", "repair_seen", """
    chunk_id uuid NOT NULL,
    commit_lsn bigint NOT NULL,
    keys text NOT NULL,
    PRIMARY KEY (chunk_id, commit_lsn)"""))

register(table_step(574, "repair_marks", "repair_marks", """
    chunk_id uuid PRIMARY KEY,
    slot_name text NOT NULL,
    low_lsn bigint,
    high_lsn bigint,
    copied integer,
    dropped integer,
    applied integer,
    outcome text,
    reason text,
    opened_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz"""))

register_index(575, "repair marks by slot", table="repair_marks", index="repair_marks_slot_idx",
               columns=["slot_name", "high_lsn"])
