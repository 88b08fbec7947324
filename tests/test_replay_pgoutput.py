"""The pgoutput decoder on bytes the real source server produced (no hand-made fixtures)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import psycopg
import pytest

from reconcile.config import TableSpec
from reconcile.replay import pgoutput as po
from reconcile.replay.source import Assembler, SlotReader, prepare_session


@pytest.fixture
def src(source_db):
    """An autocommit source connection with a publication and a slot, dropped afterwards."""
    conn = psycopg.connect(source_db, autocommit=True)
    prepare_session(conn)
    conn.execute("CREATE SCHEMA app")
    conn.execute("CREATE TYPE app.mood AS ENUM ('sad', 'ok')")
    conn.execute("CREATE TABLE app.t (id int PRIMARY KEY, n numeric(30,10), ts timestamptz, doc json, "
                 "big text, m app.mood, note text)")
    conn.execute("ALTER TABLE app.t ALTER COLUMN big SET STORAGE EXTERNAL")  # out of line, never compressed
    conn.execute("CREATE TABLE app.nokey (a int, b text)")
    conn.execute("ALTER TABLE app.nokey REPLICA IDENTITY FULL")
    conn.execute("CREATE PUBLICATION p FOR TABLE app.t, app.nokey")
    slot = "p_" + conn.info.dbname.lower()  # slot names are server-wide
    conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    try:
        yield conn
    finally:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute("SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = %s",
                     ("o_" + conn.info.dbname.lower(),))
        conn.close()


def peek(conn) -> list[bytes]:
    return SlotReader(conn, slot_name="p_" + conn.info.dbname.lower(), publication="p").peek(100000)


def peek_any_origin(conn) -> list[bytes]:
    """Like peek, but with transactions from every replication origin (replay itself reads ``origin 'none'``)."""
    cur = conn.cursor(binary=True)
    cur.execute("SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', '1', "
                "'publication_names', 'p', 'messages', 'true', 'origin', 'any')", ("p_" + conn.info.dbname.lower(),))
    return [r[0] for r in cur.fetchall()]


def test_every_message_type_decodes_from_real_server_output(src):
    big = "x" * 20000
    with src.transaction():
        src.execute("INSERT INTO app.t VALUES (1, 12345678901234567890.0123456789, '2024-02-29 23:59:59.123456+05:30', "
                    "'{\"a\": [1, 2.50]}', %s, 'ok', NULL)", (big,))
        src.execute("INSERT INTO app.t (id, n) VALUES (2, -0.0000000001)")
    src.execute("UPDATE app.t SET note = 'touched' WHERE id = 1")  # big is unchanged and TOASTed: 'u'
    src.execute("UPDATE app.t SET id = 3 WHERE id = 2")  # key change: old key sent
    src.execute("DELETE FROM app.t WHERE id = 3")
    src.execute("INSERT INTO app.nokey VALUES (7, 'seven')")
    src.execute("DELETE FROM app.nokey WHERE a = 7")  # replica identity full: the whole old row
    src.execute("SELECT pg_logical_emit_message(true, 'reconcile', 'in a transaction')")
    src.execute("SELECT pg_logical_emit_message(false, 'reconcile', 'outside')")
    src.execute("TRUNCATE app.t, app.nokey")
    origin_name = "o_" + src.info.dbname.lower()  # origins are server-wide
    src.execute("SELECT pg_replication_origin_create(%s)", (origin_name,))
    src.execute("SELECT pg_replication_origin_session_setup(%s)", (origin_name,))
    with src.transaction():
        src.execute("SELECT pg_replication_origin_xact_setup('0/AB', now())")
        src.execute("INSERT INTO app.t (id) VALUES (9)")
    src.execute("SELECT pg_replication_origin_session_reset()")

    # Replay's own read leaves out what a replication origin wrote (the reverse replay: no loops) ...
    assert not any(isinstance(po.decode(m), po.Origin) for m in peek(src))
    msgs = [po.decode(m) for m in peek_any_origin(src)]  # ... the decoder still knows Origin messages
    kinds = [type(m).__name__ for m in msgs]
    for k in ("Begin", "Commit", "Relation", "Type", "Insert", "Update", "Delete", "Truncate", "Message", "Origin"):
        assert k in kinds, k

    rel = next(m for m in msgs if isinstance(m, po.Relation) and m.name == "t")
    assert (rel.namespace, rel.replica_identity) == ("app", "d")
    assert [(c.name, c.key) for c in rel.columns][:2] == [("id", True), ("n", False)]
    assert rel.columns[1].typmod == ((30 << 16) | 10) + 4 and rel.columns[1].type_oid == 1700
    mood = next(m for m in msgs if isinstance(m, po.Type))
    assert (mood.namespace, mood.name) == ("app", "mood") and rel.columns[5].type_oid == mood.oid

    ins = [m for m in msgs if isinstance(m, po.Insert) and m.relid == rel.oid]
    first = ins[0].new
    assert first[:4] == ("1", "12345678901234567890.0123456789", "2024-02-29 18:29:59.123456+00", '{"a": [1, 2.50]}')
    assert first[4] == big and first[5] == "ok" and first[6] is None
    typed = po.typed_values(rel, first)
    assert typed["n"] == Decimal("12345678901234567890.0123456789") and isinstance(typed["n"], Decimal)
    assert typed["ts"] == dt.datetime(2024, 2, 29, 18, 29, 59, 123456, tzinfo=dt.timezone.utc)
    assert typed["doc"] == json.loads('{"a": [1, 2.50]}') and typed["note"] is None
    assert po.typed_values(rel, ins[1].new)["n"] == Decimal("-0.0000000001")

    updates = [m for m in msgs if isinstance(m, po.Update)]
    toast = updates[0]
    assert toast.new[4] is po.UNCHANGED and toast.new[6] == "touched" and toast.old is None
    assert po.typed_values(rel, toast.new)["big"] is po.UNCHANGED
    keyed = updates[1]
    assert keyed.old_kind == "K" and keyed.old[0] == "2" and keyed.new[0] == "3"
    deletes = [m for m in msgs if isinstance(m, po.Delete)]
    assert deletes[0].old_kind == "K" and deletes[0].old[0] == "3" and deletes[0].old[1] is None
    assert deletes[1].old_kind == "O" and deletes[1].old == ("7", "seven")

    trunc = next(m for m in msgs if isinstance(m, po.Truncate))
    assert len(trunc.relids) == 2 and rel.oid in trunc.relids and not trunc.cascade
    messages = [m for m in msgs if isinstance(m, po.Message)]
    assert [(m.transactional, m.prefix, m.content) for m in messages] == [
        (True, "reconcile", b"in a transaction"), (False, "reconcile", b"outside")]
    origin = next(m for m in msgs if isinstance(m, po.Origin))
    assert origin.name == origin_name and origin.lsn == 0xAB

    begins = [m for m in msgs if isinstance(m, po.Begin)]
    commits = [m for m in msgs if isinstance(m, po.Commit)]
    assert len(begins) == len(commits) and all(c.end_lsn > c.commit_lsn for c in commits)
    assert [b.final_lsn for b in begins] == [c.commit_lsn for c in commits]
    now = dt.datetime.now(dt.timezone.utc)
    assert all(abs((po.pg_timestamp(c.commit_ts) - now).total_seconds()) < 120 for c in commits)


def test_assembler_gives_whole_transactions_keys_and_truncates(src):
    with src.transaction():
        for i in range(5):
            src.execute("INSERT INTO app.t (id, note) VALUES (%s, 'n')", (i,))
    src.execute("UPDATE app.t SET id = 10 WHERE id = 4")
    src.execute("TRUNCATE app.nokey")
    rows = peek(src)
    asm = Assembler([TableSpec("app.t", ("id",)), TableSpec("app.nokey", ("a",))])
    txns, partial = asm.assemble(rows)
    assert not partial and len(txns) == 3
    assert [c.key for c in txns[0].changes] == [(str(i),) for i in range(5)]
    assert txns[1].changes[0].old_key == ("4",) and txns[1].changes[0].key == ("10",)
    assert txns[2].truncated == ["app.nokey"] and txns[2].changes == []
    assert txns[0].commit_lsn < txns[1].commit_lsn < txns[2].commit_lsn
    # A batch cut before a Commit leaves that transaction out; its Begin onwards come again next time.
    cut, partial = Assembler([TableSpec("app.t", ("id",)), TableSpec("app.nokey", ("a",))]).assemble(rows[:4])
    assert cut == [] and partial
    payload = json.loads(json.dumps(txns[0].payload()))
    assert payload["changes"][0] == {"op": "I", "table": "app.t", "key": ["0"],
                                     "row": {"id": "0", "n": None, "ts": None, "doc": None, "big": None, "m": None,
                                             "note": "n"}}


def test_malformed_messages_are_refused_with_a_reason():
    with pytest.raises(po.DecodeError, match="unknown pgoutput message type"):
        po.decode(b"Z\x00")
    with pytest.raises(po.DecodeError, match="ends early"):
        po.decode(b"B\x00\x00")
    with pytest.raises(po.DecodeError, match="binary tuple values"):
        po.decode(b"I\x00\x00\x00\x01N\x00\x01b\x00\x00\x00\x01x")
    assert po.lsn_to_int("0/0") == 0 and po.int_to_lsn(po.lsn_to_int("1A/FF00")) == "1A/FF00"


def test_the_assembler_refuses_what_would_drop_a_transaction_silently(src):
    """Real messages in an order the slot never produces: a lost Commit, a change outside a transaction,
    a Commit of another transaction. Each must stop the replay, never drop changes without a word."""
    src.execute("INSERT INTO app.t (id, note) VALUES (1, 'first')")
    src.execute("INSERT INTO app.t (id, note) VALUES (2, 'second')")
    rows = peek(src)
    kinds = [type(po.decode(r)).__name__ for r in rows]
    b1, c1, b2, c2 = [i for i, k in enumerate(kinds) if k in ("Begin", "Commit")]
    assert (kinds[b1], kinds[c1], kinds[b2], kinds[c2]) == ("Begin", "Commit", "Begin", "Commit")
    tables = [TableSpec("app.t", ("id",))]
    assert len(Assembler(tables).assemble(rows)[0]) == 2
    with pytest.raises(po.DecodeError, match="has not committed"):  # the first Commit went missing
        Assembler(tables).assemble(rows[:c1] + rows[b2:])
    with pytest.raises(po.DecodeError, match="outside a transaction"):  # a change without its Begin
        Assembler(tables).assemble(rows[b1 + 1:c1])
    with pytest.raises(po.DecodeError, match="does not match its Begin"):  # another transaction's Commit
        Assembler(tables).assemble(rows[:c1] + rows[c2:])
