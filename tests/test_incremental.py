"""Incremental verification (issue 18) against the real local stack: the replay tracks the keys it applies,
an incremental diff verifies those plus one sweep slice, and every row is verified within N runs.

Each test seeds identical rows on both sides *before* the slot exists (so no replay or backfill is needed
for them), runs the replay once (the watermark and the tracking start), then runs diffs.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from reconcile.config import BudgetSettings, Config, PostgresEndpoint, TableSpec
from reconcile.diff import run_diff
from reconcile.diff.settings import DiffSettings
from reconcile.replay import ReplaySettings, init_replay, run_replay

ITEMS = TableSpec("app.items", ("id",))
PAIRS = TableSpec("app.pairs", ("k", "j"))
ROWS = 2000
N = 4


def make_config(source: str, target: str, tmp_path, *, tables=(ITEMS,), replay: dict | None = None,
                **diff) -> Config:
    slot = "inc_" + psycopg.conninfo.conninfo_to_dict(source)["dbname"].lower()
    diff = {"mode": "incremental", "sweep_runs": N, "segment_rows": 400, "bucket_rows": 20, "fetch_threshold": 50,
            "precheck_rows": 400, "lag_wait_seconds": 5.0, "poll_seconds": 0.05, "balances": False,
            "report_dir": str(tmp_path / "reports"), **diff}
    return Config(source=PostgresEndpoint("source", source), target=PostgresEndpoint("target", target),
                  tables=tuple(tables), budget=BudgetSettings(),
                  stages={"replay": ReplaySettings(slot_name=slot, require_backfill=False, **(replay or {})),
                          "diff": DiffSettings(**diff)})


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


def seed_items(source_db: str, target_db: str) -> None:
    for url in (source_db, target_db):
        sql(url, "CREATE SCHEMA app", "CREATE TABLE app.items (id bigint PRIMARY KEY, amount numeric(12,2), note text)",
            f"INSERT INTO app.items SELECT g, g / 4.0, 'row ' || g FROM generate_series(1, {ROWS}) g")


def table_result(summary: dict, name: str = "app.items") -> dict:
    return summary["tables"][name]


def coverage_of(summary: dict, name: str = "app.items") -> dict:
    return summary["coverage"]["tables"][name]


def findings(target_db: str, run_id: str) -> list[tuple]:
    with psycopg.connect(target_db) as conn:
        return [(t, k, tuple(json.loads(key))) for t, k, key in conn.execute(
            "SELECT table_name, kind, row_key FROM reconcile.diff_findings WHERE run_id = %s", (run_id,)).fetchall()]


def test_a_cold_row_corrupted_on_the_target_is_found_within_n_runs(source_db, target_db, drop_slots, tmp_path):
    seed_items(source_db, target_db)
    cfg = make_config(source_db, target_db, tmp_path)
    init_replay(cfg)
    assert run_replay(cfg).status == "done"

    first = run_diff(cfg).summary
    assert first["verdict"] == "green" and coverage_of(first)["mode"] == "full"
    assert "first verification" in coverage_of(first)["reason"]
    assert coverage_of(first)["rows_read"] == {"source": ROWS, "target": ROWS}

    # A cold row (never changed on the source, so never tracked) goes wrong on the target only.
    cold = 1234
    sql(target_db, "UPDATE app.items SET amount = amount + 0.01 WHERE id = %s", params=(cold,))
    found_at, reads, slices = None, [], []
    for run in range(1, N + 1):
        s = run_diff(cfg).summary
        cov = coverage_of(s)
        assert cov["mode"] == "incremental" and cov["reason"] is None
        reads.append(cov["rows_read"]["source"])
        slices.append(cov["sweep"]["slice"])
        if s["verdict"] == "red":
            assert findings(target_db, s["run_id"]) == [("app.items", "changed", (cold,))]
            found_at = run
            break
    assert found_at is not None and found_at <= N, f"not found within {N} runs (slices {slices})"
    assert slices == list(range(found_at))  # one slice per run, in order
    # each run read about 1/N of the table (plus the carried finding), far less than a full pass
    assert all(r <= ROWS / N + 60 for r in reads), reads

    # The state says when each slice was last verified; the report says it too.
    state = cov["state"]
    assert state["pass_slices"] == N and len(state["slices"]) == N
    assert [sl["last_mode"] for sl in state["slices"][:found_at]] == ["incremental"] * found_at
    html = (tmp_path / "reports" / s["run_id"] / "report.html").read_text()
    assert "Coverage" in html and "slice" in html


def test_a_changed_row_corrupted_on_the_target_is_found_in_the_next_run(source_db, target_db, drop_slots, tmp_path):
    seed_items(source_db, target_db)
    cfg = make_config(source_db, target_db, tmp_path)
    init_replay(cfg)
    run_replay(cfg)
    assert run_diff(cfg).verdict == "green"  # full: the first verified point
    assert run_diff(cfg).verdict == "green"  # incremental: slice 0 = ids below 501

    # Change rows on the source, far from the next sweep slice (slice 1: ids 501..1000); the replay applies
    # them, then one of them goes wrong on the target.
    sql(source_db, "UPDATE app.items SET note = 'changed' WHERE id IN (1500, 1700, 1900)",
        "INSERT INTO app.items VALUES (5000, 1.00, 'new')")
    assert run_replay(cfg).txns_applied == 2
    sql(target_db, "UPDATE app.items SET note = 'wrong' WHERE id = 1700")
    s = run_diff(cfg).summary
    cov = coverage_of(s)
    assert cov["mode"] == "incremental" and cov["sweep"]["slice"] == 1
    assert cov["changed"]["keys"] + cov["changed"]["ranges"] >= 1 and cov["changed"]["changes"] == 4
    assert s["verdict"] == "red" and findings(target_db, s["run_id"]) == [("app.items", "changed", (1700,))]

    # Unrepaired, the finding is carried into the next run even though nothing changed and the sweep is elsewhere.
    again = run_diff(cfg).summary
    assert again["verdict"] == "red" and coverage_of(again)["changed"]["carried_findings"] == 1
    sql(target_db, "UPDATE app.items SET note = 'changed' WHERE id = 1700")  # fixed by hand
    assert run_diff(cfg).verdict == "green"
    with psycopg.connect(target_db) as conn:  # verified windows were dropped
        left = conn.execute("SELECT count(*) FROM reconcile.change_windows").fetchone()[0]
    assert left == 0


def test_a_window_too_big_to_list_makes_the_table_verified_whole(source_db, target_db, drop_slots, tmp_path):
    for url in (source_db, target_db):
        sql(url, "CREATE SCHEMA app", "CREATE TABLE app.pairs (k text, j int, v text, PRIMARY KEY (k, j))",
            "INSERT INTO app.pairs SELECT 'k' || (g % 7), g, 'v' FROM generate_series(1, 300) g")
    cfg = make_config(source_db, target_db, tmp_path, tables=(PAIRS,), replay={"track_bytes": 1024})
    init_replay(cfg)
    run_replay(cfg)
    assert run_diff(cfg).verdict == "green"
    sql(source_db, "UPDATE app.pairs SET v = 'w' WHERE j <= 150")  # 150 composite keys: more than 1 KiB of JSON
    run_replay(cfg)
    with psycopg.connect(target_db) as conn:
        forms = [r[0] for r in conn.execute("SELECT form FROM reconcile.change_windows")]
    assert forms == ["all"]
    s = run_diff(cfg).summary
    cov = coverage_of(s, "app.pairs")
    assert s["verdict"] == "green" and cov["mode"] == "full" and "track_bytes" in cov["reason"]
    assert cov["rows_read"]["source"] == 300
