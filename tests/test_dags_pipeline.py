"""reconcile_shadow_replay and reconcile_reconcile under dag.test() against the embedded databases."""
# ruff: noqa: F811  (pytest fixtures imported from tests.airflow_support are used as parameters)

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from tests.airflow_support import run_dag, task_states, xcom
from tests.airflow_support import airflow_env, dagbag  # noqa: F401  (pytest fixtures)
from tests.test_dags import _counts, _ledger_pair

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _need(module: str, *names: str):
    mod = pytest.importorskip(module, reason=f"{module} is missing")
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        pytest.skip(f"{module}.{', '.join(missing)} missing")
    return mod


@pytest.fixture
def pipeline_config(source_db, target_db, tmp_path, monkeypatch):
    """A config file on the test databases (unique slot), used by the DAG tasks through $RECONCILE_CONFIG."""
    slot = f"dagtest_{uuid.uuid4().hex[:8]}"
    path = tmp_path / "reconcile.toml"
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n\n'
                    f'[target]\nkind = "postgres"\nconninfo = "{target_db}"\n\n'
                    f'[replay]\nslot_name = "{slot}"\npublication = "{slot}"\n\n'
                    f'[diff]\nreport_dir = "{tmp_path / "reports"}"\nlag_wait_seconds = 5.0\n\n'
                    '[gates]\nmin_green_runs = 1\nmin_green_hours = 0.0\n')
    monkeypatch.setenv("RECONCILE_CONFIG", str(path))
    for side in ("SOURCE", "TARGET"):
        monkeypatch.delenv(f"AIRFLOW_CONN_RECONCILE_{side}", raising=False)
    from reconcile.config import load_config

    yield load_config(path)
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE database = current_database()")


def _asset_events(dag_id: str) -> list[dict]:
    from airflow import settings
    from airflow.models.asset import AssetEvent

    session = settings.Session()
    try:
        return [dict(e.extra or {}) for e in session.query(AssetEvent).filter(AssetEvent.source_dag_id == dag_id)]
    finally:
        session.close()


def test_shadow_replay_applies_a_time_boxed_tick_and_reports_lag(dagbag, pipeline_config, source_db, target_db,
                                                                 monkeypatch):
    _need("reconcile.replay", "init_replay", "run_replay")
    from reconcile.backfill import BackfillSettings, run_backfill
    from reconcile.pipeline.replay import replay_init
    from reconcile.workload import run_workload

    _ledger_pair(source_db, target_db)
    replay_init(pipeline_config)  # slot first, then backfill
    assert run_backfill(pipeline_config, BackfillSettings(replay=True, workers=1,
                                                                slot_name=pipeline_config.replay.slot_name)).status == "done"
    run_workload(source_db, tps=40, duration=1.0, workers=2, seed=7)  # changes for the replay to apply
    assert _counts(source_db) != _counts(target_db)

    monkeypatch.setenv("RECONCILE_REPLAY_TICK_SECONDS", "2")
    before = len(_asset_events("reconcile_shadow_replay"))
    dr = run_dag(dagbag, "reconcile_shadow_replay", timeout=300)  # a bound against a hang
    assert dr.state == "success", task_states(dr)
    summary = xcom(dr, "replay_tick")
    assert summary["status"] == "done" and summary["txns_applied"] > 0 and summary["caught_up"] is True
    # Time-boxed by the tick: it ran the whole tick (not only until caught up), and it returned.
    assert summary["duration_seconds"] >= 1.5 and summary["caught_up"] is True
    assert _counts(source_db) == _counts(target_db)
    events = _asset_events("reconcile_shadow_replay")[before:]
    assert len(events) == 1
    assert events[0]["txns_applied"] == summary["txns_applied"]
    assert set(events[0]) >= {"lag_seconds_p50", "lag_seconds_p99", "lag_bytes", "caught_up"}


def test_reconcile_dag_green_then_red_with_a_failed_table_closed_as_error(dagbag, pipeline_config, source_db,
                                                                         target_db, tmp_path, monkeypatch):
    _need("reconcile.diff", "start_diff", "diff_table", "diff_balances", "finish_diff")
    _need("reconcile.checks", "run_checks")
    _need("reconcile.gates", "evaluate")
    from reconcile.backfill import BackfillSettings, run_backfill
    from reconcile.pipeline import diff as pipeline_diff

    _ledger_pair(source_db, target_db)
    assert run_backfill(pipeline_config, BackfillSettings(workers=1)).status == "done"

    dr = run_dag(dagbag, "reconcile_reconcile", timeout=150)
    states = task_states(dr)
    assert dr.state == "success", states
    assert sorted(k for k in states if k.startswith("diff_table[")) == [f"diff_table[{i}]" for i in range(3)]
    finished = xcom(dr, "finish_diff")
    assert finished["verdict"] == "green" and finished["persistent_mismatches"] == 0
    assert (tmp_path / "reports").is_dir() and finished["report_dir"]
    assert finished["run_id"] == pipeline_diff.diff_run_id_for("reconcile_reconcile", dr.run_id)
    evidence = xcom(dr, "gate_evidence")
    assert evidence["gate"] == "read" and evidence["run_id"]
    with psycopg.connect(target_db) as conn:
        kinds = dict(conn.execute("SELECT kind, count(*) FROM reconcile.runs WHERE kind IN ('diff', 'check', 'gate') "
                                  "GROUP BY kind").fetchall())
    assert kinds == {"diff": 1, "check": 1, "gate": 1}

    # Red: a changed entry, and the accounts task fails (a terminal error: no retry) without reporting.
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("UPDATE ledger.entries SET amount = amount + 1 WHERE entry_id = 5")
    real = pipeline_diff.diff_one_table

    def failing(config, run_id, table):
        if table == "ledger.accounts":
            from reconcile.errors import TerminalError

            raise TerminalError("planted: the accounts task dies before reporting")
        return real(config, run_id, table)

    monkeypatch.setattr(pipeline_diff, "diff_one_table", failing)  # dag.test() runs tasks in this process
    dr = run_dag(dagbag, "reconcile_reconcile", timeout=150)
    states = task_states(dr)
    assert dr.state == "failed" and states["verdict"] == "failed", states
    assert states["diff_table[0]"] == "failed", states
    assert {states[t] for t in ("balances", "checks", "finish_diff", "gate_evidence")} == {"success"}, states
    red = xcom(dr, "finish_diff")
    assert red["verdict"] == "red" and red["status"] == "error" and red["persistent_mismatches"] >= 1
    assert red["tables"]["ledger.accounts"]["status"] == "error" and "ledger.accounts" in red["errors"]
    with psycopg.connect(target_db) as conn:
        rows = conn.execute("SELECT status, summary FROM reconcile.runs WHERE kind = 'diff' ORDER BY started_at DESC"
                            ).fetchall()
    assert [r[0] for r in rows] == ["error", "green"]  # closed, none left 'running'
    assert json.loads(rows[0][1])["verdict"] == "red"
    report = (tmp_path / "reports" / red["run_id"])
    assert any("ledger.accounts" in f.read_text(errors="replace") for f in report.rglob("*.md")), \
        "the report names the table not compared"


def test_reconcile_dag_closes_the_run_after_failures(dagbag):
    dag = dagbag.get_dag("reconcile_reconcile")
    rules = {t.task_id: str(getattr(t.trigger_rule, "value", t.trigger_rule)) for t in dag.tasks}
    assert {k: rules[k] for k in ("balances", "checks", "finish_diff", "gate_evidence", "verdict")} == dict.fromkeys(
        ("balances", "checks", "finish_diff", "gate_evidence", "verdict"), "all_done")
    assert rules["start_diff"] == rules["diff_table"] == "all_success"


def _diff_settings(config, tables) -> dict:
    return {"tables": list(tables), "start_lsn": "0/0", "slot_name": None, "lag_wait_seconds": 0.0}


def test_a_retried_diff_start_reuses_its_run_and_finish_closes_unreported_steps_as_error(pipeline_config, source_db,
                                                                                      target_db, tmp_path):
    _need("reconcile.diff", "start_diff", "diff_table", "finish_diff")
    from reconcile import control
    from reconcile.connections import connect
    from reconcile.diff import store
    from reconcile.occ import policy_from
    from reconcile.pipeline.diff import (DiffRunClosed, ReconcileRed, diff_finish, diff_one_table, diff_run_id_for,
                                         diff_start, reconcile_verdict)

    _ledger_pair(source_db, target_db, transactions=30)
    rid = diff_run_id_for("reconcile_reconcile", "manual__retry")
    assert rid == diff_run_id_for("reconcile_reconcile", "manual__retry") != diff_run_id_for("x", "manual__retry")
    names = [t.name for t in pipeline_config.tables]
    with connect(pipeline_config.target) as conn:  # the first attempt opened the run, then its task died
        control.migrate(conn)
        store.insert_run(conn, rid, _diff_settings(pipeline_config, names), policy_from(pipeline_config))
    again = diff_start(pipeline_config, run_id=rid)
    assert again == {"run_id": rid, "tables": names, "reused": True}

    for name in names[:2]:  # the entries task and the balances task never report
        diff_one_table(pipeline_config, rid, name)
    closed = diff_finish(pipeline_config, rid)
    assert closed["status"] == "error" and closed["verdict"] == "red"
    assert set(closed["errors"]) == {names[2], "balances"}
    assert closed["tables"][names[2]]["status"] == "error"
    with connect(pipeline_config.target) as conn:
        assert conn.execute("SELECT count(*), min(status) FROM reconcile.runs WHERE kind = 'diff'").fetchone() == \
            (1, "error")
    with pytest.raises(ReconcileRed, match=f"balances, {names[2]} not compared"):
        reconcile_verdict(closed, {"success": True}, {"gate": "read"}, expected=("checks", "evidence"))
    with pytest.raises(ReconcileRed, match="the expectations did not run.*no gate evidence"):
        reconcile_verdict({**closed, "errors": {}, "verdict": "green"}, None, None, expected=("checks", "evidence"))
    # the orchestrator run cleared and re-run: the finished run's verdict stays as it was
    with pytest.raises(DiffRunClosed, match="trigger a new run"):
        diff_start(pipeline_config, run_id=rid)


def test_diff_start_twice_with_one_run_id_opens_one_run(pipeline_config, source_db, target_db):
    from reconcile.connections import connect
    from reconcile.pipeline.diff import diff_run_id_for, diff_start

    _ledger_pair(source_db, target_db, transactions=30)
    rid = diff_run_id_for("reconcile_reconcile", "manual__twice")
    first = diff_start(pipeline_config, run_id=rid)
    second = diff_start(pipeline_config, run_id=rid)
    assert first["run_id"] == second["run_id"] == rid and (first["reused"], second["reused"]) == (False, True)
    with connect(pipeline_config.target) as conn:
        assert conn.execute("SELECT count(*) FROM reconcile.runs WHERE kind = 'diff'").fetchone() == (1,)
