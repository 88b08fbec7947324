"""Errors of the gates stage.

:class:`GateRefused` (exit code 1) means the gate said no on purpose: a criterion fails, the state
does not allow the step, a second approver is missing, the audit trail is broken. Everything else
is an error (exit code 2).
"""

from __future__ import annotations

from reconcile.errors import TerminalError


class GateError(TerminalError):
    """A gate operation could not be carried out (bad input, unreachable SSM...)."""


class GateRefused(GateError):
    """The gate refused the request; ``failing`` names the criteria (or rule) that said no."""

    exit_code = 1

    def __init__(self, message: str, failing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.failing = tuple(failing)

    def __reduce__(self):
        return (self.__class__, (self.message, self.failing))


class PublishFailed(GateError):
    """The state could not be published (SSM unreachable or not permitted)."""
