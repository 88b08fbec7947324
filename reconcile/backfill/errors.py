"""Errors of the backfill stage; each says what is wrong and what to do."""

from __future__ import annotations

from reconcile.errors import TerminalError, TransientError


class BadKey(TerminalError):
    """A key given on the command line (or stored in a chunk row) cannot be used."""


class TableNotReady(TerminalError):
    """A table cannot be backfilled as it stands (missing on the target, no unique key...)."""


class PlanMismatch(TerminalError):
    """The stored chunk plan of a table was made with other settings than this run's."""


class ReplayNotReady(TerminalError):
    """Replay is required but the replication slot that would capture racing writes is missing."""


class ChunkLost(TransientError):
    """Another run took over the chunk (its lease expired); this worker stops copying it."""

    def __init__(self, table: str, chunk_id: int) -> None:
        self.table = table
        self.chunk_id = chunk_id
        super().__init__(
            f"chunk {chunk_id} of {table} was taken over by another run (its lease expired); this "
            "worker stopped copying it. Give long-running workers a larger --lease-seconds.")

    def __reduce__(self):
        return (self.__class__, (self.table, self.chunk_id))
