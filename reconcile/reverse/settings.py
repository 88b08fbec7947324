"""The [reverse] section of reconcile.toml (also `RECONCILE__REVERSE__<KEY>`): replay from DSQL's CDC
stream back to the old source after write cutover (:mod:`reconcile.reverse`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from reconcile.config import InvalidSetting
from reconcile.settings_schema import Bounds, check_fields

ON_ERROR_POLICIES = ("stop",)


@dataclass(frozen=True)
class ReverseSettings:
    """Settings of the reverse replay.

    >>> ReverseSettings(settle_ms=-1)
    Traceback (most recent call last):
    ...
    reconcile.config.InvalidSetting: reverse.settle_ms must be 0 or more, got -1; use e.g. 2000 (DSQL publishes records within seconds of their commit)
    """

    stream_name: str = "reconcile-cdc"
    """The Kinesis data stream DSQL's CDC stream writes into (created by you, as DSQL's guide says)."""
    region: str = "us-east-1"
    """AWS region of the Kinesis stream (the DSQL cluster's region)."""
    endpoint_url: str | None = None
    """Kinesis endpoint; only for the local stand-in (moto's server, e.g. http://127.0.0.1:4566)."""
    origin_name: str = "reconcile_reverse"
    """Replication origin on the source that tags every reverse-applied transaction; the forward replay's
    decoding skips them (``origin 'none'``), so nothing loops back to DSQL. Origins are server-wide and each
    one used holds a replication state slot (``max_active_replication_origins`` on PostgreSQL 18, else
    ``max_replication_slots``) until dropped: keep one per source server."""
    settle_ms: Annotated[int, Bounds(ge=0, le=600_000, fix="use e.g. 2000 (DSQL publishes records within seconds of their commit)")] = 2000
    """A DSQL transaction is applied once every shard has been read past its commit time plus this much
    (records of one transaction arrive unordered, over all shards, with no count of them): see
    :mod:`reconcile.reverse.replayer`. A record later than that is still applied, as a late record."""
    group_txns: Annotated[int, Bounds(ge=1, le=100_000, fix="use e.g. 200")] = 200
    """Whole DSQL transactions applied per source transaction (1 = strictly one for one)."""
    group_changes: Annotated[int, Bounds(ge=1, le=1_000_000, fix="use e.g. 5000")] = 5000
    """Upper bound of row changes per source transaction (a DSQL transaction is never split)."""
    read_limit: Annotated[int, Bounds(ge=1, le=10_000, fix="use 10000")] = 10000
    """Records per GetRecords call (the Kinesis maximum is 10,000)."""
    poll_interval: Annotated[float, Bounds(gt=0, le=60, fix="use e.g. 0.2")] = 0.2
    """Seconds to wait before reading again when every shard was at its tip."""
    lag_limit_seconds: Annotated[float, Bounds(gt=0, le=86_400, fix="use e.g. 60")] = 60.0
    """`reverse status` (and the rollback gate) call the reverse replay caught up when its last caught-up
    point is within this many seconds."""

    def __post_init__(self) -> None:
        check_fields(self, "reverse")
        for key in ("stream_name", "region", "origin_name"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise InvalidSetting("reverse", key, "is empty", f"name it, e.g. {key} = \"reconcile\"")
        if not all(ch.isalnum() or ch in "_-." for ch in self.stream_name):
            raise InvalidSetting("reverse", "stream_name", f"is not a Kinesis stream name: {self.stream_name!r}",
                                 "use letters, digits, _ - and . only")
