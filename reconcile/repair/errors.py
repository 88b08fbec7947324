"""Errors of live repair (one sentence: what is wrong and what to do)."""

from __future__ import annotations

from reconcile.errors import TerminalError, TransientError


class RepairError(TerminalError):
    """A repair cannot go on as asked (no findings to repair, a table or key the source lacks, a stuck
    source transaction)."""


class RepairTimeout(TransientError):
    """The replay did not reach the repair's high watermarks in time (is it running?); the copied chunks stay
    pending and are applied when it does, so running the repair again later is safe."""
