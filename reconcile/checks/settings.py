"""The [checks] section of reconcile.toml (also `RECONCILE__CHECKS__<KEY>`).

Keys, their types and the ranges of numbers come from the fields below (:mod:`reconcile.settings_schema`);
`__post_init__` checks the rest and raises :class:`reconcile.config.InvalidSetting`.

```toml
[checks]
suites = ["ledger", "generated", "parity", "freshness"]
max_replay_lag_seconds = 60.0
idempotency_column = "idempotency_key"      # unset: the idempotency checks are not applicable
negative_balance_exempt_column = "kind"      # accounts that may go below zero: kind = 'equity'
negative_balance_exempt_values = ["equity"]
```

The ledger's optional roles (``idempotency_column``, the negative-balance convention) are unset by
default: no column name is guessed. An invariant whose role is unset is reported "not applicable"
with the reason, neither passed nor failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from reconcile.settings_schema import Bounds, check_fields

SUITE_KINDS = ("ledger", "generated", "parity", "freshness")
"""Every suite kind: ledger invariants, generated per-table expectations, row-count parity, replay freshness."""



@dataclass(frozen=True)
class CheckSettings:
    """Settings of the checks stage (Great Expectations suites on source and target)."""

    suites: tuple[str, ...] = SUITE_KINDS
    """Suite kinds to run: ledger, generated, parity (row counts, target), freshness (replay lag, dead
    letters, rejects; target)."""
    max_replay_lag_seconds: Annotated[float, Bounds(gt=0, le=86_400, fix="use e.g. 60")] = 60.0
    """Highest replay lag p99 (seconds) the latest replay run may report."""
    require_replay: bool = False
    """Fail freshness when no replay run has been recorded yet (off: no replay means nothing to judge)."""
    row_count_tolerance: Annotated[int, Bounds(ge=0, le=1_000_000_000, fix="use 0")] = 0
    """Rows the target count may differ from the source count, on top of the latest diff's in-flight count."""
    idempotency_column: str = ""
    """Column of the transactions table that must be unique and not null (the idempotency key); "" (the
    default): the idempotency checks are not applicable."""
    negative_balance_exempt_column: str = ""
    """Accounts column whose values listed below may carry a negative balance (e.g. "kind"); setting it turns
    the negative-balance invariant on."""
    negative_balance_exempt_values: tuple[str, ...] = ()
    """Values of ``negative_balance_exempt_column`` allowed below zero (e.g. ["equity"])."""
    allow_negative_balances: bool | None = None
    """true: negative balances are allowed (the invariant is not applicable); false: no balance may be negative
    except on the exempt accounts; unset: the invariant applies only when negative_balance_exempt_column is set
    (a double-entry ledger's sign convention is not guessed)."""
    chunk_rows: Annotated[int, Bounds(ge=1_000, le=50_000_000, fix="use e.g. 200000")] = 200_000
    """Rows one check statement reads at most (about): every table-wide expectation runs over key ranges of
    this size, each its own short read (DSQL: 128 MiB per query, 5 minutes per transaction)."""
    result_rows: Annotated[int, Bounds(ge=0, le=1000)] = 20
    """Unexpected values/rows kept per failed expectation in the results (and Data Docs)."""

    def __post_init__(self) -> None:
        from reconcile.config import InvalidSetting

        check_fields(self, "checks")
        unknown = [s for s in self.suites if s not in SUITE_KINDS]
        if unknown or not self.suites:
            raise InvalidSetting("checks", "suites",
                                 f"must list some of {', '.join(SUITE_KINDS)}, got {list(self.suites)}",
                                 f'e.g. suites = ["{SUITE_KINDS[0]}", "{SUITE_KINDS[1]}"]')
        for key in ("idempotency_column", "negative_balance_exempt_column"):
            value = getattr(self, key)
            if not isinstance(value, str) or value != value.strip():
                raise InvalidSetting("checks", key, f"must be a column name, got {value!r}",
                                     f'name a column, or set {key} = "" to skip')
        if self.negative_balance_exempt_values and not self.negative_balance_exempt_column:
            raise InvalidSetting("checks", "negative_balance_exempt_values",
                                 "is set but negative_balance_exempt_column is not",
                                 "name the accounts column holding these values in negative_balance_exempt_column")
