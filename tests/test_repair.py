"""Live repair (issue 18): findings re-copied through the running replay with DBLog watermarks, then verified.

The property test drives the protocol step by step (low watermark, read, high watermark) interleaved with
source changes on the same keys and replay rounds (and replay restarts), and checks after every replay
round that no key's version ever goes backwards on the target: a copy never overwrites a newer change.
"""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reconcile.config import BudgetSettings, Config, PostgresEndpoint, TableSpec
from reconcile.connections import connect
from reconcile.diff import run_diff
from reconcile.diff.settings import DiffSettings
from reconcile.occ import RetryPolicy
from reconcile.repair import RepairSettings, run_repair
from reconcile.repair import source as rsrc
from reconcile.repair.store import RepairStore
from reconcile.replay import Replayer, ReplaySettings, init_capture, init_replay, run_replay
from reconcile.replay.source import prepare_session
from reconcile.replay.tracking import Window

ITEMS = TableSpec("app.items", ("id",))
ROWS = 300


def make_config(source: str, target: str, tmp_path, tables=(ITEMS,), **repair) -> Config:
    slot = "rep_" + psycopg.conninfo.conninfo_to_dict(source)["dbname"].lower()
    return Config(source=PostgresEndpoint("source", source), target=PostgresEndpoint("target", target),
                  tables=tuple(tables), budget=BudgetSettings(),
                  stages={"replay": ReplaySettings(slot_name=slot, require_backfill=False, poll_interval=0.05),
                          "diff": DiffSettings(lag_wait_seconds=10.0, poll_seconds=0.05, balances=False,
                                               report_dir=str(tmp_path / "reports")),
                          "repair": RepairSettings(**{"apply_wait_seconds": 60.0, "poll_seconds": 0.05, **repair})})


@pytest.fixture
def drop_slots(source_db):
    yield
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE database = current_database()")


def sql(url: str, *statements, params=None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt, params)


def rows_of(url: str, table: str = "app.items") -> dict:
    """The independent oracle: every row as psycopg values, by key."""
    with psycopg.connect(url) as conn:
        return {r[0]: r for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1")}  # noqa: S608


class ReplayThread:
    """``run_replay(follow=True)`` in a thread, stopped by an event."""

    def __init__(self, cfg: Config) -> None:
        self.stop = threading.Event()
        self.result: list = []
        self.thread = threading.Thread(target=lambda: self.result.append(
            run_replay(cfg, follow=True, stop_event=self.stop)), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)


def test_a_runs_findings_are_repaired_through_the_running_replay(source_db, target_db, drop_slots, tmp_path):
    ddl = "CREATE TABLE app.items (id bigint PRIMARY KEY, amount numeric(12,2), tags text[], note text)"
    for url in (source_db, target_db):
        sql(url, "CREATE SCHEMA app", ddl.replace("tags text[]", "tags text[]" if url == source_db else "tags json"),
            f"INSERT INTO app.items SELECT g, g / 4.0, "
            f"{'ARRAY[g::text, NULL]' if url == source_db else 'json_build_array(g::text, NULL)'}, 'n' || g "
            f"FROM generate_series(1, {ROWS}) g")
    cfg = make_config(source_db, target_db, tmp_path, chunk_rows=3)
    init_replay(cfg)
    sql(target_db, "UPDATE app.items SET amount = -1 WHERE id IN (5, 50, 150)",
        "UPDATE app.items SET tags = '[\"x\"]' WHERE id = 77",
        "DELETE FROM app.items WHERE id IN (7, 70)",
        "INSERT INTO app.items VALUES (9001, 1, NULL, 'extra'), (9002, 2, NULL, 'extra')")
    diff = run_diff(cfg, mode="full")
    assert diff.verdict == "red" and diff.summary["persistent_mismatches"] == 8

    with ReplayThread(cfg):
        result = run_repair(cfg)
    assert result.status == "repaired" and result.exit_code == 0, result.summary
    s = result.summary
    assert s["diff_run_id"] == diff.run_id and s["chunks"] == 3  # 8 keys in chunks of 3
    assert s["outcomes"] == {"repaired": 8, "in_flight": 0, "still_differs": 0, "not_applied": 0}
    assert s["tables"]["app.items"]["copied"] == 8 and s["tables"]["app.items"]["dropped"] == 0
    assert rows_of(target_db) == rows_of(source_db)  # text[] on the source, json on the target: equal lists
    with psycopg.connect(target_db) as conn:
        outcomes = dict(conn.execute("SELECT row_key, outcome FROM reconcile.repair_results").fetchall())
        marks = conn.execute("SELECT outcome, count(*), sum(applied) FROM reconcile.repair_marks GROUP BY 1").fetchall()
        tracked = conn.execute("SELECT keys FROM reconcile.change_windows").fetchall()
    assert outcomes == {json.dumps([str(k)], separators=(",", ":")): "repaired"
                        for k in (5, 7, 50, 70, 77, 150, 9001, 9002)}
    assert marks == [("applied", 3, 8)]
    # the replay applied the repaired keys, so they are tracked for the next incremental run
    assert {k for (text,) in tracked for lo, hi in Window.decode("ranges", text, "int")[0] for k in range(lo, hi + 1)} == \
        {5, 7, 50, 70, 77, 150, 9001, 9002}
    assert run_diff(cfg, mode="full").verdict == "green"

def test_a_repair_without_findings_or_replay_says_what_to_do(source_db, target_db, drop_slots, tmp_path):
    for url in (source_db, target_db):
        sql(url, "CREATE SCHEMA app", "CREATE TABLE app.items (id bigint PRIMARY KEY, note text)",
            "INSERT INTO app.items VALUES (1, 'a'), (2, 'b')")
    cfg = make_config(source_db, target_db, tmp_path, apply_wait_seconds=0.5)
    init_replay(cfg)
    from reconcile.repair import RepairError, RepairTimeout

    with pytest.raises(RepairError, match="No finished diff run"):
        run_repair(cfg)
    assert run_diff(cfg).verdict == "green"
    with pytest.raises(RepairError, match="has no row findings"):
        run_repair(cfg)
    sql(target_db, "UPDATE app.items SET note = 'z' WHERE id = 2")
    assert run_diff(cfg).verdict == "red"
    with pytest.raises(RepairTimeout, match="the replay must be running"):
        run_repair(cfg)  # no replay: the copies wait for it
    with psycopg.connect(target_db) as conn:
        (status,) = conn.execute("SELECT status FROM reconcile.runs WHERE kind = 'repair' ORDER BY started_at DESC "
                                 "LIMIT 1").fetchone()
    assert status == "error"
    # the pending copy is applied once a replay runs, and a second repair verifies it
    assert run_replay(cfg).status == "done"
    assert rows_of(target_db) == rows_of(source_db)


# --- the DBLog property: interleave copies and changes on the same keys -------------------------------------

KEYS = {0: [(str(k),) for k in (1, 2, 3)], 1: [(str(k),) for k in (2, 3, 4, 5, 6)]}
PUB = "prop_pub"

step = st.one_of(
    st.tuples(st.just("upd"), st.integers(1, 6)),
    st.tuples(st.just("del"), st.integers(1, 6)),
    st.tuples(st.just("replay"), st.sampled_from(["all", "one"])),
    st.tuples(st.just("restart")),
    st.tuples(st.just("chunk"), st.integers(0, 1)),
)


class Model:
    """One example: the source, the target, a replayer and the repair steps, driven one operation at a time."""

    def __init__(self, source_db: str, target_db: str, slot: str) -> None:
        self.source_db, self.target_db, self.slot = source_db, target_db, slot
        self.src = prepare_session(psycopg.connect(source_db, autocommit=True))
        self.tgt = psycopg.connect(target_db, autocommit=True)
        self.store = RepairStore(self.tgt)
        self.table = rsrc.describe(self.src, "app.items", ("id",))
        self.version = 100
        self.seen: dict[int, int] = {}
        self.chunk_step = {0: 0, 1: 0}
        self.chunk_ids: list[str] = []
        self.repair_id = "00000000-0000-4000-8000-000000000001"
        self.replayer = self._replayer()

    def _replayer(self) -> Replayer:
        return Replayer(source=lambda: psycopg.connect(self.source_db, autocommit=True),
                        target=lambda: connect(PostgresEndpoint("target", self.target_db)), tables=[ITEMS],
                        settings=ReplaySettings(slot_name=self.slot, publication=PUB, require_backfill=False,
                                                peek_changes=7),
                        policy=RetryPolicy(max_attempts=5, base_delay=0.001, max_delay=0.01))

    def close(self) -> None:
        self.replayer.close()
        self.src.close()
        self.tgt.close()

    def do(self, op: tuple) -> None:
        kind = op[0]
        if kind == "upd":
            self.version += 1
            self.src.execute("INSERT INTO app.items VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v, "
                             "payload = EXCLUDED.payload", (op[1], self.version, f"p{self.version}"))
        elif kind == "del":
            self.src.execute("DELETE FROM app.items WHERE id = %s", (op[1],))
        elif kind == "replay":
            result = self.replayer.run(until_caught_up=op[1] == "all", max_txns=None if op[1] == "all" else 1)
            assert result.status == "done", result.message
            self.check_monotonic()
        elif kind == "restart":
            self.replayer.close()
            self.replayer = self._replayer()
        else:
            self.chunk(op[1])

    def chunk(self, c: int) -> None:
        """The chunk's next protocol step: low watermark, read (rows stored), high watermark."""
        n = self.chunk_step[c]
        if n >= 3:
            return
        cid = self.store.chunk_id(self.repair_id, "app.items", c)
        if n == 0:
            self.store.add_chunk(cid, self.repair_id, self.slot, "app.items", c, "keys", KEYS[c], self.table.doc())
            rsrc.emit(self.src, self.slot, cid, "low")
            self.chunk_ids.append(cid)
        elif n == 1:
            rsrc.wait_for_older_transactions(self.src, timeout=10, poll=0.01)
            found = rsrc.read_keys(self.src, self.table, KEYS[c])
            self.store.store_rows(cid, [(k, found.get(k)) for k in KEYS[c]])
            self.store.set_status([cid], "copied")
        else:
            rsrc.emit(self.src, self.slot, cid, "high")
            self.store.set_status([cid], "emitted")
        self.chunk_step[c] = n + 1

    def check_monotonic(self) -> None:
        """No key's version ever goes backwards on the target: a copy never overwrote a newer change."""
        for k, v in self.tgt.execute("SELECT id, v FROM app.items").fetchall():
            assert v >= self.seen.get(k, -1), f"key {k}: version {v} on the target after {self.seen[k]}"
            self.seen[k] = v


@pytest.fixture
def prop_pair(source_db, target_db):
    slot = "prop_" + psycopg.conninfo.conninfo_to_dict(source_db)["dbname"].lower()
    ddl = "CREATE TABLE app.items (id int PRIMARY KEY, v bigint NOT NULL, payload text)"
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA app")
        conn.execute(ddl)
        init_capture(conn, [ITEMS], slot_name=slot, publication=PUB)
    sql(target_db, "CREATE SCHEMA app", ddl)
    from reconcile.control import migrate

    with psycopg.connect(target_db, autocommit=True) as conn:
        migrate(conn)
    yield source_db, target_db, slot
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                     (slot,))


def reset(source_db: str, target_db: str, slot: str) -> None:
    """Identical rows on both sides but a corrupted target (key 1 wrong, 4 missing, 6 extra), a fresh slot."""
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                     (slot,))
        conn.execute("TRUNCATE app.items")  # no slot now: nothing decodes this
        conn.execute("INSERT INTO app.items SELECT g, 0, 'p0' FROM generate_series(1, 5) g")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("DELETE FROM app.items")
        conn.execute("INSERT INTO app.items VALUES (1, 0, 'bad'), (2, 0, 'p0'), (3, 0, 'p0'), (5, 0, 'p0'), "
                     "(6, 0, 'extra')")
        for table in ("replay_state", "change_windows", "change_tracking", "repair_chunks", "repair_rows",
                      "repair_seen", "repair_marks"):
            if conn.execute("SELECT to_regclass(%s)", (f"reconcile.{table}",)).fetchone()[0]:
                conn.execute(f"DELETE FROM reconcile.{table}")  # noqa: S608


C0, C1 = ("chunk", 0), ("chunk", 1)
ALL, ONE, RESTART = ("replay", "all"), ("replay", "one"), ("restart",)


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(step, min_size=4, max_size=24))
# the copy is read, then the key changes, then the high watermark: the copy is older and must be dropped ...
@example(ops=[C0, C0, ("upd", 2), C0, ALL])
# ... also when the replay restarts between seeing the change and reaching the high watermark
@example(ops=[C0, C0, ("upd", 2), ALL, RESTART, C0, ALL])
@example(ops=[C1, ALL, C1, ("del", 5), ONE, RESTART, ("upd", 4), C1, ALL])
# a key the copy found absent is inserted before the high watermark: the delete must not win
@example(ops=[C1, C1, ("upd", 6), ONE, C1, ALL])
# changes before the low watermark and after the high one are ordinary replay
@example(ops=[("upd", 1), C0, ALL, C0, C0, ("upd", 1), ALL])
def test_interleaved_copies_and_changes_never_let_an_older_copy_win(prop_pair, ops):
    source_db, target_db, slot = prop_pair
    reset(source_db, target_db, slot)
    m = Model(source_db, target_db, slot)
    try:
        for op in ops:
            m.do(op)
        for c in (0, 1):  # finish every chunk, then let the replay catch up
            while m.chunk_step[c] < 3:
                m.chunk(c)
        m.do(("replay", "all"))
        marks = m.store.marks(m.chunk_ids)
    finally:
        m.close()
    assert rows_of(target_db) == rows_of(source_db)
    assert len(marks) == 2 and {x["outcome"] for x in marks.values()} == {"applied"}


# --- automatic repair and what the run, its report and the gate evidence say ---------------------------------


def test_automatic_repair_runs_below_its_limit_and_is_recorded_above_it(source_db, target_db, drop_slots, tmp_path):
    import dataclasses

    from reconcile.diff import diff_table, finish_diff, start_diff
    from reconcile.gates.coverage import repairs_evidence
    from reconcile.identity import migration_of
    from reconcile.pipeline.repair import auto_repair_step

    for url in (source_db, target_db):
        sql(url, "CREATE SCHEMA app", "CREATE TABLE app.items (id bigint PRIMARY KEY, note text)",
            "INSERT INTO app.items SELECT g, 'n' || g FROM generate_series(1, 50) g")
    base = make_config(source_db, target_db, tmp_path, auto_max_findings=2)
    init_replay(base)
    sql(target_db, "UPDATE app.items SET note = 'bad' WHERE id IN (10, 20, 30)")

    def reconcile(cfg: Config) -> tuple[dict, dict]:
        run_id = start_diff(cfg, mode="full")
        diff_table(cfg, run_id, "app.items")
        with ReplayThread(cfg):
            step = auto_repair_step(cfg, run_id)
        return step, finish_diff(cfg, run_id).summary

    step, summary = reconcile(base)  # 3 findings > 2: not repaired, and the report says so
    assert step["decision"] == "not repaired" and step["status"] == "skipped"
    assert summary["verdict"] == "red" and summary["repairs"]["runs"][0]["status"] == "skipped"
    assert "more than [repair] auto_max_findings = 2" in summary["repairs"]["sentence"]
    assert rows_of(target_db) != rows_of(source_db)

    cfg = dataclasses.replace(base, stages={**base.stages, "repair": dataclasses.replace(base.repair,
                                                                                          auto_max_findings=3)})
    step, summary = reconcile(cfg)
    assert step["decision"] == "repaired" and step["outcomes"]["repaired"] == 3
    assert summary["verdict"] == "red"  # the run found differences: it stays red, its report names the repair
    assert summary["repairs"]["outcomes"]["repaired"] == 3 and "3 repaired" in summary["repairs"]["sentence"]
    html = (tmp_path / "reports" / summary["run_id"] / "report.html").read_text()
    assert "<h2>Repairs</h2>" in html and "3 repaired" in html
    assert rows_of(target_db) == rows_of(source_db)
    with psycopg.connect(target_db) as conn:
        since = conn.execute("SELECT now() - interval '1 hour'").fetchone()[0]
        ev = repairs_evidence(conn, since, migration_of(cfg).id)
        other = repairs_evidence(conn, since, "f" * 32)  # another migration sharing the control schema
    assert ev["repairs"] == 2 and ev["by_status"] == {"skipped": 1, "repaired": 1} and ev["outcomes"]["repaired"] == 3
    assert other["repairs"] == 0 and other["latest_run_id"] is None

    step, summary = reconcile(cfg)  # nothing left: nothing recorded
    assert step == {"decision": "nothing to repair", "findings": 0} and summary["verdict"] == "green"
    assert summary["repairs"] is None


def test_a_table_added_to_a_running_migration_is_backfilled_through_the_replay(source_db, target_db, drop_slots,
                                                                              tmp_path):
    """The new table's rows are copied chunk by chunk between watermarks while a workload keeps changing them."""
    from reconcile.config import TableSpec as T

    other = T("app.other", ("id",))
    fresh = T("app.fresh", ("code", "n"))
    sql(source_db, "CREATE SCHEMA app", "CREATE TABLE app.other (id int PRIMARY KEY, v text)",
        "CREATE TABLE app.fresh (code text, n int, v bigint, PRIMARY KEY (code, n))",
        "INSERT INTO app.fresh SELECT chr(65 + g % 26) || g, g % 3, 0 FROM generate_series(1, 700) g")
    sql(target_db, "CREATE SCHEMA app", "CREATE TABLE app.other (id int PRIMARY KEY, v text)",
        "CREATE TABLE app.fresh (code text, n int, v bigint, PRIMARY KEY (code, n))")
    running = make_config(source_db, target_db, tmp_path, tables=(other,))
    init_replay(running)  # the migration runs with app.other only
    sql(source_db, "INSERT INTO app.other VALUES (1, 'a')")
    assert run_replay(running).txns_applied == 1

    added = make_config(source_db, target_db, tmp_path, tables=(other, fresh), chunk_rows=90)
    init_replay(added)  # adds app.fresh to the publication
    stop = threading.Event()

    def workload() -> None:
        with psycopg.connect(source_db, autocommit=True) as conn:
            v = 0
            while not stop.is_set():
                v += 1
                conn.execute("UPDATE app.fresh SET v = %s WHERE (code, n) IN (SELECT code, n FROM app.fresh "
                             "ORDER BY random() LIMIT 3)", (v,))
                conn.execute("INSERT INTO app.fresh VALUES (%s, 9, %s) ON CONFLICT DO NOTHING", (f"new{v}", v))
                if v % 7 == 0:
                    conn.execute("DELETE FROM app.fresh WHERE code = %s AND n = 9", (f"new{v - 3}",))
                stop.wait(0.003)

    load = threading.Thread(target=workload, daemon=True)
    with ReplayThread(added):
        load.start()
        result = run_repair(added, tables=["app.fresh"], whole_table=True)
        stop.set()
        load.join(10)
    assert result.status == "repaired", result.summary
    t = result.summary["tables"]["app.fresh"]
    assert result.summary["mode"] == "whole_table" and t["chunks"] >= 8 and t["copied"] >= 700
    assert run_replay(added, until_caught_up=True).status == "done"
    assert rows_of(target_db, "app.fresh") == rows_of(source_db, "app.fresh")
    assert rows_of(target_db, "app.other") == rows_of(source_db, "app.other")
    # the replay's backfill check accepts a table copied through it
    from reconcile.backfill.checkpoints import Control
    from reconcile.replay import backfill_problems

    with connect(PostgresEndpoint("target", target_db)) as conn:
        problems = backfill_problems(Control(conn), [fresh, other], added.replay.slot_name)
    assert problems == ["app.other was never backfilled"]
