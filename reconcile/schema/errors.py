"""Errors of the schema stage."""

from __future__ import annotations

from reconcile.errors import TerminalError

__all__ = ["ContractError", "SchemaApplyFailed"]


class SchemaApplyFailed(TerminalError):
    """A planned statement failed on the target; earlier statements stay applied (rerun resumes)."""


class ContractError(TerminalError):
    """The column contract cannot be used as it stands (a table missing, the stored plan out of date)."""
