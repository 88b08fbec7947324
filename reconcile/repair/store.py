"""A repair's rows in the control schema: its chunks and copied rows (what the replay applies), the replay's
account of each chunk (``repair_marks``, written only by the replay), and the re-verification outcomes.

Writes go through :func:`reconcile.occ.run_with_retry` within the budget; a chunk's id is derived from the
repair, table and chunk number, so a write retried or repeated after a kill lands on the same rows.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from psycopg import sql

from reconcile.backfill.checkpoints import _alive
from reconcile.control.migrations import ident
from reconcile.control.writer import ControlWriter

_NS = uuid.UUID("3b7f6f0e-9a51-4d8e-a3f4-0f6f2a1c9d55")


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


class RepairStore(ControlWriter):
    """Reads and writes the repair tables on the target."""

    @staticmethod
    def chunk_id(repair_id: str, table: str, chunk_no: int) -> str:
        return str(uuid.uuid5(_NS, f"{repair_id}\0{table}\0{chunk_no}"))

    def add_chunk(self, chunk_id: str, repair_id: str, slot_name: str, table: str, chunk_no: int, mode: str,
                  keys: Sequence[Sequence[str]] | None, columns: dict[str, Any]) -> None:
        """Record a chunk (``requested``) before its low watermark: the replay reads its keys there."""
        q = sql.SQL("INSERT INTO {} (chunk_id, repair_id, slot_name, table_name, chunk_no, mode, keys, columns, status) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'requested') ON CONFLICT (chunk_id) DO UPDATE SET "
                    "keys = EXCLUDED.keys, columns = EXCLUDED.columns, status = 'requested', updated_at = now()").format(
            ident("repair_chunks"))
        params = (uuid.UUID(chunk_id), uuid.UUID(repair_id), slot_name, table, chunk_no, mode,
                  dumps([list(k) for k in keys]) if keys is not None else None, dumps(columns))
        self._tx(lambda c: c.execute(q, params), "repair chunk")

    def store_rows(self, chunk_id: str, rows: Sequence[tuple[Sequence[str], Sequence[str | None] | None]]) -> None:
        """The copied rows of a chunk (``None`` data: the source has no such key), in budget-sized transactions."""
        q = sql.SQL("INSERT INTO {} (chunk_id, row_no, row_key, row_data) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (chunk_id, row_no) DO UPDATE SET row_key = EXCLUDED.row_key, "
                    "row_data = EXCLUDED.row_data").format(ident("repair_rows"))
        cid = uuid.UUID(chunk_id)
        items = [(cid, i, dumps(list(k)), dumps(list(d)) if d is not None else None) for i, (k, d) in enumerate(rows)]
        cost = lambda r: (1, 64 + len(r[2].encode()) + len((r[3] or "").encode()))  # noqa: E731
        for batch in self.budget.batches(items, cost, what="copied row"):
            self._tx(lambda c, b=list(batch): c.cursor().executemany(q, b), "repair rows")

    def set_status(self, chunk_ids: Sequence[str], status: str, reason: str | None = None) -> None:
        q = sql.SQL("UPDATE {} SET status = %s, reason = coalesce(%s, reason), updated_at = now() "
                    "WHERE chunk_id = ANY(%s)").format(ident("repair_chunks"))
        ids = [uuid.UUID(c) for c in chunk_ids]
        for i in range(0, len(ids), 500):
            self._tx(lambda c, p=ids[i:i + 500]: c.execute(q, (status, reason, p)), "repair chunk status")

    def marks(self, chunk_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """What the replay did with each chunk: ``{chunk_id: {low_lsn, high_lsn, copied, dropped, applied,
        outcome, reason}}`` (a chunk it has not opened yet is absent)."""
        if not chunk_ids:
            return {}
        q = sql.SQL("SELECT chunk_id::text, low_lsn, high_lsn, copied, dropped, applied, outcome, reason FROM {} "
                    "WHERE chunk_id = ANY(%s)").format(ident("repair_marks"))
        rows = self._tx(lambda c: c.execute(q, ([uuid.UUID(x) for x in chunk_ids],)).fetchall(), "repair marks")
        keys = ("low_lsn", "high_lsn", "copied", "dropped", "applied", "outcome", "reason")
        return {r[0]: dict(zip(keys, r[1:])) for r in rows}

    def abandon_stale(self, slot_name: str, own_repair_id: str) -> int:
        """Chunks of this slot left ``requested``/``copied`` by a repair that is no longer running become
        ``abandoned`` (a running replay stops watching them; one whose high watermark was written anyway is
        then not applied, and its keys are copied again by a later repair). Returns how many."""
        q = sql.SQL("SELECT DISTINCT c.repair_id::text, r.status, r.settings FROM {chunks} c LEFT JOIN {runs} r "
                    "ON r.run_id = c.repair_id WHERE c.slot_name = %s AND c.status IN ('requested', 'copied') "
                    "AND c.repair_id <> %s").format(chunks=ident("repair_chunks"), runs=ident("runs"))
        rows = self._tx(lambda c: c.execute(q, (slot_name, uuid.UUID(own_repair_id))).fetchall(), "stale repairs")
        import socket

        host = socket.gethostname()
        dead = []
        for repair_id, status, settings in rows:
            doc = json.loads(settings or "{}") if settings else {}
            pid = doc.get("pid") if isinstance(doc, dict) else None
            if status != "running" or (doc.get("host") == host and isinstance(pid, int) and not _alive(pid)):
                dead.append(uuid.UUID(repair_id))
        if not dead:
            return 0
        upd = sql.SQL("UPDATE {} SET status = 'abandoned', reason = 'its repair ended before the high watermark', "
                      "updated_at = now() WHERE repair_id = ANY(%s) AND status IN ('requested', 'copied')").format(
            ident("repair_chunks"))
        runs = sql.SQL("UPDATE {} SET status = 'abandoned', finished_at = now() WHERE run_id = ANY(%s) "
                       "AND kind = 'repair' AND status = 'running'").format(ident("runs"))
        self._tx(lambda c: c.execute(runs, (dead,)), "abandon dead repair runs")
        return self._tx(lambda c: c.execute(upd, (dead,)).rowcount, "abandon stale repair chunks")

    def purge_rows(self, chunk_ids: Sequence[str]) -> None:
        """Drop the copied rows and seen keys of chunks the replay has closed (their counts stay in
        ``repair_marks``, the outcomes in ``repair_results``), in budget-sized transactions."""
        ids = [uuid.UUID(c) for c in chunk_ids]
        for table, cost in (("repair_rows", "octet_length(row_key) + coalesce(octet_length(row_data), 0)"),
                            ("repair_seen", "octet_length(keys)")):
            sel = sql.SQL("SELECT chunk_id, {pk}, {cost} FROM {t} WHERE chunk_id = ANY(%s)").format(
                pk=sql.Identifier("row_no" if table == "repair_rows" else "commit_lsn"), cost=sql.SQL(cost),
                t=ident(table))
            rows = self._tx(lambda c, q=sel: c.execute(q, (ids,)).fetchall(), "repair rows to purge")
            pk = "row_no" if table == "repair_rows" else "commit_lsn"
            delete = sql.SQL("DELETE FROM {} WHERE (chunk_id, {}) IN (SELECT * FROM unnest(%s::uuid[], %s::bigint[]))"
                             ).format(ident(table), sql.Identifier(pk))
            for batch in self.budget.batches(rows, lambda r: (1, 128 + int(r[2] or 0)), what="purged row"):
                self._tx(lambda c, b=list(batch): c.execute(delete, ([r[0] for r in b], [r[1] for r in b])),
                         "purge repair rows")

    def abandoned(self, chunk_ids: Sequence[str]) -> set[str]:
        if not chunk_ids:
            return set()
        q = sql.SQL("SELECT chunk_id::text FROM {} WHERE chunk_id = ANY(%s) AND status = 'abandoned'").format(
            ident("repair_chunks"))
        return {r[0] for r in self._tx(lambda c: c.execute(q, ([uuid.UUID(x) for x in chunk_ids],)).fetchall(),
                                       "abandoned chunks")}

    def save_results(self, repair_id: str, rows: Sequence[tuple[str, Any, str | None, str, Any]]) -> None:
        """Per key: (table, key, finding kind, outcome, detail)."""
        q = sql.SQL("INSERT INTO {} (repair_id, table_name, row_key, kind, outcome, detail) VALUES (%s, %s, %s, %s, %s, "
                    "%s) ON CONFLICT (repair_id, table_name, row_key) DO UPDATE SET kind = EXCLUDED.kind, "
                    "outcome = EXCLUDED.outcome, detail = EXCLUDED.detail, recorded_at = now()").format(
            ident("repair_results"))
        rid = uuid.UUID(repair_id)
        items = [(rid, t, dumps(k), kind, outcome, dumps(d) if d is not None else None) for t, k, kind, outcome, d in rows]
        cost = lambda r: (1, 128 + len(r[2]) + len(r[5] or ""))  # noqa: E731
        for batch in self.budget.batches(items, cost, what="repair result"):
            self._tx(lambda c, b=list(batch): c.cursor().executemany(q, b), "repair results")

    def live_tables(self, slot_name: str) -> set[str]:
        """Tables a whole-table (live backfill) repair has been started for under ``slot_name``."""
        q = sql.SQL("SELECT DISTINCT table_name FROM {} WHERE slot_name = %s AND mode = 'range'").format(
            ident("repair_chunks"))

        def read(c: Any) -> set[str]:
            if not c.execute("SELECT to_regclass('reconcile.repair_chunks') IS NOT NULL").fetchone()[0]:
                return set()
            return {r[0] for r in c.execute(q, (slot_name,)).fetchall()}
        return self._tx(read, "live backfills")


def repair_runs(conn: Any, *, diff_run_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Recent repair runs (newest first), optionally only those repairing ``diff_run_id``."""
    if conn.execute("SELECT to_regclass('reconcile.runs') IS NULL").fetchone()[0]:
        return []
    rows = conn.execute(sql.SQL("SELECT run_id::text, status, started_at, finished_at, settings, summary FROM {} "
                                "WHERE kind = 'repair' ORDER BY started_at DESC LIMIT %s").format(ident("runs")),
                        (limit,)).fetchall()
    out = []
    for run_id, status, started, finished, settings, summary in rows:
        s = json.loads(settings) if settings else {}
        if diff_run_id is not None and s.get("diff_run_id") != diff_run_id:
            continue
        out.append({"run_id": run_id, "status": status, "started_at": started, "finished_at": finished,
                    "settings": s, "summary": json.loads(summary) if summary else {}})
    return out


def repairs_of(conn: Any, diff_run_id: str) -> dict[str, Any] | None:
    """The ``repairs`` part of a diff run's summary: every repair (or decision not to repair) of its findings."""
    runs = repair_runs(conn, diff_run_id=diff_run_id)
    if not runs:
        return None
    outcomes: dict[str, int] = {}
    for r in runs:
        for k, v in (r["summary"].get("outcomes") or {}).items():
            outcomes[k] = outcomes.get(k, 0) + int(v or 0)
    items = [{"run_id": r["run_id"], "status": r["status"], "auto": bool(r["settings"].get("auto")),
              "sentence": r["summary"].get("sentence") or r["summary"].get("error")} for r in runs]
    latest = items[0]
    sentence = f"{'automatic ' if latest['auto'] else ''}repair {latest['run_id']} {latest['status']}: {latest['sentence']}"
    if len(items) > 1:
        sentence += f" ({len(items)} repair runs for this diff run)"
    return {"runs": items, "outcomes": outcomes, "sentence": sentence}
