"""Shadow-write replay against the real local stack: a logical source and the guarded DSQL stand-in."""

from __future__ import annotations

import json
import threading

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from reconcile.backfill import BackfillSettings, run_backfill
from reconcile.cli.replay_cmd import app as replay_app
from reconcile.config import DEMO_TABLES, BudgetSettings, Config, PostgresEndpoint, TableSpec
from reconcile.replay import (
    BackfillIncomplete,
    PrerequisiteFailed,
    Replayer,
    ReplayError,
    ReplaySettings,
    check_prerequisites,
    dead_letter_payload,
    init_replay,
    list_dead_letters,
    read_watermark,
    replay_status,
    retry_dead_letter,
    run_replay,
    skip_dead_letter,
)
from reconcile.errors import TerminalFailure
from reconcile.replay.errors import ReadOutOfOrder
from reconcile.replay.runner import split_read
from reconcile.replay.pgoutput import lsn_to_int
from reconcile.replay.source import SourceTxn
from reconcile.schema import apply_plan, plan_from_source
from reconcile.workload import run_workload, seed
from tests.waiting import wait_for

ITEMS = TableSpec("app.items", ("id",))


def slot_for(source: str) -> str:
    """A slot name of this test's own: slot names are server-wide, databases are not."""
    return "r_" + psycopg.conninfo.conninfo_to_dict(source)["dbname"].lower()


def make_config(source: str, target: str, tables=DEMO_TABLES, *, max_rows: int = 3000, **replay) -> Config:
    replay.setdefault("slot_name", slot_for(source))
    return Config(source=PostgresEndpoint("source", source), target=PostgresEndpoint("target", target),
                  tables=tuple(tables), budget=BudgetSettings(max_rows=max_rows),
                  stages={"replay": ReplaySettings(**replay)})


@pytest.fixture
def drop_slots(source_db):
    """Drop every replication slot of the source database at the end (else the database cannot be dropped)."""
    yield
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE database = current_database()")


def run_sql(url: str, *statements, params=None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt, params)


def fingerprint(url: str, table: str, key: str) -> tuple:
    with psycopg.connect(url) as conn:
        conn.execute("SET timezone = 'UTC'")
        return conn.execute(sql.SQL("SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY {k})) FROM {t} AS t")
                            .format(k=sql.SQL(key), t=sql.Identifier(*table.split(".")))).fetchone()


def ledger_fingerprints(url: str) -> list[tuple]:
    return [fingerprint(url, "ledger.accounts", "account_id"), fingerprint(url, "ledger.journal", "txn_id"),
            fingerprint(url, "ledger.entries", "entry_id")]


def ledger_pair(source_db: str, target_db: str, *, accounts: int = 60, transactions: int = 200):
    """Seed the source ledger and create the target tables *without* foreign keys (schema phase
    ``pre-load``), as the pipeline does: chunks of one table are copied in parallel, so a self-reference
    (journal.reverses_txn_id) may arrive before its parent. Returns the plan (``post-load`` after the
    backfill adds the foreign keys)."""
    with psycopg.connect(source_db, autocommit=True) as conn:
        seed(conn, accounts=accounts, transactions=transactions)
        plan = plan_from_source(conn, tables=DEMO_TABLES, dialect="postgres")
    with psycopg.connect(target_db, autocommit=True) as conn:
        apply_plan(conn, plan, phase="pre-load")
    return plan


def items_pair(source_db: str, target_db: str, target_check: str = "") -> None:
    ddl = "CREATE TABLE app.items (id int PRIMARY KEY, amount numeric(12,2), note text{})"
    run_sql(source_db, "CREATE SCHEMA app", ddl.format(""))
    run_sql(target_db, "CREATE SCHEMA app", ddl.format(target_check))


def target_ids(target_db: str) -> set[int]:
    with psycopg.connect(target_db) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM app.items")}


# --- capture: prerequisites, init, drop ---------------------------------------------------------------


def test_init_refuses_a_table_without_key_sets_full_only_when_told_and_is_idempotent(source_db, target_db, drop_slots):
    run_sql(source_db, "CREATE SCHEMA app", "CREATE TABLE app.items (id int PRIMARY KEY, note text)",
            "CREATE TABLE app.loose (a int, b text)")
    cfg = make_config(source_db, target_db, [ITEMS, TableSpec("app.loose", ("a",))])
    with pytest.raises(PrerequisiteFailed, match=r"app.loose has no primary key.*\(55000\).*--replica-identity-full"):
        init_replay(cfg)
    with psycopg.connect(source_db) as conn:  # nothing was created: the source's UPDATEs still work
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()").fetchone() == (0,)
    first = init_replay(cfg, replica_identity_full=True)
    assert first["created"] and any("REPLICA IDENTITY FULL on app.loose" in a for a in first["actions"])
    assert any(f"created logical replication slot {cfg.replay.slot_name}" in a for a in first["actions"])
    again = init_replay(cfg)
    assert not again["created"] and again["actions"] == ["slot and publication already exist; nothing to do"]
    with psycopg.connect(source_db) as conn:
        assert conn.execute("SELECT relreplident::text FROM pg_class WHERE oid = 'app.loose'::regclass").fetchone() == ("f",)
        tables = {r[0] for r in conn.execute("SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'reconcile_pub'")}
    assert tables == {"items", "loose"}
    # The target server runs wal_level=replica: the check says so in its own sentence.
    run_sql(target_db, "CREATE SCHEMA app", "CREATE TABLE app.items (id int PRIMARY KEY)")
    with psycopg.connect(target_db, autocommit=True) as conn:
        found = check_prerequisites(conn, [ITEMS, TableSpec("app.ghost", ("id",))], slot_name="reconcile",
                                    publication="reconcile_pub")
    assert any("wal_level=replica" in p and "wal_level=logical" in p for p in found.problems)
    assert any("app.ghost does not exist" in p for p in found.problems)


# --- the copy/replay race, convergence, atomic visibility ------------------------------------------------


def test_backfill_and_replay_under_live_writes_converge(source_db, target_db, drop_slots):
    plan = ledger_pair(source_db, target_db)
    cfg = make_config(source_db, target_db)
    init_replay(cfg)  # slot first, then backfill
    journal_at_slot = journal_rows(source_db)
    stop = threading.Event()
    load = threading.Thread(target=run_workload, args=(source_db,),
                            kwargs=dict(tps=150, duration=None, workers=3, hot_fraction=0.6, stop_event=stop))
    load.start()
    try:
        with pytest.raises(BackfillIncomplete, match="ledger.accounts was never backfilled"):
            run_replay(cfg)
        backfill = run_backfill(cfg, BackfillSettings(replay=True, chunk_rows=80, workers=2,
                                                         slot_name=cfg.replay.slot_name))
        assert backfill.status == "done"
        # Live writes committed after the backfill began are waiting in the slot (a condition, not a sleep).
        wait_for(lambda: journal_rows(source_db) >= journal_at_slot + 20, "20 live transactions in the slot")
        during = run_replay(cfg, duration=1.5)
        assert during.status == "done" and during.txns_applied > 0
    finally:
        stop.set()
        load.join()
    final = run_replay(cfg, until_caught_up=True)
    assert final.status == "done" and final.caught_up and final.dead_letters_open == 0
    assert ledger_fingerprints(source_db) == ledger_fingerprints(target_db)
    with psycopg.connect(target_db, autocommit=True) as conn:
        apply_plan(conn, plan, phase="post-load")  # the foreign keys validate: the target is whole
    with psycopg.connect(target_db) as conn:
        kinds = conn.execute("SELECT status, count(*) FROM reconcile.runs WHERE kind = 'replay' GROUP BY status").fetchall()
        summary = json.loads(conn.execute("SELECT summary FROM reconcile.runs WHERE kind = 'replay' AND status = 'done' "
                                          "ORDER BY started_at DESC LIMIT 1").fetchone()[0])
        (caught_up_lsn, last) = conn.execute("SELECT caught_up_lsn, last_commit_lsn FROM reconcile.replay_state").fetchone()
    assert dict(kinds) == {"error": 1, "done": 2}  # the refused run is recorded too
    for key in ("txns_applied", "changes_applied", "target_commits", "conflicts", "retries", "lag_seconds_p50",
                "lag_seconds_p99", "lag_bytes", "dead_letters_open", "caught_up", "last_commit_lsn"):
        assert key in summary, key
    assert caught_up_lsn is not None and last is not None


def journal_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM ledger.journal").fetchone()[0]


def test_replay_refuses_to_start_while_the_backfill_left_rows_refused(source_db, target_db, drop_slots):
    """The load-dependent loss of issue 5, made deterministic. A row the target refused during the
    initial backfill (here: a self-reference whose parent sits in a later chunk, as journal reversals
    did when two workers copied journal chunks out of order) committed before the slot existed, so the
    replay can never bring it. Replaying on anyway ended 'done, caught up, no dead letters' with the
    target short of whole source transactions; the replay must refuse until the table is copied again."""
    ddl = ("CREATE TABLE app.tree (id int PRIMARY KEY, parent int REFERENCES app.tree (id), amount numeric(12,2), "
           "note text)")
    run_sql(source_db, "CREATE SCHEMA app", ddl,
            "INSERT INTO app.tree SELECT g, NULL, g, 'n' FROM generate_series(2, 200) g",
            "INSERT INTO app.tree VALUES (1, 150, 1, 'child of a later chunk')")
    run_sql(target_db, "CREATE SCHEMA app", ddl)
    tree = TableSpec("app.tree", ("id",))
    cfg = make_config(source_db, target_db, [tree])
    init_replay(cfg)
    first = run_backfill(cfg, BackfillSettings(replay=True, chunk_rows=50, workers=1, slot_name=cfg.replay.slot_name))
    assert first.status == "done" and 1 not in target_tree_ids(target_db)  # refused: 150 was not there yet
    run_sql(source_db, "UPDATE app.tree SET amount = amount + 1 WHERE id = 150")  # replayed later, fine

    with pytest.raises(BackfillIncomplete, match=r"1 row\(s\) of app.tree were refused by the target during the "
                                                 r"backfill .*23503.*`reconcile backfill --table app.tree --force`"):
        run_replay(cfg)
    assert 1 not in target_tree_ids(target_db)

    again = run_backfill(cfg, BackfillSettings(replay=True, chunk_rows=50, workers=1, force=True, tables=("app.tree",),
                                               slot_name=cfg.replay.slot_name))
    assert again.status == "done"
    final = run_replay(cfg)
    assert final.status == "done" and final.caught_up and final.txns_applied == 1
    assert fingerprint(source_db, "app.tree", "id") == fingerprint(target_db, "app.tree", "id")


def target_tree_ids(target_db: str) -> set[int]:
    with psycopg.connect(target_db) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM app.tree")}


# The ledger's invariants, as a query listing what breaks them; the source keeps them at every commit (one
# business transaction = one source transaction), so a reader of the target must find them at every snapshot.
LEDGER_BROKEN = """
SELECT 'unbalanced' AS what, coalesce(j.txn_id, e.txn_id)::text AS which
  FROM ledger.journal j FULL JOIN (SELECT txn_id, currency, sum(amount) AS total, count(*) AS n FROM ledger.entries
                                    GROUP BY txn_id, currency) e ON e.txn_id = j.txn_id
 WHERE j.txn_id IS NULL OR e.txn_id IS NULL OR e.total <> 0
UNION ALL
SELECT 'balance <> sum(entries)', a.account_id::text
  FROM ledger.accounts a LEFT JOIN (SELECT account_id, sum(amount) AS total FROM ledger.entries GROUP BY account_id) s
       ON s.account_id = a.account_id
 WHERE a.balance <> coalesce(s.total, 0)
LIMIT 5"""


def test_a_concurrent_reader_sees_the_ledger_invariants_at_every_snapshot(source_db, target_db, drop_slots):
    """A reader of the target, while the replay applies the live workload in many small target transactions,
    checks at every snapshot what the source guarantees at every commit: each journal transaction is there
    with entries summing to zero (per currency), and each account's balance is the sum of its entries. A
    half-applied source transaction, or a group edge that split one, breaks one of them."""
    ledger_pair(source_db, target_db, accounts=40, transactions=100)
    # Room for about two business transactions (5 rows each) per target transaction: many group edges
    # (26 rows, plus the 6 the changed-key windows of the three tables reserve in each apply transaction).
    cfg = make_config(source_db, target_db, max_rows=32, peek_changes=37, poll_interval=0.05)
    slot = cfg.replay.slot_name
    init_replay(cfg)
    run_backfill(cfg, BackfillSettings(replay=True, slot_name=cfg.replay.slot_name))
    with psycopg.connect(target_db) as conn:
        assert conn.execute(LEDGER_BROKEN).fetchall() == []  # the backfilled start is whole
    stop_load, stop_replay, stop_reader = threading.Event(), threading.Event(), threading.Event()
    seen: dict = {"reads": 0, "broken": [], "journal_max": 0, "error": None}

    def reader() -> None:
        try:
            with psycopg.connect(target_db, autocommit=True) as conn:
                conn.execute("SET default_transaction_isolation = 'repeatable read'")
                while not stop_reader.is_set():
                    with conn.transaction():  # one snapshot for both queries
                        broken = conn.execute(LEDGER_BROKEN).fetchall()
                        (top,) = conn.execute("SELECT max(txn_id) FROM ledger.journal").fetchone()
                    seen["reads"] += 1
                    seen["journal_max"] = max(seen["journal_max"], top or 0)
                    if broken:
                        seen["broken"].append(broken)
        except BaseException as exc:  # reported by the main thread
            seen["error"] = exc

    def applied() -> int:
        with psycopg.connect(target_db) as conn:
            return read_watermark(conn, slot).applied_txns

    results = []
    threads = [threading.Thread(target=run_workload, args=(source_db,),
                                kwargs=dict(tps=120, duration=None, workers=2, stop_event=stop_load)),
               threading.Thread(target=lambda: results.append(run_replay(cfg, follow=True, stop_event=stop_replay))),
               threading.Thread(target=reader)]
    for t in threads:
        t.start()
    try:
        # Enough replayed under the live load, and enough snapshots read meanwhile: conditions, not a clock.
        wait_for(lambda: applied() >= 60 and seen["reads"] >= 30 or seen["error"] or not threads[1].is_alive(),
                 "60 source transactions replayed while the reader read 30 snapshots")
        stop_load.set()
        threads[0].join()
        with psycopg.connect(source_db) as conn:
            end = lsn_to_int(conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0])
        wait_for(lambda: _caught_up_lsn(target_db, slot) >= end or not threads[1].is_alive(),
                 "the replay to catch up with the stopped workload")
    finally:
        stop_load.set()
        stop_replay.set()
        threads[1].join()
        stop_reader.set()
        threads[2].join()
    assert seen["error"] is None, seen["error"]
    assert results and results[0].status == "done" and results[0].target_commits > 20
    assert results[0].txns_applied > results[0].target_commits  # some target commits held several source txns
    assert seen["reads"] >= 30 and seen["broken"] == [], seen["broken"][:3]
    assert seen["journal_max"] > 100  # the reader did see replayed journal rows
    assert ledger_fingerprints(source_db) == ledger_fingerprints(target_db)


def _caught_up_lsn(target_db: str, slot: str) -> int:
    with psycopg.connect(target_db) as conn:
        return read_watermark(conn, slot).caught_up_lsn


# --- what cannot be replayed --------------------------------------------------------------------------------


def test_oversized_transaction_and_truncate_end_in_dead_letters_and_nothing_after_them_lands(
        source_db, target_db, drop_slots):
    items_pair(source_db, target_db)
    cfg = make_config(source_db, target_db, [ITEMS], max_rows=20, require_backfill=False)
    init_replay(cfg)
    run_sql(source_db, "INSERT INTO app.items VALUES (1, 1.10, 'a'), (2, 2.20, 'b'), (3, 3.30, 'c')")
    run_sql(source_db, "INSERT INTO app.items SELECT g, g * 1.5, repeat(md5(g::text), 320) "
                       "FROM generate_series(10, 39) g")  # 30 rows > the 18-row budget: one oversized txn
    run_sql(source_db, "INSERT INTO app.items VALUES (100, 0.01, 'after')")

    stopped = run_replay(cfg)
    assert stopped.status == "stopped" and stopped.exit_code == 1 and stopped.dead_letters_open == 1
    assert "cannot land atomically" in stopped.message and "--split" in stopped.message
    assert target_ids(target_db) == {1, 2, 3}  # before it: applied; after it: nothing
    again = run_replay(cfg)
    assert again.status == "stopped" and again.dead_letter_id == stopped.dead_letter_id
    assert len(list_dead_letters(cfg)) == 1
    payload = dead_letter_payload(cfg, stopped.dead_letter_id)
    assert len(payload["changes"]) == 30 and payload["changes"][0]["row"]["note"] == "{}".format(
        __import__("hashlib").md5(b"10").hexdigest() * 320)
    with psycopg.connect(target_db) as conn:
        (parts,) = conn.execute("SELECT payload_parts FROM reconcile.dead_letters").fetchone()
    assert parts >= 2  # about 330 KB of payload, stored whole in parts

    retry_dead_letter(cfg, stopped.dead_letter_id, split=True, by="ops")
    split = run_replay(cfg)
    assert split.status == "done" and split.split_windows == 1 and target_ids(target_db) == {1, 2, 3, 100} | set(range(10, 40))
    assert fingerprint(source_db, "app.items", "id") == fingerprint(target_db, "app.items", "id")
    windows = replay_status(cfg)["split_windows"]
    assert len(windows) == 1 and windows[0]["pieces"] == windows[0]["pieces_applied"] >= 4 and windows[0]["finished_at"]

    run_sql(source_db, "TRUNCATE app.items")
    run_sql(source_db, "INSERT INTO app.items VALUES (200, 2, 'after truncate')")
    halted = run_replay(cfg)
    assert halted.status == "stopped" and "TRUNCATE cannot be replayed" in halted.message
    assert 200 not in target_ids(target_db) and len(target_ids(target_db)) == 34
    with pytest.raises(ReplayError, match="needs a reason"):
        skip_dead_letter(cfg, halted.dead_letter_id, reason=" ")
    skipped = skip_dead_letter(cfg, halted.dead_letter_id, reason="test: table re-synced by hand", by="ops")
    assert skipped["resolution"] == "skip" and skipped["resolved_by"] == "ops"
    resumed = run_replay(cfg)
    assert resumed.status == "done" and resumed.txns_skipped == 1 and 200 in target_ids(target_db)
    assert resumed.dead_letters_open == 0
    everything = list_dead_letters(cfg, include_resolved=True)
    assert [d["resolution"] for d in everything] == ["retry-split", "skip"]


@pytest.mark.parametrize("on_error", ["stop", "skip"])
def test_a_refused_transaction_is_isolated_from_its_group_and_dead_lettered(source_db, target_db, drop_slots, on_error):
    items_pair(source_db, target_db, target_check=" CHECK (amount >= 0)")
    cfg = make_config(source_db, target_db, [ITEMS], require_backfill=False, on_error=on_error)
    init_replay(cfg)
    for i in range(1, 6):
        run_sql(source_db, "INSERT INTO app.items VALUES (%s, %s, 'ok')", params=(i, -1 if i == 3 else i))
    result = run_replay(cfg)
    with psycopg.connect(target_db) as conn:
        dl = conn.execute("SELECT sqlstate, reason, resolution, change_count FROM reconcile.dead_letters").fetchall()
    assert len(dl) == 1 and dl[0][0] == "23514" and "check constraint" in dl[0][1] and dl[0][3] == 1
    if on_error == "stop":
        assert result.status == "stopped" and target_ids(target_db) == {1, 2}  # order kept: nothing after it
        assert dl[0][2] is None and "replay stopped before it" in result.message
    else:
        assert result.status == "done" and target_ids(target_db) == {1, 2, 4, 5}
        assert dl[0][2] == "skipped" and result.dead_letters_open == 0 and result.txns_skipped == 1


def log_running_xacts(url: str) -> None:
    """Write an xl_running_xacts record now: where a slot may move its restart point (else every ~15 s)."""
    run_sql(url, "SELECT pg_log_standby_snapshot()")


@pytest.mark.parametrize("die_at", [None, "committed", "advanced"])
def test_transactions_committing_in_another_order_than_they_began_are_applied_once_each(
        source_db, target_db, drop_slots, die_at):
    """A begins first and commits last; B and C begin later and commit first. With two messages per peek
    every read is cut between transactions, the slot is advanced past B and C while A is still open
    (restart points logged in between), and the replayer may die between its target commit and the slot
    advance: A must still arrive whole, once, and nothing may arrive twice."""
    items_pair(source_db, target_db)
    cfg = make_config(source_db, target_db, [ITEMS], require_backfill=False, peek_changes=2)
    init_replay(cfg)

    def replay(fault=None):
        with Replayer.from_config(cfg, fault=fault) as r:
            try:
                return r.run(until_caught_up=True)
            except TerminalFailure as died:  # died at the fault: the next run takes over
                assert isinstance(died.__cause__, RuntimeError)
                return None

    def dies_once(point):
        fired = []

        def fault(where: str) -> None:
            if where == point and not fired:
                fired.append(where)
                raise RuntimeError(f"killed at {where}")
        return fault

    with psycopg.connect(source_db) as a, psycopg.connect(source_db) as b:
        a.execute("INSERT INTO app.items VALUES (1, 1.00, 'A first write')")  # A begins (no commit yet)
        log_running_xacts(source_db)
        b.execute("INSERT INTO app.items VALUES (2, 2.00, 'B')")  # B begins after A
        run_sql(source_db, "INSERT INTO app.items VALUES (3, 3.00, 'C')")  # C begins and commits
        b.commit()  # B commits before A
        log_running_xacts(source_db)
        first = replay(dies_once(die_at) if die_at else None)  # applies C and B while A is open
        if first is not None:
            assert first.status == "done" and first.txns_applied == 2 and first.caught_up
        log_running_xacts(source_db)
        a.execute("UPDATE app.items SET amount = amount + 0.01 WHERE id = 3")  # A's second write
        a.execute("INSERT INTO app.items VALUES (4, 4.00, 'A last write')")
        a.commit()  # A: began first, commits last
    run_sql(source_db, "INSERT INTO app.items VALUES (5, 5.00, 'D')")
    final = replay()
    assert final.status == "done" and final.caught_up
    assert fingerprint(source_db, "app.items", "id") == fingerprint(target_db, "app.items", "id")
    with psycopg.connect(target_db) as conn:
        assert read_watermark(conn, cfg.replay.slot_name).applied_txns == 4  # C, B, A, D: each exactly once


def test_two_replayers_on_one_slot_cannot_both_apply(source_db, target_db, drop_slots):
    items_pair(source_db, target_db)
    cfg = make_config(source_db, target_db, [ITEMS], require_backfill=False)
    init_replay(cfg)
    run_sql(source_db, "INSERT INTO app.items VALUES (1, 1, 'a')")
    first, second = Replayer.from_config(cfg), Replayer.from_config(cfg)
    with first, second:
        first.run(until_caught_up=True)
        second.prepare()  # read the watermark...
        second.wm = type(second.wm)()  # ...as it was before the first applied anything
        run_sql(source_db, "INSERT INTO app.items VALUES (2, 2, 'b')")
        from reconcile.replay import WatermarkMoved

        with pytest.raises(WatermarkMoved, match="another replayer"):
            second.run(until_caught_up=True)
    assert target_ids(target_db) == {1}


# --- operating it -------------------------------------------------------------------------------------------


def test_cli_init_run_status_and_dead_letters(source_db, target_db, drop_slots, tmp_path):
    items_pair(source_db, target_db)
    path = tmp_path / "reconcile.toml"
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n'
                    f'[target]\nkind = "postgres"\nconninfo = "{target_db}"\n'
                    '[[tables]]\nname = "app.items"\nkey = ["id"]\n'
                    f'[replay]\nwal_warn_bytes = 1\nslot_name = "{slot_for(source_db)}"\n')
    runner = CliRunner()
    out = runner.invoke(replay_app, ["init", "--config", str(path)])
    assert out.exit_code == 0 and "created publication reconcile_pub" in out.output, out.output
    out = runner.invoke(replay_app, ["init", "--config", str(path), "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["created"] is False
    run_sql(source_db, "INSERT INTO app.items SELECT g, g, 'n' FROM generate_series(1, 50) g",
            "UPDATE app.items SET amount = amount * 2 WHERE id <= 10", "DELETE FROM app.items WHERE id > 45")
    out = runner.invoke(replay_app, ["run", "--config", str(path)])
    assert isinstance(out.exception, BackfillIncomplete) and "was never backfilled" in str(out.exception)
    out = runner.invoke(replay_app, ["run", "--config", str(path), "--json", "--skip-backfill-check",
                                     "--until-caught-up", "--duration", "30"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert summary["status"] == "done" and summary["txns_applied"] == 3 and summary["changes_applied"] == 65
    assert summary["caught_up"] is True and summary["lag_seconds_p99"] >= summary["lag_seconds_p50"] >= 0
    assert fingerprint(source_db, "app.items", "id") == fingerprint(target_db, "app.items", "id")
    out = runner.invoke(replay_app, ["status", "--config", str(path), "--json"])
    assert out.exit_code == 0, out.output
    st = json.loads(out.output)
    assert st["dead_letters_open"] == 0 and st["lag_seconds"] == 0.0 and st["watermark"]["applied_txns"] == 3
    assert st["last_run"]["txns_applied"] == 3 and any("retains" in w for w in st["warnings"])
    out = runner.invoke(replay_app, ["status", "--config", str(path)])
    assert out.exit_code == 0 and "watermark: last commit" in out.output and "warning:" in out.output
    out = runner.invoke(replay_app, ["dead-letters", "list", "--config", str(path)])
    assert out.exit_code == 0 and "no dead letters" in out.output
    out = runner.invoke(replay_app, ["run", "--config", str(path), "--max-txns", "5", "--skip-backfill-check"])
    assert out.exit_code == 0 and "replay done" in out.output
    out = runner.invoke(replay_app, ["drop", "--config", str(path), "--yes"])
    assert out.exit_code == 0 and f"dropped replication slot {slot_for(source_db)}" in out.output


def test_a_read_out_of_commit_order_stops_replay_instead_of_advancing_past_a_transaction():
    def txn(lsn: int) -> SourceTxn:
        return SourceTxn(xid=lsn, commit_lsn=lsn, end_lsn=lsn + 8, commit_ts=0)

    skip_end, todo = split_read([txn(100), txn(200), txn(300)], 200)
    assert skip_end == 208 and [t.commit_lsn for t in todo] == [300]
    assert split_read([], 200) == (0, [])
    with pytest.raises(ReadOutOfOrder, match=r"xid 150 .* after xid 300 .* out of commit order"):
        split_read([txn(100), txn(300), txn(150)], 200)  # 150 <= watermark after 300: never skip it
    with pytest.raises(ReadOutOfOrder, match="not after its commit"):
        split_read([SourceTxn(xid=1, commit_lsn=500, end_lsn=500, commit_ts=0)], 0)
