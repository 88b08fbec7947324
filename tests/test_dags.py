"""The DAG files: they import cleanly and cheaply, and the backfill DAG runs end to end with dag.test()."""
# ruff: noqa: F811  (pytest fixtures imported from tests.airflow_support are used as parameters)

from __future__ import annotations

import json
import subprocess
import sys
import time

import psycopg
import pytest

from tests.airflow_support import DAG_IDS, DAGS_FOLDER, run_dag, task_states, xcom
from tests.airflow_support import airflow_env, dagbag  # noqa: F401  (pytest fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# --- import ----------------------------------------------------------------------------------------


def test_every_dag_imports_without_errors(dagbag, airflow_env):
    assert dagbag.import_errors == {}
    assert set(DAG_IDS) <= set(dagbag.dag_ids)
    backfill = dagbag.get_dag("reconcile_backfill")
    assert backfill.schedule is None and backfill.max_active_runs == 1
    assert {t.task_id: sorted(t.downstream_task_ids) for t in backfill.tasks} == {
        "plan": ["copy_chunk", "summary"], "copy_chunk": ["summary"], "summary": []}
    copy = backfill.get_task("copy_chunk")
    assert copy.max_active_tis_per_dagrun == 4 and copy.retries == 2
    assert set(backfill.params) == {"tables", "from_key", "to_key", "force", "throttle_rows_per_second",
                                    "chunk_rows", "replay", "slot_name"}
    print(f"airflow set-up {airflow_env.setup_seconds:.2f} s")


def test_importing_the_dag_files_opens_no_database_connection(tmp_path):
    """Each file imported in a fresh interpreter where psycopg.connect raises: nothing may call it."""
    probe = f"""
import os, sys, runpy, time
os.environ["AIRFLOW_HOME"] = {str(tmp_path)!r}
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
import psycopg
def refuse(*a, **k):
    raise SystemExit("database call at import time")
psycopg.connect = psycopg.Connection.connect = refuse
sys.path.insert(0, {str(DAGS_FOLDER)!r})
t0 = time.monotonic()
for name in sorted(os.listdir({str(DAGS_FOLDER)!r})):
    if name.endswith(".py"):
        runpy.run_path(os.path.join({str(DAGS_FOLDER)!r}, name), run_name="dagfile")
print("heavy:", sorted(m for m in ("reconcile.backfill", "great_expectations", "boto3", "reconcile.diff",
                                   "reconcile.gates", "reconcile.replay", "reconcile.checks") if m in sys.modules))
print("seconds:", round(time.monotonic() - t0, 2))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "heavy: []" in out.stdout, out.stdout


# --- backfill --------------------------------------------------------------------------------------


def _ledger_pair(source_db: str, target_db: str, *, transactions: int = 300) -> None:
    from reconcile.schema import apply_plan, plan_from_source
    from reconcile.workload import seed

    with psycopg.connect(source_db, autocommit=True) as conn:
        seed(conn, accounts=40, transactions=transactions)
        plan = plan_from_source(conn, schemas=["ledger"], dialect="postgres")
    with psycopg.connect(target_db, autocommit=True) as conn:
        apply_plan(conn, plan, phase="pre-load")  # foreign keys come after the load, as in a migration


KEYS = {"accounts": "account_id", "journal": "txn_id", "entries": "entry_id"}


def _counts(url: str) -> dict[str, list[tuple]]:
    """Every ledger row in key order (Python values: Decimal equality ignores a wider target scale)."""
    out = {}
    with psycopg.connect(url) as conn:
        conn.execute("SET timezone = 'UTC'")
        for table, key in KEYS.items():
            out[table] = conn.execute(f"SELECT * FROM ledger.{table} ORDER BY {key}").fetchall()
    return out


def _write_config(path, source_db: str, target_db: str) -> str:
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n\n'
                    f'[target]\nkind = "postgres"\nconninfo = "{target_db}"\n')
    return str(path)


def test_backfill_dag_copies_by_mapped_chunks_then_resumes_and_forces(dagbag, source_db, target_db, tmp_path,
                                                                       monkeypatch):
    _ledger_pair(source_db, target_db)
    # Endpoints from Airflow Connections (env form), the rest of the config from the defaults.
    monkeypatch.setenv("AIRFLOW_CONN_RECONCILE_SOURCE", json.dumps(_conn_json(source_db)))
    monkeypatch.setenv("AIRFLOW_CONN_RECONCILE_TARGET", json.dumps(_conn_json(target_db)))
    monkeypatch.delenv("RECONCILE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)

    t0 = time.monotonic()
    dr = run_dag(dagbag, "reconcile_backfill", {"chunk_rows": 150})
    first_s = time.monotonic() - t0
    states = task_states(dr)
    assert dr.state == "success", states
    chunks = xcom(dr, "plan")
    # accounts 48 rows -> 1 chunk, journal 304 -> 3, entries 608 -> 5 (150 rows a chunk)
    assert len(chunks) == len([k for k in states if k.startswith("copy_chunk[")]) >= 6
    assert chunks[0].startswith("ledger.accounts/")
    assert _counts(source_db) == _counts(target_db)
    summary = xcom(dr, "summary")
    assert summary["status"] == "done" and summary["not_done"] == []
    assert summary["tables"]["ledger.entries"]["rows"] == 608
    assert sum(t["rejected"] for t in summary["tables"].values()) == 0

    # A hole in the target plus a rerun: nothing left to copy, so the hole stays (resume, not re-copy) ...
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("DELETE FROM ledger.entries WHERE entry_id BETWEEN 10 AND 20")
    dr = run_dag(dagbag, "reconcile_backfill", {})
    assert dr.state == "success" and xcom(dr, "plan") == []
    assert task_states(dr)["copy_chunk"] == "skipped"
    assert _counts(source_db)["entries"] != _counts(target_db)["entries"]
    # ... and a forced re-copy of the hole's key range fills it, copying only that chunk.
    dr = run_dag(dagbag, "reconcile_backfill", {"tables": ["ledger.entries"], "from_key": "10", "to_key": "21",
                                                "force": True})
    assert dr.state == "success"
    assert xcom(dr, "plan") == ["ledger.entries/0"]
    assert _counts(source_db) == _counts(target_db)
    print(f"backfill dag: first run {first_s:.1f} s")


def _conn_json(url: str) -> dict:
    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(url)
    return {"conn_type": "postgres", "host": d.get("host"), "port": int(d.get("port", 5432)),
            "login": d.get("user"), "password": d.get("password"), "schema": d.get("dbname")}


def test_backfill_dag_rejects_bad_params_without_retrying(dagbag, source_db, target_db, tmp_path, monkeypatch):
    monkeypatch.setenv("RECONCILE_CONFIG", _write_config(tmp_path / "reconcile.toml", source_db, target_db))
    dr = run_dag(dagbag, "reconcile_backfill", {"tables": ["ledger.nope"]})
    states = task_states(dr)
    assert dr.state == "failed" and states["plan"] == "failed", states


# --- config and parameters for tasks (no Airflow, no database) -------------------------------------


def test_connections_map_onto_the_config_endpoints_without_leaking_the_password(tmp_path):
    from reconcile.config import DsqlEndpoint, PostgresEndpoint
    from reconcile.errors import ConfigError
    from reconcile.pipeline.config import PASSWORD_ENV, load_pipeline_config

    env: dict[str, str] = {}
    cfg = load_pipeline_config(environ=env, connections={
        "source": {"conn_type": "postgres", "host": "aurora.example.com", "port": 5432, "login": "migrator",
                   "password": "s3cret", "schema": "ledger", "extra": {"sslmode": "verify-full", "junk": "x"}},
        "target": {"conn_type": "aws", "host": "abc123.dsql.eu-west-1.on.aws", "login": "reconcile",
                   "extra": {"profile": "migration"}},
    })
    assert isinstance(cfg.source, PostgresEndpoint) and isinstance(cfg.target, DsqlEndpoint)
    assert "s3cret" not in cfg.source.conninfo and "s3cret" not in str(cfg.describe())
    assert "sslmode=verify-full" in cfg.source.conninfo and "junk" not in cfg.source.conninfo
    assert cfg.source.password_env == PASSWORD_ENV["source"] and env[PASSWORD_ENV["source"]] == "s3cret"
    assert (cfg.target.region, cfg.target.user, cfg.target.profile) == ("eu-west-1", "reconcile", "migration")

    with pytest.raises(ConfigError, match="reconcile_target has type 'mysql'"):
        load_pipeline_config(environ={}, connections={"target": {"conn_type": "mysql", "host": "db"}})
    with pytest.raises(ConfigError, match=r"\$RECONCILE_CONFIG points to .*missing.toml"):
        load_pipeline_config(environ={"RECONCILE_CONFIG": str(tmp_path / "missing.toml")})
    (tmp_path / "r.toml").write_text('[source]\nkind = "postgres"\nconninfo = "host=file-db"\n')
    from_variable = load_pipeline_config(environ={}, variable=str(tmp_path / "r.toml"))
    assert from_variable.source.conninfo == "host=file-db"


def test_backfill_params_are_validated_and_the_throttle_is_shared_by_the_chunk_tasks():
    from reconcile.config import InvalidSetting, load_config
    from reconcile.errors import ConfigError
    from reconcile.pipeline.backfill import backfill_params, chunk_ref, parse_chunk_ref

    cfg = load_config(None, environ={})
    s = backfill_params(cfg, {"tables": ["ledger.entries"], "from_key": "10", "to_key": "20",
                              "throttle_rows_per_second": 1000, "force": True}, parallel=4)
    assert (s.tables, s.from_key, s.to_key, s.force, s.max_rows_per_second) == (
        ("ledger.entries",), ("10",), ("20",), True, 250.0)
    assert s.slot_name == cfg.replay.slot_name
    with pytest.raises(InvalidSetting, match="from_key needs exactly one table"):
        backfill_params(cfg, {"from_key": "10"})
    with pytest.raises(InvalidSetting, match="bogus is not a backfill parameter"):
        backfill_params(cfg, {"bogus": 1})
    with pytest.raises(ConfigError, match="no table named 'ledger.nope'"):
        backfill_params(cfg, {"tables": ["ledger.nope"]})
    assert parse_chunk_ref(chunk_ref("odd.na/me", 12)) == ("odd.na/me", 12)
    with pytest.raises(InvalidSetting):
        parse_chunk_ref("ledger.entries")
