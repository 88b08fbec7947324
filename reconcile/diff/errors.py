"""Errors of the diff stage (one sentence: what is wrong and what to do)."""

from __future__ import annotations

from reconcile.errors import TerminalError


class DiffError(TerminalError):
    """A table cannot be compared as configured (missing table or key column)."""


class RunNotFound(TerminalError):
    """The run id names no diff run in ``reconcile.runs``."""


class ReportError(TerminalError):
    """A report could not be written or uploaded."""
