"""A replay process SIGKILLed at random points, then restarted, lands every source transaction exactly once.

The oracle does not ask the replayer anything (not its counters, not its watermark):

* the target equals the source by value, row by row (psycopg on both sides, compared in Python);
* every source transaction wrote one row of its own to an append-only table (``app.marks``); on the
  target each of them is there exactly once, so no source transaction was lost;
* none was applied twice: a target row written again gets a new ``xmin`` (an upsert of the same values
  still writes a new row version), so the ``xmin`` of every mark seen after a kill must be the same at
  the end;
* the ledger's own invariant holds on the target: each account's balance is its opening balance plus
  the transfers of the marks.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from decimal import Decimal

import psycopg

from reconcile.config import TableSpec
from reconcile.replay import init_replay
from tests.test_replay import drop_slots, make_config  # noqa: F401 (drop_slots is a fixture)
from tests.waiting import wait_for

ACCOUNTS = 20
TABLES = (TableSpec("app.acct", ("id",)), TableSpec("app.marks", ("txn_no",)))
DDL = ("CREATE SCHEMA app",
       "CREATE TABLE app.acct (id int PRIMARY KEY, balance numeric(14,2) NOT NULL)",
       "CREATE TABLE app.marks (txn_no bigint PRIMARY KEY, src int NOT NULL, dst int NOT NULL, "
       "amount numeric(14,2) NOT NULL)")
OPENING = Decimal("1000.00")


def run_sql(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt)


TRANSFERS = """
CREATE PROCEDURE app.transfers(first bigint, n int) LANGUAGE plpgsql AS $$
DECLARE
    src int;
    dst int;
    amount numeric(14,2);
BEGIN
    FOR txn_no IN first .. first + n - 1 LOOP
        src := 1 + floor(random() * %(accounts)s)::int;
        dst := 1 + (src + floor(random() * (%(accounts)s - 1))::int) %% %(accounts)s;
        amount := (1 + floor(random() * 5000)) / 100;
        UPDATE app.acct SET balance = balance - amount WHERE id = src;
        UPDATE app.acct SET balance = balance + amount WHERE id = dst;
        INSERT INTO app.marks VALUES (txn_no, src, dst, amount);
        COMMIT;  -- one source transaction per transfer
    END LOOP;
END $$""" % {"accounts": ACCOUNTS}


def transfers(source_db: str, first: int, n: int, seed: float) -> None:
    """``n`` source transactions, each a transfer between two accounts plus its own mark row."""
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("SELECT setseed(%s)", (seed,))
        conn.execute("CALL app.transfers(%s, %s)", (first, n))


def rows(url: str) -> dict[str, list[tuple]]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("app.acct", "app.marks")}


def mark_versions(target_db: str) -> dict[int, tuple[int, int]]:
    """txn_no -> (copies on the target, xmin of the row version)."""
    with psycopg.connect(target_db) as conn:
        return {r[0]: (r[1], int(r[2])) for r in conn.execute(
            "SELECT txn_no, count(*) OVER (PARTITION BY txn_no), xmin::text::bigint FROM app.marks")}


def marks_on_target(target_db: str) -> int:
    with psycopg.connect(target_db) as conn:
        return conn.execute("SELECT count(*) FROM app.marks").fetchone()[0]


def slot_free(source_db: str, slot: str) -> bool:
    with psycopg.connect(source_db) as conn:
        return not conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()[0]


def replay(config: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "reconcile.cli.replay_cmd", "run", "--config", config, "--until-caught-up",
         "--skip-backfill-check"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_sigkill_at_random_points_then_restart_lands_every_source_transaction_once(
        source_db, target_db, drop_slots, tmp_path):
    run_sql(source_db, *DDL, TRANSFERS,
            f"INSERT INTO app.acct SELECT g, {OPENING} FROM generate_series(1, {ACCOUNTS}) g")
    run_sql(target_db, *DDL, f"INSERT INTO app.acct SELECT g, {OPENING} FROM generate_series(1, {ACCOUNTS}) g")
    cfg = make_config(source_db, target_db, TABLES, require_backfill=False)
    slot = cfg.replay.slot_name
    init_replay(cfg)  # the opening balances predate the slot: both sides hold them already
    config = tmp_path / "reconcile.toml"
    config.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n'
                      f'[target]\nkind = "postgres"\nconninfo = "{target_db}"\n'
                      "[budget]\nmax_rows = 40\n"  # a few source transactions per target commit: many commits
                      '[[tables]]\nname = "app.acct"\nkey = ["id"]\n[[tables]]\nname = "app.marks"\nkey = ["txn_no"]\n'
                      f'[replay]\nslot_name = "{slot}"\npeek_changes = 200\n')
    seed = int(time.time())
    rng = random.Random(seed)  # kill points and transfer amounts; the seed is in every failure message
    written, kills, seen = 0, [], {}
    for _ in range(4):
        transfers(source_db, written + 1, 500, rng.random())
        written += 500
        before = marks_on_target(target_db)
        wait_for(lambda: slot_free(source_db, slot), "the slot to be released by the killed replayer")
        proc = replay(str(config))
        wait_for(lambda: marks_on_target(target_db) > before or proc.poll() is not None, "the replay to apply")
        time.sleep(rng.uniform(0.0, 0.3))  # a random point: reading, applying, committing or advancing
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills.append(marks_on_target(target_db))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), err
        seen.update({txn: xmin for txn, (_, xmin) in mark_versions(target_db).items()})
    assert len(kills) >= 2, f"the replay finished before it could be killed (seed {seed}); give it more work"

    wait_for(lambda: slot_free(source_db, slot), "the slot to be released by the killed replayer")
    final = replay(str(config))
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err

    assert rows(source_db) == rows(target_db), f"seed {seed}"  # equal by value, every row
    versions = mark_versions(target_db)
    assert sorted(versions) == list(range(1, written + 1))  # every source transaction landed
    assert {copies for copies, _ in versions.values()} == {1}
    rewritten = [txn for txn, xmin in seen.items() if versions[txn][1] != xmin]
    assert rewritten == [], f"applied again after a kill: {rewritten[:10]} (seed {seed})"
    with psycopg.connect(target_db) as conn:  # the ledger's own invariant, on the target
        off = conn.execute("""
SELECT a.id FROM app.acct a
 WHERE a.balance <> %s + coalesce((SELECT sum(amount) FROM app.marks WHERE dst = a.id), 0)
                       - coalesce((SELECT sum(amount) FROM app.marks WHERE src = a.id), 0)""", (OPENING,)).fetchall()
    assert off == []
