"""reconcile_reconcile when only the checks step crashes: the diff is green, the reconciliation is red,
the output says which step failed and what to do, and the gates do not count the run."""
# ruff: noqa: F811  (pytest fixtures imported from tests.airflow_support are used as parameters)

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
import pytest

from tests.airflow_support import run_dag, task_states, xcom
from tests.airflow_support import airflow_env, dagbag  # noqa: F401  (pytest fixtures)
from tests.test_dags import _ledger_pair
from tests.test_dags_pipeline import pipeline_config  # noqa: F401  (pytest fixture)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _crash_great_expectations(monkeypatch):
    import reconcile.checks.gxrun as gxrun
    from reconcile.errors import TerminalError

    def crash(*args, **kwargs):
        raise TerminalError("planted: Great Expectations could not build its context")

    monkeypatch.setattr(gxrun, "run_gx", crash)  # run_checks imports it at call time


def _streak(evaluation: dict) -> dict:
    return next(c for c in evaluation["criteria"] if c["name"] == "green_diff_streak")


def test_a_reconciliation_whose_checks_step_crashed_is_red_says_why_and_is_not_counted(
        dagbag, pipeline_config, source_db, target_db, monkeypatch):
    from reconcile.backfill import BackfillSettings, run_backfill

    _ledger_pair(source_db, target_db)
    assert run_backfill(pipeline_config, BackfillSettings(workers=1)).status == "done"
    with monkeypatch.context() as patched:
        _crash_great_expectations(patched)
        dr = run_dag(dagbag, "reconcile_reconcile", timeout=150)
    states = task_states(dr)
    assert states["checks"] == "failed" and states["verdict"] == "failed", states
    assert states["finish_diff"] == states["gate_evidence"] == "success", states
    finished = xcom(dr, "finish_diff")
    assert finished["verdict"] == "green"  # the diff itself found nothing
    assert finished["reconciliation"] == {"verdict": "red", "failed_steps": ["checks"]}
    streak = _streak(xcom(dr, "gate_evidence"))
    assert not streak["passed"] and streak["evidence"]["consecutive_green"] == 0  # min_green_runs = 1
    assert streak["evidence"]["streak_broken_by"]["run_id"] == finished["run_id"]
    with psycopg.connect(target_db) as conn:
        (status, part_of), = conn.execute("SELECT status, part_of::text FROM reconcile.runs WHERE kind = 'check'"
                                          ).fetchall()
    assert (status, part_of) == ("error", finished["run_id"])

    # the same reconciliation with working checks counts
    dr = run_dag(dagbag, "reconcile_reconcile", timeout=150)
    assert dr.state == "success", task_states(dr)
    assert xcom(dr, "finish_diff")["reconciliation"] == {"verdict": "green", "failed_steps": []}
    assert _streak(xcom(dr, "gate_evidence"))["passed"]


def test_finish_diff_logs_the_reconciliation_red_when_only_the_checks_step_failed(pipeline_config, source_db,
                                                                                target_db, caplog):
    from reconcile.backfill import BackfillSettings, run_backfill
    from reconcile.pipeline.diff import diff_balances_step, diff_finish, diff_one_table, diff_start

    _ledger_pair(source_db, target_db, transactions=30)
    assert run_backfill(pipeline_config, BackfillSettings(workers=1)).status == "done"
    started = diff_start(pipeline_config)
    for table in started["tables"]:
        diff_one_table(pipeline_config, started["run_id"], table)
    diff_balances_step(pipeline_config, started["run_id"])
    with caplog.at_level(logging.INFO, logger="reconcile.pipeline.diff"):
        result = diff_finish(pipeline_config, started["run_id"], checks=None, checks_expected=True)
    assert result["verdict"] == "green" and result["reconciliation"]["verdict"] == "red"
    lines = [r.getMessage() for r in caplog.records if r.name == "reconcile.pipeline.diff"]
    assert any("the reconciliation is red: the expectations did not run (the checks step failed)" in line
               for line in lines), lines
    assert not any("verdict green" in line for line in lines), lines
    # the run page's banner says so too: the diff matched, the reconciliation did not complete
    page = (Path(result["report_dir"]) / "report.html").read_text()
    assert "RED: source and target match, but the expectations step left no result" in page
    assert "GREEN: source and target match" not in page

    # a diff run on its own (the CLI's `reconcile diff`) has no expectations step: its green page stays green
    started = diff_start(pipeline_config)
    for table in started["tables"]:
        diff_one_table(pipeline_config, started["run_id"], table)
    diff_balances_step(pipeline_config, started["run_id"])
    alone = diff_finish(pipeline_config, started["run_id"])
    assert "GREEN: source and target match" in (Path(alone["report_dir"]) / "report.html").read_text()
