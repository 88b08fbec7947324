"""The demo's pipeline steps as the real Airflow DAGs, run in this process with ``dag.test()``.

Airflow's home is the demo workspace's ``airflow/`` folder (a SQLite metadata database, created on
the first run), its DAGs folder the repository's ``dags/``, and every task reads the demo's
``reconcile.toml`` through ``RECONCILE_CONFIG``, as a deployed task would. Task logs go to
``airflow/demo.log`` instead of the screen; a failed task's error is shown and the log path given.

This is the only module of :mod:`reconcile` that imports Airflow, and only when the demo runs with
it (the default; ``--no-airflow`` uses :mod:`reconcile.demo.library_runner`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from reconcile.demo.workspace import Workspace
from reconcile.errors import ReconcileError

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"


class DemoDagFailed(ReconcileError):
    """A DAG run of the demo failed; the message names the task and the log."""


class AirflowRunner:
    """Backfill, replay and reconciliation by running the DAGs with ``dag.test()``."""

    suffix = " [Airflow DAG]"

    def __init__(self, ws: Workspace, config_path: Path) -> None:
        self.ws = ws
        self.log_path = ws.airflow_home / "demo.log"
        if not DAGS_FOLDER.is_dir():
            raise ReconcileError(f"the Airflow DAGs folder {DAGS_FOLDER} is missing (reconcile runs from a "
                                 "checkout of the repository); run the demo with --no-airflow instead")
        ws.airflow_home.mkdir(parents=True, exist_ok=True)
        os.environ.update({
            "AIRFLOW_HOME": str(ws.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{ws.airflow_home}/airflow.db",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "RECONCILE_CONFIG": str(config_path),
        })
        self._dagbag = None

    # -- plumbing ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _quiet(self):
        """Send Airflow's console output (dag.test() prints task logs) to the demo's log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            handler = logging.StreamHandler(log)
            root = logging.getLogger()
            saved = root.handlers[:]
            root.handlers = [handler]
            try:
                yield
            finally:
                root.handlers = saved

    def _bag(self):
        if self._dagbag is None:
            with self._quiet():
                from airflow.dag_processing.dagbag import BundleDagBag
                from airflow.utils import db

                db.initdb()  # creates or upgrades the SQLite metadata database; quick when current
                bag = BundleDagBag(dag_folder=str(DAGS_FOLDER), bundle_path=DAGS_FOLDER, bundle_name="dags-folder")
            if bag.import_errors:
                first = next(iter(bag.import_errors.items()))
                raise ReconcileError(f"a DAG file does not import ({first[0]}: {first[1].strip().splitlines()[-1]}); "
                                     "fix it, or run the demo with --no-airflow")
            self._dagbag = bag
        return self._dagbag

    def _run(self, dag_id: str, conf: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Run ``dag_id`` once; returns its state and the return values of its unmapped tasks."""
        dag = self._bag().get_dag(dag_id)
        with self._quiet():
            dr = dag.test(run_conf=conf or {})
        from airflow import settings
        from airflow.models.xcom import XComModel

        session = settings.Session()
        try:
            values: dict[str, Any] = {}
            failed: list[str] = []
            for ti in dr.get_task_instances(session=session):
                if str(getattr(ti.state, "value", ti.state)) in ("failed", "upstream_failed"):
                    failed.append(ti.task_id)
            for row in session.query(XComModel).filter(
                    XComModel.dag_id == dr.dag_id, XComModel.run_id == dr.run_id, XComModel.map_index == -1,
                    XComModel.key == "return_value"):
                value = row.value
                with contextlib.suppress(TypeError, ValueError):
                    value = json.loads(value) if isinstance(value, str) else value
                values[row.task_id] = value
        finally:
            settings.Session.remove()
        state = str(getattr(dr.state, "value", dr.state))
        values["_failed_tasks"] = failed
        return state, values

    def _require_success(self, dag_id: str, state: str, values: dict[str, Any]) -> None:
        if state != "success":
            raise DemoDagFailed(f"the {dag_id} DAG run ended {state} (failed tasks: "
                                f"{', '.join(values['_failed_tasks']) or 'none'}); its task logs are in {self.log_path}")

    # -- the steps --------------------------------------------------------------------------------

    def backfill(self) -> dict[str, Any]:
        state, values = self._run("reconcile_backfill", {"replay": True})
        self._require_success("reconcile_backfill", state, values)
        from reconcile.demo.library_runner import backfill_totals

        return backfill_totals(values.get("summary") or {}, values.get("plan") or [])

    def replay_catch_up(self) -> dict[str, Any]:
        state, values = self._run("reconcile_shadow_replay", {"until_caught_up": True, "tick_seconds": 240})
        self._require_success("reconcile_shadow_replay", state, values)
        return values.get("replay_tick") or {}

    def reconcile(self, reports: Path) -> dict[str, Any]:
        state, values = self._run("reconcile_reconcile")
        diff = dict(values.get("finish_diff") or {})
        if not diff:
            self._require_success("reconcile_reconcile", state, values)
        diff["checks"] = values.get("checks") or {}
        diff["gate"] = values.get("gate_evidence") or {}
        diff["airflow_state"] = state
        if state != "success" and diff.get("verdict") == "green":
            diff["verdict"] = "red"  # an expectation failed (the verdict task said so)
        return diff
