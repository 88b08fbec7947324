"""Shadow-write replay: capture source changes through a logical slot (pgoutput) and apply them to the target.

Capture: ``init_replay`` checks the source (wal_level, keys or replica identity, privileges) and creates
the publication and the logical slot, before the first backfill chunk. Read: the slot through the SQL
interface in bounded batches, decoded by our own :mod:`.pgoutput`. Apply: whole source transactions in
commit order, grouped within the DSQL budget, watermark (``reconcile.replay_state``) in the same target
transaction, slot advanced after the commit: exactly once across crashes (:mod:`.runner`). What cannot
be replayed (TRUNCATE, a transaction too big for DSQL, a refused change) becomes a dead letter and
stops the run (:mod:`.state`).

Contract with the other stages:

* every run writes a ``reconcile.runs`` row, kind ``replay``, status ``done`` | ``stopped`` (halted on a
  dead letter) | ``error``, summary keys ``txns_applied, changes_applied, target_commits, conflicts,
  retries, lag_seconds_p50, lag_seconds_p99, lag_bytes, dead_letters_open, caught_up,
  last_commit_lsn`` (and a few more, see :class:`ReplayResult`);
* ``reconcile.replay_state`` (key ``slot_name``): ``last_commit_lsn``/``last_xid`` written with the
  changes; ``caught_up_lsn``: a source WAL position read through (every source transaction committed
  before it is applied), written when a read of the slot comes back with nothing more to apply. A
  lag-aware reader waits until ``max(last_commit_lsn, caught_up_lsn) >= its start LSN`` (as integers:
  :func:`lsn_to_int`);
* open dead letters: ``reconcile.dead_letters`` rows with ``resolved_at IS NULL``.
"""

from .api import (
    dead_letter_payload,
    drop_replay,
    init_replay,
    list_dead_letters,
    replay_status,
    retry_dead_letter,
    run_replay,
    skip_dead_letter,
)
from .apply import Converter, NetChanges, TargetTable, Watermark, Writer, inspect_target, read_watermark
from .errors import (
    BackfillIncomplete,
    DeadLetterNotFound,
    PrerequisiteFailed,
    ReadOutOfOrder,
    ReplayError,
    SlotBusy,
    SlotMissing,
    WatermarkMoved,
)
from .pgoutput import UNCHANGED, int_to_lsn, lsn_to_int
from .runner import Replayer, ReplayResult, backfill_problems, split_read
from .settings import ReplaySettings
from .source import (
    Assembler,
    SlotReader,
    SourceTxn,
    check_prerequisites,
    drop_capture,
    init_capture,
    prepare_session,
)
from .state import DeadLetter, ReplayControl

__all__ = [
    "UNCHANGED",
    "Assembler",
    "BackfillIncomplete",
    "DeadLetter",
    "DeadLetterNotFound",
    "Converter",
    "NetChanges",
    "PrerequisiteFailed",
    "ReadOutOfOrder",
    "ReplayControl",
    "ReplayError",
    "ReplayResult",
    "ReplaySettings",
    "Replayer",
    "SlotBusy",
    "SlotMissing",
    "SlotReader",
    "SourceTxn",
    "TargetTable",
    "Watermark",
    "WatermarkMoved",
    "Writer",
    "backfill_problems",
    "check_prerequisites",
    "dead_letter_payload",
    "drop_capture",
    "drop_replay",
    "init_capture",
    "init_replay",
    "inspect_target",
    "int_to_lsn",
    "list_dead_letters",
    "lsn_to_int",
    "prepare_session",
    "read_watermark",
    "replay_status",
    "retry_dead_letter",
    "run_replay",
    "skip_dead_letter",
    "split_read",
]
