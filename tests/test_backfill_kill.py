"""A backfill process SIGKILLed at random points, then resumed, ends with target == source, exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import psycopg

ROWS = 30_000


def _setup(source_db: str, target_db: str) -> None:
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA app")
        conn.execute("CREATE TABLE app.items (id bigint PRIMARY KEY, name text NOT NULL, amount numeric(12,2), "
                     "at timestamptz)")
        conn.execute("INSERT INTO app.items SELECT g, 'item ' || g, g / 7.0, "
                     "'2024-01-01 00:00:00+00'::timestamptz + g * interval '1 second' "
                     "FROM generate_series(1, %s) g", (ROWS,))
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA app")
        conn.execute("CREATE TABLE app.items (id bigint PRIMARY KEY, name text NOT NULL, amount numeric(12,2), "
                     "at timestamptz)")
        conn.execute("CREATE INDEX items_name_idx ON app.items (name)")


def _copied(target_db: str) -> int:
    with psycopg.connect(target_db) as conn:
        if conn.execute("SELECT to_regclass('reconcile.chunks') IS NULL").fetchone()[0]:
            return 0
        return conn.execute("SELECT coalesce(sum(rows), 0) FROM reconcile.chunks").fetchone()[0]


def _fingerprint(url: str) -> tuple:
    with psycopg.connect(url) as conn:
        conn.execute("SET timezone = 'UTC'")
        return conn.execute("SELECT count(*), count(DISTINCT id), md5(string_agg(t::text, E'\\n' ORDER BY id)) "
                            "FROM app.items t").fetchone()


def _backfill(config: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "reconcile.cli.backfill_cmd", "run", "--config", config, "--no-progress",
         "--workers", "3", "--chunk-rows", "2500", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_sigkill_at_random_points_then_resume(source_db, target_db, tmp_path):
    _setup(source_db, target_db)
    config = tmp_path / "reconcile.toml"
    config.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n'
                      f'[target]\nkind = "postgres"\nconninfo = "{target_db}"\n'
                      '[[tables]]\nname = "app.items"\nkey = ["id"]\n')
    rng = random.Random(int(time.time()))
    kills = []
    for _ in range(3):
        before = _copied(target_db)
        proc = _backfill(str(config), "--max-rows-per-second", "15000")
        deadline = time.monotonic() + 30
        while _copied(target_db) <= before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))  # somewhere in a batch: reading, writing or committing
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills.append(_copied(target_db))
        proc.communicate(timeout=30)
    assert len(kills) >= 2, "the backfill finished before it could be killed; slow it down"
    assert _copied(target_db) < ROWS

    final = _backfill(str(config))
    out, err = final.communicate(timeout=60)
    assert final.returncode == 0, err
    assert _fingerprint(source_db) == _fingerprint(target_db)
    assert _fingerprint(target_db)[:2] == (ROWS, ROWS)
    with psycopg.connect(target_db) as conn:
        statuses = conn.execute("SELECT status, count(*), sum(rows) FROM reconcile.chunks GROUP BY status").fetchall()
        runs = dict(conn.execute("SELECT status, count(*) FROM reconcile.runs WHERE kind = 'backfill' "
                                 "GROUP BY status").fetchall())
    # every chunk done, and every row counted exactly once although batches were cut off mid-way
    assert statuses == [("done", 12, ROWS)]
    assert runs.get("abandoned", 0) == len(kills) and runs["done"] == 1
