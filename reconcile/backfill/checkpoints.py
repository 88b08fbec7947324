"""The backfill's state in the control schema: runs, chunk plans and checkpoints, rejects.

Tables (see :mod:`reconcile.control.migrations` and :mod:`reconcile.control.backfill_tables`):

* ``reconcile.runs``: one row per backfill run (``kind='backfill'``: settings, host and pid, summary),
  and one per chunk plan (``kind='backfill_plan'``). A plan row is written *after* all its chunk rows,
  so it is the commit marker of a plan made in several transactions: chunk rows without a plan row
  are the leftovers of an interrupted planning and are thrown away.
* ``reconcile.chunks``: one row per key range ``[lo, hi)``; ``status`` pending → running → done (or
  failed); ``run_id`` is the run that owns it while running; ``last_key`` and ``rows`` advance in the
  same target transaction as the rows they cover.
* ``reconcile.rejects``: one row per source row the target refused, with its key and the reason.

Every write runs through :func:`reconcile.occ.run_with_retry` and stays within the budget.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from reconcile.control.writer import ControlWriter
from reconcile.backfill.errors import ChunkLost
from reconcile.backfill.keys import Key, decode_key, encode_key
from reconcile.control.migrations import ident
from reconcile.identity import tables_json

log = logging.getLogger(__name__)

RUN_KIND = "backfill"
PLAN_KIND = "backfill_plan"
STAGE = "backfill"
ROW_DATA_LIMIT = 8192
"""Bytes of a rejected row kept in ``rejects.row_data`` (the rest is cut, its full size noted)."""
REASON_LIMIT = 2000
_REJECT_NS = uuid.UUID("6c1d7d0e-6f0b-4c52-9d7a-2a3f4e0b4d11")

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


@dataclass(frozen=True)
class Chunk:
    """One planned key range ``[lo, hi)`` of a table and its checkpoint; None bounds are open."""

    table: str
    chunk_id: int
    lo: Key | None
    hi: Key | None
    status: str = PENDING
    rows: int = 0
    rejected: int = 0
    attempts: int = 0
    last_key: Key | None = None
    """Key of the last row committed; a resume reads keys above it."""
    last_error: str | None = None
    duration_ms: int | None = None
    run_id: str | None = None
    replay_slot: str | None = None


@dataclass(frozen=True)
class Plan:
    """The stored plan of one table: how its chunks were cut."""

    plan_id: str
    table: str
    key: tuple[str, ...]
    key_types: tuple[str, ...]
    chunk_rows: int
    chunks: int
    planned_rows: int
    strategy: str
    """``index`` (boundaries read from an index) or ``sort`` (one sorted scan of the keys)."""


@dataclass(frozen=True)
class Reject:
    """A source row the target refused."""

    table: str
    key: Key
    sqlstate: str | None
    reason: str
    row_data: str | None = None
    chunk_id: int | None = None
    run_id: str | None = None
    created_at: Any = None

    @property
    def reject_id(self) -> uuid.UUID:
        """Stable per (table, key): recording the same refusal twice keeps one row."""
        return uuid.uuid5(_REJECT_NS, f"{STAGE}\0{self.table}\0{encode_key(self.key)}")


@dataclass(frozen=True)
class TableStatus:
    """Chunk counts and rows of one table, for ``reconcile backfill status``."""

    table: str
    chunks: int
    pending: int
    running: int
    done: int
    failed: int
    rows: int
    rejected: int
    planned_rows: int | None


def _cut(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text):,} characters in all]"


def _chunk(row: Sequence[Any]) -> Chunk:
    (table, chunk_id, lo, hi, status, rows, rejected, attempts, last_key, last_error, duration_ms,
     run_id, slot) = row
    return Chunk(table, chunk_id, decode_key(lo), decode_key(hi), status, rows or 0, rejected or 0,
                 attempts or 0, decode_key(last_key), last_error, duration_ms,
                 str(run_id) if run_id else None, slot)


_CHUNK_FIELDS = ("table_name", "chunk_id", "lo", "hi", "status", "rows", "rejected", "attempts", "last_key",
                 "last_error", "duration_ms", "run_id", "replay_slot")


def _chunk_columns(alias: str | None = None) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(alias, c) if alias else sql.Identifier(c) for c in _CHUNK_FIELDS)


_CHUNK_COLUMNS = _chunk_columns()


class Control(ControlWriter):
    """Reads and writes the backfill's control rows on the target."""

    def _read(self, query: sql.Composable, params: Sequence[Any] = ()) -> list[tuple]:
        return self._tx(lambda c: c.execute(query, params).fetchall(), "control read")

    # --- runs -------------------------------------------------------------------------------------

    def start_run(self, settings: dict[str, Any], *, kind: str = RUN_KIND) -> str:
        """Insert a running run row; returns its id. Host and pid are recorded for takeover checks, the
        writer's migration and the tables the run covers (``settings["tables"]`` or ``["table"]``) for the gates."""
        run_id = str(uuid.uuid4())
        doc = {**settings, "host": socket.gethostname(), "pid": os.getpid()}
        covered = settings.get("tables") or ([settings["table"]] if settings.get("table") else [])
        q = sql.SQL("INSERT INTO {} (run_id, kind, status, settings, migration_id, tables) "
                    "VALUES (%s, %s, 'running', %s, %s, %s)").format(ident("runs"))
        self._tx(lambda c: c.execute(q, (run_id, kind, json.dumps(doc, default=str), self.migration_id,
                                         tables_json(covered))), "backfill run start")
        return run_id

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any]) -> None:
        q = sql.SQL("UPDATE {} SET status = %s, finished_at = now(), summary = %s WHERE run_id = %s").format(
            ident("runs"))
        self._tx(lambda c: c.execute(q, (status, json.dumps(summary, default=str), run_id)), "backfill run end")

    def abandon_dead_runs(self) -> list[str]:
        """Mark runs of this host whose process is gone as ``abandoned``; their chunks become free."""
        rows = self._read(sql.SQL("SELECT run_id, settings FROM {} WHERE kind = %s AND status = 'running'").format(
            ident("runs")), (RUN_KIND,))
        host = socket.gethostname()
        dead = []
        for run_id, settings in rows:
            try:
                doc = json.loads(settings or "{}")
            except json.JSONDecodeError:
                continue
            if doc.get("host") == host and isinstance(doc.get("pid"), int) and not _alive(doc["pid"]):
                dead.append(str(run_id))
        if dead:
            q = sql.SQL("UPDATE {} SET status = 'abandoned', finished_at = now() "
                        "WHERE run_id = ANY(%s) AND status = 'running'").format(ident("runs"))
            for part in _slices(dead, self.budget.row_cap):
                self._tx(lambda c, p=part: c.execute(q, ([uuid.UUID(r) for r in p],)), "abandon dead runs")
            log.info("runs %s of this host had died; their chunks can be taken over", ", ".join(dead))
        return dead

    # --- plans ------------------------------------------------------------------------------------

    def load_plan(self, table: str) -> Plan | None:
        """The newest complete plan of ``table``, if any."""
        rows = self._read(sql.SQL(
            "SELECT run_id, settings FROM {} WHERE kind = %s AND status = 'done' ORDER BY started_at DESC").format(
            ident("runs")), (PLAN_KIND,))
        for run_id, settings in rows:
            doc = json.loads(settings or "{}")
            if doc.get("table") == table:
                return Plan(str(run_id), table, tuple(doc["key"]), tuple(doc["key_types"]), int(doc["chunk_rows"]),
                            int(doc["chunks"]), int(doc["planned_rows"]), doc.get("strategy", "index"))
        return None

    def drop_plan(self, table: str) -> None:
        """Forget the plan of ``table``: supersede its plan rows, then delete its chunk rows."""
        q = sql.SQL("SELECT run_id, settings FROM {} WHERE kind = %s AND status = 'done'").format(ident("runs"))
        ids = [uuid.UUID(str(r)) for r, s in self._read(q, (PLAN_KIND,)) if json.loads(s or "{}").get("table") == table]
        upd = sql.SQL("UPDATE {} SET status = 'superseded' WHERE run_id = ANY(%s)").format(ident("runs"))
        for part in _slices(ids, self.budget.row_cap):
            self._tx(lambda c, p=part: c.execute(upd, (p,)), "supersede plan")
        self.delete_chunks(table)

    def delete_chunks(self, table: str) -> int:
        """Delete every chunk row of ``table`` in budget-sized transactions."""
        ids = [r[0] for r in self._read(sql.SQL("SELECT chunk_id FROM {} WHERE table_name = %s").format(
            ident("chunks")), (table,))]
        q = sql.SQL("DELETE FROM {} WHERE table_name = %s AND chunk_id = ANY(%s)").format(ident("chunks"))
        # chunks has one secondary index: two DSQL rows per deleted row when index tuples count.
        for part in _slices(ids, max(1, self.budget.row_cap // 2)):
            self._tx(lambda c, p=part: c.execute(q, (table, p)), "delete chunks")
        return len(ids)

    def save_plan(self, table: str, key: Sequence[str], key_types: Sequence[str], boundaries: Sequence[Key],
                  *, chunk_rows: int, planned_rows: int, strategy: str) -> Plan:
        """Write the chunk rows of a new plan, then its plan row (the commit marker)."""
        bounds: list[Key | None] = [None, *boundaries, None]
        rows = [(table, i, encode_key(bounds[i]), encode_key(bounds[i + 1])) for i in range(len(bounds) - 1)]
        q = sql.SQL("INSERT INTO {} (table_name, chunk_id, lo, hi, status, rows, attempts, rejected) "
                    "VALUES (%s, %s, %s, %s, 'pending', 0, 0, 0) ON CONFLICT DO NOTHING").format(ident("chunks"))
        sizes = lambda r: (2, 256 + len(r[2] or "") + len(r[3] or ""))  # noqa: E731 - row + status index
        for batch in self.budget.batches(rows, sizes, what="chunk row"):
            self._tx(lambda c, b=batch: c.cursor().executemany(q, list(b)), "save chunk plan")
        doc = {"table": table, "key": list(key), "key_types": list(key_types), "chunk_rows": chunk_rows,
               "chunks": len(rows), "planned_rows": planned_rows, "strategy": strategy}
        plan_id = self.start_run(doc, kind=PLAN_KIND)
        self._tx(lambda c: c.execute(sql.SQL("UPDATE {} SET status = 'done', finished_at = now() WHERE run_id = %s")
                                     .format(ident("runs")), (plan_id,)), "plan marker")
        return Plan(plan_id, table, tuple(key), tuple(key_types), chunk_rows, len(rows), planned_rows, strategy)

    # --- chunks -----------------------------------------------------------------------------------

    def chunks(self, table: str, ids: Iterable[int] | None = None) -> list[Chunk]:
        """Chunk rows of ``table`` in key order (all, or those in ``ids``)."""
        if ids is None:
            q = sql.SQL("SELECT {} FROM {} WHERE table_name = %s ORDER BY chunk_id").format(
                _CHUNK_COLUMNS, ident("chunks"))
            return [_chunk(r) for r in self._read(q, (table,))]
        q = sql.SQL("SELECT {} FROM {} WHERE table_name = %s AND chunk_id = ANY(%s) ORDER BY chunk_id").format(
            _CHUNK_COLUMNS, ident("chunks"))
        return [_chunk(r) for r in self._read(q, (table, list(ids)))]

    def claim(self, table: str, chunk_id: int, run_id: str, *, lease_seconds: float,
              slot: str | None, force: bool = False) -> Chunk | None:
        """Take a chunk for ``run_id``; None when it is done (unless ``force``) or owned by a live run.

        With ``force`` the chunk starts again from ``lo`` (a triggered re-copy may target rows below
        its checkpoint); a done chunk always starts from ``lo``; otherwise it resumes after ``last_key``.

        A running chunk can be taken over when its run is no longer running (finished, interrupted,
        or found dead by :meth:`abandon_dead_runs`) or its lease expired (no checkpoint for
        ``lease_seconds``). ``replay_slot`` keeps the slot only while every part of the chunk was
        copied with it.
        """
        q = sql.SQL("""
UPDATE {chunks} AS c
   SET status = 'running', run_id = %(run)s, attempts = c.attempts + 1, last_error = NULL, updated_at = now(),
       replay_slot = CASE WHEN c.last_key IS NULL OR c.status = 'done' OR %(force)s THEN %(slot)s
                          WHEN c.replay_slot = %(slot)s THEN c.replay_slot END,
       last_key = CASE WHEN c.status = 'done' OR %(force)s THEN NULL ELSE c.last_key END,
       rows = CASE WHEN c.status = 'done' OR %(force)s THEN 0 ELSE c.rows END,
       rejected = CASE WHEN c.status = 'done' OR %(force)s THEN 0 ELSE c.rejected END
 WHERE c.table_name = %(table)s AND c.chunk_id = %(id)s
   AND (c.status IN ('pending', 'failed') OR (c.status = 'done' AND %(force)s)
        OR (c.status = 'running' AND (c.run_id IS NULL
            OR c.updated_at < now() - %(lease)s * interval '1 second'
            OR NOT EXISTS (SELECT 1 FROM {runs} AS r WHERE r.run_id = c.run_id AND r.status = 'running'))))
RETURNING {cols}""").format(chunks=ident("chunks"), runs=ident("runs"), cols=_chunk_columns("c"))
        params = {"run": run_id, "slot": slot, "table": table, "id": chunk_id, "force": force,
                  "lease": float(lease_seconds)}
        row = self._tx(lambda c: c.execute(q, params).fetchone(), f"claim chunk {chunk_id} of {table}")
        return _chunk(row) if row else None

    @staticmethod
    def checkpoint(conn: psycopg.Connection, chunk: Chunk, run_id: str, *, last_key: Key | None, rows: int,
                   rejected: int, done: bool, duration_ms: int | None) -> None:
        """Advance a chunk inside the caller's transaction (the one that wrote its rows).

        Raises:
            ChunkLost: the chunk is no longer owned by ``run_id``; the caller's transaction must roll back.
        """
        q = sql.SQL("""
UPDATE {} SET last_key = coalesce(%(last_key)s, last_key), rows = rows + %(rows)s,
       rejected = coalesce(rejected, 0) + %(rejected)s, updated_at = now(),
       status = CASE WHEN %(done)s THEN 'done' ELSE status END,
       duration_ms = CASE WHEN %(done)s THEN %(ms)s ELSE duration_ms END
 WHERE table_name = %(table)s AND chunk_id = %(id)s AND run_id = %(run)s AND status = 'running'""").format(
            ident("chunks"))
        cur = conn.execute(q, {"last_key": encode_key(last_key), "rows": rows, "rejected": rejected, "done": done,
                               "ms": duration_ms, "table": chunk.table, "id": chunk.chunk_id, "run": run_id})
        if cur.rowcount != 1:
            raise ChunkLost(chunk.table, chunk.chunk_id)

    def fail_chunk(self, chunk: Chunk, run_id: str, error: str) -> None:
        q = sql.SQL("UPDATE {} SET status = 'failed', last_error = %s, updated_at = now() "
                    "WHERE table_name = %s AND chunk_id = %s AND run_id = %s AND status = 'running'").format(
            ident("chunks"))
        self._tx(lambda c: c.execute(q, (_cut(error, REASON_LIMIT), chunk.table, chunk.chunk_id, run_id)),
                 "chunk failed")

    # --- rejects ----------------------------------------------------------------------------------

    def write_rejects(self, conn: psycopg.Connection, rejects: Sequence[Reject], run_id: str) -> None:
        """Record rejects inside the caller's transaction (the caller keeps it within the budget)."""
        q = sql.SQL("""
INSERT INTO {} (reject_id, run_id, stage, table_name, chunk_id, row_key, sqlstate, reason, row_data)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (reject_id) DO UPDATE SET run_id = EXCLUDED.run_id, chunk_id = EXCLUDED.chunk_id,
    sqlstate = EXCLUDED.sqlstate, reason = EXCLUDED.reason, row_data = EXCLUDED.row_data, created_at = now()""").format(
            ident("rejects"))
        conn.cursor().executemany(q, [
            (r.reject_id, run_id, STAGE, r.table, r.chunk_id, encode_key(r.key), r.sqlstate,
             _cut(r.reason, REASON_LIMIT), _cut(r.row_data, ROW_DATA_LIMIT)) for r in rejects])

    @staticmethod
    def reject_cost(r: Reject) -> tuple[int, int]:
        """(DSQL rows, bytes) of recording one reject."""
        return 1, 512 + min(len(r.row_data or ""), ROW_DATA_LIMIT) * 4 + min(len(r.reason), REASON_LIMIT) * 4

    def purge_rejects(self, table: str, chunk_id: int) -> int:
        """Delete the rejects of earlier copies of a chunk (a fresh copy records its own)."""
        ids = [r[0] for r in self._read(sql.SQL(
            "SELECT reject_id FROM {} WHERE stage = %s AND table_name = %s AND chunk_id = %s").format(
            ident("rejects")), (STAGE, table, chunk_id))]
        q = sql.SQL("DELETE FROM {} WHERE reject_id = ANY(%s)").format(ident("rejects"))
        for part in _slices(ids, self.budget.row_cap):
            self._tx(lambda c, p=part: c.execute(q, (p,)), "purge rejects")
        return len(ids)

    def rejects(self, table: str | None = None, *, limit: int | None = 100) -> list[Reject]:
        """Recorded backfill rejects, newest first."""
        where = sql.SQL("stage = %s") if table is None else sql.SQL("stage = %s AND table_name = %s")
        params: list[Any] = [STAGE] if table is None else [STAGE, table]
        q = sql.SQL("SELECT table_name, row_key, sqlstate, reason, row_data, chunk_id, run_id, created_at FROM {} "
                    "WHERE {} ORDER BY created_at DESC, table_name, row_key").format(ident("rejects"), where)
        if limit is not None:
            q = sql.SQL("{} LIMIT %s").format(q)
            params.append(limit)
        return [Reject(t, decode_key(k) or (), s, r, d, c, str(run) if run else None, at)
                for t, k, s, r, d, c, run, at in self._read(q, params)]

    def count_rejects(self, table: str | None = None) -> int:
        where = sql.SQL("stage = %s") if table is None else sql.SQL("stage = %s AND table_name = %s")
        params = [STAGE] if table is None else [STAGE, table]
        return self._read(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(ident("rejects"), where), params)[0][0]

    # --- status -----------------------------------------------------------------------------------

    def status(self, tables: Sequence[str] | None = None) -> list[TableStatus]:
        """Per-table chunk counts, rows copied and rows rejected (tables with a plan, or those named)."""
        q = sql.SQL("SELECT table_name, status, count(*), coalesce(sum(rows), 0), coalesce(sum(rejected), 0) "
                    "FROM {} GROUP BY table_name, status").format(ident("chunks"))
        agg: dict[str, dict[str, tuple[int, int, int]]] = {}
        for table, status, n, rows, rejected in self._read(q):
            agg.setdefault(table, {})[status] = (n, int(rows), int(rejected))
        names = list(tables) if tables else sorted(agg)
        out = []
        for name in names:
            by = agg.get(name, {})
            plan = self.load_plan(name)
            n = lambda s: by.get(s, (0, 0, 0))[0]  # noqa: E731
            out.append(TableStatus(
                name, sum(v[0] for v in by.values()), n(PENDING), n(RUNNING), n(DONE), n(FAILED),
                sum(v[1] for v in by.values()), sum(v[2] for v in by.values()),
                plan.planned_rows if plan else None))
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _slices(items: Sequence[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])
