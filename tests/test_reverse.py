"""Reverse replay from the DSQL CDC stand-in: record format, fragments, honesty of the stand-in, and the
property that any duplication, reordering, fragmenting and crash still ends with source == target."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile.config import TableSpec
from reconcile.replay.source import SlotReader, Assembler
from reconcile.reverse.records import Reassembler, RecordError, crc32c, loads, Item
from reconcile.reverse.replayer import ReverseReplayer
from tests.reverse_support import init_source, install_markers, new_stream, publisher, rows, written_twice

ITEMS = TableSpec("app.items", ("id",))
ITEMS_DDL = "CREATE TABLE app.items (id bigint PRIMARY KEY, v bigint NOT NULL, amount numeric(12,2), note text)"


def run_sql(url: str, *statements, params=None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt, params)


def read_stream(kc, stream: str) -> list[dict]:
    out = []
    for sh in kc.list_shards(StreamName=stream)["Shards"]:
        it = kc.get_shard_iterator(StreamName=stream, ShardId=sh["ShardId"], ShardIteratorType="TRIM_HORIZON")
        out += [loads(r["Data"]) for r in kc.get_records(ShardIterator=it["ShardIterator"], Limit=10000)["Records"]]
    return out


def replayer(source_db: str, kc, s, tables=(ITEMS,), fault=None, target_db: str | None = None) -> ReverseReplayer:
    return ReverseReplayer(source=lambda: psycopg.connect(source_db), kinesis=kc, tables=list(tables), settings=s,
                           fault=fault, target=(lambda: psycopg.connect(target_db, autocommit=True)) if target_db else None)


# --- the stand-in speaks DSQL's record format -----------------------------------------------------------


def test_standin_records_are_dsql_shaped_and_compacted(target_db, kinesis_url):
    run_sql(target_db, "CREATE SCHEMA app",
            "CREATE TABLE app.t (id int PRIMARY KEY, amount numeric(12,2), at timestamptz, d date, b bytea, ok bool, "
            "j json, code char(4))",
            "INSERT INTO app.t (id, amount) VALUES (3, 1), (4, 1)")
    kc, stream = new_stream(kinesis_url, shards=3)
    pub = publisher(target_db, kc, stream)
    with psycopg.connect(target_db, autocommit=True) as conn, conn.transaction():
        conn.execute("INSERT INTO app.t VALUES (1, 12.50, '1970-01-01 00:00:01.5+00', '1970-01-11', '\\x4142', true, "
                     "'{\"a\": 1.10}', 'ab')")
        conn.execute("UPDATE app.t SET amount = 99.99 WHERE id = 1")       # insert + update: one 'c'
        conn.execute("INSERT INTO app.t (id) VALUES (2)")
        conn.execute("DELETE FROM app.t WHERE id = 2")                   # insert + delete: no record
        conn.execute("DELETE FROM app.t WHERE id = 3")                   # 'd' with only the key
        conn.execute("UPDATE app.t SET amount = 2 WHERE id = 4")
        conn.execute("UPDATE app.t SET amount = 3 WHERE id = 4")         # two updates: one 'u'
    with psycopg.connect(target_db, autocommit=True) as conn, conn.transaction():
        conn.execute("UPDATE app.t SET id = 40 WHERE id = 4")            # a key change: 'd' of 4, 'c' of 40
    pub.drain()
    recs = read_stream(kc, stream)
    by = {(r["source"]["txId"], r["op"], (r["after"] or r["before"])["id"]): r for r in recs}
    assert len(recs) == len(by) == 5
    first = {r["source"]["txId"] for r in recs if (r["after"] or r["before"])["id"] in (1, 3)}
    assert len(first) == 1
    (tx,) = first
    c = by[(tx, "c", 1)]
    assert c["type"] == "full" and c["before"] is None
    assert c["after"] == {"id": 1, "amount": "99.99", "at": 1500000, "d": 10, "b": base64.b64encode(b"AB").decode(),
                          "ok": True, "j": '{"a": 1.10}', "code": "ab"}
    assert by[(tx, "d", 3)]["before"] == {"id": 3} and by[(tx, "d", 3)]["after"] is None
    assert by[(tx, "u", 4)]["after"]["amount"] == "3.00"
    src = c["source"]
    assert src["schema"] == "app" and src["table"] == "t" and src["db"] == "postgres" and src["version"] == "1.0"
    assert src["ts_ms"] == src["ts_ns"] // 1_000_000 and c["ts_ns"] >= src["ts_ns"] - 1000
    assert len({r["source"]["ts_ns"] for r in recs if r["source"]["txId"] == tx}) == 1
    moved = {(r["op"], (r["after"] or r["before"])["id"]) for r in recs if r["source"]["txId"] != tx}
    assert moved == {("d", 4), ("c", 40)}
    assert pub.pending() == 0


def test_oversized_records_arrive_as_fragments_that_reassemble(target_db, kinesis_url):
    run_sql(target_db, "CREATE SCHEMA app", ITEMS_DDL)
    kc, stream = new_stream(kinesis_url)
    pub = publisher(target_db, kc, stream, fragment_bytes=300, shuffle=True, seed=3)
    note = "é" * 500 + "x" * 333  # multi-byte characters: fragments cut on character boundaries
    run_sql(target_db, "INSERT INTO app.items VALUES (1, 1, 5.00, %s)", params=(note,))
    pub.drain()
    recs = read_stream(kc, stream)
    mains = [r for r in recs if r["type"] == "chunked"]
    frags = [r for r in recs if r["type"] == "fragment"]
    assert len(mains) == 1 and len(frags) == mains[0]["chunked"]["after"]["total_fragments"] > 2
    assert mains[0]["after"] is None and all(len(json.dumps(f["data"]).encode()) < 700 for f in frags)
    ra = Reassembler()
    out = []
    for i, r in enumerate(reversed(recs)):  # fragments before their main
        out += ra.add(r, Item("s", i))
    assert len(out) == 1 and out[0].after["note"] == note and len(out[0].items) == len(recs)
    bad = dict(mains[0], chunked={"after": dict(mains[0]["chunked"]["after"], crc32c="1")})
    ra2 = Reassembler()
    for i, f in enumerate(frags):
        ra2.add(f, Item("s", i))
    with pytest.raises(RecordError, match="fails its CRC32C"):
        ra2.add(bad, Item("s", 99))
    assert crc32c(b"123456789") == 0xE3069283


def test_the_target_still_refuses_logical_decoding_with_capture_on(target_db, kinesis_url):
    """The stand-in captures through its own triggers: the target keeps refusing what DSQL refuses."""
    run_sql(target_db, "CREATE SCHEMA app", ITEMS_DDL)
    kc, stream = new_stream(kinesis_url)
    publisher(target_db, kc, stream)
    with psycopg.connect(target_db, autocommit=True) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("replica",)
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="CREATE PUBLICATION is not supported"):
            conn.execute("CREATE PUBLICATION p FOR TABLE app.items")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="wal_level"):
            conn.execute("SELECT pg_create_logical_replication_slot('x', 'pgoutput')")


def test_forward_decoding_skips_what_the_reverse_replay_wrote(source_db, kinesis_url):
    """No loop: a transaction written through the reverse origin never reaches the forward replay."""
    run_sql(source_db, "CREATE SCHEMA app", ITEMS_DDL)
    s = init_source(source_db, "loop")
    slot = "fw_" + psycopg.conninfo.conninfo_to_dict(source_db)["dbname"].lower()
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("CREATE PUBLICATION p FOR TABLE app.items")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    try:
        with psycopg.connect(source_db, autocommit=True) as rev:
            rev.execute("SELECT pg_replication_origin_session_setup(%s)", (s.origin_name,))
            rev.execute("INSERT INTO app.items VALUES (1, 1, 1, 'from DSQL')")
        run_sql(source_db, "INSERT INTO app.items VALUES (2, 1, 1, 'from the application')")
        with psycopg.connect(source_db, autocommit=True) as conn:
            txns, _ = Assembler([ITEMS]).assemble(SlotReader(conn, slot_name=slot, publication="p").peek(1000))
        assert [c.key for t in txns for c in t.changes] == [("2",)]
    finally:
        run_sql(source_db, f"SELECT pg_drop_replication_slot('{slot}')")


# --- the property: any delivery, any crash, same end state ------------------------------------------------

WRITE = st.tuples(st.sampled_from(["upsert", "upsert", "delete"]), st.integers(0, 7), st.integers(0, 900))
HISTORY = st.lists(st.lists(WRITE, min_size=1, max_size=5), min_size=1, max_size=25)
CHAOS = st.fixed_dictionaries({"duplicate_rate": st.floats(0, 0.6), "defer_rate": st.floats(0, 0.5),
                               "shuffle": st.booleans(), "fragment_bytes": st.sampled_from([400, 700, 9 * 1024 * 1024]),
                               "seed": st.integers(0, 2 ** 32)})


class Crash(Exception):
    """A crash of the reverse replayer at a chosen point (its in-memory state is thrown away)."""


def write_history(target_db: str, history) -> None:
    v = 0
    with psycopg.connect(target_db, autocommit=True) as conn:
        for txn in history:
            with conn.transaction():
                for kind, key, size in txn:
                    v += 1
                    if kind == "delete":
                        conn.execute("DELETE FROM app.items WHERE id = %s", (key,))
                    else:
                        conn.execute("INSERT INTO app.items VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                                     "v = EXCLUDED.v, amount = EXCLUDED.amount, note = EXCLUDED.note",
                                     (key, v, f"{v}.{key:02d}", "n" * size + str(v)))


@pytest.fixture
def items_pair(source_db, target_db):
    run_sql(target_db, "CREATE SCHEMA app", ITEMS_DDL)
    run_sql(source_db, "CREATE SCHEMA app", ITEMS_DDL)
    install_markers(source_db, ["app.items"])
    return source_db, target_db


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=HISTORY, chaos=CHAOS, crashes=st.lists(st.integers(1, 40), max_size=4),
       rounds=st.integers(1, 4), data=st.data())
def test_any_duplication_reordering_fragmenting_and_crash_converges(items_pair, kinesis_url, history, chaos, crashes,
                                                                     rounds, data):
    source_db, target_db = items_pair
    run_sql(source_db, "DELETE FROM app.items", "TRUNCATE oracle.writes")
    run_sql(target_db, "DELETE FROM app.items")
    kc, stream = new_stream(kinesis_url, shards=data.draw(st.integers(2, 4), label="shards"))
    pub = publisher(target_db, kc, stream, **chaos)
    pub.drain()  # the deletes above are not part of this history
    s = init_source(source_db, stream, start_ts_ns=time.time_ns())
    write_history(target_db, history)
    calls = {"n": 0}
    points = sorted(crashes)

    def fault(where: str) -> None:
        calls["n"] += 1
        if points and calls["n"] >= points[0]:
            points.pop(0)
            raise Crash(where)

    rep = replayer(source_db, kc, s, fault=fault)
    published = 0
    try:
        for _attempt in range(500):  # a bound, so a bug fails the test instead of hanging it
            if pub.pending() or pub._later:
                # the stream fills while the consumer runs: transactions arrive in several rounds
                pub.publish_once() if published < rounds else pub.drain()
                published += 1
            try:
                result = rep.run(max_rounds=3)
            except Crash:
                rep.close()
                rep = replayer(source_db, kc, s, fault=fault)  # a new process: nothing survives but the source
                continue
            if result.caught_up and not pub.pending() and not pub._later:
                break
        else:
            pytest.fail(f"the reverse replay never caught up: {result.text()}")
    finally:
        rep.close()
        pub.close()
    assert rows(source_db, "app.items", "id") == rows(target_db, "app.items", "id")
    assert written_twice(source_db) == []


# --- a real kill -9 ------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import os, sys, threading, psycopg
    from reconcile.config import TableSpec
    from reconcile.local.kinesis import client
    from reconcile.reverse.replayer import ReverseReplayer
    from reconcile.reverse.settings import ReverseSettings
    source, url, stream, origin, flag = sys.argv[1:6]
    n = {"applied": 0}
    def fault(where):
        if where == "before-commit":
            n["applied"] += 1
            if n["applied"] == 40:          # hold a source transaction open, then tell the parent
                open(flag, "w").write(str(os.getpid()))
                threading.Event().wait()
    s = ReverseSettings(stream_name=stream, origin_name=origin, settle_ms=0, group_txns=1, poll_interval=0.01)
    ReverseReplayer(source=lambda: psycopg.connect(source), kinesis=client(url), tables=[TableSpec("app.items", ("id",))],
                    settings=s, fault=fault).run()
""")


def test_sigkill_mid_transaction_then_rerun_ends_equal_with_nothing_applied_twice(items_pair, kinesis_url, tmp_path):
    source_db, target_db = items_pair
    kc, stream = new_stream(kinesis_url, shards=3)
    pub = publisher(target_db, kc, stream, duplicate_rate=0.3, shuffle=True, defer_rate=0.2, fragment_bytes=500,
                    seed=11)
    s = init_source(source_db, stream)
    history = [[("upsert", (i * 7) % 13, (i * 37) % 700)] + ([("delete", (i * 5) % 13, 0)] if i % 4 == 0 else [])
               for i in range(120)]
    write_history(target_db, history)
    pub.drain()
    pub.close()
    flag = tmp_path / "holding"
    child = subprocess.Popen([sys.executable, "-c", CHILD, source_db, kinesis_url, stream, s.origin_name, str(flag)],
                             cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 60
    while not flag.exists():  # the child says when it holds a transaction open
        assert child.poll() is None, "the reverse replayer exited before the kill point"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with psycopg.connect(source_db) as conn:
        applied, = conn.execute("SELECT applied_txns FROM reconcile_reverse.streams WHERE stream = %s",
                                (stream,)).fetchone()
    assert applied == 39  # the 40th was open when killed: rolled back whole
    assert rows(source_db, "app.items", "id") != rows(target_db, "app.items", "id")
    rep = replayer(source_db, kc, s)
    result = rep.run()
    rep.close()
    assert result.status == "done" and result.caught_up and result.changes_stale > 0
    assert rows(source_db, "app.items", "id") == rows(target_db, "app.items", "id")
    assert written_twice(source_db) == []


def test_every_shard_is_read_across_a_shard_split(items_pair, kinesis_url):
    """After a split every shard is listed and read (closed parent and children), all records are applied, and
    the parent is marked finished once read to its end. (moto keeps routing new records to the closed parent,
    where AWS routes them to the children: the children stay empty here.)"""
    source_db, target_db = items_pair
    kc, stream = new_stream(kinesis_url, shards=2)
    pub = publisher(target_db, kc, stream, duplicate_rate=0.2, shuffle=True, seed=5)
    s = init_source(source_db, stream)
    write_history(target_db, [[("upsert", i % 9, 10)] for i in range(30)])
    pub.drain()
    rep = replayer(source_db, kc, s)
    first = rep.run()
    parent = kc.list_shards(StreamName=stream)["Shards"][0]
    lo, hi = int(parent["HashKeyRange"]["StartingHashKey"]), int(parent["HashKeyRange"]["EndingHashKey"])
    kc.split_shard(StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=str((lo + hi) // 2))
    write_history(target_db, [[("upsert", i % 11, 20), ("delete", (i + 3) % 11, 0)] for i in range(40)])
    pub.drain()
    pub.close()
    second = rep.run()
    rep.close()
    assert first.caught_up and second.caught_up and second.shards == 4
    assert rows(source_db, "app.items", "id") == rows(target_db, "app.items", "id")
    with psycopg.connect(source_db) as conn:
        marks = dict(conn.execute("SELECT shard_id, finished FROM reconcile_reverse.checkpoints WHERE stream = %s",
                                  (stream,)).fetchall())
    assert marks[parent["ShardId"]] is True


def test_cli_init_run_status_and_a_dead_letter_skipped(source_db, target_db, kinesis_url, tmp_path):
    """The source refuses a DSQL transaction (a CHECK only the source has): the run stops at a dead letter
    (exit 1) and applies nothing after it; `status` says so (exit 1); skipped with a reason, the run goes on."""
    from typer.testing import CliRunner

    from reconcile.cli.reverse_cmd import app as reverse_app

    run_sql(target_db, "CREATE SCHEMA app", ITEMS_DDL)
    run_sql(source_db, "CREATE SCHEMA app", ITEMS_DDL.replace("numeric(12,2)", "numeric(12,2) CHECK (amount < 1000)"))
    kc, stream = new_stream(kinesis_url)
    path = tmp_path / "reconcile.toml"
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n'
                    f'[target]\nkind = "postgres"\nconninfo = "{target_db}"\n'
                    '[[tables]]\nname = "app.items"\nkey = ["id"]\n'
                    f'[reverse]\nstream_name = "{stream}"\nendpoint_url = "{kinesis_url}"\nsettle_ms = 0\n')
    runner = CliRunner()
    out = runner.invoke(reverse_app, ["init", "--config", str(path)])
    assert out.exit_code == 0 and "created schema reconcile_reverse" in out.output, out.output
    out = runner.invoke(reverse_app, ["init", "--config", str(path), "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["actions"] == ["already initialised; nothing to do"]
    out = runner.invoke(reverse_app, ["status", "--config", str(path)])
    assert out.exit_code == 1 and "caught up never" in out.output, out.output
    out = runner.invoke(reverse_app, ["run", "--config", str(path), "--max-txns", "0"])
    assert out.exit_code == 2 and "--max-txns" in out.output, out.output
    pub = publisher(target_db, kc, stream)
    write_history(target_db, [[("upsert", 1, 5)], [("upsert", 2, 5)]])
    run_sql(target_db, "UPDATE app.items SET amount = 5000 WHERE id = 1")  # refused by the source's CHECK
    write_history(target_db, [[("upsert", 3, 5)]])
    pub.drain()
    pub.close()
    out = runner.invoke(reverse_app, ["run", "--config", str(path), "--json"])
    doc = json.loads(out.output)
    assert out.exit_code == 1 and doc["status"] == "stopped" and "23514" in doc["message"], out.output
    applied = ["(1,1,1.01,nnnnn1)", "(2,2,2.02,nnnnn2)"]
    assert doc["txns_applied"] == 2 and [r[0] for r in rows(source_db, "app.items", "id")] == applied
    out = runner.invoke(reverse_app, ["status", "--config", str(path), "--json"])
    status = json.loads(out.output)
    assert out.exit_code == 1 and status["dead_letters_open"] == 1
    dl = status["dead_letters"][0]
    assert dl["tables"] == "app.items" and dl["sqlstate"] == "23514" and dl["change_count"] == 1
    out = runner.invoke(reverse_app, ["dead-letters", "skip", dl["dead_letter_id"], "--reason", "test: over the limit",
                                      "--by", "tester", "--config", str(path)])
    assert out.exit_code == 0 and "skipped by tester" in out.output, out.output
    out = runner.invoke(reverse_app, ["run", "--config", str(path)])
    assert out.exit_code == 0 and "caught up: yes" in out.output, out.output
    assert [r[0] for r in rows(source_db, "app.items", "id")] == applied + ["(3,1,1.03,nnnnn1)"]
    out = runner.invoke(reverse_app, ["status", "--config", str(path)])
    assert out.exit_code == 0 and "0 open dead letter(s)" in out.output, out.output


def test_max_txns_bounds_a_run_and_the_next_run_resumes_after_it(items_pair, kinesis_url):
    """A bounded slice (the DAG's ``max_txns``) applies exactly that many DSQL transactions, oldest first; the
    rest stays behind the shard checkpoints and a fresh replayer (the next DAG run) applies it, nothing twice."""
    source_db, target_db = items_pair
    kc, stream = new_stream(kinesis_url, shards=2)
    pub = publisher(target_db, kc, stream, shuffle=True, seed=9)
    s = init_source(source_db, stream)
    write_history(target_db, [[("upsert", i, 5)] for i in range(30)])  # 30 transactions, one new key each
    pub.drain()
    pub.close()
    first = replayer(source_db, kc, s)
    bounded = first.run(max_txns=7)
    first.close()
    assert bounded.txns_applied == bounded.changes_applied == 7 and not bounded.caught_up
    assert rows(source_db, "app.items", "id") == rows(target_db, "app.items", "id")[:7]  # the 7 oldest (keys 0-6)
    second = replayer(source_db, kc, s)
    rest = second.run()
    second.close()
    # Records of the 7 applied transactions that lie past an unapplied one on their shard are read again (a
    # checkpoint only moves past a contiguous run of done records): the per-key versions make them stale.
    assert rest.caught_up and rest.changes_applied == 23 and rest.changes_applied + rest.changes_stale <= 30
    assert rows(source_db, "app.items", "id") == rows(target_db, "app.items", "id")
    assert written_twice(source_db) == []
