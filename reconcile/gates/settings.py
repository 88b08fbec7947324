"""The [gates] section of reconcile.toml (also `RECONCILE__GATES__<KEY>`).

Keys and their types come from the fields below (int, float, bool, str, str | None, tuple[str, ...]);
`__post_init__` validates values and raises :class:`reconcile.config.InvalidSetting`.

The thresholds are the cutover criteria (see :mod:`reconcile.gates.criteria`). The demo runs with
``min_green_runs = 1``, ``min_green_hours = 0`` and ``min_read_hours = 0``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

_SSM_NAME = re.compile(r"/[A-Za-z0-9_.\-/]+")
_REGION = re.compile(r"[a-z]{2}(?:-[a-z0-9]+)+")


@dataclass(frozen=True)
class GateSettings:
    """Settings of the gates stage."""

    min_green_runs: int = 3
    """N: consecutive complete green diff runs (every configured table and the balances) the read gate needs."""
    min_green_hours: float = 24.0
    """T: hours the green streak must span (first green start to last green finish)."""
    max_diff_age_hours: float = 24.0
    """The latest diff run must have finished within this many hours."""
    max_check_age_hours: float = 24.0
    """The latest expectations run (kind 'check') must have finished within this many hours."""
    replay_window_hours: float = 24.0
    """Replay runs finished within this many hours (or running with a summary, started within them) count
    for lag and conflict rate."""
    max_lag_p99_seconds: float = 30.0
    """L: the highest lag_seconds_p99 of the recent replay runs must be below this."""
    min_read_hours: float = 24.0
    """T2: hours the read gate must have held (state read_cutover) before the write gate."""
    max_conflict_rate: float = 0.05
    """OCC conflicts per target commit over the recent runs must be below this (write gate)."""
    max_all_verified_hours: float = 24.0
    """Every row must have been verified green within this many hours: a full diff or a completed incremental
    sweep pass (read gate), and a full diff run (write gate)."""
    require_audit_run: bool = True
    """Without a stored audit run, the audit criteria fail (no evidence); false lets them pass."""
    two_person: bool = False
    """Require a second, distinct approver before a gate transitions."""
    approval_ttl_hours: float = 24.0
    """A first approval waiting for its second approver expires after this many hours (every approval
    re-evaluates the gate when it is recorded, whatever the age of the evaluation the approver saw)."""
    ssm_parameter: str | None = None
    """SSM parameter the state is published to (e.g. /reconcile/cutover/state); unset: control table only."""
    ssm_region: str | None = None
    """AWS region of the SSM parameter; default: the DSQL target's region, else AWS_REGION / AWS_DEFAULT_REGION."""

    def __post_init__(self) -> None:
        from reconcile.config import InvalidSetting

        if self.min_green_runs < 1:
            raise InvalidSetting("gates", "min_green_runs", f"must be at least 1, got {self.min_green_runs}",
                                 "use 1 for a demo, 3 or more for a real cutover")
        non_negative = ("min_green_hours", "min_read_hours")
        positive = ("max_diff_age_hours", "max_check_age_hours", "replay_window_hours", "max_lag_p99_seconds",
                    "approval_ttl_hours", "max_all_verified_hours")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in non_negative and value < 0:
                raise InvalidSetting("gates", f.name, f"must be 0 or more, got {value}", "use 0 to disable it")
            if f.name in positive and value <= 0:
                raise InvalidSetting("gates", f.name, f"must be greater than 0, got {value}",
                                     f"use the default {f.default}")
        if not 0 < self.max_conflict_rate <= 1:
            raise InvalidSetting("gates", "max_conflict_rate", f"must be in (0, 1], got {self.max_conflict_rate}",
                                 "use 0.05 (5%)")
        if self.ssm_parameter is not None and not _SSM_NAME.fullmatch(self.ssm_parameter):
            raise InvalidSetting("gates", "ssm_parameter",
                                 f"must be a fully qualified SSM name, got {self.ssm_parameter!r}",
                                 'use a name starting with /, e.g. ssm_parameter = "/reconcile/cutover/state"')
        if self.ssm_region is not None and not _REGION.fullmatch(self.ssm_region):
            raise InvalidSetting("gates", "ssm_region", f"is not an AWS region: {self.ssm_region!r}",
                                 'write a region such as ssm_region = "us-east-1", or remove it')
