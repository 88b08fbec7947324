"""Control-schema steps of the replay stage (versions 500-599).

Imported by :mod:`reconcile.control`, so these steps are part of every ``migrate``. One DDL
statement per step (``table_step``, ``register_index``, or an ``ALTER TABLE ... ADD COLUMN``
without inline DEFAULT/NOT NULL); never renumber a shipped step.

What they hold:

* ``replay_state.caught_up_lsn`` (500): a source WAL position the replayer has read through (see
  :mod:`reconcile.replay`). ``last_end_lsn`` (501): end of the last applied commit record (where the
  slot may advance to); ``last_commit_ts`` (502): its source commit time (lag in seconds).
* ``dead_letters.end_lsn`` (503), ``resolution`` (504: ``skip`` / ``retry`` / ``retry-split`` /
  ``skipped`` by ``on_error='skip'``), ``resolved_by`` (505), ``resolution_reason`` (506),
  ``payload_parts`` (507: how many rows of ``dead_letter_parts`` hold the payload when it is too big
  for one row; NULL when ``payload`` holds it whole), ``run_id`` (508).
* ``dead_letter_parts`` (509): a large payload in pieces of at most 256 KiB, in ``part_no`` order.
* ``replay_windows`` (510): source transactions applied in pieces (policy ``split``): the
  non-atomic window a reconciliation must report, with the first and last piece's commit times.
"""

from __future__ import annotations

from typing import LiteralString

from psycopg import sql

from reconcile.control.migrations import Migration, ident, register, table_step

# A source WAL position the replayer has read through: every source transaction that committed before
# it is applied on the target. Updated when a read of the slot finds nothing more to apply, so a
# lag-aware reader (the diff) can tell "caught up past my start" even when the source is idle.
register(Migration(500, "replay_state.caught_up_lsn", sql.SQL(
    "ALTER TABLE {} ADD COLUMN IF NOT EXISTS caught_up_lsn text").format(ident("replay_state"))))


def _add_column(version: int, table: str, column: LiteralString, type_: LiteralString) -> Migration:
    return Migration(version, f"{table}.{column}", sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} " + type_).format(
        ident(table), sql.Identifier(column)))


for _step in (
    _add_column(501, "replay_state", "last_end_lsn", "text"),
    _add_column(502, "replay_state", "last_commit_ts", "timestamptz"),
    _add_column(503, "dead_letters", "end_lsn", "text"),
    _add_column(504, "dead_letters", "resolution", "text"),
    _add_column(505, "dead_letters", "resolved_by", "text"),
    _add_column(506, "dead_letters", "resolution_reason", "text"),
    _add_column(507, "dead_letters", "payload_parts", "integer"),
    _add_column(508, "dead_letters", "run_id", "uuid"),
):
    register(_step)

register(table_step(509, "dead_letter_parts", "dead_letter_parts", """
    dead_letter_id uuid NOT NULL,
    part_no integer NOT NULL,
    data text NOT NULL,
    PRIMARY KEY (dead_letter_id, part_no)"""))

register(table_step(510, "replay_windows", "replay_windows", """
    window_id uuid PRIMARY KEY,
    slot_name text NOT NULL,
    xid bigint,
    commit_lsn text NOT NULL,
    end_lsn text,
    source_commit_ts timestamptz,
    changes bigint NOT NULL,
    pieces integer NOT NULL,
    pieces_applied integer NOT NULL DEFAULT 0,
    tables text,
    reason text,
    run_id uuid,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz"""))
