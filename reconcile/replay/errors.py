"""Errors of the replay stage: one plain sentence each, saying what is wrong and what to do."""

from __future__ import annotations

from reconcile.errors import TerminalError, TransientError


class ReplayError(TerminalError):
    """Replay cannot go on until a person acts."""


class PrerequisiteFailed(ReplayError):
    """The source is not ready for logical replication (wal_level, keys, privileges)."""


class SlotMissing(ReplayError):
    """The replication slot or publication does not exist (run `reconcile replay init`)."""


class BackfillIncomplete(ReplayError):
    """The initial backfill of a replicated table is not done; applying now could leave stale rows."""


class WatermarkMoved(TransientError):
    """Another replayer moved the watermark of this slot: two replayers must never run on one slot."""


class SlotBusy(TransientError):
    """The replication slot is in use by another process right now."""


class ReadOutOfOrder(ReplayError):
    """A read of the slot broke the commit-order contract; replay stops before applying or advancing."""


class DeadLetterNotFound(ReplayError):
    """No dead letter with that id."""


def primary_message(exc: BaseException) -> str:
    r"""The server's primary message of a database error (its first line otherwise, or its type name).

    >>> primary_message(ValueError("first line\nsecond"))
    'first line'
    >>> primary_message(RuntimeError())
    'RuntimeError'
    """
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        return primary
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
