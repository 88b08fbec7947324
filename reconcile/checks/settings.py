"""The [checks] section of reconcile.toml (also `RECONCILE__CHECKS__<KEY>`).

Keys and their types come from the fields below (int, float, bool, str, str | None, tuple[str, ...]);
`__post_init__` validates values and raises :class:`reconcile.config.InvalidSetting`.

```toml
[checks]
suites = ["ledger", "generated", "parity", "freshness"]
max_replay_lag_seconds = 60.0
idempotency_column = "idempotency_key"
negative_balance_exempt_column = "kind"
negative_balance_exempt_values = ["equity"]
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SUITE_KINDS = ("ledger", "generated", "parity", "freshness")
"""Every suite kind: ledger invariants, generated per-table expectations, row-count parity, replay freshness."""

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


@dataclass(frozen=True)
class CheckSettings:
    """Settings of the checks stage (Great Expectations suites on source and target)."""

    suites: tuple[str, ...] = SUITE_KINDS
    """Suite kinds to run: ledger, generated, parity (row counts, target), freshness (replay lag, dead
    letters, rejects; target)."""
    max_replay_lag_seconds: float = 60.0
    """Highest replay lag p99 (seconds) the latest replay run may report."""
    require_replay: bool = False
    """Fail freshness when no replay run has been recorded yet (off: no replay means nothing to judge)."""
    row_count_tolerance: int = 0
    """Rows the target count may differ from the source count, on top of the latest diff's in-flight count."""
    idempotency_column: str = "idempotency_key"
    """Column of the transactions table that must be unique (the idempotency key); "" skips the check."""
    negative_balance_exempt_column: str = "kind"
    """Accounts column whose values listed below may carry a negative balance; "" forbids every negative."""
    negative_balance_exempt_values: tuple[str, ...] = ("equity",)
    """Values of ``negative_balance_exempt_column`` allowed below zero (the demo: equity accounts)."""
    allow_negative_balances: bool = False
    """Skip the negative-balance invariant entirely (a ledger with overdrafts)."""
    result_rows: int = 20
    """Unexpected values/rows kept per failed expectation in the results (and Data Docs)."""

    def __post_init__(self) -> None:
        from reconcile.config import InvalidSetting

        unknown = [s for s in self.suites if s not in SUITE_KINDS]
        if unknown or not self.suites:
            raise InvalidSetting("checks", "suites",
                                 f"must list some of {', '.join(SUITE_KINDS)}, got {list(self.suites)}",
                                 f'e.g. suites = ["{SUITE_KINDS[0]}", "{SUITE_KINDS[1]}"]')
        if not self.max_replay_lag_seconds > 0:
            raise InvalidSetting("checks", "max_replay_lag_seconds",
                                 f"must be positive, got {self.max_replay_lag_seconds}", "use e.g. 60")
        if self.row_count_tolerance < 0:
            raise InvalidSetting("checks", "row_count_tolerance",
                                 f"must be 0 or more, got {self.row_count_tolerance}", "use 0")
        if not 0 <= self.result_rows <= 1000:
            raise InvalidSetting("checks", "result_rows", f"must be between 0 and 1000, got {self.result_rows}",
                                 "use the default 20")
        for key in ("idempotency_column", "negative_balance_exempt_column"):
            value = getattr(self, key)
            if value and not _IDENT.fullmatch(value):
                raise InvalidSetting("checks", key, f"must be a column name, got {value!r}",
                                     f'name a column, or set {key} = "" to skip')
