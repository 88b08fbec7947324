"""The [repair] section of reconcile.toml (also `RECONCILE__REPAIR__<KEY>`).

Keys and their types come from the fields below; `__post_init__` validates values and raises
:class:`reconcile.config.InvalidSetting`.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconcile.config import InvalidSetting

_S = "repair"


@dataclass(frozen=True)
class RepairSettings:
    """Settings of live repair (``reconcile repair``) and of the reconciliation DAG's automatic repair."""

    chunk_rows: int = 200
    """Rows copied between one low and one high watermark (the replay applies them in one target transaction,
    so a chunk is also cut at a quarter of the transaction budget's bytes)."""
    apply_wait_seconds: float = 300.0
    """How long a repair waits for the replay to reach its high watermarks (the replay must be running)."""
    xact_wait_seconds: float = 60.0
    """How long a repair waits, after its low watermark, for the source transactions then in progress to end
    (a copy must see every transaction that committed before the low watermark)."""
    poll_seconds: float = 0.2
    """How often the repair polls the source and the target while it waits."""
    auto_max_findings: int = 0
    """The reconcile_reconcile DAG repairs a run's findings on its own when there are at least 1 and at most
    this many (never more: a larger difference needs a person); 0 turns automatic repair off. Every repair,
    and every decision not to repair, is recorded in the run's report and the gate evidence."""

    def __post_init__(self) -> None:
        for name, low in (("chunk_rows", 1), ("auto_max_findings", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidSetting(_S, name, f"must be a whole number of at least {low}, got {value!r}",
                                     f"use the default {getattr(RepairSettings, name)}")
        if self.chunk_rows > 2000:
            raise InvalidSetting(_S, "chunk_rows", f"must be at most 2000 (one target transaction), got "
                                 f"{self.chunk_rows}", "use e.g. 200")
        for name in ("apply_wait_seconds", "xact_wait_seconds", "poll_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise InvalidSetting(_S, name, f"must be a positive number of seconds, got {value!r}",
                                     f"use the default {getattr(RepairSettings, name)}")
            object.__setattr__(self, name, float(value))
