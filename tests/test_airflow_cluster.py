"""The DAGs on a real multi-worker Airflow: `reconcile airflow up` with 2 Edge workers, the metadata
database on PostgreSQL, reports on a local S3 (moto server), metrics on its CloudWatch.

The test process only talks HTTP: it triggers ``reconcile_backfill`` and ``reconcile_reconcile``
through the REST API (v2, token from /auth/token), polls their states against a deadline, checks
from the task instances' hostnames that mapped chunk copies ran on both workers, and reads the
reconciliation's report from S3 itself: no file of a worker is opened.

Why both workers must get chunks: each worker runs at most ``concurrency`` (2) tasks, the backfill
queues up to 4 chunks at once (``RECONCILE_BACKFILL_MAX_ACTIVE_CHUNKS`` = workers x concurrency)
and there are 6; so while one worker is full, queued chunks can only go to the other.
"""

from __future__ import annotations

import json
import os
import time

import boto3
import pytest
from psycopg.conninfo import conninfo_to_dict

from reconcile.local.airflow_cluster import BUCKET, Cluster, _start_ticks, connection_for, memory_of_tree

pytestmark = pytest.mark.slow  # ~2 minutes on 2 busy cores: start-up, then one task process per step

RUN_DEADLINE = 240.0


def _wait_run(rest, dag_id: str, run_id: str, deadline: float) -> dict:
    """Poll the run until it is finished (success or failed) or the deadline passes."""
    while True:
        run = rest.dag_run(dag_id, run_id)
        if run["state"] in ("success", "failed"):
            return run
        if time.monotonic() > deadline:
            states = {f"{t['task_id']}[{t['map_index']}]": t["state"] for t in rest.task_instances(dag_id, run_id)}
            pytest.fail(f"{dag_id} run {run_id} still {run['state']} at its deadline: {states}")
        time.sleep(1.0)


def _states(tis: list[dict]) -> dict[str, str]:
    return {f"{t['task_id']}[{t['map_index']}]": t["state"] for t in tis}


def test_connection_for_endpoints(tmp_path):
    from reconcile.config import DsqlEndpoint, PostgresEndpoint

    conn = connection_for(PostgresEndpoint("source", "host=db.internal port=6432 dbname=ledger user=app sslmode=require"),
                          "reconcile_source")
    assert conn == {"connection_id": "reconcile_source", "conn_type": "postgres", "host": "db.internal", "port": 6432,
                    "login": "app", "schema": "ledger", "extra": json.dumps({"sslmode": "require"})}
    # a password (through password_env) or IAM (DSQL) is never copied into Airflow: the config file stays in charge
    assert connection_for(PostgresEndpoint("source", "host=db dbname=l", password_env="PGPW"), "x") is None
    assert connection_for(DsqlEndpoint("target", endpoint="abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws"), "y") is None


def test_cli_without_a_setup_and_with_a_bad_option(tmp_path):
    import subprocess
    import sys

    cli = [sys.executable, "-m", "reconcile", "airflow"]
    status = subprocess.run([*cli, "status", "--dir", str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "total" in status.stdout  # nothing runs: not up
    bad = subprocess.run([*cli, "up", "--storage", "nfs", "--dir", str(tmp_path / "x")], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "use one of s3, path, config" in bad.stderr
    assert not (tmp_path / "x" / "run").exists()  # nothing was started
    down = subprocess.run([*cli, "down", "--dir", str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0


def test_memory_of_tree_counts_children():
    me = memory_of_tree(os.getpid())
    assert me["processes"] >= 1 and me["rss"] >= me["pss"] > 0


def test_two_edge_workers_run_backfill_and_reconcile_reports_on_s3(source_db, target_db, tmp_path, monkeypatch):
    from tests.test_dags import _ledger_pair

    _ledger_pair(source_db, target_db, transactions=400)  # ~50 accounts, ~400 journal rows, ~800 entries
    conf = tmp_path / "reconcile.toml"
    conf.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n\n'
                    f'[target]\nkind = "postgres"\nconninfo = "{target_db}"\n\n'
                    '[diff]\nlag_wait_seconds = 5.0\n\n[checks]\nsuites = ["parity"]\n\n'
                    '[gates]\nmin_green_runs = 1\nmin_green_hours = 0.0\n')
    monkeypatch.setenv("RECONCILE_RECONCILE_SCHEDULE", "none")  # no scheduled run next to the manual one
    cluster = Cluster(tmp_path / "airflow")
    try:
        status = cluster.up(workers=2, concurrency=2, config=conf, storage="s3", metrics=True, timeout=240)
        assert status.healthy and {w["worker_name"] for w in status.workers} == {"worker-1", "worker-2"}
        names = {p.name for p in status.processes if p.running}
        assert names >= {"metadb", "moto", "api-server", "scheduler", "dag-processor", "worker-1", "worker-2"}
        print(f"\nstart-up {status.startup_seconds}s, idle RSS {sum(p.rss for p in status.processes) >> 20} MiB, "
              f"PSS {sum(p.pss for p in status.processes) >> 20} MiB")
        for w in ("worker-1", "worker-2"):  # each worker has its own working directory and AIRFLOW_HOME
            assert (cluster.folder / "workers" / w / "worker.pid").is_file()
        rest = cluster.rest()
        target_conn = rest.get("/api/v2/connections/reconcile_target")  # the endpoints reach tasks as Connections
        assert target_conn["schema"] == conninfo_to_dict(target_db)["dbname"] and target_conn["conn_type"] == "postgres"

        # Backfill: mapped chunk copies spread over both workers.
        deadline = time.monotonic() + RUN_DEADLINE
        rest.set_paused("reconcile_backfill", False)
        t0 = time.monotonic()
        run = rest.trigger("reconcile_backfill", {"chunk_rows": 300})
        done = _wait_run(rest, "reconcile_backfill", run["dag_run_id"], deadline)
        backfill_wall = time.monotonic() - t0
        tis = rest.task_instances("reconcile_backfill", run["dag_run_id"])
        assert done["state"] == "success", _states(tis)
        chunks = [t for t in tis if t["task_id"] == "copy_chunk"]
        planned = rest.xcom("reconcile_backfill", run["dag_run_id"], "plan")
        assert len(chunks) == len(planned) >= 5 and {t["state"] for t in chunks} == {"success"}
        per_worker = {h: sum(1 for t in chunks if t["hostname"] == h) for h in {t["hostname"] for t in chunks}}
        assert set(per_worker) == {"worker-1", "worker-2"}, per_worker
        summary = rest.xcom("reconcile_backfill", run["dag_run_id"], "summary")
        assert summary["status"] == "done" and summary["not_done"] == []

        # Reconcile: green, and the report is read from S3 by this process (not a worker).
        rest.set_paused("reconcile_reconcile", False)
        t0 = time.monotonic()
        run = rest.trigger("reconcile_reconcile")
        done = _wait_run(rest, "reconcile_reconcile", run["dag_run_id"], time.monotonic() + RUN_DEADLINE)
        reconcile_wall = time.monotonic() - t0
        tis = rest.task_instances("reconcile_reconcile", run["dag_run_id"])
        assert done["state"] == "success", _states(tis)
        assert len([t for t in tis if t["task_id"] == "diff_table"]) == 3
        finished = rest.xcom("reconcile_reconcile", run["dag_run_id"], "finish_diff")
        assert finished["verdict"] == "green"
        uri = finished["report_uri"]
        assert uri == f"{finished['s3_uri']}/report.html" and uri.startswith(f"s3://{BUCKET}/diff/")
        aws = {"endpoint_url": status.s3_endpoint, "region_name": "us-east-1", "aws_access_key_id": "testing",
               "aws_secret_access_key": "testing"}
        s3 = boto3.client("s3", **aws)
        key = uri.removeprefix(f"s3://{BUCKET}/")
        html = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
        assert finished["run_id"] in html and "GREEN" in html.upper()
        stored = json.loads(s3.get_object(Bucket=BUCKET, Key=key.replace("report.html", "summary.json"))["Body"].read())
        assert stored["verdict"] == "green" and stored["persistent_mismatches"] == 0
        docs = rest.xcom("reconcile_reconcile", run["dag_run_id"], "checks")["data_docs_uri"]
        assert docs.startswith(f"s3://{BUCKET}/diff/{finished['run_id']}/checks/")
        assert s3.head_object(Bucket=BUCKET, Key=docs.removeprefix(f"s3://{BUCKET}/"))["ContentLength"] > 0
        verdict = rest.xcom("reconcile_reconcile", run["dag_run_id"], "verdict")
        assert verdict["report_uri"] == uri

        # Metrics published from the workers to the local CloudWatch.
        cw = boto3.client("cloudwatch", **aws)
        found: dict[str, set] = {}
        for m in cw.get_paginator("list_metrics").paginate(Namespace="Reconcile").build_full_result()["Metrics"]:
            found.setdefault(m["MetricName"], set()).add(tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])))
        assert {dict(d).get("Table") for d in found["BackfillRowsCopied"]} == {"ledger.accounts", "ledger.journal",
                                                                              "ledger.entries"}
        assert {"ReconciliationRed", "ExpectationsFailed", "GateState", "DiffPersistentMismatches"} <= set(found)
        print(f"backfill {backfill_wall:.1f}s ({per_worker}), reconcile {reconcile_wall:.1f}s")
    finally:
        pids = {n: cluster.pid(n) for n in cluster.names()}
        stopped = cluster.down()
    assert all(stopped[n] for n, pid in pids.items() if pid), stopped
    assert all(_start_ticks(pid) is None for pid in pids.values() if pid), pids  # nothing of ours is left running
    assert not cluster.metadb().status().running
