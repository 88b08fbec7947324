"""Errors of the audit stage."""

from __future__ import annotations

from reconcile.errors import TerminalError

__all__ = ["AuditFailed", "LintUnavailable"]


class AuditFailed(TerminalError):
    """A step of the audit could not read the source (the message names the step and the fix)."""


class LintUnavailable(TerminalError):
    """pg_dump or dsql-lint could not run: the statement-level checks are skipped and reported."""
