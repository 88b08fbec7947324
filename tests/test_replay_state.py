"""Replay's own bookkeeping on the real local stack: dead letters that survive a kill without orphans,
runs rows of killed replayers closed as abandoned, secrets kept out of messages and the runs table."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import traceback
import sys

import psycopg
import pytest

from reconcile.config import PostgresEndpoint
from reconcile.connections import connect
from reconcile.replay import Replayer, ReplaySettings, init_replay, retry_dead_letter, run_replay
from reconcile.errors import TerminalFailure, TransientFailure
from reconcile.replay.state import ReplayControl
from tests.test_replay import ITEMS, drop_slots, items_pair, make_config, run_sql  # noqa: F401 (fixture)


class Killed(Exception):
    """The replayer 'died' (the process was killed) at this point."""


def parts_and_letters(target_db: str) -> tuple[list[tuple], list[tuple]]:
    with psycopg.connect(target_db) as conn:
        parts = conn.execute("SELECT dead_letter_id::text, count(*) FROM reconcile.dead_letter_parts "
                             "GROUP BY 1 ORDER BY 1").fetchall()
        letters = conn.execute("SELECT dead_letter_id::text, payload_parts, resolution FROM reconcile.dead_letters "
                               "ORDER BY created_at").fetchall()
    return parts, letters


def test_a_dead_letter_killed_between_its_parts_and_its_row_is_completed_by_the_rerun_without_orphans(
        source_db, target_db, drop_slots, monkeypatch):
    items_pair(source_db, target_db)
    cfg = make_config(source_db, target_db, [ITEMS], max_rows=20, require_backfill=False)
    init_replay(cfg)
    run_sql(source_db, "INSERT INTO app.items SELECT g, g, repeat(md5(g::text), 320) FROM generate_series(1, 30) g")

    real_tx = ReplayControl._tx

    def dies_before_the_row(self, fn, label):
        if label == "dead letter":  # the payload parts are committed, the row is not: the process dies
            raise Killed(label)
        return real_tx(self, fn, label)

    monkeypatch.setattr(ReplayControl, "_tx", dies_before_the_row)
    with pytest.raises(TerminalFailure) as died:  # the run's boundary classifies what killed it
        run_replay(cfg)
    assert isinstance(died.value.__cause__, Killed)
    monkeypatch.setattr(ReplayControl, "_tx", real_tx)
    parts, letters = parts_and_letters(target_db)
    assert letters == [] and len(parts) == 1 and parts[0][1] >= 2  # parts without their row, for now

    for _ in range(2):  # the rerun completes that dead letter; another rerun changes nothing
        stopped = run_replay(cfg)
        assert stopped.status == "stopped" and stopped.dead_letters_open == 1
        parts, letters = parts_and_letters(target_db)
        assert [lid for lid, _ in parts] == [stopped.dead_letter_id] == [lid for lid, _, _ in letters]
        assert parts[0][1] == letters[0][1]  # every part belongs to the one dead letter

    # Released for a plain retry, the transaction is refused again: a new dead letter, its own parts.
    retry_dead_letter(cfg, stopped.dead_letter_id, by="ops")
    again = run_replay(cfg)
    assert again.status == "stopped" and again.dead_letter_id != stopped.dead_letter_id
    parts, letters = parts_and_letters(target_db)
    assert [r for _, _, r in letters] == ["retry", None] and sorted(lid for lid, _ in parts) == sorted(
        lid for lid, _, _ in letters)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runs_left_running_by_killed_replayers_are_closed_as_abandoned(source_db, target_db, drop_slots):
    items_pair(source_db, target_db)
    cfg = make_config(source_db, target_db, [ITEMS], require_backfill=False)
    slot = cfg.replay.slot_name
    init_replay(cfg)
    run_replay(cfg)  # the control schema exists from here on
    rows = {  # name: (host, pid, slot, started minutes ago)
        "dead_here": (socket.gethostname(), dead_pid(), slot, 1),
        "lost_worker": ("airflow-worker-7", 4242, slot, 120),
        "other_host_recent": ("airflow-worker-8", 4242, slot, 5),
        "other_slot": (socket.gethostname(), dead_pid(), "another_slot", 120),
    }
    ids = {}
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("UPDATE reconcile.replay_state SET updated_at = now() - interval '3 hours'")
        for name, (host, pid, row_slot, minutes) in rows.items():
            doc = {"kind": "replay", "settings": {"slot_name": row_slot}, "host": host, "pid": pid}
            ids[name] = str(conn.execute(
                "INSERT INTO reconcile.runs (run_id, kind, status, started_at, settings) VALUES "
                "(gen_random_uuid(), 'replay', 'running', now() - make_interval(mins => %s), %s) RETURNING run_id",
                (minutes, json.dumps(doc))).fetchone()[0])
    result = run_replay(cfg)
    assert result.status == "done"
    with psycopg.connect(target_db) as conn:
        got = {str(r[0]): (r[1], r[2], json.loads(r[3]) if r[3] else None) for r in conn.execute(
            "SELECT run_id, status, finished_at IS NOT NULL, summary FROM reconcile.runs WHERE kind = 'replay'")}
    for name in ("dead_here", "lost_worker"):
        status, finished, summary = got[ids[name]]
        assert status == "abandoned" and finished and summary["closed_by_run"] == result.run_id, name
        assert "never finished" in summary["message"]
    assert got[ids["other_host_recent"]][0] == "running"  # may still be alive: left alone
    assert got[ids["other_slot"]][0] == "running"  # another slot's business
    assert got[result.run_id][0] == "done"


def test_errors_reach_the_runs_row_and_the_caller_without_secrets(source_db, target_db, drop_slots, monkeypatch):
    secret = "s3cr3t-Pa55word"
    items_pair(source_db, target_db)

    def source():
        raise psycopg.OperationalError(f'connection to server failed: password "{secret}" was refused for user app')

    replayer = Replayer(source=source, target=lambda: connect(PostgresEndpoint("target", target_db)), tables=[ITEMS],
                        settings=ReplaySettings(slot_name="nowhere", require_backfill=False), secrets=[secret])
    with replayer, pytest.raises(TransientFailure) as raised:
        replayer.run()
    assert secret not in str(raised.value) and "***" in str(raised.value)
    # The cause is kept (its type, its traceback) but what a log prints of the whole chain holds no secret.
    assert isinstance(raised.value.__cause__, psycopg.OperationalError) and raised.value.__suppress_context__
    printed = "".join(traceback.format_exception(raised.value))
    assert secret not in printed and "OperationalError" in printed
    with psycopg.connect(target_db) as conn:
        status, summary = conn.execute("SELECT status, summary FROM reconcile.runs WHERE kind = 'replay'").fetchone()
    assert status == "error" and secret not in summary and "***" in json.loads(summary)["message"]

    monkeypatch.setenv("RECONCILE_TEST_SOURCE_PASSWORD", secret)
    cfg = make_config(source_db, target_db, [ITEMS])
    cfg = dataclasses.replace(cfg, source=PostgresEndpoint("source", source_db,
                                                           password_env="RECONCILE_TEST_SOURCE_PASSWORD"))
    with Replayer.from_config(cfg) as r:
        assert secret in r.secrets
