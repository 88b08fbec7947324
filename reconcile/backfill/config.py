"""Settings of one backfill run (the CLI flags and the Airflow task parameters)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from reconcile.backfill.keys import Key
from reconcile.config import InvalidSetting
from reconcile.settings_schema import Bounds, check_fields

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
    workers: Annotated[int, Bounds(ge=1, le=256, fix="use e.g. --workers 4")] = 4
    """Chunks copied at once; each worker has its own source and target connection."""
    max_rows_per_second: Annotated[float, Bounds(ge=0, le=1_000_000_000, fix="use 0 for no throttle")] = 0.0
    """Throttle over all workers, to protect the source; 0 means unlimited."""
    chunk_rows: Annotated[int, Bounds(ge=1, le=100_000_000, fix="use e.g. --chunk-rows 50000")] = 50_000
    """Rows per planned chunk (the unit of checkpointing, parallelism and Airflow mapping)."""
    batch_seconds: Annotated[float, Bounds(gt=0, le=300, fix="use e.g. --batch-seconds 0.5")] = 0.5
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
    lease_seconds: Annotated[float, Bounds(gt=0, le=7 * 86_400, fix="use e.g. --lease-seconds 600")] = 600.0
    """A running chunk whose worker gave no sign of life for this long may be taken over."""
    max_failures: Annotated[int, Bounds(ge=1, le=1_000_000, fix="use e.g. 5")] = 5
    """Stop the run after this many failed chunks (each already retried by the OCC helper)."""

    def __post_init__(self) -> None:
        check_fields(self, "backfill")
        if self.slot_name is not None and not self.slot_name.strip():
            raise InvalidSetting("backfill", "slot_name", "is empty",
                                 "name the replication slot, or leave it out to use [replay] slot_name")
        if self.write_method not in WRITE_METHODS:
            raise InvalidSetting("backfill", "write_method", f"must be one of {', '.join(WRITE_METHODS)}, "
                                 f"got {self.write_method!r}", "use --write-method auto")
        if (self.from_key is not None or self.to_key is not None) and len(self.tables) != 1:
            raise InvalidSetting("backfill", "from_key", "needs exactly one table (a key means nothing across "
                                 "tables)", "add --table schema.table")
        if self.replan:
            object.__setattr__(self, "force", True)
