"""Errors of the reverse replay."""

from __future__ import annotations

from reconcile.errors import ReconcileError


class ReverseError(ReconcileError):
    """The reverse replay cannot go on (one sentence saying why and what to do)."""


class ReverseNotReady(ReverseError):
    """Set-up is missing or wrong (init not run, a table or type the reverse replay cannot carry): exit 2."""

    exit_code = 2
