"""The replay's side of live repair: DBLog low/high watermarks in the change stream (Netflix DBLog).

A repair (:mod:`reconcile.repair`) copies a *chunk* of rows from the source between two watermarks it
writes into the change stream with ``pg_logical_emit_message(true, 'reconcile.repair', ...)``: ``low``,
then the read, then ``high`` (the copied rows are stored on the target, ``reconcile.repair_rows``,
before ``high`` is written). The replay owns every target write, so it applies the chunk:

* at ``low`` the chunk opens: from there on, every key of the chunk's table that a replayed source
  transaction changes is *seen* (a key chunk watches its own keys, a whole-table chunk every key);
* at ``high`` the copied rows whose key was seen are dropped (the replayed change is at least as new
  as the copy), and the rest are added to the ``high`` transaction as its own row images (a key the
  source no longer has as a delete), so they are applied in the replay's commit order: after every
  change before ``high``, before every change after it. A copy therefore never overwrites a newer
  change.

Why that is right: a key not changed between the two watermarks held one value on the source from
``low`` to ``high``, and the read happened in between (after every transaction committed before
``low`` had become visible: the repair waits for them), so the copied value is the source's value at
``high``. A key changed in between is brought by the replay itself.

State, crash-safe with the watermark: the chunk's opening (``repair_marks.low_lsn``), the seen keys
(``repair_seen``, one row per chunk and apply transaction) and its closing (``high_lsn`` and the
counts) are written in the apply transaction of the source transaction that carries them; a
restarted replay reloads the open chunks and their seen keys. Within a round the scan runs ahead of
the commits: :meth:`RepairMarks.begin_round` throws away what a failed round scanned.

A ``high`` for a chunk whose ``low`` this slot never opened (a chunk of another slot is ignored by
its content) cannot be applied safely: the chunk is closed as ``not_applied`` with the reason, and
the repair copies those keys again.
"""

from __future__ import annotations

import copy
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from reconcile.control.migrations import ident
from reconcile.replay import pgoutput as po
from reconcile.replay.source import Change, SourceTxn

log = logging.getLogger("reconcile.replay")

PREFIX = "reconcile.repair"
"""The logical message prefix of repair watermarks."""

Key = tuple[str, ...]
Reader = Callable[[Callable[[psycopg.Connection], Any], str], Any]
"""Runs a read on the target (``fn(conn)``, a label) and returns its result."""


def mark_content(slot_name: str, chunk_id: str, mark: str) -> str:
    """The message content of a watermark (JSON).

    >>> mark_content("s", "c", "low")
    '{"chunk":"c","mark":"low","slot":"s"}'
    """
    return json.dumps({"chunk": chunk_id, "mark": mark, "slot": slot_name}, sort_keys=True, separators=(",", ":"))


def parse_mark(m: po.Message, slot_name: str) -> tuple[str, str] | None:
    """``(chunk_id, "low"|"high")`` of a watermark of this slot, else None."""
    if m.prefix != PREFIX:
        return None
    try:
        doc = json.loads(m.content.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("slot") != slot_name or doc.get("mark") not in ("low", "high"):
        return None
    return str(doc.get("chunk")), str(doc["mark"])


@dataclass
class OpenChunk:
    chunk_id: str
    table: str
    mode: str
    """``keys``: the chunk's keys are listed; ``range``: whole-table copy (every key of the table counts)."""
    keys: frozenset[Key]
    seen: set[Key] = field(default_factory=set)

    def watches(self, table: str, key: Key) -> bool:
        return table == self.table and (self.mode == "range" or key in self.keys)


@dataclass
class _Effects:
    """What scanning one source transaction did, to be written with it and adopted once committed."""

    hits: dict[str, set[Key]] = field(default_factory=dict)
    opened: list[OpenChunk] = field(default_factory=list)
    closed: list[dict[str, Any]] = field(default_factory=list)


def relation_of(table: str, columns: Sequence[Sequence[Any]]) -> po.Relation:
    """A pgoutput relation for copied rows: ``columns`` as stored with the chunk (``[name, type oid, typmod,
    replica identity flag]`` each, as pgoutput describes them)."""
    schema, _, name = table.partition(".")
    return po.Relation(0, schema, name, "d", tuple(po.Column(str(c[0]), int(c[1]), int(c[2]), bool(c[3]))
                                                    for c in columns))


class RepairMarks:
    """Open chunks of one slot, the scan of source transactions, and the writes that go with them."""

    def __init__(self, slot_name: str, read: Reader,
                 relation: Callable[[str], po.Relation | None] | None = None,
                 tables: set[str] | None = None) -> None:
        self.slot_name = slot_name
        self.read = read
        self.tables = tables
        """The tables this replay applies: a chunk of another table cannot be watched, so it is not applied."""
        self.relation = relation or (lambda table: None)
        self.confirmed: dict[str, OpenChunk] = {}
        self.working: dict[str, OpenChunk] = {}
        self._effects: dict[int, _Effects] = {}

    # --- state --------------------------------------------------------------------------------------

    def load(self) -> None:
        """Reload the chunks this slot has open (low applied, high not yet) with their seen keys."""
        def q(conn: psycopg.Connection) -> dict[str, OpenChunk]:
            rows = conn.execute(sql.SQL(
                "SELECT c.chunk_id::text, c.table_name, c.mode, c.keys FROM {marks} m JOIN {chunks} c "
                "ON c.chunk_id = m.chunk_id WHERE m.slot_name = %s AND m.low_lsn IS NOT NULL AND m.high_lsn IS NULL "
                "AND c.status <> 'abandoned'")
                .format(marks=ident("repair_marks"), chunks=ident("repair_chunks")), (self.slot_name,)).fetchall()
            out = {}
            for cid, table, mode, keys in rows:
                chunk = OpenChunk(cid, table, mode, frozenset(tuple(k) for k in json.loads(keys or "[]")))
                for (text,) in conn.execute(sql.SQL("SELECT keys FROM {} WHERE chunk_id = %s").format(
                        ident("repair_seen")), (uuid.UUID(cid),)).fetchall():
                    chunk.seen.update(tuple(k) for k in json.loads(text))
                out[cid] = chunk
            return out
        self.confirmed = self.read(q, "open repair chunks")
        self.begin_round()

    def begin_round(self) -> None:
        """Forget what was scanned but not committed (a round that failed is read again from the watermark), and
        stop watching chunks whose repair was abandoned (it died before writing their high watermark)."""
        if self.confirmed:
            ids = [uuid.UUID(c) for c in self.confirmed]
            gone = self.read(lambda c: [r[0] for r in c.execute(sql.SQL(
                "SELECT chunk_id::text FROM {} WHERE chunk_id = ANY(%s) AND status = 'abandoned'").format(
                ident("repair_chunks")), (ids,)).fetchall()], "abandoned repair chunks")
            for cid in gone:
                self.confirmed.pop(cid, None)
        self.working = copy.deepcopy(self.confirmed)
        self._effects = {}

    @property
    def active(self) -> bool:
        return bool(self.working)

    # --- scanning, in commit order ------------------------------------------------------------------

    def scan(self, t: SourceTxn) -> None:
        """Note what ``t`` means for open chunks; at a ``high`` watermark add the chunk's rows to ``t``."""
        marks = [pm for pm in (parse_mark(m, self.slot_name) for m in t.messages) if pm is not None]
        if not self.working and not marks:
            return
        fx = _Effects()
        if self.working:
            for c in t.changes:
                for key in (c.key, c.old_key):
                    if key is None:
                        continue
                    for chunk in self.working.values():
                        if chunk.watches(c.table, key):
                            chunk.seen.add(key)
                            fx.hits.setdefault(chunk.chunk_id, set()).add(key)
        for chunk_id, mark in marks:
            if mark == "low":
                chunk = self._chunk(chunk_id)
                if chunk is not None:
                    self.working[chunk_id] = chunk
                    fx.opened.append(chunk)
            else:
                fx.closed.append(self._close(t, chunk_id))
        if fx.hits or fx.opened or fx.closed:
            self._effects[t.commit_lsn] = fx

    def _chunk(self, chunk_id: str) -> OpenChunk | None:
        try:
            cid = uuid.UUID(chunk_id)
        except ValueError:
            return None
        row = self.read(lambda c: c.execute(sql.SQL("SELECT table_name, mode, keys FROM {} WHERE chunk_id = %s")
                                            .format(ident("repair_chunks")), (cid,)).fetchone(), "repair chunk")
        if row is None:
            log.warning("repair watermark for unknown chunk %s ignored", chunk_id)
            return None
        if self.tables is not None and row[0] not in self.tables:
            log.warning("repair chunk %s is of %s, which this replay does not apply ([[tables]]): it is not opened, "
                        "so it will not be applied", chunk_id, row[0])
            return None
        return OpenChunk(chunk_id, row[0], row[1], frozenset(tuple(k) for k in json.loads(row[2] or "[]")))

    def _close(self, t: SourceTxn, chunk_id: str) -> dict[str, Any]:
        chunk = self.working.pop(chunk_id, None)
        if chunk is None:
            reason = ("its low watermark was not applied by this slot's replay (the keys changed in between are "
                      "unknown), so the copy was not applied: copy these keys again")
            log.warning("repair chunk %s: %s", chunk_id, reason)
            return {"chunk_id": chunk_id, "copied": 0, "dropped": 0, "applied": 0, "outcome": "not_applied",
                    "reason": reason}
        cid = uuid.UUID(chunk_id)

        def q(conn: psycopg.Connection) -> tuple[Any, list[tuple]]:
            cols = conn.execute(sql.SQL("SELECT columns FROM {} WHERE chunk_id = %s").format(ident("repair_chunks")),
                                (cid,)).fetchone()
            rows = conn.execute(sql.SQL("SELECT row_key, row_data FROM {} WHERE chunk_id = %s ORDER BY row_no")
                                .format(ident("repair_rows")), (cid,)).fetchall()
            return (cols[0] if cols else None), rows
        columns, rows = self.read(q, "repair rows")
        doc = json.loads(columns or "{}")
        rel = self._relation(chunk.table, doc.get("columns") or [])
        key_pos = doc.get("key_positions") or []
        copied = dropped = 0
        for row_key, row_data in rows:
            key = tuple(json.loads(row_key))
            copied += 1
            if key in chunk.seen:
                dropped += 1
                continue
            if row_data is None:
                t.changes.append(Change("D", chunk.table, rel, key))
            else:
                values = tuple(json.loads(row_data))
                if key_pos and tuple(values[i] for i in key_pos) != key:
                    raise ValueError(f"repair chunk {chunk_id}: a copied row's key does not match its row")
                t.changes.append(Change("I", chunk.table, rel, key, values))
        return {"chunk_id": chunk_id, "copied": copied, "dropped": dropped, "applied": copied - dropped,
                "outcome": "applied", "reason": None}

    def _relation(self, table: str, columns: list) -> po.Relation:
        """The replay's own relation when it has the same columns (so unchanged-TOAST merges keep working)."""
        own = self.relation(table)
        mine = relation_of(table, columns)
        if own is not None and tuple(c.name for c in own.columns) == tuple(c.name for c in mine.columns):
            return own
        return mine

    # --- writing with the apply transaction ---------------------------------------------------------

    def cost(self, t: SourceTxn) -> tuple[int, int]:
        """DSQL rows and bytes the marks add to ``t``'s apply transaction (beyond the injected rows)."""
        fx = self._effects.get(t.commit_lsn)
        if fx is None:
            return 0, 0
        rows = len(fx.hits) + len(fx.opened) + len(fx.closed)
        nbytes = 256 * rows + sum(sum(len(x) + 4 for k in keys for x in k) for keys in fx.hits.values())
        return rows, nbytes

    def write(self, conn: psycopg.Connection, txns: Sequence[SourceTxn]) -> None:
        """Inside the apply transaction of ``txns``: their chunk openings, seen keys and closings."""
        if not self._effects:
            return
        for t in txns:
            fx = self._effects.get(t.commit_lsn)
            if fx is None:
                continue
            for chunk in fx.opened:
                conn.execute(sql.SQL("INSERT INTO {} (chunk_id, slot_name, low_lsn) VALUES (%s, %s, %s) "
                                     "ON CONFLICT (chunk_id) DO UPDATE SET low_lsn = EXCLUDED.low_lsn").format(
                    ident("repair_marks")), (uuid.UUID(chunk.chunk_id), self.slot_name, t.commit_lsn))
            for chunk_id, keys in fx.hits.items():
                conn.execute(sql.SQL("INSERT INTO {} (chunk_id, commit_lsn, keys) VALUES (%s, %s, %s) "
                                     "ON CONFLICT (chunk_id, commit_lsn) DO UPDATE SET keys = EXCLUDED.keys").format(
                    ident("repair_seen")), (uuid.UUID(chunk_id), t.commit_lsn,
                                            json.dumps(sorted(list(k) for k in keys), ensure_ascii=False)))
            for done in fx.closed:
                conn.execute(sql.SQL(
                    "INSERT INTO {} (chunk_id, slot_name, high_lsn, copied, dropped, applied, outcome, reason, "
                    "finished_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now()) ON CONFLICT (chunk_id) DO UPDATE SET "
                    "high_lsn = EXCLUDED.high_lsn, copied = EXCLUDED.copied, dropped = EXCLUDED.dropped, "
                    "applied = EXCLUDED.applied, outcome = EXCLUDED.outcome, reason = EXCLUDED.reason, "
                    "finished_at = now()").format(ident("repair_marks")),
                    (uuid.UUID(done["chunk_id"]), self.slot_name, t.commit_lsn, done["copied"], done["dropped"],
                     done["applied"], done["outcome"], done["reason"]))

    def committed(self, txns: Sequence[SourceTxn]) -> None:
        """``txns`` committed on the target: adopt their effects."""
        for t in txns:
            fx = self._effects.pop(t.commit_lsn, None)
            if fx is None:
                continue
            for chunk_id, keys in fx.hits.items():
                if chunk_id in self.confirmed:
                    self.confirmed[chunk_id].seen |= keys
            for chunk in fx.opened:
                self.confirmed[chunk.chunk_id] = OpenChunk(chunk.chunk_id, chunk.table, chunk.mode, chunk.keys)
            for done in fx.closed:
                self.confirmed.pop(done["chunk_id"], None)
