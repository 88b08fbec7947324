"""Settings of one backfill run (the CLI flags and the Airflow task parameters)."""

from __future__ import annotations

from dataclasses import dataclass

from reconcile.backfill.keys import Key
from reconcile.config import InvalidSetting

WRITE_METHODS = ("auto", "copy", "unnest", "values", "executemany")
"""How a batch is written to the target (see :mod:`reconcile.backfill.copy`)."""

DEFAULT_SLOT = "reconcile"
"""The slot of a session built without a config (tests); a run from a config uses ``[replay] slot_name``."""


@dataclass(frozen=True)
class BackfillSettings:
    """What to copy and how hard to push.

    >>> BackfillSettings(workers=0)
    Traceback (most recent call last):
    ...
    reconcile.config.InvalidSetting: backfill.workers must be at least 1, got 0; use e.g. --workers 4
    """

    tables: tuple[str, ...] = ()
    """Tables to copy (``schema.table``); empty means every configured table, in config order."""
    from_key: Key | None = None
    """Copy only chunks overlapping keys >= this one (needs exactly one table)."""
    to_key: Key | None = None
    """Copy only chunks overlapping keys < this one (needs exactly one table)."""
    force: bool = False
    """Copy the selected chunks again even when they are done (a triggered re-copy)."""
    replan: bool = False
    """Throw away the stored chunk plan of the selected tables and plan again (implies force)."""
    workers: int = 4
    """Chunks copied at once; each worker has its own source and target connection."""
    max_rows_per_second: float = 0.0
    """Throttle over all workers, to protect the source; 0 means unlimited."""
    chunk_rows: int = 50_000
    """Rows per planned chunk (the unit of checkpointing, parallelism and Airflow mapping)."""
    batch_seconds: float = 0.5
    """Time a batch (one source read + one target transaction) aims for, as pt-table-checksum's
    --chunk-time: batches shrink when slower, grow when faster, never beyond the budget."""
    write_method: str = "auto"
    """``auto`` (COPY into an empty key range, else upsert via unnest), ``copy`` (same),
    ``unnest``, ``values`` or ``executemany`` (upserts)."""
    replay: bool = False
    """Shadow-write replay will follow: refuse to start unless its replication slot exists."""
    slot_name: str | None = None
    """Name of the source's logical replication slot for replay; None: the config's ``[replay] slot_name``
    (the slot replay reads, so the chunks record the slot replay checks them against)."""
    lease_seconds: float = 600.0
    """A running chunk whose worker gave no sign of life for this long may be taken over."""
    max_failures: int = 5
    """Stop the run after this many failed chunks (each already retried by the OCC helper)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tables", tuple(self.tables))
        checks = (
            ("workers", self.workers >= 1, "must be at least 1", "use e.g. --workers 4"),
            ("chunk_rows", self.chunk_rows >= 1, "must be at least 1", "use e.g. --chunk-rows 50000"),
            ("batch_seconds", self.batch_seconds > 0, "must be positive", "use e.g. --batch-seconds 0.5"),
            ("max_rows_per_second", self.max_rows_per_second >= 0, "must not be negative",
             "use 0 for no throttle"),
            ("lease_seconds", self.lease_seconds > 0, "must be positive", "use e.g. --lease-seconds 600"),
            ("max_failures", self.max_failures >= 1, "must be at least 1", "use e.g. 5"),
            ("slot_name", self.slot_name is None or bool(self.slot_name.strip()), "is empty",
             "name the replication slot, or leave it out to use [replay] slot_name"),
        )
        for key, ok, problem, fix in checks:
            if not ok:
                got = getattr(self, key)
                raise InvalidSetting("backfill", key, f"{problem}, got {got!r}" if problem != "is empty" else problem,
                                     fix)
        if self.write_method not in WRITE_METHODS:
            raise InvalidSetting("backfill", "write_method", f"must be one of {', '.join(WRITE_METHODS)}, "
                                 f"got {self.write_method!r}", "use --write-method auto")
        if (self.from_key is not None or self.to_key is not None) and len(self.tables) != 1:
            raise InvalidSetting("backfill", "from_key", "needs exactly one table (a key means nothing across "
                                 "tables)", "add --table schema.table")
        if self.replan:
            object.__setattr__(self, "force", True)
