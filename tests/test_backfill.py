"""Backfill against the real local stack: an en_US source and the guarded DSQL stand-in target."""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
import uuid

import psycopg
import pytest
from psycopg import errors, sql
from typer.testing import CliRunner

from reconcile.backfill import (
    Backfill,
    BackfillSettings,
    Control,
    PlanMismatch,
    ReplayNotReady,
    TableNotReady,
    assert_replay_ready,
    copy_chunk,
    plan_chunks,
)
from reconcile.backfill.progress import Progress
from reconcile.budget import Budget
from reconcile.cli.backfill_cmd import app as backfill_app
from reconcile.config import BudgetSettings, Config, PostgresEndpoint, TableSpec
from reconcile.connections import connect
from reconcile.occ import RetryPolicy
from tests.waiting import wait_for

FAST_RETRY = RetryPolicy(max_attempts=20, base_delay=0.005, max_delay=0.05)


# --- helpers -----------------------------------------------------------------------------------------


def ddl(url: str, *statements: str) -> None:
    """Run each statement alone in autocommit (the target's guards allow one DDL per transaction)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt)


def config(source: str, target: str, *tables: TableSpec) -> Config:
    return Config(source=PostgresEndpoint("source", source), target=PostgresEndpoint("target", target),
                  tables=tables)


def fingerprint(url: str, table: str, key: str, order: str | None = None) -> tuple[int, int, str]:
    """(rows, distinct keys, md5 of every row in key order): equal on both sides means equal tables."""
    q = sql.SQL("SELECT count(*), count(DISTINCT ({k})), md5(string_agg(t::text, E'\\n' ORDER BY {o})) "
                "FROM {t} AS t").format(k=sql.SQL(key), o=sql.SQL(order or key), t=sql.Identifier(*table.split(".")))
    with psycopg.connect(url) as conn:
        conn.execute("SET timezone = 'UTC'")
        return conn.execute(q).fetchone()


def chunk_rows(target: str, table: str) -> list[tuple]:
    with psycopg.connect(target) as conn:
        return conn.execute("SELECT chunk_id, status, rows, coalesce(rejected, 0), attempts FROM reconcile.chunks "
                            "WHERE table_name = %s ORDER BY chunk_id", (table,)).fetchall()


def items_pair(source_db: str, target_db: str, rows: int = 5000) -> None:
    ddl(source_db, "CREATE SCHEMA app",
        "CREATE TABLE app.items (id bigint PRIMARY KEY, name text NOT NULL, amount numeric(12,2), "
        "at timestamptz, note text)",
        f"INSERT INTO app.items SELECT g, 'item ' || g || CASE WHEN g % 7 = 0 THEN E'\\ttab\\\\back\\nline' ELSE '' END, "
        f"g / 3.0, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute', "
        f"CASE WHEN g % 5 = 0 THEN NULL ELSE repeat('x', g % 50) END FROM generate_series(1, {rows}) g")
    ddl(target_db, "CREATE SCHEMA app",
        "CREATE TABLE app.items (id bigint PRIMARY KEY, name text NOT NULL, amount numeric(12,2), "
        "at timestamptz, note text)",
        "CREATE INDEX items_name_idx ON app.items (name)")


ITEMS = TableSpec("app.items", ("id",))


# --- copying -------------------------------------------------------------------------------------


def test_copies_a_table_then_resumes_nothing_and_a_forced_rerun_converges(source_db, target_db):
    items_pair(source_db, target_db)
    cfg = config(source_db, target_db, ITEMS)
    with Backfill.from_config(cfg, BackfillSettings(chunk_rows=700, workers=3)) as bf:
        first = bf.run()
    assert first.status == "done" and first.rows == 5000 and first.rejected == 0 and first.exit_code == 0
    assert fingerprint(source_db, "app.items", "id") == fingerprint(target_db, "app.items", "id")
    chunks = chunk_rows(target_db, "app.items")
    assert len(chunks) == 8 and {c[1] for c in chunks} == {"done"} and sum(c[2] for c in chunks) == 5000

    with Backfill.from_config(cfg, BackfillSettings()) as bf:
        again = bf.run()
    assert again.rows == 0 and again.tables[0].chunks_selected == 0  # resume: nothing left to do

    ddl(target_db, "UPDATE app.items SET name = 'stale' WHERE id BETWEEN 100 AND 200",
        "DELETE FROM app.items WHERE id BETWEEN 3000 AND 3010")
    for method in ("unnest", "values", "executemany", "auto"):
        with Backfill.from_config(cfg, BackfillSettings(force=True, write_method=method, workers=2)) as bf:
            forced = bf.run()
        assert forced.rows == 5000, method
        assert fingerprint(source_db, "app.items", "id") == fingerprint(target_db, "app.items", "id"), method


def test_from_key_to_key_force_recopies_only_the_chunks_of_a_hole(source_db, target_db):
    items_pair(source_db, target_db)
    cfg = config(source_db, target_db, ITEMS)
    with Backfill.from_config(cfg, BackfillSettings(chunk_rows=500)) as bf:
        bf.run()
    ddl(target_db, "DELETE FROM app.items WHERE id BETWEEN 1200 AND 1300")  # the hole a diff would find
    before = {c[0]: c[4] for c in chunk_rows(target_db, "app.items")}
    settings = BackfillSettings(tables=("app.items",), from_key=("1200",), to_key=("1301",), force=True)
    with Backfill.from_config(cfg, settings) as bf:
        fixed = bf.run()
    assert fixed.rows == 500  # keys 1001..1500: one chunk holds the whole hole
    after = {c[0]: c[4] for c in chunk_rows(target_db, "app.items")}
    assert [c for c in after if after[c] != before[c]] == [2]
    assert fingerprint(source_db, "app.items", "id") == fingerprint(target_db, "app.items", "id")


@pytest.mark.parametrize("kind", ["composite", "composite_int", "uuid", "text_en_us", "text_c"])
def test_key_types_copy_completely_in_c_order(source_db, target_db, kind):
    values = ["a", "B", "ä", "Z", "b", "É", "z", "Å", "ab", "a b", "Ø", "é", "A", "aa", "Ä", "_x", "10", "9"]
    if kind == "composite":
        src = "CREATE TABLE app.k (code text, n int, v text, PRIMARY KEY (code, n))"
        tgt = src
        fill = [("INSERT INTO app.k SELECT c, n, c || n FROM unnest(%s::text[]) c, generate_series(1, 7) n", values)]
        key, spec = "code, n", TableSpec("app.k", ("code", "n"))
        as_sortable = lambda k: (k[0].encode(), int(k[1]))  # noqa: E731
    elif kind == "composite_int":
        src = "CREATE TABLE app.k (a int, b bigint, v text, PRIMARY KEY (a, b))"
        tgt = src
        fill = [("INSERT INTO app.k SELECT a, b, a || '/' || b FROM generate_series(-3, 9) a, "
                 "generate_series(1, 9) b", None)]
        key, spec = "a, b", TableSpec("app.k", ("a", "b"))
        as_sortable = lambda k: (int(k[0]), int(k[1]))  # noqa: E731
    elif kind == "uuid":
        src = "CREATE TABLE app.k (id uuid PRIMARY KEY, v text)"
        tgt = src
        fill = [("INSERT INTO app.k SELECT gen_random_uuid(), 'v' || g FROM generate_series(1, 400) g", None)]
        key, spec = "id", TableSpec("app.k", ("id",))
        as_sortable = lambda k: uuid.UUID(k[0]).bytes  # noqa: E731
    else:
        collate = ' COLLATE "C"' if kind == "text_c" else ""
        src = f"CREATE TABLE app.k (name text{collate} PRIMARY KEY, v int)"
        tgt = "CREATE TABLE app.k (name text PRIMARY KEY, v int)"
        fill = [("INSERT INTO app.k SELECT c || s, length(c) FROM unnest(%s::text[]) c, "
                 "unnest(ARRAY['', '-1', ' 2', 'ß']) s", values)]
        key, spec = "name", TableSpec("app.k", ("name",))
        as_sortable = lambda k: k[0].encode()  # noqa: E731  (C order is UTF-8 byte order)
    ddl(source_db, "CREATE SCHEMA app", src)
    with psycopg.connect(source_db, autocommit=True) as conn:
        for q, arg in fill:
            conn.execute(q, (arg,) if arg is not None else None)
    ddl(target_db, "CREATE SCHEMA app", tgt)
    cfg = config(source_db, target_db, spec)
    with Backfill.from_config(cfg, BackfillSettings(chunk_rows=5, workers=3, batch_seconds=0.05)) as bf:
        summary = bf.run()
        plan = bf.control.load_plan("app.k")
        bounds = [c.hi for c in bf.control.chunks("app.k")][:-1]
    assert summary.status == "done" and summary.rejected == 0
    assert plan.strategy == ("sort" if kind in ("composite", "text_en_us") else "index")  # en_US text sorts
    assert plan.chunks > 10
    order = ", ".join(f'{c} COLLATE "C"' if c in ("code", "name") else c for c in key.split(", "))
    src_fp, tgt_fp = fingerprint(source_db, "app.k", key, order), fingerprint(target_db, "app.k", key, order)
    assert src_fp == tgt_fp and src_fp[0] == src_fp[1] == summary.rows
    sortable = [as_sortable(b) for b in bounds]  # boundaries ascend in C order, whatever the source's collation
    assert sortable == sorted(sortable) and len(set(sortable)) == len(sortable)


# --- rows the target refuses ----------------------------------------------------------------------------


def docs_pair(source_db: str, target_db: str) -> Config:
    ddl(source_db, "CREATE SCHEMA app",
        "CREATE TABLE app.docs (id int PRIMARY KEY, code text NOT NULL, amount numeric(12,2) NOT NULL, body text)",
        "INSERT INTO app.docs SELECT g, 'c' || g, g, 'body ' || g FROM generate_series(1, 300) g",
        "UPDATE app.docs SET code = 'far-too-long-for-ten' WHERE id = 50",
        "UPDATE app.docs SET amount = -5 WHERE id = 120",
        "UPDATE app.docs SET body = repeat('x', 11 * 1024 * 1024) WHERE id = 160")
    ddl(target_db, "CREATE SCHEMA app",
        "CREATE TABLE app.docs (id int PRIMARY KEY, code varchar(10) NOT NULL, "
        "amount numeric(12,2) NOT NULL CHECK (amount >= 0), body text)")
    return config(source_db, target_db, TableSpec("app.docs", ("id",)))


def test_refused_rows_land_in_rejects_with_their_reason_while_neighbours_copy(source_db, target_db):
    cfg = docs_pair(source_db, target_db)
    with Backfill.from_config(cfg, BackfillSettings(chunk_rows=100)) as bf:
        summary = bf.run()
        rejects = {r.key: r for r in bf.control.rejects("app.docs")}
    assert summary.status == "done" and summary.rows == 297 and summary.rejected == 3 and summary.exit_code == 1
    assert set(rejects) == {("50",), ("120",), ("160",)}
    assert rejects[("50",)].sqlstate == "22001" and "character varying(10)" in rejects[("50",)].reason
    assert rejects[("120",)].sqlstate == "23514" and "check constraint" in rejects[("120",)].reason
    assert rejects[("160",)].sqlstate == "54000" and "10.00 MiB" in rejects[("160",)].reason
    assert len(rejects[("160",)].row_data) < 9000  # cut, with its size noted
    with psycopg.connect(target_db) as conn:
        ids = {r[0] for r in conn.execute("SELECT id FROM app.docs")}
    assert ids == set(range(1, 301)) - {50, 120, 160}  # neighbours 49, 51, 119, 121, 159, 161 all landed
    assert [c[1] for c in chunk_rows(target_db, "app.docs")] == ["done"] * 3
    assert sum(c[3] for c in chunk_rows(target_db, "app.docs")) == 3

    for method in ("auto", "unnest", "values", "executemany"):  # upserts refuse what COPY refused
        with Backfill.from_config(cfg, BackfillSettings(force=True, write_method=method)) as bf:
            again = bf.run()
            assert again.rejected == 3 and bf.control.count_rejects("app.docs") == 3, method  # recorded once
    with psycopg.connect(target_db) as conn:
        assert conn.execute("SELECT max(length(code)) FROM app.docs").fetchone()[0] <= 4  # nothing truncated


def test_cli_run_status_and_rejects(source_db, target_db, tmp_path):
    cfg = docs_pair(source_db, target_db)
    path = tmp_path / "reconcile.toml"
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "{cfg.source.conninfo}"\n'
                    f'[target]\nkind = "postgres"\nconninfo = "{cfg.target.conninfo}"\n'
                    '[[tables]]\nname = "app.docs"\nkey = ["id"]\n')
    runner = CliRunner()
    out = runner.invoke(backfill_app, ["--config", str(path), "--no-progress", "--chunk-rows", "120"])
    assert out.exit_code == 1, out.output  # 1: rows were rejected
    assert "297 rows copied, 3 rejected" in out.output
    out = runner.invoke(backfill_app, ["status", "--config", str(path), "--json"])
    assert out.exit_code == 0, out.output
    status = json.loads(out.output)[0]
    assert status["planned_rows"] == 300 and status["done"] == 3 and status["rows"] == 297 and status["rejected"] == 3
    out = runner.invoke(backfill_app, ["rejects", "--config", str(path)])
    assert out.exit_code == 0 and "key 120  23514" in out.output and out.output.count("app.docs") == 3
    out = runner.invoke(backfill_app, ["run", "--config", str(path), "--json", "--no-progress"])
    assert out.exit_code == 0 and json.loads(out.output)["rows"] == 0
    out = runner.invoke(backfill_app, ["run", "--config", str(path), "--from-key", "5"])
    assert out.exit_code == 2 and "exactly one --table" in out.output


# --- concurrency, crashes, takeover ------------------------------------------------------------------


def lock_waiters(url: str) -> int:
    """Sessions of ``url``'s database waiting for a row lock right now."""
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND wait_event_type = 'Lock'").fetchone()[0]


def test_a_concurrent_writer_forces_40001_retries_and_the_copy_completes(source_db, target_db):
    ddl(source_db, "CREATE SCHEMA app", "CREATE TABLE app.acct (id int PRIMARY KEY, v text NOT NULL, n int NOT NULL)",
        "INSERT INTO app.acct SELECT g, 'fresh ' || g, g FROM generate_series(1, 4000) g")
    ddl(target_db, "CREATE SCHEMA app", "CREATE TABLE app.acct (id int PRIMARY KEY, v text NOT NULL, n int NOT NULL)",
        "INSERT INTO app.acct SELECT g, 'stale', g FROM generate_series(1, 2000) g",
        "INSERT INTO app.acct SELECT g, 'stale', g FROM generate_series(2001, 4000) g")
    holding, stop = threading.Event(), threading.Event()
    writer_conflicts = []

    def writer() -> None:
        # Touches target rows in REPEATABLE READ (the target's only level) and holds them a while.
        rng = random.Random(7)
        with psycopg.connect(target_db, autocommit=True) as conn:
            first = True
            while not stop.is_set():
                lo = 1 if first else rng.randrange(1, 3800)
                try:
                    with conn.transaction():
                        conn.execute("UPDATE app.acct SET n = n WHERE id >= %s AND id < %s", (lo, lo + 600))
                        holding.set()
                        if first:  # hold until the backfill's first batch waits on these rows: it must conflict
                            wait_for(lambda: lock_waiters(target_db) > 0, "the backfill to wait on held rows")
                        else:
                            time.sleep(0.02)  # a short hold: a window for more conflicts, not a synchronisation
                except errors.SerializationFailure:
                    writer_conflicts.append(lo)
                first = False

    cfg = config(source_db, target_db, TableSpec("app.acct", ("id",)))
    bf = Backfill(source=lambda: connect(cfg.source), target=lambda: connect(cfg.target), tables=cfg.tables,
                  budget=Budget(fraction=0.05),  # 148-row transactions: many chances to collide
                  policy=FAST_RETRY, settings=BackfillSettings(chunk_rows=400, workers=2))
    bf.prepare()
    bf.ensure_plan(bf.inspect("app.acct"))
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(120)  # rows 1..600 are held: the first batch must wait, then conflict
        with bf:
            summary = bf.run()
    finally:
        stop.set()
        thread.join()
    assert summary.status == "done" and summary.rows == 4000
    assert summary.conflicts >= 1 and summary.retries >= summary.conflicts
    assert fingerprint(source_db, "app.acct", "id") == fingerprint(target_db, "app.acct", "id")


class StopAfterFirstBatch(Progress):
    """Asks the run to stop once a batch has committed (an event, not a timer: a busy machine cannot race it)."""

    def __init__(self) -> None:
        super().__init__(enabled=False)
        self.stop = threading.Event()

    def add(self, table: str, rows: int, rejected: int = 0) -> None:
        super().add(table, rows, rejected)
        self.stop.set()


def test_a_stopped_run_resumes_after_its_last_checkpoint(source_db, target_db):
    items_pair(source_db, target_db, rows=6000)
    cfg = config(source_db, target_db, ITEMS)
    small = dataclasses.replace(cfg, budget=BudgetSettings(max_rows=600))  # batches of a few hundred rows
    bf = Backfill.from_config(small, BackfillSettings(chunk_rows=3000, workers=1), progress=StopAfterFirstBatch())
    bf.progress.stop = bf.stop  # stop mid-chunk, after its first committed batch, as Ctrl-C would
    with bf:
        stopped = bf.run()
    assert stopped.status == "interrupted" and 0 < stopped.rows < 6000
    partial = chunk_rows(target_db, "app.items")
    assert partial[0][1] == "running" and 0 < partial[0][2] < 3000
    with Backfill.from_config(cfg, BackfillSettings(workers=2)) as bf:
        rest = bf.run()
    assert stopped.rows + rest.rows == 6000  # the checkpoint committed with the rows: nothing twice
    assert sum(c[2] for c in chunk_rows(target_db, "app.items")) == 6000
    assert fingerprint(source_db, "app.items", "id") == fingerprint(target_db, "app.items", "id")


def test_chunks_of_a_live_run_are_left_alone_until_its_lease_expires(source_db, target_db):
    items_pair(source_db, target_db, rows=1000)
    cfg = config(source_db, target_db, ITEMS)
    with Backfill.from_config(cfg, BackfillSettings(chunk_rows=500)) as bf:
        bf.prepare()
        bf.ensure_plan(bf.inspect("app.items"))
        live = bf.control.start_run({"kind": "backfill"})           # this very process: alive
        assert bf.control.claim("app.items", 0, live, lease_seconds=600, slot=None) is not None
        summary = bf.run()
    assert summary.rows == 500 and summary.tables[0].chunks_skipped == 1 and summary.exit_code == 0
    assert "1 left to another live run" in summary.text()
    assert [c[1] for c in chunk_rows(target_db, "app.items")] == ["running", "done"]
    time.sleep(0.05)
    with Backfill.from_config(cfg, BackfillSettings(lease_seconds=0.01)) as bf:  # silent too long: taken over
        assert bf.run().rows == 500
    assert fingerprint(source_db, "app.items", "id") == fingerprint(target_db, "app.items", "id")


# --- planning, Airflow units, replay readiness ---------------------------------------------------------


def test_chunks_are_independent_units_for_airflow(source_db, target_db):
    items_pair(source_db, target_db, rows=2000)
    cfg = config(source_db, target_db, ITEMS)
    refs = plan_chunks(cfg, BackfillSettings(chunk_rows=600))
    assert refs == [{"table": "app.items", "chunk_id": i} for i in range(4)]
    for ref in reversed(refs):  # any order, each alone
        result = copy_chunk(cfg, ref["table"], ref["chunk_id"])
        assert result.status == "done"
    assert copy_chunk(cfg, "app.items", 0).status == "skipped"  # done already
    assert plan_chunks(cfg) == []
    assert fingerprint(source_db, "app.items", "id") == fingerprint(target_db, "app.items", "id")


def test_an_unfinished_plan_is_replaced_and_a_changed_key_is_refused(source_db, target_db):
    items_pair(source_db, target_db, rows=100)
    ddl(source_db, "CREATE UNIQUE INDEX items_name_key ON app.items (name)")
    ddl(target_db, "CREATE UNIQUE INDEX items_name_key ON app.items (name)")
    cfg = config(source_db, target_db, ITEMS)
    with Backfill.from_config(cfg) as bf:
        bf.prepare()
        with psycopg.connect(target_db, autocommit=True) as conn:  # a planning that died half-way
            conn.execute("INSERT INTO reconcile.chunks (table_name, chunk_id, lo, hi, status) "
                         "VALUES ('app.items', 0, NULL, '[\"7\"]', 'pending')")
        assert bf.run().rows == 100
    other = config(source_db, target_db, TableSpec("app.items", ("name",)))
    with Backfill.from_config(other) as bf, pytest.raises(PlanMismatch, match="--replan"):
        bf.run()
    with Backfill.from_config(other, BackfillSettings(replan=True, chunk_rows=30)) as bf:
        assert bf.run().rows == 100
    assert fingerprint(source_db, "app.items", "id") == fingerprint(target_db, "app.items", "id")


def test_tables_that_cannot_be_copied_are_refused_before_any_write(source_db, target_db):
    ddl(source_db, "CREATE SCHEMA app", "CREATE TABLE app.nokey (id int, v text)",
        "CREATE TABLE app.wide (id int PRIMARY KEY, v text, extra text)")
    ddl(target_db, "CREATE SCHEMA app", "CREATE TABLE app.nokey (id int, v text)",
        "CREATE TABLE app.wide (id int PRIMARY KEY, v text)")
    for spec, match in ((TableSpec("app.nokey", ("id",)), "no primary key or unique index"),
                        (TableSpec("app.wide", ("id",)), "lacks column.*extra"),
                        (TableSpec("app.missing", ("id",)), "does not exist on the source")):
        with Backfill.from_config(config(source_db, target_db, spec)) as bf, pytest.raises(TableNotReady, match=match):
            bf.run()


def test_replay_required_refuses_to_start_before_the_slot_exists(source_db, target_db):
    items_pair(source_db, target_db, rows=300)
    cfg = config(source_db, target_db, ITEMS)
    slot = f"bf_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(source_db, autocommit=True) as src:
        assert assert_replay_ready(src, slot, required=False) is None
        with pytest.raises(ReplayNotReady, match=f"no replication slot named '{slot}'"):
            assert_replay_ready(src, slot, required=True)
        with Backfill.from_config(cfg, BackfillSettings(replay=True, slot_name=slot)) as bf, \
                pytest.raises(ReplayNotReady, match="create the slot first"):
            bf.run()
        with Backfill.from_config(cfg, BackfillSettings(chunk_rows=100)) as bf:  # copied with no slot
            assert bf.run().rows == 300
        src.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        try:
            info = assert_replay_ready(src, slot, required=True)
            assert info.slot_type == "logical" and info.plugin == "pgoutput"
            with Backfill.from_config(cfg, BackfillSettings(replay=True, slot_name=slot)) as bf, \
                    pytest.raises(ReplayNotReady, match="3 chunk.*copied before replication slot"):
                bf.run()
            with Backfill.from_config(cfg, BackfillSettings(replay=True, slot_name=slot, force=True)) as bf:
                assert bf.run().rows == 300
            with Backfill.from_config(cfg, BackfillSettings(replay=True, slot_name=slot)) as bf:
                assert bf.run().rows == 0  # every chunk now copied under the slot
        finally:
            src.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


def test_control_status_without_runs(target_db):
    with psycopg.connect(target_db, autocommit=True) as conn:
        from reconcile.control import migrate

        migrate(conn)
        assert Control(conn).status() == [] and Control(conn).rejects() == []


def test_key_order_advice_is_given_once_per_table_not_per_chunk(source_db, target_db, caplog):
    """The planning step advises a C-ordered index once; each chunk's copy (an Airflow task of its own) is quiet."""
    import logging

    ddl(source_db, "CREATE SCHEMA app", "CREATE TABLE app.k (name text PRIMARY KEY, v int)",
        "INSERT INTO app.k SELECT 'k' || g, g FROM generate_series(1, 60) g")
    ddl(target_db, "CREATE SCHEMA app", "CREATE TABLE app.k (name text PRIMARY KEY, v int)")
    cfg = config(source_db, target_db, TableSpec("app.k", ("name",)))
    settings = BackfillSettings(chunk_rows=10, workers=1)
    with psycopg.connect(source_db) as conn:
        if conn.execute("SELECT datcollate IN ('C', 'POSIX') FROM pg_database WHERE datname = current_database()"
                        ).fetchone()[0]:
            pytest.skip("the source database sorts text in C order: no advice to give")
    with caplog.at_level(logging.WARNING, logger="reconcile.backfill"):
        chunks = plan_chunks(cfg, settings)
        for ref in chunks:
            copy_chunk(cfg, ref["table"], ref["chunk_id"], settings)
    advice = [r for r in caplog.records if "no source index returns the key in C order" in r.getMessage()]
    assert len(chunks) >= 5 and len(advice) == 1, [r.getMessage() for r in advice]
    assert fingerprint(source_db, "app.k", "name") == fingerprint(target_db, "app.k", "name")
