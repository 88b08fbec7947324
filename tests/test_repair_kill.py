"""Live repair under a live workload, with the repair and the replay processes SIGKILLed at random points:
rerun, the target ends equal to the source by an independent oracle (every row fetched with psycopg on both
sides and compared as Python values)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import psycopg

from reconcile.config import load_config
from reconcile.diff import run_diff
from reconcile.replay import init_replay, run_replay

ROWS = 400
HOT = range(1, 80)


def _sql(url: str, *statements) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt)


def _rows(url: str) -> dict:
    with psycopg.connect(url) as conn:
        return {r[0]: r for r in conn.execute("SELECT id, v, amount, note FROM app.items ORDER BY id")}


def _count(url: str, query: str) -> int:
    with psycopg.connect(url) as conn:
        if not conn.execute("SELECT to_regclass('reconcile.repair_chunks') IS NOT NULL").fetchone()[0]:
            return 0
        return conn.execute(query).fetchone()[0]


def _proc(config: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args, "--config", config], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _replay(config: str) -> subprocess.Popen:
    return _proc(config, "reconcile.cli.replay_cmd", "run", "--follow")


def _repair(config: str, run_id: str) -> subprocess.Popen:
    return _proc(config, "reconcile.cli.repair_cmd", "--run", run_id)


def _workload(source_db: str, stop: threading.Event, rng: random.Random, counts: dict) -> None:
    """Hot keys (the corrupted ones among them) updated, deleted and re-inserted until stopped."""
    with psycopg.connect(source_db, autocommit=True) as conn:
        v = 1000
        while not stop.is_set():
            v += 1
            k = rng.choice(HOT)
            if rng.random() < 0.15:
                conn.execute("DELETE FROM app.items WHERE id = %s", (k,))
            else:
                conn.execute("INSERT INTO app.items VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                             "v = EXCLUDED.v, amount = EXCLUDED.amount, note = EXCLUDED.note",
                             (k, v, f"{v % 997}.{v % 100:02d}", f"live {v}"))
            counts["txns"] += 1
            stop.wait(0.004)  # pacing, not synchronisation


def test_repair_and_replay_sigkilled_under_a_live_workload_end_equal(source_db, target_db, tmp_path):
    slot = "rk_" + psycopg.conninfo.conninfo_to_dict(source_db)["dbname"].lower()
    ddl = "CREATE TABLE app.items (id bigint PRIMARY KEY, v bigint NOT NULL, amount numeric(12,2), note text)"
    for url in (source_db, target_db):
        _sql(url, "CREATE SCHEMA app", ddl,
             f"INSERT INTO app.items SELECT g, 0, g / 8.0, 'row ' || g FROM generate_series(1, {ROWS}) g")
    # the target goes wrong: changed, missing and extra rows, hot and cold
    _sql(target_db, "UPDATE app.items SET amount = amount + 1 WHERE id % 13 = 0",
         "UPDATE app.items SET note = 'wrong' WHERE id IN (3, 33, 303)",
         "DELETE FROM app.items WHERE id IN (5, 55, 155, 255, 355)",
         "INSERT INTO app.items SELECT g, 0, 0, 'extra' FROM generate_series(9001, 9004) g")
    config = tmp_path / "reconcile.toml"
    config.write_text(
        f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n[target]\nkind = "postgres"\nconninfo = "{target_db}"\n'
        '[[tables]]\nname = "app.items"\nkey = ["id"]\n'
        f'[replay]\nslot_name = "{slot}"\nrequire_backfill = false\npoll_interval = 0.05\n'
        f'[diff]\nbalances = false\nlag_wait_seconds = 20.0\npoll_seconds = 0.05\nreport_dir = "{tmp_path}/reports"\n'
        '[repair]\nchunk_rows = 5\napply_wait_seconds = 60.0\npoll_seconds = 0.05\n')
    cfg = load_config(config)
    init_replay(cfg)
    diff = run_diff(cfg, mode="full")
    assert diff.verdict == "red" and diff.summary["persistent_mismatches"] == 30 + 3 + 5 + 4

    rng = random.Random(int(time.time()))
    stop, counts = threading.Event(), {"txns": 0}
    load = threading.Thread(target=_workload, args=(source_db, stop, rng, counts), daemon=True)
    load.start()
    kills = {"repair": 0, "replay": 0}
    try:
        for _ in range(4):
            replay = _replay(str(config))
            repair = _repair(str(config), diff.run_id)
            before = _count(target_db, "SELECT count(*) FROM reconcile.repair_chunks")
            deadline = time.monotonic() + 30
            while _count(target_db, "SELECT count(*) FROM reconcile.repair_chunks") <= before and \
                    repair.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.5))  # somewhere in a chunk: emitting, reading, storing, applying
            victims = rng.choice([("repair",), ("replay",), ("repair", "replay")])
            for name, proc in (("repair", repair), ("replay", replay)):
                if name in victims and proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    kills[name] += 1
            for proc in (repair, replay):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                proc.communicate(timeout=30)
        assert kills["repair"] >= 1 and sum(kills.values()) >= 2, kills

        # the last repair runs to its end with the replay up, the workload still writing
        replay = _replay(str(config))
        final = _repair(str(config), diff.run_id)
        out, err = final.communicate(timeout=120)
        assert final.returncode == 0, out + err
        assert "repaired" in out
    finally:
        stop.set()
        load.join(30)
        if "replay" in locals() and replay.poll() is None:
            replay.send_signal(signal.SIGTERM)
            replay.communicate(timeout=30)
    assert counts["txns"] > 100
    caught = run_replay(cfg, until_caught_up=True)
    assert caught.status == "done"
    assert _rows(target_db) == _rows(source_db)
    with psycopg.connect(target_db) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM reconcile.runs WHERE kind = 'repair' "
                                     "GROUP BY status").fetchall())
    # the final repair ended repaired; a killed one may have finished before its kill (repaired) or been
    # killed mid-way (left running, or closed as abandoned); none ended in error
    assert statuses.get("repaired", 0) >= 1 and set(statuses) <= {"repaired", "running", "abandoned"}, statuses
