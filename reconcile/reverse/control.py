"""The reverse replay's control rows on the target: runs (``reconcile.runs``, kind ``reverse_replay``) and
dead letters (``reconcile.reverse_dead_letters``, payloads over 256 KiB in ``reverse_dead_letter_parts``).

A dead letter's id is deterministic (uuid5 of stream, txId and commit time), so a run killed while
recording one and rerun writes onto the same row instead of adding a second. Resolutions: ``skip`` (an
operator decided the transaction is not to be applied; the replay then passes over it).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from reconcile.control.migrations import ident
from reconcile.control.writer import ControlWriter
from reconcile.errors import InvalidArgument, ReconcileError

RUN_KIND = "reverse_replay"
PART_CHARS = 256 * 1024
REASON_LIMIT = 4000
_NS = uuid.UUID("a4f2d0c1-7e2b-4b36-9b1e-2f7d6c5a8e31")


class DeadLetterNotFound(ReconcileError):
    pass


@dataclass(frozen=True)
class ReverseDeadLetter:
    dead_letter_id: str
    stream: str
    tx_id: str
    ts_ns: int
    tables: str | None
    reason: str
    sqlstate: str | None
    change_count: int | None
    created_at: Any
    resolved_at: Any
    resolution: str | None
    resolved_by: str | None
    resolution_reason: str | None

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("created_at", "resolved_at"):
            d[k] = d[k].isoformat() if d[k] else None
        return d | {"open": self.open}


_COLS = sql.SQL("dead_letter_id, stream, tx_id, ts_ns, tables, reason, sqlstate, change_count, created_at, resolved_at, "
                "resolution, resolved_by, resolution_reason")


class ReverseControl(ControlWriter):
    """Reads and writes the reverse replay's dead letters on the target (through the OCC retry helper)."""

    @staticmethod
    def dead_letter_id(stream: str, tx_id: str, ts_ns: int) -> str:
        return str(uuid.uuid5(_NS, f"{stream}\0{tx_id}\0{ts_ns}"))

    def record(self, stream: str, tx_id: str, ts_ns: int, payload: list[dict[str, Any]], *, reason: str,
               sqlstate: str | None, run_id: str | None) -> str:
        dl_id = self.dead_letter_id(stream, tx_id, ts_ns)
        text = json.dumps(payload, ensure_ascii=False, default=str, separators=(",", ":"))
        parts = None
        stored = text
        if len(text) > PART_CHARS:
            pieces = [text[i:i + PART_CHARS] for i in range(0, len(text), PART_CHARS)]
            parts = len(pieces)
            stored = json.dumps({"payload_parts": parts, "changes": len(payload)})
            q = sql.SQL("INSERT INTO {} (dead_letter_id, part_no, data) VALUES (%s, %s, %s) ON CONFLICT "
                        "(dead_letter_id, part_no) DO UPDATE SET data = EXCLUDED.data").format(
                ident("reverse_dead_letter_parts"))
            rows = [(dl_id, i, p) for i, p in enumerate(pieces)]
            for batch in self.budget.batches(rows, lambda r: (1, len(r[2].encode()) + 64), what="payload part"):
                self._tx(lambda c, b=batch: c.cursor().executemany(q, list(b)), "reverse dead letter payload")
        tables = ", ".join(sorted({c.get("table", "?") for c in payload}))
        q = sql.SQL("""
INSERT INTO {} (dead_letter_id, stream, tx_id, ts_ns, tables, reason, sqlstate, change_count, payload, payload_parts,
                run_id)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (dead_letter_id) DO NOTHING""").format(
            ident("reverse_dead_letters"))
        params = (dl_id, stream, tx_id, ts_ns, tables or None, reason[:REASON_LIMIT], sqlstate, len(payload), stored,
                  parts, run_id)
        self._tx(lambda c: c.execute(q, params), "reverse dead letter")
        return dl_id

    def dead_letters(self, stream: str, *, open_only: bool = False) -> list[ReverseDeadLetter]:
        q = sql.SQL("SELECT {} FROM {} WHERE stream = %s{} ORDER BY created_at").format(
            _COLS, ident("reverse_dead_letters"), sql.SQL(" AND resolved_at IS NULL") if open_only else sql.SQL(""))
        rows = self._tx(lambda c: c.execute(q, (stream,)).fetchall(), "reverse dead letters read")
        return [ReverseDeadLetter(str(r[0]), *r[1:]) for r in rows]

    def count_open(self, stream: str) -> int:
        return len(self.dead_letters(stream, open_only=True))

    def resolve(self, dead_letter_id: str, *, resolution: str, by: str | None, reason: str) -> ReverseDeadLetter:
        if resolution != "skip":
            raise InvalidArgument(f"unknown resolution {resolution!r}; valid: skip")
        try:
            key = uuid.UUID(str(dead_letter_id))
        except ValueError:
            raise DeadLetterNotFound(f"{dead_letter_id!r} is not a dead letter id (a UUID): copy it from "
                                     "`reconcile reverse status --json`.") from None
        q = sql.SQL("UPDATE {} SET resolved_at = now(), resolution = %s, resolved_by = %s, resolution_reason = %s "
                    "WHERE dead_letter_id = %s AND resolved_at IS NULL RETURNING stream").format(
            ident("reverse_dead_letters"))
        row = self._tx(lambda c: c.execute(q, (resolution, by, reason, key)).fetchone(), "reverse dead letter resolve")
        if row is None:
            raise DeadLetterNotFound(f"There is no open reverse dead letter {dead_letter_id}: see "
                                     "`reconcile reverse status`.")
        return next(d for d in self.dead_letters(row[0]) if d.dead_letter_id == str(key))
