"""The [repair] section of reconcile.toml (also `RECONCILE__REPAIR__<KEY>`).

Keys, their types and the ranges of numbers come from the fields below (:mod:`reconcile.settings_schema`);
errors are :class:`reconcile.config.InvalidSetting`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from reconcile.settings_schema import Bounds, check_fields

_S = "repair"


@dataclass(frozen=True)
class RepairSettings:
    """Settings of live repair (``reconcile repair``) and of the reconciliation DAG's automatic repair."""

    chunk_rows: Annotated[int, Bounds(ge=1, le=2000, fix="use e.g. 200 (one target transaction holds a chunk)")] = 200
    """Rows copied between one low and one high watermark (the replay applies them in one target transaction,
    so a chunk is also cut at a quarter of the transaction budget's bytes)."""
    apply_wait_seconds: Annotated[float, Bounds(gt=0, le=86_400)] = 300.0
    """How long a repair waits for the replay to reach its high watermarks (the replay must be running)."""
    xact_wait_seconds: Annotated[float, Bounds(gt=0, le=86_400)] = 60.0
    """How long a repair waits, after its low watermark, for the source transactions then in progress to end
    (a copy must see every transaction that committed before the low watermark)."""
    poll_seconds: Annotated[float, Bounds(gt=0, le=60)] = 0.2
    """How often the repair polls the source and the target while it waits."""
    auto_max_findings: Annotated[int, Bounds(ge=0, le=100_000)] = 0
    """The reconcile_reconcile DAG repairs a run's findings on its own when there are at least 1 and at most
    this many (never more: a larger difference needs a person); 0 turns automatic repair off. Every repair,
    and every decision not to repair, is recorded in the run's report and the gate evidence."""

    def __post_init__(self) -> None:
        check_fields(self, _S)
