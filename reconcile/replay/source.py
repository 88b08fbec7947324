"""The source side of replay: prerequisites, publication and slot, reading whole transactions.

* :func:`check_prerequisites` reports every miss with its own sentence (wal_level, a table without
  a primary key or replica identity, a configured key the slot cannot deliver, privileges, free
  slots). A table with neither a primary key nor a replica identity is *refused* (adding it to a
  publication makes every UPDATE and DELETE on it fail on the source, SQLSTATE 55000), unless the
  caller asks for ``REPLICA IDENTITY FULL``.
* :func:`init_capture` creates the publication (for the configured tables) and the logical slot
  (pgoutput); :func:`drop_capture` removes both.
* :class:`SlotReader` reads the slot through the SQL interface in bounded batches
  (``pg_logical_slot_peek_binary_changes``: peek, never consume) and assembles whole source
  transactions, with ``origin 'none'`` (what the reverse replay wrote through its replication
  origin never flows back to the target); :meth:`SlotReader.advance` moves the slot
  (``pg_replication_slot_advance``) once the target has committed what it covers.

Values arrive as text produced by the source's output functions *in this session*, so the session
pins the forms the target parses the same way whatever its settings (ISO dates, UTC, exact floats,
hex bytea), as the backfill does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from reconcile.budget import qualified, split_table_name
from reconcile.config import TableSpec
from reconcile.keyrule import key_problem, read_key_facts, rule_sentence, verify_key, violation_message
from reconcile.replay import pgoutput as po
from reconcile.replay.errors import PrerequisiteFailed, SlotBusy, SlotMissing
from reconcile.replay.errors import primary_message as _primary

log = logging.getLogger("reconcile.replay")

SOURCE_SESSION = (
    "SET datestyle = 'ISO, YMD'", "SET intervalstyle = 'postgres'", "SET timezone = 'UTC'",
    "SET extra_float_digits = 3", "SET bytea_output = 'hex'", "SET client_encoding = 'UTF8'",
)

Fault = Callable[[str], None]


def prepare_session(conn: psycopg.Connection) -> psycopg.Connection:
    """Pin the text forms decoding produces in this session (see the module docstring)."""
    for stmt in SOURCE_SESSION:
        conn.execute(stmt)
    return conn


# --- prerequisites ----------------------------------------------------------------------------------

_TABLE = """
SELECT c.oid, c.relreplident::text, c.relkind::text,
       (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_catalog.pg_index i
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
         WHERE i.indrelid = c.oid AND i.indisprimary),
       (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_catalog.pg_index i
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
         WHERE i.indrelid = c.oid AND i.indisreplident),
       pg_catalog.pg_has_role(c.relowner, 'USAGE')
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""


@dataclass
class Prerequisites:
    """What :func:`check_prerequisites` found: problems (each one sentence) and notes."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    need_identity_full: list[str] = field(default_factory=list)
    """Tables with neither primary key nor replica identity (refused unless told to set FULL)."""

    def raise_if_any(self) -> None:
        if self.problems:
            raise PrerequisiteFailed(" ".join(self.problems))


def check_prerequisites(conn: psycopg.Connection, tables: Sequence[TableSpec], *, slot_name: str,
                        publication: str, replica_identity_full: bool = False) -> Prerequisites:
    """Check the source can feed replay; every miss gets its own sentence in ``problems``."""
    found = Prerequisites()
    (wal_level,) = conn.execute("SHOW wal_level").fetchone()
    if wal_level != "logical":
        found.problems.append(
            f"The source runs with wal_level={wal_level}, and logical decoding needs wal_level=logical: set it "
            "(on Aurora: rds.logical_replication = 1 in the cluster parameter group) and restart the writer.")
    superuser, replication, create_db = conn.execute(
        "SELECT r.rolsuper, r.rolreplication, has_database_privilege(current_database(), 'CREATE') "
        "FROM pg_catalog.pg_roles r WHERE r.rolname = current_user").fetchone()
    slot_exists = conn.execute("SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
                               (slot_name,)).fetchone() is not None
    pub_exists = conn.execute("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = %s",
                              (publication,)).fetchone() is not None
    if not (superuser or replication):
        # Aurora grants the rds_replication role instead of the attribute.
        rds = conn.execute("SELECT pg_has_role('rds_replication', 'MEMBER') WHERE EXISTS "
                           "(SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'rds_replication')").fetchone()
        if not (rds and rds[0]):
            found.problems.append(
                "The source user lacks the REPLICATION privilege needed to read a replication slot: "
                "ALTER ROLE ... REPLICATION (on Aurora: GRANT rds_replication TO the user).")
    if not pub_exists and not (superuser or create_db):
        found.problems.append("The source user may not create the publication (needs CREATE on the database): "
                              "GRANT CREATE ON DATABASE ... TO the user, or create the publication as its owner.")
    if not slot_exists:
        free = conn.execute("SELECT current_setting('max_replication_slots')::int - count(*) "
                            "FROM pg_catalog.pg_replication_slots").fetchone()[0]
        if free < 1:
            found.problems.append("The source has no free replication slot (max_replication_slots is used up): "
                                  "drop an unused slot or raise max_replication_slots and restart.")
    for spec in tables:
        schema, table = split_table_name(spec.name)
        row = conn.execute(_TABLE, (schema, table)).fetchone()
        if row is None:
            found.problems.append(f"Table {spec.name} does not exist on the source: fix [[tables]] or create it.")
            continue
        _oid, ident, relkind, pk, replident_index, owner = row
        if relkind not in ("r", "p"):
            found.problems.append(f"{spec.name} is not a table (relkind {relkind}): only tables can be replicated.")
            continue
        if not pub_exists and not (superuser or owner):
            found.problems.append(f"The source user does not own {spec.name}, so it cannot add it to publication "
                                  f"{publication}: create the publication as the table owner, then rerun init.")
        if not pk:
            # The key rule (reconcile.keyrule): a table without a primary key is replayed by its configured key,
            # which must be unique and not null on the source, in the words every stage uses.
            facts = read_key_facts(conn, spec.name, spec.key)
            problem = key_problem(facts)
            counts = None if problem else verify_key(conn, facts)[1]
            if problem or (counts is not None and not counts.ok):
                found.problems.append((problem or violation_message(spec.name, spec.key, counts)) + ".")
                continue
        key = sorted(spec.key)
        if ident == "f":
            found.notes.append(f"{spec.name}: replica identity FULL (old rows arrive whole)")
        elif ident == "d" and pk:
            if sorted(pk) != key and not set(pk) >= set(spec.key):
                found.problems.append(
                    f"{spec.name} is keyed by ({', '.join(spec.key)}) in the config but its primary key is "
                    f"({', '.join(sorted(pk))}), so deletes would arrive without the configured key: fix [[tables]] key "
                    "or set REPLICA IDENTITY FULL on the table.")
        elif ident == "i" and replident_index:
            if not set(replident_index) >= set(spec.key):
                found.problems.append(
                    f"{spec.name}'s replica identity index covers ({', '.join(replident_index)}), not the configured "
                    f"key ({', '.join(spec.key)}): fix [[tables]] key or set REPLICA IDENTITY FULL on the table.")
        elif replica_identity_full:
            found.need_identity_full.append(spec.name)
        else:
            found.problems.append(
                f"{rule_sentence(spec.name, spec.key)}, and replay needs the key's old values in every UPDATE and "
                "DELETE, which such a table sends only with a replica identity (without one, every UPDATE and DELETE "
                "on it would fail on the source once it is in the publication (55000)): rerun init with "
                "--replica-identity-full to set REPLICA IDENTITY FULL on it, or add a primary key.")
    return found


# --- publication and slot ---------------------------------------------------------------------------


def publication_tables(conn: psycopg.Connection, publication: str) -> set[str] | None:
    """Tables of a publication as ``schema.table`` (None when it does not exist)."""
    if conn.execute("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = %s", (publication,)).fetchone() is None:
        return None
    rows = conn.execute("SELECT schemaname::text || '.' || tablename::text FROM pg_catalog.pg_publication_tables "
                        "WHERE pubname = %s", (publication,)).fetchall()
    return {r[0] for r in rows}


def slot_row(conn: psycopg.Connection, slot_name: str) -> dict[str, Any] | None:
    """The slot as ``pg_replication_slots`` shows it, with WAL positions (None when missing)."""
    row = conn.execute("""
SELECT slot_type, plugin::text, database::text, active, restart_lsn::text, confirmed_flush_lsn::text,
       pg_current_wal_lsn()::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
       wal_status, current_database()::text
FROM pg_catalog.pg_replication_slots WHERE slot_name = %s""", (slot_name,)).fetchone()
    if row is None:
        return None
    keys = ("slot_type", "plugin", "database", "active", "restart_lsn", "confirmed_flush_lsn", "current_lsn",
            "retained_bytes", "lag_bytes", "wal_status", "current_database")
    return dict(zip(keys, row))


def init_capture(conn: psycopg.Connection, tables: Sequence[TableSpec], *, slot_name: str, publication: str,
                 replica_identity_full: bool = False) -> dict[str, Any]:
    """Check prerequisites, then create what is missing: publication (for ``tables``) and slot.

    Idempotent: with both present (and the publication holding every table) nothing changes.

    Raises:
        PrerequisiteFailed: a prerequisite is missing (the message lists each one).
    """
    found = check_prerequisites(conn, tables, slot_name=slot_name, publication=publication,
                                replica_identity_full=replica_identity_full)
    found.raise_if_any()
    actions: list[str] = []
    for name in found.need_identity_full:
        conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(qualified(name)))
        actions.append(f"set REPLICA IDENTITY FULL on {name}")
    names = [t.name for t in tables]
    have = publication_tables(conn, publication)
    if have is None:
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
            sql.Identifier(publication), sql.SQL(", ").join(qualified(n) for n in names)))
        actions.append(f"created publication {publication} for {', '.join(names)}")
    else:
        missing = [n for n in names if n not in have]
        if missing:
            conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(publication), sql.SQL(", ").join(qualified(n) for n in missing)))
            actions.append(f"added {', '.join(missing)} to publication {publication}")
    slot = slot_row(conn, slot_name)
    if slot is None:
        (lsn,) = conn.execute("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')",
                              (slot_name,)).fetchone()
        actions.append(f"created logical replication slot {slot_name} (pgoutput) at {lsn}")
        slot = slot_row(conn, slot_name)
    else:
        if slot["slot_type"] != "logical" or slot["plugin"] != "pgoutput":
            raise PrerequisiteFailed(
                f"Replication slot {slot_name} exists but is a {slot['slot_type']} slot with plugin {slot['plugin']}: "
                "drop it or set [replay] slot_name to a new name, then rerun init.")
        if slot["database"] != slot["current_database"]:
            raise PrerequisiteFailed(
                f"Replication slot {slot_name} belongs to database {slot['database']}, not {slot['current_database']}: "
                "set [replay] slot_name to a new name, then rerun init.")
    return {
        "slot_name": slot_name, "publication": publication, "tables": names,
        "created": bool(actions), "actions": actions or ["slot and publication already exist; nothing to do"],
        "notes": found.notes, "slot_lsn": slot["confirmed_flush_lsn"] if slot else None,
    }


def drop_capture(conn: psycopg.Connection, *, slot_name: str, publication: str) -> dict[str, Any]:
    """Drop the slot and the publication (each only when present)."""
    actions = []
    if slot_row(conn, slot_name) is not None:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot_name,))
        actions.append(f"dropped replication slot {slot_name}")
    if publication_tables(conn, publication) is not None:
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(publication)))
        actions.append(f"dropped publication {publication}")
    return {"slot_name": slot_name, "publication": publication,
            "actions": actions or ["neither slot nor publication existed; nothing to do"]}


# --- reading whole transactions ---------------------------------------------------------------------


@dataclass
class Change:
    """One row change of a source transaction, keyed by the configured key (text forms)."""

    op: str
    """``I`` insert, ``U`` update, ``D`` delete."""
    table: str
    relation: po.Relation
    key: tuple[str, ...]
    new: tuple[po.Value, ...] | None = None
    """The full new row (may hold :data:`pgoutput.UNCHANGED`); None for a delete."""
    old_key: tuple[str, ...] | None = None
    """Set on an update that changed the key: the row under the old key goes away."""

    def payload(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"op": self.op, "table": self.table, "key": list(self.key)}
        if self.new is not None:
            doc["row"] = po.row_dict(self.relation, self.new)
        if self.old_key is not None:
            doc["old_key"] = list(self.old_key)
        return doc


@dataclass
class SourceTxn:
    """A whole committed source transaction, in commit order."""

    xid: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int
    """Microseconds since 2000-01-01 UTC."""
    changes: list[Change] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    """Tables a TRUNCATE in this transaction emptied (never replayed: DSQL has no TRUNCATE)."""
    messages: list[po.Message] = field(default_factory=list)

    @property
    def commit_lsn_text(self) -> str:
        return po.int_to_lsn(self.commit_lsn)

    @property
    def end_lsn_text(self) -> str:
        return po.int_to_lsn(self.end_lsn)

    def payload(self) -> dict[str, Any]:
        """The whole transaction as JSON-able data (dead letters)."""
        return {
            "xid": self.xid, "commit_lsn": self.commit_lsn_text, "end_lsn": self.end_lsn_text,
            "commit_ts": po.pg_timestamp(self.commit_ts).isoformat(),
            "truncated": self.truncated,
            "messages": [{"prefix": m.prefix, "content": m.content.decode("utf-8", "replace")} for m in self.messages],
            "changes": [c.payload() for c in self.changes],
        }


_ROW_CHANGES = (po.Insert, po.Update, po.Delete)
_IN_TRANSACTION = (po.Insert, po.Update, po.Delete, po.Truncate)


class Assembler:
    """Turns decoded messages into whole :class:`SourceTxn`; keeps the relation cache."""

    def __init__(self, tables: Sequence[TableSpec], fault: Fault | None = None) -> None:
        self.specs = {t.name: t for t in tables}
        self.relations: dict[int, po.Relation] = {}
        self._key_pos: dict[int, tuple[int, ...]] = {}
        self.ignored: set[int] = set()
        """Relations in the publication but not in [[tables]] (a shared publication): their changes are skipped."""
        self.fault = fault

    def _relation(self, relid: int) -> tuple[po.Relation, tuple[int, ...]]:
        try:
            return self.relations[relid], self._key_pos[relid]
        except KeyError:
            raise po.DecodeError(f"change for relation {relid} before its Relation message") from None

    def _learn(self, rel: po.Relation) -> None:
        spec = self.specs.get(rel.qualified)
        if spec is None:
            self.ignored.add(rel.oid)
            return
        names = [c.name for c in rel.columns]
        missing = [k for k in spec.key if k not in names]
        if missing:
            raise po.DecodeError(f"{rel.qualified} has no column(s) {', '.join(missing)} of its configured key")
        self.relations[rel.oid] = rel
        self._key_pos[rel.oid] = tuple(names.index(k) for k in spec.key)

    @staticmethod
    def _key(values: Sequence[po.Value], pos: tuple[int, ...], rel: po.Relation) -> tuple[str, ...]:
        if len(values) != len(rel.columns):  # every tuple carries every column of its Relation message
            raise po.DecodeError(f"a change of {rel.qualified} carries {len(values)} values for the "
                                 f"{len(rel.columns)} columns of {rel.qualified}")
        key = tuple(values[i] for i in pos)
        if any(not isinstance(v, str) for v in key):
            raise po.DecodeError(f"a change of {rel.qualified} arrived without its key values")
        return key  # type: ignore[return-value]

    def assemble(self, rows: Iterable[bytes]) -> tuple[list[SourceTxn], bool]:
        """Whole transactions from a batch of messages; ``(txns, ended_mid_transaction)``.

        A transaction whose Commit is not in the batch is left out (its Begin onwards): the next
        read returns it whole.
        """
        txns: list[SourceTxn] = []
        cur: SourceTxn | None = None
        fault = self.fault
        for data in rows:
            if fault is not None:
                fault("decode")
            m = po.decode(data)
            t = type(m)
            if t in _ROW_CHANGES and m.relid in self.ignored:
                continue
            if cur is None and t in _IN_TRANSACTION:
                raise po.DecodeError(f"a {t.__name__} message arrived outside a transaction (no Begin before it)")
            if t is po.Insert:
                rel, pos = self._relation(m.relid)
                cur.changes.append(Change("I", rel.qualified, rel, self._key(m.new, pos, rel), m.new))  # type: ignore[union-attr]
            elif t is po.Update:
                rel, pos = self._relation(m.relid)
                key = self._key(m.new, pos, rel)
                old_key = None
                if m.old is not None:
                    ok = self._key(m.old, pos, rel)
                    old_key = ok if ok != key else None
                cur.changes.append(Change("U", rel.qualified, rel, key, m.new, old_key))  # type: ignore[union-attr]
            elif t is po.Delete:
                rel, pos = self._relation(m.relid)
                cur.changes.append(Change("D", rel.qualified, rel, self._key(m.old, pos, rel)))  # type: ignore[union-attr]
            elif t is po.Begin:
                if cur is not None:  # never drop the open one silently: its changes would be lost
                    raise po.DecodeError(f"Begin of xid {m.xid} while xid {cur.xid} (commit LSN "
                                         f"{cur.commit_lsn_text}) has not committed")
                cur = SourceTxn(m.xid, m.final_lsn, 0, m.commit_ts)
            elif t is po.Commit:
                if cur is None:
                    raise po.DecodeError("Commit without Begin")
                if m.commit_lsn != cur.commit_lsn or m.end_lsn <= m.commit_lsn:
                    raise po.DecodeError(f"Commit of xid {cur.xid} at {po.int_to_lsn(m.commit_lsn)} (ending at "
                                         f"{po.int_to_lsn(m.end_lsn)}) does not match its Begin "
                                         f"({cur.commit_lsn_text})")
                cur.end_lsn = m.end_lsn
                cur.commit_ts = m.commit_ts
                txns.append(cur)
                cur = None
            elif t is po.Relation:
                self._learn(m)
            elif t is po.Truncate:
                names = [self.relations[r].qualified if r in self.relations else str(r) for r in m.relids]
                cur.truncated.extend(names)  # type: ignore[union-attr]
            elif t is po.Message:
                if m.transactional and cur is not None:
                    cur.messages.append(m)
            # Type and Origin messages carry nothing the apply needs.
        return txns, cur is not None


class SlotReader:
    """Reads a slot through the SQL interface on one source connection (session pinned)."""

    def __init__(self, conn: psycopg.Connection, *, slot_name: str, publication: str) -> None:
        self.conn = conn
        self.slot_name = slot_name
        self.publication = publication
        self._peek = sql.SQL(
            "SELECT data FROM pg_catalog.pg_logical_slot_peek_binary_changes(%s, NULL, %s, "
            "'proto_version', '1', 'publication_names', %s, 'messages', 'true', 'origin', 'none')")

    def flush_lsn(self) -> int:
        """The source's WAL flush position now: decoding reads up to it."""
        (lsn,) = self.conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        return po.lsn_to_int(lsn)

    def peek(self, nchanges: int) -> list[bytes]:
        """Up to about ``nchanges`` messages after the slot's confirmed position (whole transactions)."""
        try:
            cur = self.conn.cursor(binary=True)
            cur.execute(self._peek, (self.slot_name, nchanges, self.publication))
            return [r[0] for r in cur.fetchall()]
        except pg_errors.UndefinedObject as exc:
            raise SlotMissing(f"The source has no replication slot or publication for replay ({_primary(exc)}): "
                              "run `reconcile replay init` first.") from None
        except pg_errors.ObjectInUse as exc:
            raise SlotBusy(f"Replication slot {self.slot_name} is in use by another process ({_primary(exc)}): "
                           "only one replayer may run per slot; wait for it or stop it.") from None

    def advance(self, end_lsn: int) -> None:
        """Move the slot's confirmed position to ``end_lsn`` (never backwards)."""
        try:
            self.conn.execute("SELECT pg_catalog.pg_replication_slot_advance(%s, %s::pg_lsn)",
                              (self.slot_name, po.int_to_lsn(end_lsn)))
        except pg_errors.ObjectInUse as exc:
            raise SlotBusy(f"Replication slot {self.slot_name} is in use by another process ({_primary(exc)}): "
                           "only one replayer may run per slot.") from None

    def confirmed(self) -> int:
        row = self.conn.execute("SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots "
                                "WHERE slot_name = %s", (self.slot_name,)).fetchone()
        if row is None:
            raise SlotMissing(f"The source has no replication slot {self.slot_name}: run `reconcile replay init` first.")
        return po.lsn_to_int(row[0])
