"""The base every stage's control-table access shares: one target, its budget, its retry policy.

Each stage keeps its own queries (``reconcile.backfill.checkpoints.Control``,
``reconcile.replay.state.ReplayControl``, ...); what they share is here: every write goes through
:func:`reconcile.occ.run_with_retry` with the stage's counters, within its :class:`~reconcile.budget.Budget`.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from reconcile.budget import Budget
from reconcile.occ import DEFAULT_POLICY, RetryCounters, RetryPolicy, Target, run_with_retry

T = TypeVar("T")


class ControlWriter:
    """Holds the target connection (or a factory), the budget, the retry policy and the retry counters."""

    def __init__(self, target: Target, *, budget: Budget | None = None, policy: RetryPolicy = DEFAULT_POLICY,
                 counters: RetryCounters | None = None, migration_id: str | None = None) -> None:
        self.target = target
        self.migration_id = migration_id
        """The migration the runs this writer opens belong to (:func:`reconcile.identity.migration_of`)."""
        self.budget = budget or Budget()
        self.policy = policy
        self.counters = counters if counters is not None else RetryCounters()

    def _tx(self, fn: Callable[[Any], T], label: str) -> T:
        """Run ``fn(conn)`` as one target transaction, retried on conflicts (see reconcile.occ)."""
        return run_with_retry(self.target, fn, policy=self.policy, counters=self.counters, label=label)
