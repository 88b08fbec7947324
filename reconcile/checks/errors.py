"""Errors of the checks stage (one sentence: what is wrong and what to do)."""

from __future__ import annotations

from reconcile.errors import TerminalError


class CheckError(TerminalError):
    """A checks command was given something it cannot act on (an unknown reject, a forged name)."""
