"""Errors of the schema stage."""

from __future__ import annotations

from reconcile.errors import TerminalError

__all__ = ["SchemaApplyFailed"]


class SchemaApplyFailed(TerminalError):
    """A planned statement failed on the target; earlier statements stay applied (rerun resumes)."""
