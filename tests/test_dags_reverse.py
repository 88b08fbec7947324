"""reconcile_reverse_replay (and the shadow replay's write-cutover guard) under dag.test(): the embedded
source and DSQL stand-in, the CDC stand-in putting into moto's Kinesis server, moto's CloudWatch."""
# ruff: noqa: F811  (pytest fixtures imported from tests.airflow_support are used as parameters)

from __future__ import annotations

import json
import uuid

import boto3
import psycopg
import pytest

from tests.airflow_support import run_dag, task_states, xcom
from tests.airflow_support import airflow_env, dagbag  # noqa: F401  (pytest fixtures)
from tests.reverse_support import new_stream, publisher, rows
from tests.test_dags import KEYS, _counts, _ledger_pair
from tests.test_secrets import leaks

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DAG = "reconcile_reverse_replay"


@pytest.fixture
def reverse_config(source_db, target_db, kinesis_url, tmp_path, monkeypatch):
    """A config on the test databases with a fresh 2-shard stream, metrics into moto's CloudWatch; the DAG
    tasks read it through $RECONCILE_CONFIG. Yields (config, kinesis client, stream)."""
    kc, stream = new_stream(kinesis_url, shards=2)
    path = tmp_path / "reconcile.toml"
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n\n'
                    f'[target]\nkind = "postgres"\nconninfo = "{target_db}"\n\n'
                    f'[reverse]\nstream_name = "{stream}"\nendpoint_url = "{kinesis_url}"\n'
                    'settle_ms = 0\npoll_interval = 0.01\n\n'
                    f'[metrics]\nenabled = true\nregion = "us-east-1"\nendpoint_url = "{kinesis_url}"\n'
                    f'namespace = "RevTest{uuid.uuid4().hex[:8]}"\n')
    monkeypatch.setenv("RECONCILE_CONFIG", str(path))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local")  # moto's server takes any credentials
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local")
    # boto3's default session caches the credentials it resolved: a session of its own for this test, dropped
    # afterwards, so later tests do not inherit these (a test expecting "no credentials" would see them).
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    for side in ("SOURCE", "TARGET"):
        monkeypatch.delenv(f"AIRFLOW_CONN_RECONCILE_{side}", raising=False)
    from reconcile.config import load_config

    return load_config(path), kc, stream


def _move_to(config, state: str) -> None:
    from reconcile.gates import approve, current_state

    for gate, reached in (("read", "read_cutover"), ("write", "write_cutover")):
        if current_state(config) == state:
            return
        approve(config, gate, by="tester", reason="test journey", override_reason="test ledger, no history")
        assert current_state(config) == reached
    assert current_state(config) == state


def _same_rows(source_db: str, target_db: str) -> bool:
    """The oracle: every ledger row as text, compared through plain SQL (not the replayer's counters)."""
    return all(rows(source_db, f"ledger.{t}", k) == rows(target_db, f"ledger.{t}", k) for t, k in KEYS.items())


def test_reverse_dag_skips_before_write_cutover_then_carries_dsql_back(dagbag, reverse_config, source_db, target_db,
                                                                      kinesis_url, monkeypatch):
    from reconcile.backfill import BackfillSettings, run_backfill
    from reconcile.reverse import init_reverse
    from reconcile.workload import run_workload

    config, kc, stream = reverse_config
    _ledger_pair(source_db, target_db, transactions=60)
    assert run_backfill(config, BackfillSettings(workers=1)).status == "done"
    assert _same_rows(source_db, target_db)

    # Write cutover's set-up: DSQL's CDC on (with duplicates and reordering), reverse state on the source,
    # then the application writes DSQL.
    pub = publisher(target_db, kc, stream, duplicate_rate=0.3, shuffle=True, seed=5)
    init_reverse(config)
    on_target = run_workload(target_db, tps=60, duration=1.0, workers=1, seed=11, write_to="target")
    assert on_target.errors == 0 and on_target.committed_total > 0
    assert pub.drain().txns > 0
    assert not _same_rows(source_db, target_db)
    before = _counts(source_db)

    # shadow: the source is the system of record; nothing is replayed back.
    dr = run_dag(dagbag, DAG, {"until_caught_up": True, "tick_seconds": 60}, timeout=120)
    states = task_states(dr)
    assert dr.state == "success" and states == {"gate_state": "success", "reverse_tick": "skipped"}, states
    assert xcom(dr, "reverse_tick") is None and _counts(source_db) == before

    # write cutover: a slice bounded by max_txns applies that many, the next one the rest; the source then
    # equals the target.
    _move_to(config, "write_cutover")
    dr = run_dag(dagbag, DAG, {"max_txns": 3, "tick_seconds": 60}, timeout=180)
    bounded = xcom(dr, "reverse_tick")
    assert dr.state == "success" and bounded["txns_applied"] == 3 and bounded["caught_up"] is False, bounded
    assert not _same_rows(source_db, target_db)
    dr = run_dag(dagbag, DAG, {"until_caught_up": True, "tick_seconds": 60}, timeout=180)
    states = task_states(dr)
    assert dr.state == "success" and states["reverse_tick"] == "success", states
    summary = xcom(dr, "reverse_tick")
    assert summary["status"] == "done" and summary["caught_up"] is True and summary["dead_letters_open"] == 0
    # one DSQL transaction per business transaction, each applied in one of the two slices
    assert bounded["txns_applied"] + summary["txns_applied"] >= on_target.committed_total
    assert summary["changes_stale"] > 0  # the duplicates arrived, and were not written twice
    assert _same_rows(source_db, target_db) and _counts(source_db) == _counts(target_db)

    # Idempotent: a rerun from the shard checkpoints applies nothing and leaves the source as it is.
    dr = run_dag(dagbag, DAG, {"until_caught_up": True, "tick_seconds": 60}, timeout=180)
    again = xcom(dr, "reverse_tick")
    assert dr.state == "success" and again["txns_applied"] == 0 and again["caught_up"] is True
    assert _same_rows(source_db, target_db)

    # The metrics went to CloudWatch (moto's server).
    cw = boto3.client("cloudwatch", region_name="us-east-1", endpoint_url=kinesis_url)
    names = {m["MetricName"] for m in cw.list_metrics(Namespace=config.stage("metrics").namespace)["Metrics"]}
    assert {"ReverseReplayLagSeconds", "ReverseDeadLettersOpen"} <= names

    # The shadow replay does not apply in write cutover (no slot exists here: a tick would fail, not skip).
    dr = run_dag(dagbag, "reconcile_shadow_replay", {"until_caught_up": True}, timeout=120)
    states = task_states(dr)
    assert dr.state == "success" and states == {"gate_state": "success", "replay_tick": "skipped"}, states


def test_reverse_dag_xcom_and_asset_hold_no_secret(dagbag, reverse_config, source_db, target_db, monkeypatch):
    """The source password in the Airflow Connection: the summary pushed to XCom and the asset event's extra
    hold counts and flags only."""
    from reconcile.pipeline.config import PASSWORD_ENV
    from reconcile.pipeline.reverse import SUMMARY_KEYS
    from reconcile.reverse import init_reverse

    config, kc, stream = reverse_config
    _ledger_pair(source_db, target_db, transactions=10)
    pub = publisher(target_db, kc, stream)
    init_reverse(config)
    pub.drain()
    _move_to(config, "write_cutover")
    password = f"Rv{uuid.uuid4().hex}/+=Pw'"
    src = psycopg.conninfo.conninfo_to_dict(source_db)
    monkeypatch.setenv("AIRFLOW_CONN_RECONCILE_SOURCE", json.dumps({
        "conn_type": "postgres", "host": src["host"], "port": int(src["port"]), "login": src.get("user"),
        "password": password, "schema": src["dbname"]}))  # the embedded source trusts the login: it is carried only
    for name in PASSWORD_ENV.values():
        monkeypatch.setenv(name, "")
    dr = run_dag(dagbag, DAG, {"until_caught_up": True, "tick_seconds": 30}, timeout=120)
    assert dr.state == "success", task_states(dr)
    summary = xcom(dr, "reverse_tick")
    assert set(summary) == set(SUMMARY_KEYS) and summary["status"] == "done"
    from airflow import settings
    from airflow.models.asset import AssetEvent

    session = settings.Session()
    try:
        extras = [dict(e.extra or {}) for e in session.query(AssetEvent).filter(AssetEvent.source_dag_id == DAG,
                                                                                AssetEvent.source_run_id == dr.run_id)]
    finally:
        session.close()
    assert len(extras) == 1 and extras[0]["run_id"] == summary["run_id"]
    text = json.dumps([summary, extras])
    assert leaks(f"x{password}x", [password])  # the scanner finds what it looks for
    assert leaks(text, [password]) == [] and "conninfo" not in text and src["host"] not in text


# --- the gate decisions (no Airflow, no database) ---------------------------------------------------


def test_which_direction_applies_in_which_state():
    from reconcile.config import load_config
    from reconcile.pipeline.reverse import forward_gate, reverse_gate

    cfg = load_config(None, environ={})
    assert [reverse_gate(cfg, state=s)["run"] for s in ("shadow", "read_cutover", "write_cutover")] == \
        [False, False, True]
    assert [forward_gate(cfg, state=s)["run"] for s in ("shadow", "read_cutover", "write_cutover")] == \
        [True, True, False]
    assert forward_gate(cfg, state="write_cutover", force=True)["run"] is True
    why = forward_gate(cfg, state="write_cutover")["reason"]
    assert "write_cutover" in why and "run_after_write_cutover" in why
    assert "not write_cutover" in reverse_gate(cfg, state="read_cutover")["reason"]


def test_dag_structure(dagbag):
    dag = dagbag.get_dag(DAG)
    assert {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks} == {
        "gate_state": ["reverse_tick"], "reverse_tick": []}
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert set(dag.params) == {"tick_seconds", "max_txns", "until_caught_up"}
    shadow = dagbag.get_dag("reconcile_shadow_replay")
    assert {t.task_id: sorted(t.downstream_task_ids) for t in shadow.tasks} == {
        "gate_state": ["replay_tick"], "replay_tick": []}
    assert shadow.params["run_after_write_cutover"] is False
