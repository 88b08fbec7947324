"""Error classes shared by every stage.

One root, :class:`ReconcileError`. Each error carries a one-sentence message that says what is
wrong and what to do; the CLI prints it and exits non-zero. Retryability lives in the type
(:class:`TransientError` vs :class:`TerminalError`), so callers (the OCC retry helper, Airflow
tasks) decide without parsing text. Errors stay picklable: they cross process boundaries.
"""

from __future__ import annotations


class ReconcileError(Exception):
    """Root of every error raised on purpose by reconcile."""

    exit_code = 2
    retryable = False
    """Whether running the same work again may succeed (True only for :class:`TransientError`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # keep picklable with a single positional arg
        return (self.__class__, (self.message,))

    def __str__(self) -> str:
        return self.message


class TransientError(ReconcileError):
    """Retrying the same work later may succeed."""

    retryable = True


class TerminalError(ReconcileError):
    """Retrying the same work will fail the same way; a person must act."""


class ConfigError(TerminalError):
    """The configuration file or environment is invalid."""


class ConnectionFailed(TransientError):
    """A database could not be reached (message never contains a secret)."""


class LocalStackError(TerminalError):
    """The embedded local PostgreSQL servers could not be started, stopped or found."""


class LimitExceeded(TerminalError):
    """Work does not fit a DSQL transaction limit (SQLSTATE 54000); split it, never retry it."""


class RetriesExhausted(TransientError):
    """A target transaction kept failing with a retryable error until the retry policy gave up."""

    def __init__(self, sqlstate: str | None, attempts: int, marker: str | None = None) -> None:
        self.sqlstate = sqlstate
        self.attempts = attempts
        self.marker = marker
        what = f"SQLSTATE {sqlstate}" if sqlstate else "a dropped connection"
        if marker:
            what += f" ({marker})"
        super().__init__(
            f"Gave up after {attempts} attempts: the target transaction kept failing with {what}; "
            "lower the write concurrency or raise the retry policy's max_attempts, then rerun."
        )

    def __reduce__(self):
        return (self.__class__, (self.sqlstate, self.attempts, self.marker))


class MigrationFailed(TerminalError):
    """A control-schema migration step could not be applied."""


class StepFailed(ReconcileError):
    """A step of a stage failed on an error it did not raise on purpose (a driver error, a bug).

    Built by a stage's error boundary (:func:`reconcile.occ.stage_error`) from the error it caught,
    which stays its ``__cause__``. Never raised as such: :class:`TransientFailure` or
    :class:`TerminalFailure` says whether a retry can help.
    """

    advice = "see the cause"

    def __init__(self, step: str, reason: str, sqlstate: str | None = None) -> None:
        self.step = step
        self.reason = reason
        self.sqlstate = sqlstate
        code = f" with SQLSTATE {sqlstate}" if sqlstate else ""
        super().__init__(f"{step} failed{code}: {reason}; {self.advice}.")

    def __reduce__(self):
        return (self.__class__, (self.step, self.reason, self.sqlstate))


class TransientFailure(StepFailed, TransientError):
    """The step failed in a way a retry of the same work can get past (a dropped connection, throttling)."""

    advice = "a retry can succeed (Airflow retries the task), and what committed is kept"


class TerminalFailure(StepFailed, TerminalError):
    """The step failed in a way a retry would repeat (a missing privilege or object, bad data, a bug)."""

    advice = "a retry would fail the same way: fix the cause, then rerun"


class InvalidArgument(TerminalError, ValueError):
    """A value handed to the library or the CLI is out of its domain (the message names the valid ones)."""


class NotFound(TerminalError, KeyError):
    """A named thing (a table, a column, a run) does not exist where it was looked up."""
