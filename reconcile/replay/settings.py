"""The [replay] section of reconcile.toml (also `RECONCILE__REPLAY__<KEY>`).

Keys and their types come from the fields below (int, float, bool, str, str | None, tuple[str, ...]);
`__post_init__` validates values and raises :class:`reconcile.config.InvalidSetting`.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconcile.config import InvalidSetting

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
    peek_changes: int = 20000
    """Changes read from the slot per round (``upto_nchanges``); a transaction always comes whole."""
    poll_interval: float = 0.5
    """Seconds to wait before reading the slot again when it had nothing new (--follow, --duration)."""
    oversized_policy: str = "stop"
    """A source transaction larger than one target transaction: ``stop`` (dead letter, halt) or ``split``
    (apply it in budget-sized pieces and record the non-atomic window in reconcile.replay_windows)."""
    on_error: str = "stop"
    """A source transaction the target refuses (not a conflict): ``stop`` (dead letter, halt) or ``skip``
    (dead letter recorded as skipped, replay goes on)."""
    wal_warn_bytes: int = 1024 * 1024 * 1024
    """`replay status` warns when the slot retains more WAL than this (an idle slot bloats Aurora storage)."""
    stale_run_minutes: float = 30.0
    """A ``kind='replay'`` runs row of this slot still ``running`` is closed as ``abandoned`` by the next run
    when its process is gone (same host, dead pid), or, from another host, when it started more than this
    many minutes ago and the slot's watermark has not moved for as long (Airflow timeout, lost worker)."""
    require_backfill: bool = True
    """Refuse to apply while the initial backfill of a replicated table is incomplete (DESIGN.md, the
    copy/replay race); turn off only for tables that need no backfill (tests, empty tables)."""
    track_changes: bool = True
    """Record which keys each apply transaction changed (``reconcile.change_windows``, in the same target
    transaction), so an incremental diff verifies what changed; off, incremental diffs verify whole tables."""
    track_bytes: int = 65536
    """Bytes of keys one table's window may hold; past it, nearby keys merge into ranges (single integer or
    text keys) or the window covers the whole table (other keys)."""
    track_window_seconds: float = 300.0
    """Source-commit seconds one window spans before the next one opens."""
    track_max_windows: int = 288
    """Windows kept per table until a diff verifies them (a day of 5-minute windows); past it the current
    window keeps growing (coarsened), so the tracking stays bounded however long no diff runs."""

    def __post_init__(self) -> None:
        for key in ("slot_name", "publication"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise InvalidSetting("replay", key, "is empty", f"name it, e.g. {key} = \"reconcile\"")
            if not all(ch.isalnum() or ch == "_" for ch in value) or value != value.lower():
                raise InvalidSetting("replay", key, f"must use lower-case letters, digits and _ only, got {value!r}",
                                     "PostgreSQL slot names allow nothing else; pick e.g. \"reconcile\"")
        if self.peek_changes < 1:
            raise InvalidSetting("replay", "peek_changes", f"must be at least 1, got {self.peek_changes}",
                                 "use e.g. 20000")
        if self.poll_interval <= 0:
            raise InvalidSetting("replay", "poll_interval", f"must be positive, got {self.poll_interval}",
                                 "use e.g. 0.5")
        if self.oversized_policy not in OVERSIZED_POLICIES:
            raise InvalidSetting("replay", "oversized_policy",
                                 f"must be one of {', '.join(OVERSIZED_POLICIES)}, got {self.oversized_policy!r}",
                                 'use "stop" (dead-letter and halt) or "split" (apply in pieces, recorded as a '
                                 "non-atomic window)")
        if self.on_error not in ON_ERROR_POLICIES:
            raise InvalidSetting("replay", "on_error",
                                 f"must be one of {', '.join(ON_ERROR_POLICIES)}, got {self.on_error!r}",
                                 'use "stop" (order matters for a ledger) or "skip"')
        if not self.stale_run_minutes > 0:
            raise InvalidSetting("replay", "stale_run_minutes", f"must be positive, got {self.stale_run_minutes}",
                                 "use e.g. 30 (longer than the longest time-boxed replay run)")
        if isinstance(self.track_bytes, bool) or not isinstance(self.track_bytes, int) or \
                not 1024 <= self.track_bytes <= 512 * 1024:
            raise InvalidSetting("replay", "track_bytes", f"must be a whole number from 1024 to 524288, got "
                                 f"{self.track_bytes!r}", "use e.g. 65536 (64 KiB per table and window)")
        if not self.track_window_seconds > 0:
            raise InvalidSetting("replay", "track_window_seconds", f"must be positive, got "
                                 f"{self.track_window_seconds!r}", "use e.g. 300")
        if isinstance(self.track_max_windows, bool) or not isinstance(self.track_max_windows, int) or \
                self.track_max_windows < 1:
            raise InvalidSetting("replay", "track_max_windows", f"must be a whole number of at least 1, got "
                                 f"{self.track_max_windows!r}", "use e.g. 288")
        if self.wal_warn_bytes < 0:
            raise InvalidSetting("replay", "wal_warn_bytes", f"must not be negative, got {self.wal_warn_bytes}",
                                 "use e.g. 1073741824 (1 GiB)")
