"""The [gates] section of reconcile.toml (also `RECONCILE__GATES__<KEY>`).

Keys, their types and the ranges of numbers come from the fields below (:mod:`reconcile.settings_schema`);
`__post_init__` checks the rest and raises :class:`reconcile.config.InvalidSetting`.

The thresholds are the cutover criteria (see :mod:`reconcile.gates.criteria`). The demo runs with
``min_green_runs = 1``, ``min_green_hours = 0`` and ``min_read_hours = 0``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from reconcile.settings_schema import Bounds, check_fields

_SSM_NAME = re.compile(r"/[A-Za-z0-9_.\-/]+")
_REGION = re.compile(r"[a-z]{2}(?:-[a-z0-9]+)+")


@dataclass(frozen=True)
class GateSettings:
    """Settings of the gates stage."""

    min_green_runs: Annotated[int, Bounds(ge=1, le=1000, fix="use 1 for a demo, 3 or more for a real cutover")] = 3
    """N: consecutive complete green diff runs (every configured table and the balances) the read gate needs."""
    min_green_hours: Annotated[float, Bounds(ge=0, le=8760, fix="use 0 to disable it")] = 24.0
    """T: hours the green streak must span (first green start to last green finish)."""
    max_diff_age_hours: Annotated[float, Bounds(gt=0, le=8760)] = 24.0
    """The latest diff run must have finished within this many hours."""
    max_check_age_hours: Annotated[float, Bounds(gt=0, le=8760)] = 24.0
    """The latest expectations run (kind 'check') must have finished within this many hours."""
    replay_window_hours: Annotated[float, Bounds(gt=0, le=8760)] = 24.0
    """Replay runs finished within this many hours (or running with a summary, started within them) count
    for lag and conflict rate."""
    max_lag_p99_seconds: Annotated[float, Bounds(gt=0, le=86_400)] = 30.0
    """L: the highest lag_seconds_p99 of the recent replay runs must be below this."""
    min_read_hours: Annotated[float, Bounds(ge=0, le=8760, fix="use 0 to disable it")] = 24.0
    """T2: hours the read gate must have held (state read_cutover) before the write gate."""
    max_conflict_rate: Annotated[float, Bounds(gt=0, le=1, fix="use 0.05 (5%)")] = 0.05
    """OCC conflicts per target commit over the recent runs must be below this (write gate)."""
    max_all_verified_hours: Annotated[float, Bounds(gt=0, le=8760)] = 24.0
    """Every row must have been verified green within this many hours: a full diff or a completed incremental
    sweep pass (read gate), and a full diff run (write gate)."""
    require_audit_run: bool = True
    """Without a stored audit run, the audit criteria fail (no evidence); false lets them pass."""
    two_person: bool = False
    """Require a second approver before a gate transitions (the read and write gates, and the rollback from
    write_cutover), with another authenticated identity (the AWS STS caller of `reconcile gate approve` or
    `gate rollback`, or the Airflow user who answered the DAG's approval step); unauthenticated approvals are
    refused."""
    approval_ttl_hours: Annotated[float, Bounds(gt=0, le=8760)] = 24.0
    """A first approval waiting for its second approver expires after this many hours (every approval
    re-evaluates the gate when it is recorded, whatever the age of the evaluation the approver saw)."""
    ssm_parameter: str | None = None
    """SSM parameter the state is published to (e.g. /reconcile/cutover/state); unset: control table only."""
    chain_parameter: str | None = None
    """SSM parameter the audit trail's chain head is published to after every event (e.g.
    /reconcile/cutover/chain-head); `gate status`/`history` and every approval check the trail against its
    version history, so a consistent rewrite of every row is caught. Unset: checked inside the database only."""
    ssm_region: str | None = None
    """AWS region of the SSM parameter; default: the DSQL target's region, else AWS_REGION / AWS_DEFAULT_REGION."""

    def __post_init__(self) -> None:
        from reconcile.config import InvalidSetting

        check_fields(self, "gates")
        if self.ssm_parameter is not None and not _SSM_NAME.fullmatch(self.ssm_parameter):
            raise InvalidSetting("gates", "ssm_parameter",
                                 f"must be a fully qualified SSM name, got {self.ssm_parameter!r}",
                                 'use a name starting with /, e.g. ssm_parameter = "/reconcile/cutover/state"')
        if self.chain_parameter is not None and not _SSM_NAME.fullmatch(self.chain_parameter):
            raise InvalidSetting("gates", "chain_parameter",
                                 f"must be a fully qualified SSM name, got {self.chain_parameter!r}",
                                 'use a name starting with /, e.g. chain_parameter = "/reconcile/cutover/chain-head"')
        if self.chain_parameter is not None and self.chain_parameter == self.ssm_parameter:
            raise InvalidSetting("gates", "chain_parameter", "is the same parameter as ssm_parameter",
                                 "give the chain head its own parameter, e.g. /reconcile/cutover/chain-head")
        if self.ssm_region is not None and not _REGION.fullmatch(self.ssm_region):
            raise InvalidSetting("gates", "ssm_region", f"is not an AWS region: {self.ssm_region!r}",
                                 'write a region such as ssm_region = "us-east-1", or remove it')
