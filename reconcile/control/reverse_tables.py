"""Control-schema steps of the reverse replay (versions 1000-1049), on the *target*.

After write cutover DSQL is the system of record and the control schema stays where the gates read it,
so the reverse replay keeps its runs (``reconcile.runs``, kind ``reverse_replay``) and its dead letters
here. What must commit atomically with the rows it applies (shard checkpoints, per-key versions,
tombstones) lives on the old source instead, in schema ``reconcile_reverse``
(:mod:`reconcile.reverse.source_state`).

* ``reverse_dead_letters`` (1000): one row per DSQL transaction the source refused, with its reason,
  SQLSTATE and the transaction's changes as JSON (``payload``; in ``reverse_dead_letter_parts`` (1001)
  when longer than 256 KiB, never truncated). Open while ``resolved_at`` is NULL; the reverse replay
  stops at it (the rollback gate requires none open).
"""

from __future__ import annotations

from reconcile.control.migrations import register, register_index, table_step

register(table_step(1000, "reverse_dead_letters", "reverse_dead_letters", """
    dead_letter_id uuid PRIMARY KEY,
    stream text NOT NULL,
    tx_id text NOT NULL,
    ts_ns bigint NOT NULL,
    tables text,
    reason text NOT NULL,
    sqlstate text,
    change_count integer,
    payload text,
    payload_parts integer,
    run_id uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolution text,
    resolved_by text,
    resolution_reason text"""))

register(table_step(1001, "reverse_dead_letter_parts", "reverse_dead_letter_parts", """
    dead_letter_id uuid NOT NULL,
    part_no integer NOT NULL,
    data text NOT NULL,
    PRIMARY KEY (dead_letter_id, part_no)"""))

register_index(1002, "reverse dead letters by stream", table="reverse_dead_letters",
               index="reverse_dead_letters_stream_idx", columns=["stream", "created_at"])
