"""Backfill: copy the source tables into the target in keyset chunks that fit DSQL's limits, resumably.

How a run goes (``reconcile backfill``, or :func:`run_backfill`):

1. **Prepare.** The control schema is migrated; the replay-ready hook
   (:func:`assert_replay_ready`) refuses to start when replay will follow and its replication slot
   does not exist yet (slot first, then backfill: DESIGN.md, "The copy/replay race").
2. **Plan** (:mod:`.plan`). Each table's key space is cut once into chunks ``[lo, hi)`` of about
   ``chunk_rows`` rows, in C order on both sides (text keys compare with an explicit ``COLLATE "C"``),
   stored in ``reconcile.chunks``; the outer chunks are open-ended, so the plan covers every key.
3. **Copy** (:mod:`.copy`). Workers claim chunks and copy each as batches: one short source
   statement, one target transaction holding the rows *and* the chunk checkpoint. Batch sizes come
   from :mod:`reconcile.budget` (rows and measured bytes, index entries included) and adapt toward
   ``batch_seconds``; writes are idempotent (COPY into an empty key range, else upsert by key) and
   go through :func:`reconcile.occ.run_with_retry`. Rows the target refuses are isolated by
   bisection and recorded in ``reconcile.rejects``; the chunk completes.
4. **Report** (:mod:`.progress`): a live line on a terminal or log lines elsewhere, a summary at the
   end, stored on the run's ``reconcile.runs`` row.

Why nothing is missed or duplicated:

* *Coverage.* Chunks tile the whole key space (open first and last bound), and a batch reads keys
  strictly after the last committed one, in the same C order the range conditions use.
* *Exactly one image per key.* The target's unique key makes every write an insert-or-overwrite:
  re-copying a batch (after a crash, a retry whose commit outcome was unknown, ``--force``) converges
  to the source's row, never a second row.
* *Resume.* ``last_key`` commits with the rows it covers: after a kill the chunk resumes after the
  last committed batch, and a batch that did not commit is read and written again.
* *Racing writes.* Each batch is a fresh snapshot, so a chunk mixes rows from several moments. That
  is sound only because the replay follows: with the slot created before the first read, every change
  committed after a row was read is replayed later in commit order and overwrites the older image.
  A re-copy while replay is live (a hole found by the diff) must go through replay's watermark
  protocol (DBLog), which the replay stage owns; here, ``--replay`` only checks the slot exists and
  that every chunk was copied under it.

Public API: :func:`run_backfill`, :func:`plan_chunks` and :func:`copy_chunk` (Airflow-mappable),
:class:`Backfill`, :class:`BackfillSettings`, :func:`assert_replay_ready`, :class:`Control` (status,
rejects), :class:`BackfillSummary`.
"""

from .checkpoints import Chunk, Control, Plan, Reject, TableStatus
from .config import WRITE_METHODS, BackfillSettings
from .copy import ChunkResult
from .errors import BadKey, ChunkLost, PlanMismatch, ReplayNotReady, TableNotReady
from .keys import parse_key_arg
from .progress import BackfillSummary, Progress
from .replay import SlotInfo, assert_replay_ready
from .runner import Backfill, copy_chunk, plan_chunks, run_backfill

__all__ = [
    "WRITE_METHODS",
    "Backfill",
    "BackfillSettings",
    "BackfillSummary",
    "BadKey",
    "Chunk",
    "ChunkLost",
    "ChunkResult",
    "Control",
    "Plan",
    "PlanMismatch",
    "Progress",
    "Reject",
    "ReplayNotReady",
    "SlotInfo",
    "TableNotReady",
    "TableStatus",
    "assert_replay_ready",
    "copy_chunk",
    "parse_key_arg",
    "plan_chunks",
    "run_backfill",
]
