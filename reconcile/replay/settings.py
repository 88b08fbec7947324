"""The [replay] section of reconcile.toml (also `RECONCILE__REPLAY__<KEY>`).

Keys, their types and the ranges of numbers come from the fields below (:mod:`reconcile.settings_schema`);
`__post_init__` checks the rest and raises :class:`reconcile.config.InvalidSetting`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from reconcile.config import InvalidSetting
from reconcile.settings_schema import Bounds, check_fields

OVERSIZED_POLICIES = ("stop", "split")
ON_ERROR_POLICIES = ("stop", "skip")


@dataclass(frozen=True)
class ReplaySettings:
    """Settings of the replay stage.

    >>> ReplaySettings(oversized_policy="chunk")
    Traceback (most recent call last):
    ...
    reconcile.config.InvalidSetting: replay.oversized_policy must be one of stop, split, got 'chunk'; use "stop" (dead-letter and halt) or "split" (apply in pieces, recorded as a non-atomic window)
    """

    slot_name: str = "reconcile"
    """Logical replication slot on the source (plugin pgoutput); the backfill checks the same name."""
    publication: str = "reconcile_pub"
    """Publication on the source listing the configured tables."""
    peek_changes: Annotated[int, Bounds(ge=1, le=1_000_000, fix="use e.g. 20000")] = 20000
    """Changes read from the slot per round (``upto_nchanges``); a transaction always comes whole."""
    poll_interval: Annotated[float, Bounds(gt=0, le=60, fix="use e.g. 0.5")] = 0.5
    """Seconds to wait before reading the slot again when it had nothing new (--follow, --duration)."""
    oversized_policy: str = "stop"
    """A source transaction larger than one target transaction: ``stop`` (dead letter, halt) or ``split``
    (apply it in budget-sized pieces and record the non-atomic window in reconcile.replay_windows)."""
    on_error: str = "stop"
    """A source transaction the target refuses (not a conflict): ``stop`` (dead letter, halt) or ``skip``
    (dead letter recorded as skipped, replay goes on)."""
    wal_warn_bytes: Annotated[int, Bounds(ge=0, le=2**50, fix="use e.g. 1073741824 (1 GiB)")] = 1024 * 1024 * 1024
    """`replay status` warns when the slot retains more WAL than this (an idle slot bloats Aurora storage)."""
    stale_run_minutes: Annotated[float, Bounds(gt=0, le=7 * 24 * 60, fix="use e.g. 30 (longer than the longest time-boxed replay run)")] = 30.0
    """A ``kind='replay'`` runs row of this slot still ``running`` is closed as ``abandoned`` by the next run
    when its process is gone (same host, dead pid), or, from another host, when it started more than this
    many minutes ago and the slot's watermark has not moved for as long (Airflow timeout, lost worker)."""
    require_backfill: bool = True
    """Refuse to apply while the initial backfill of a replicated table is incomplete (DESIGN.md, the
    copy/replay race); turn off only for tables that need no backfill (tests, empty tables)."""
    pipeline_apply: bool = True
    """Run each apply transaction in libpq pipeline mode: BEGIN travels with the watermark check, and the writes
    (deletes, upserts, changed-key windows, repair marks, the watermark) with the COMMIT, so a commit costs two
    round trips instead of one per statement: what keeps the replay's throughput when the target is a network
    round trip away (bench/latency.py). Off: one statement at a time."""
    track_changes: bool = True
    """Record which keys each apply transaction changed (``reconcile.change_windows``, in the same target
    transaction), so an incremental diff verifies what changed; off, incremental diffs verify whole tables."""
    track_bytes: Annotated[int, Bounds(ge=1024, le=512 * 1024, fix="use e.g. 65536 (64 KiB per table and window)")] = 65536
    """Bytes of keys one table's window may hold; past it, nearby keys merge into ranges (single integer or
    text keys) or the window covers the whole table (other keys)."""
    track_window_seconds: Annotated[float, Bounds(gt=0, le=86_400, fix="use e.g. 300")] = 300.0
    """Source-commit seconds one window spans before the next one opens."""
    track_max_windows: Annotated[int, Bounds(ge=1, le=100_000, fix="use e.g. 288")] = 288
    """Windows kept per table until a diff verifies them (a day of 5-minute windows); past it the current
    window keeps growing (coarsened), so the tracking stays bounded however long no diff runs."""

    def __post_init__(self) -> None:
        check_fields(self, "replay")
        for key in ("slot_name", "publication"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise InvalidSetting("replay", key, "is empty", f"name it, e.g. {key} = \"reconcile\"")
            if not all(ch.isalnum() or ch == "_" for ch in value) or value != value.lower():
                raise InvalidSetting("replay", key, f"must use lower-case letters, digits and _ only, got {value!r}",
                                     "PostgreSQL slot names allow nothing else; pick e.g. \"reconcile\"")
        if self.oversized_policy not in OVERSIZED_POLICIES:
            raise InvalidSetting("replay", "oversized_policy",
                                 f"must be one of {', '.join(OVERSIZED_POLICIES)}, got {self.oversized_policy!r}",
                                 'use "stop" (dead-letter and halt) or "split" (apply in pieces, recorded as a '
                                 "non-atomic window)")
        if self.on_error not in ON_ERROR_POLICIES:
            raise InvalidSetting("replay", "on_error",
                                 f"must be one of {', '.join(ON_ERROR_POLICIES)}, got {self.on_error!r}",
                                 'use "stop" (order matters for a ledger) or "skip"')
