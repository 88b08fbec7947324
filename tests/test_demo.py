"""`reconcile demo` end to end on the local stack, small enough for the suite.

Two runs: the library path in-process (green, and a second run converges to the same state), and
the default Airflow path (the real DAGs under ``dag.test()``) with ``--inject`` in a subprocess, so
Airflow's configuration (its own AIRFLOW_HOME in the demo workspace) stays out of this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
from typer.testing import CliRunner

from reconcile.cli import app

SMALL = ["--transactions", "2000", "--accounts", "200", "--tps", "40"]


def _latest_summary(root: Path) -> dict:
    reports = sorted((p for p in (root / "demo" / "reports").iterdir() if p.is_dir()),   # index.html lives beside
                     key=lambda p: p.stat().st_mtime)
    return json.loads((reports[-1] / "summary.json").read_text())


def _ledger_counts(url: str) -> tuple:
    with psycopg.connect(url) as conn:
        return conn.execute("""SELECT (SELECT count(*) FROM ledger.accounts), (SELECT count(*) FROM ledger.journal),
                                      (SELECT count(*) FROM ledger.entries), (SELECT sum(balance) FROM ledger.accounts),
                                      (SELECT sum(amount) FROM ledger.entries)""").fetchone()


def test_demo_without_airflow_is_green_and_the_target_equals_the_source(local_stack):
    data_dir = Path(local_stack["data_dir"])
    res = CliRunner().invoke(app, ["demo", "--data-dir", str(data_dir), *SMALL, "--no-airflow"])
    assert res.exit_code == 0, res.output
    assert "Verdict: GREEN" in res.output
    for step in ("[ 1/14] start the local stack", "backfill", "replay catches up", "[14/14] read gate"):
        assert step in res.output
    source, target = _ledger_counts(local_stack["source"]), _ledger_counts(local_stack["target"])
    assert source == target and source[1] > 2000  # seed plus live writes, all replayed
    summary = _latest_summary(data_dir)
    assert summary["verdict"] == "green" and summary["persistent_mismatches"] == 0
    report = Path(summary["report_dir"]) / "report.html"
    assert report.is_file() and "GREEN" in report.read_text()

    # again, without live writes: the clean slate makes it converge to the same seeded ledger
    res = CliRunner().invoke(app, ["demo", "--data-dir", str(data_dir), *SMALL[:4], "--tps", "0", "--no-airflow"])
    assert res.exit_code == 0, res.output
    assert "slot reconcile" in res.output  # the previous run's slot was dropped first
    assert _ledger_counts(local_stack["source"]) == _ledger_counts(local_stack["target"])
    assert _ledger_counts(local_stack["source"])[1] == 2004  # what seed(transactions=2000) writes: no live rows left


def test_demo_through_the_airflow_dags_with_injected_discrepancies_is_red(local_stack):
    data_dir = Path(local_stack["data_dir"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECONCILE"))}
    proc = subprocess.run([sys.executable, "-m", "reconcile", "demo", "--data-dir", str(data_dir), *SMALL, "--inject"],
                          capture_output=True, text=True, timeout=420, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "[Airflow DAG]" in out and "Verdict: RED" in out
    summary = _latest_summary(data_dir)
    assert summary["verdict"] == "red"
    kinds = {k for t in summary["tables"].values() for k in ("missing", "extra", "changed") if t[k]}
    assert kinds == {"missing", "extra", "changed"}
    assert summary["balance_differences"] > 0
    assert (data_dir / "demo" / "airflow" / "airflow.db").is_file()  # the DAGs really ran under Airflow
