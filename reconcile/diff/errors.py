"""Errors of the diff stage (one sentence: what is wrong and what to do)."""

from __future__ import annotations

from reconcile.errors import TerminalError


class DiffError(TerminalError):
    """A table cannot be compared as configured (missing table or key column)."""


class BalanceLayoutError(DiffError):
    """A configured ledger column does not exist on a side: the balance diff cannot read what it was told to."""


class RunNotFound(TerminalError):
    """The run id names no diff run in ``reconcile.runs``."""


class ReportError(TerminalError):
    """A report could not be written or uploaded."""
