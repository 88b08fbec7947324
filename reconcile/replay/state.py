"""Replay's control rows on the target: dead letters (with large payloads in parts) and split windows.

Dead letters (``reconcile.dead_letters``): one row per source transaction replay could not apply,
with its reason, SQLSTATE, change count and the whole transaction as JSON (``payload``). A payload
longer than :data:`PART_CHARS` is stored in ``reconcile.dead_letter_parts`` in pieces
(``payload_parts`` says how many; ``payload`` then holds only a short summary): nothing is ever
truncated. The parts are written first, in budget-sized transactions, and the dead-letter row last,
so an open dead letter always has its whole payload. The id is deterministic (uuid5 of slot, commit
LSN, xid and attempt): a run killed between the parts and the row leaves parts that the rerun
overwrites in place (upsert) before it inserts the row (``ON CONFLICT DO NOTHING``), never a second set.

A dead letter is *open* while ``resolved_at`` is NULL; replay stops at it. Resolutions
(``resolution``): ``skip`` (an operator skipped it, with a reason: replay moves past it without
applying it), ``skipped`` (``on_error='skip'`` skipped it automatically), ``retry`` (apply it again on
the next run), ``retry-split`` (apply it again in pieces: the operator accepts a non-atomic window).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from reconcile.control.writer import ControlWriter
from reconcile.backfill.checkpoints import _alive
from reconcile.control.migrations import ident
from reconcile.replay import pgoutput as po
from reconcile.replay.errors import DeadLetterNotFound, ReplayError
from reconcile.replay.source import SourceTxn

PART_CHARS = 256 * 1024
"""Characters of payload per ``dead_letter_parts`` row (well under DSQL's 1 MiB per column)."""
REASON_LIMIT = 4000
_WINDOW_NS = uuid.UUID("0f3c7a52-55a4-4c1e-9a57-5b0c3de1c0a1")
_DEAD_LETTER_NS = uuid.UUID("6d1f0c3e-2b8a-4f7e-9c41-8a0e5d2b7f19")

RESOLUTIONS = ("skip", "skipped", "retry", "retry-split")


@dataclass(frozen=True)
class DeadLetter:
    dead_letter_id: str
    slot_name: str
    xid: int | None
    commit_lsn: str | None
    end_lsn: str | None
    table_name: str | None
    reason: str
    sqlstate: str | None
    change_count: int | None
    created_at: Any
    resolved_at: Any
    resolution: str | None
    resolved_by: str | None
    resolution_reason: str | None
    payload_parts: int | None

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dead_letter_id": self.dead_letter_id, "slot_name": self.slot_name, "xid": self.xid,
            "commit_lsn": self.commit_lsn, "end_lsn": self.end_lsn, "table_name": self.table_name,
            "reason": self.reason, "sqlstate": self.sqlstate, "change_count": self.change_count,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
            "open": self.open, "resolution": self.resolution, "resolved_by": self.resolved_by,
            "resolution_reason": self.resolution_reason, "payload_parts": self.payload_parts,
        }


_DL_COLUMNS = sql.SQL("dead_letter_id, slot_name, xid, commit_lsn, end_lsn, table_name, reason, sqlstate, change_count, "
                      "created_at, resolved_at, resolution, resolved_by, resolution_reason, payload_parts")


def _dl(row: tuple) -> DeadLetter:
    return DeadLetter(str(row[0]), *row[1:])


class ReplayControl(ControlWriter):
    """Reads and writes replay's control rows through the OCC retry helper, within the budget."""

    # --- dead letters -------------------------------------------------------------------------------

    @staticmethod
    def dead_letter_id(slot_name: str, txn: SourceTxn, attempt: int = 0) -> uuid.UUID:
        """The id of the ``attempt``-th dead letter of a source transaction (deterministic: a rerun after a
        kill writes onto the same id instead of adding a second one).

        ``attempt`` counts the earlier, resolved dead letters of the same transaction (a ``retry`` that
        failed again is a new dead letter, with a new id).
        """
        return uuid.uuid5(_DEAD_LETTER_NS, f"{slot_name}\0{txn.commit_lsn_text}\0{txn.xid}\0{attempt}")

    def record_dead_letter(self, slot_name: str, txn: SourceTxn, *, reason: str, sqlstate: str | None,
                           run_id: str | None, resolution: str | None = None, resolved_by: str | None = None,
                           resolution_reason: str | None = None) -> str:
        """Store a source transaction replay could not apply; returns the dead letter's id.

        Idempotent, also across a kill anywhere inside it: an open dead letter of the same transaction is
        returned unchanged; otherwise the id is :meth:`dead_letter_id` (slot, commit LSN, xid and the number
        of earlier resolved dead letters of the transaction), the payload parts are upserted onto that id
        and the row is inserted ``ON CONFLICT DO NOTHING``, so a rerun completes what a killed run began
        and never adds a second set of parts.
        """
        same = [d for d in self.dead_letters(slot_name, commit_lsn=txn.commit_lsn_text) if d.xid in (None, txn.xid)]
        still_open = [d for d in same if d.open]
        if still_open and resolution is None:
            return still_open[0].dead_letter_id
        dl_id = str(self.dead_letter_id(slot_name, txn, sum(1 for d in same if not d.open)))
        payload = json.dumps(txn.payload(), ensure_ascii=False, separators=(",", ":"))
        parts: int | None = None
        stored = payload
        if len(payload) > PART_CHARS:
            pieces = [payload[i:i + PART_CHARS] for i in range(0, len(payload), PART_CHARS)]
            parts = len(pieces)
            stored = json.dumps({"payload_parts": parts, "characters": len(payload), "changes": len(txn.changes),
                                 "note": "the payload is in reconcile.dead_letter_parts (part_no order)"})
            q = sql.SQL("INSERT INTO {} (dead_letter_id, part_no, data) VALUES (%s, %s, %s) "
                        "ON CONFLICT (dead_letter_id, part_no) DO UPDATE SET data = EXCLUDED.data").format(
                ident("dead_letter_parts"))
            rows = [(dl_id, i, p) for i, p in enumerate(pieces)]
            for batch in self.budget.batches(rows, lambda r: (1, len(r[2].encode()) + 64), what="payload part"):
                self._tx(lambda c, b=batch: c.cursor().executemany(q, list(b)), "dead letter payload")
        tables = sorted({c.table for c in txn.changes} | set(txn.truncated))
        q = sql.SQL("""
INSERT INTO {} (dead_letter_id, slot_name, xid, commit_lsn, end_lsn, table_name, reason, sqlstate, change_count,
                payload, payload_parts, run_id, resolved_at, resolution, resolved_by, resolution_reason)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, CASE WHEN %s::text IS NULL THEN NULL ELSE now() END,
        %s, %s, %s)
ON CONFLICT (dead_letter_id) DO NOTHING""").format(ident("dead_letters"))
        params = (dl_id, slot_name, txn.xid, txn.commit_lsn_text, txn.end_lsn_text, ", ".join(tables) or None,
                  reason[:REASON_LIMIT], sqlstate, len(txn.changes), stored, parts, run_id, resolution, resolution,
                  resolved_by, resolution_reason)
        self._tx(lambda c: c.execute(q, params), "dead letter")
        return dl_id

    def dead_letters(self, slot_name: str | None = None, *, commit_lsn: str | None = None,
                     open_only: bool = False) -> list[DeadLetter]:
        where = [sql.SQL("TRUE")]
        params: list[Any] = []
        if slot_name is not None:
            where.append(sql.SQL("slot_name = %s"))
            params.append(slot_name)
        if commit_lsn is not None:
            where.append(sql.SQL("commit_lsn = %s"))
            params.append(commit_lsn)
        if open_only:
            where.append(sql.SQL("resolved_at IS NULL"))
        q = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY created_at").format(
            _DL_COLUMNS, ident("dead_letters"), sql.SQL(" AND ").join(where))
        return [_dl(r) for r in self._tx(lambda c: c.execute(q, params).fetchall(), "dead letters read")]

    def get(self, dead_letter_id: str) -> DeadLetter:
        try:
            dl_uuid = uuid.UUID(str(dead_letter_id))
        except ValueError:
            raise DeadLetterNotFound(f"{dead_letter_id!r} is not a dead letter id (a UUID): copy it from "
                                     "`reconcile replay dead-letters list`.") from None
        q = sql.SQL("SELECT {} FROM {} WHERE dead_letter_id = %s").format(_DL_COLUMNS, ident("dead_letters"))
        row = self._tx(lambda c: c.execute(q, (dl_uuid,)).fetchone(), "dead letter read")
        if row is None:
            raise DeadLetterNotFound(f"There is no dead letter {dead_letter_id}: list them with "
                                     "`reconcile replay dead-letters list`.")
        return _dl(row)

    def payload(self, dead_letter_id: str) -> dict[str, Any]:
        """The whole payload of a dead letter (joined from its parts when it has some)."""
        dl = self.get(dead_letter_id)
        q = sql.SQL("SELECT payload FROM {} WHERE dead_letter_id = %s").format(ident("dead_letters"))
        (text,) = self._tx(lambda c: c.execute(q, (uuid.UUID(dl.dead_letter_id),)).fetchone(), "payload read")
        if dl.payload_parts:
            pq = sql.SQL("SELECT data FROM {} WHERE dead_letter_id = %s ORDER BY part_no").format(
                ident("dead_letter_parts"))
            parts = self._tx(lambda c: c.execute(pq, (uuid.UUID(dl.dead_letter_id),)).fetchall(), "payload parts")
            if len(parts) != dl.payload_parts:
                raise ReplayError(f"Dead letter {dead_letter_id} should have {dl.payload_parts} payload parts but "
                                  f"{len(parts)} are stored: the payload is incomplete; read the source WAL instead.")
            text = "".join(p[0] for p in parts)
        return json.loads(text)

    def resolve(self, dead_letter_id: str, *, resolution: str, by: str | None, reason: str | None) -> DeadLetter:
        """Resolve an open dead letter (``skip``, ``retry`` or ``retry-split``)."""
        if resolution not in RESOLUTIONS:
            raise ReplayError(f"unknown resolution {resolution!r}; use one of {', '.join(RESOLUTIONS)}")
        dl = self.get(dead_letter_id)
        if not dl.open:
            raise ReplayError(f"Dead letter {dead_letter_id} is already resolved ({dl.resolution} at "
                              f"{dl.resolved_at}); nothing to do.")
        q = sql.SQL("UPDATE {} SET resolved_at = now(), resolution = %s, resolved_by = %s, resolution_reason = %s "
                    "WHERE dead_letter_id = %s AND resolved_at IS NULL").format(ident("dead_letters"))
        self._tx(lambda c: c.execute(q, (resolution, by, reason, uuid.UUID(dl.dead_letter_id))), "dead letter resolve")
        return self.get(dead_letter_id)

    def decisions(self, slot_name: str, after_lsn: int) -> dict[int, DeadLetter]:
        """Latest dead letter per source commit LSN above ``after_lsn`` (what replay must do there)."""
        by_lsn: dict[int, list[DeadLetter]] = {}
        for d in self.dead_letters(slot_name):
            lsn = po.lsn_to_int(d.commit_lsn)
            if lsn > after_lsn:
                by_lsn.setdefault(lsn, []).append(d)
        out: dict[int, DeadLetter] = {}
        for lsn, ds in by_lsn.items():
            still_open = [d for d in ds if d.open]
            out[lsn] = still_open[0] if still_open else max(ds, key=lambda d: d.created_at)
        return out

    def count_open(self, slot_name: str) -> int:
        q = sql.SQL("SELECT count(*) FROM {} WHERE slot_name = %s AND resolved_at IS NULL").format(
            ident("dead_letters"))
        return self._tx(lambda c: c.execute(q, (slot_name,)).fetchone()[0], "dead letters count")

    # --- split windows --------------------------------------------------------------------------------

    @staticmethod
    def window_id(slot_name: str, txn: SourceTxn) -> uuid.UUID:
        return uuid.uuid5(_WINDOW_NS, f"{slot_name}\0{txn.commit_lsn_text}")

    def open_window(self, slot_name: str, txn: SourceTxn, *, pieces: int, reason: str, run_id: str | None) -> uuid.UUID:
        wid = self.window_id(slot_name, txn)
        tables = ", ".join(sorted({c.table for c in txn.changes}))
        q = sql.SQL("""
INSERT INTO {} (window_id, slot_name, xid, commit_lsn, end_lsn, source_commit_ts, changes, pieces, pieces_applied,
                tables, reason, run_id)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 0, %s, %s, %s)
ON CONFLICT (window_id) DO UPDATE SET pieces = EXCLUDED.pieces, run_id = EXCLUDED.run_id""").format(
            ident("replay_windows"))
        params = (wid, slot_name, txn.xid, txn.commit_lsn_text, txn.end_lsn_text, po.pg_timestamp(txn.commit_ts),
                  len(txn.changes), pieces, tables, reason[:REASON_LIMIT], run_id)
        self._tx(lambda c: c.execute(q, params), "split window")
        return wid

    @staticmethod
    def piece_done(conn: psycopg.Connection, wid: uuid.UUID, piece: int, last: bool) -> None:
        """Inside a piece's transaction: record its progress (and the window's end on the last piece)."""
        conn.execute(sql.SQL("UPDATE {} SET pieces_applied = %s, finished_at = CASE WHEN %s THEN now() END "
                             "WHERE window_id = %s").format(ident("replay_windows")), (piece + 1, last, wid))

    def windows(self, slot_name: str) -> list[dict[str, Any]]:
        q = sql.SQL("SELECT window_id, xid, commit_lsn, changes, pieces, pieces_applied, tables, reason, started_at, "
                    "finished_at FROM {} WHERE slot_name = %s ORDER BY started_at").format(ident("replay_windows"))
        keys = ("window_id", "xid", "commit_lsn", "changes", "pieces", "pieces_applied", "tables", "reason",
                "started_at", "finished_at")
        return [{k: (str(v) if k == "window_id" else v.isoformat() if hasattr(v, "isoformat") else v)
                 for k, v in zip(keys, r)}
                for r in self._tx(lambda c: c.execute(q, (slot_name,)).fetchall(), "split windows read")]

    # --- runs -----------------------------------------------------------------------------------------

    def abandon_stale_runs(self, slot_name: str, *, own_run_id: str | None, stale_after_seconds: float,
                           host: str | None = None, alive: Callable[[int], bool] | None = None) -> list[str]:
        """Close ``running`` replay runs of ``slot_name`` whose process cannot be alive as ``abandoned``.

        A killed run (Airflow ``execution_timeout``, a lost worker, ``kill -9``) never finishes its row.
        Such a row is closed when it was started on this host by a pid that is gone, or, from another host
        (where its pid cannot be checked), when it started more than ``stale_after_seconds`` ago and the
        slot's watermark (``replay_state.updated_at``) has not moved for as long: only one replayer can
        apply on a slot, so a live one would have moved it. Rows of this process are left alone (another
        thread may be replaying). A wrongly closed live run corrects its own row when it finishes.
        Returns the ids closed.
        """
        host = host or socket.gethostname()
        alive = alive or _alive
        q = sql.SQL("SELECT r.run_id, r.settings, extract(epoch FROM now() - r.started_at), "
                    "(SELECT extract(epoch FROM now() - s.updated_at) FROM {state} s WHERE s.slot_name = %s) "
                    "FROM {runs} r WHERE r.kind = 'replay' AND r.status = 'running'").format(
            runs=ident("runs"), state=ident("replay_state"))
        rows = self._tx(lambda c: c.execute(q, (slot_name,)).fetchall(), "replay runs read")
        closed: list[tuple[str, str]] = []
        for run_id, settings, age, idle in rows:
            run_id = str(run_id)
            if run_id == own_run_id:
                continue
            try:
                doc = json.loads(settings or "{}")
            except json.JSONDecodeError:
                doc = {}
            if not isinstance(doc, dict) or (doc.get("settings") or {}).get("slot_name") != slot_name:
                continue
            pid = doc.get("pid")
            if doc.get("host") == host and isinstance(pid, int):
                if pid != os.getpid() and not alive(pid):
                    closed.append((run_id, f"its process (pid {pid} on {host}) is gone"))
            elif float(age) > stale_after_seconds and (idle is None or float(idle) > stale_after_seconds):
                where = doc.get("host") or "an unknown host"
                closed.append((run_id, f"it started {float(age) / 60:.0f} min ago on {where} and the slot's "
                                       "watermark has not moved since"))
        upd = sql.SQL("UPDATE {} SET status = 'abandoned', finished_at = now(), summary = %s "
                      "WHERE run_id = %s AND status = 'running'").format(ident("runs"))
        for run_id, why in closed:
            summary = {"status": "abandoned", "caught_up": False, "closed_by_run": own_run_id,
                       "message": f"Replay run {run_id} never finished ({why}); closed as abandoned. What it "
                                  "committed is kept: the watermark says where replay stands."}
            self._tx(lambda c, r=run_id, d=summary: c.execute(upd, (json.dumps(d), uuid.UUID(r))), "abandon run")
        return [r for r, _ in closed]

    def recent_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        q = sql.SQL("SELECT run_id, status, started_at, finished_at, summary FROM {} WHERE kind = 'replay' "
                    "ORDER BY started_at DESC LIMIT %s").format(ident("runs"))
        out = []
        for run_id, status, started, finished, summary in self._tx(lambda c: c.execute(q, (limit,)).fetchall(),
                                                                   "replay runs read"):
            try:
                doc = json.loads(summary) if summary else {}
            except json.JSONDecodeError:
                doc = {}
            out.append({"run_id": str(run_id), "status": status, "started_at": started, "finished_at": finished,
                        "summary": doc})
        return out
