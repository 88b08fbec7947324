"""Airflow in tests: a throw-away AIRFLOW_HOME, the DagBag, dag.test() with a hard timeout, and a
responder that answers human-in-the-loop (approval) tasks.

Import the fixtures into a test module with ``from tests.airflow_support import *  # noqa``-style
names, or list ``pytest_plugins = ["tests.airflow_support"]``.

Set-up (once per session, ~2 s): ``AIRFLOW_HOME`` in a temp folder, ``dags_folder`` = the repo's
``dags/``, a SQLite metadata database created from the ORM (``initdb``), examples off. Nothing of
Airflow is imported before the environment is set, so the config Airflow reads is ours.

Answering an approval. Under ``dag.test()`` an ``ApprovalOperator`` parks its task in
``AWAITING_INPUT`` and the run loops until a response flips it back to ``SCHEDULED``. The
:class:`HitlResponder` thread waits for such a task of the given DAG and records the response
exactly as the REST endpoint ``PATCH .../taskInstances/{task}/{map_index}/hitlDetails`` does: it
fills the ``HITLDetail`` row (chosen option, responder) and calls ``handle_event_submit`` on the
task instance, in one transaction. :func:`run_dag` bounds every run: past its deadline the watchdog
fails every unfinished task instance of the run, so ``dag.test()`` returns and the test fails
instead of hanging.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DAGS_FOLDER = Path(__file__).resolve().parent.parent / "dags"
DAG_IDS = ("reconcile_backfill", "reconcile_cutover", "reconcile_reconcile", "reconcile_reverse_replay",
           "reconcile_shadow_replay")

_ENV = {
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__CORE__PARALLELISM": "4",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "60",
}


@dataclass
class AirflowEnv:
    home: Path
    setup_seconds: float
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="session")
def airflow_env():
    """AIRFLOW_HOME in a temp folder with an initialised SQLite metadata DB; restores the environment."""
    import sys

    if "airflow" in sys.modules and os.environ.get("AIRFLOW_HOME", "").find("reconcile-airflow-") < 0:
        pytest.fail("airflow was imported before tests/airflow_support set AIRFLOW_HOME; import Airflow only "
                    "inside tests that use the airflow_env fixture")
    t0 = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="reconcile-airflow-"))
    env = {**_ENV, "AIRFLOW_HOME": str(home),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from airflow.utils import db

    db.initdb()
    yield AirflowEnv(home, time.monotonic() - t0)
    from airflow import settings

    settings.dispose_orm()  # close the SQLite files before removing them
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def dagbag(airflow_env):
    """The repo's dags/ folder parsed once (no examples)."""
    from airflow.dag_processing.dagbag import BundleDagBag

    # What the dag processor and dag.test() use: the bundle's folder goes on sys.path, so DAG files
    # import their shared helper (dags/reconcile_common.py) by name.
    return BundleDagBag(dag_folder=str(DAGS_FOLDER), bundle_path=DAGS_FOLDER, bundle_name="dags-folder")


# --- running a DAG with a hard timeout -------------------------------------------------------------


def _unfinished_tis(dag_id: str, session):
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.state import State

    return [ti for ti in session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id)
            if ti.state not in State.finished]


class _Watchdog(threading.Thread):
    """Past ``timeout`` seconds, fails every unfinished task instance of ``dag_id`` so dag.test() ends."""

    def __init__(self, dag_id: str, timeout: float) -> None:
        super().__init__(name=f"watchdog-{dag_id}", daemon=True)
        self.dag_id, self.timeout = dag_id, timeout
        self.done = threading.Event()
        self.fired = False

    def run(self) -> None:
        if self.done.wait(self.timeout):
            return
        from airflow import settings
        from airflow.utils.state import TaskInstanceState

        self.fired = True
        for _ in range(50):
            session = settings.Session()
            try:
                for ti in _unfinished_tis(self.dag_id, session):
                    ti.state = TaskInstanceState.FAILED
                session.commit()
                return
            except Exception:  # SQLite busy: try again
                session.rollback()
                time.sleep(0.2)
            finally:
                settings.Session.remove()


_PARAM_DEFAULTS: dict[int, Any] = {}


def _param_dicts(dag):
    yield dag.params
    for t in dag.tasks:
        params = getattr(t, "params", None)
        if params is not None and params is not dag.params:
            yield params


def _reset_params(dag) -> None:
    """Give every Param of ``dag`` (its tasks' included) back its parsed value.

    dag.test() runs tasks in this process, and resolving a run's conf writes the values into the
    tasks' Param objects (shared with the DAG's: operators copy ``params`` shallowly), so one run's
    conf would leak into the next run of the same parsed DAG.
    """
    import copy

    for params in _param_dicts(dag):
        for key in list(params.keys()):
            param = params.get_param(key)
            if id(param) not in _PARAM_DEFAULTS:
                _PARAM_DEFAULTS[id(param)] = (param, copy.deepcopy(param.value))
            param.value = copy.deepcopy(_PARAM_DEFAULTS[id(param)][1])


def run_dag(dagbag, dag_id: str, conf: dict[str, Any] | None = None, *, timeout: float = 120.0,
            respond: list[HitlResponder] | None = None):
    """``dag.test(run_conf=conf)`` bounded by ``timeout`` seconds; returns the finished DagRun.

    Args:
        respond: Responders started before the run (each answers one approval task) and joined after.

    Raises:
        AssertionError: the run did not finish in time (its unfinished tasks were failed to end it).
    """
    dag = dagbag.get_dag(dag_id)
    assert dag is not None, f"{dag_id} not in the DagBag: {dagbag.import_errors}"
    _reset_params(dag)
    dog = _Watchdog(dag_id, timeout)
    for r in respond or []:
        r.start()
    dog.start()
    try:
        dr = dag.test(run_conf=conf or {})
    finally:
        dog.done.set()
        for r in respond or []:
            r.stop.set()
            r.join(10)
    assert not dog.fired, f"{dag_id} did not finish within {timeout:.0f} s; its unfinished tasks were failed"
    for r in respond or []:
        assert r.error is None, f"responder for {r.task_id} failed: {r.error!r}"
    return dr


def task_states(dr) -> dict[str, str]:
    """``{task_id or task_id[map_index]: state}`` of a finished run."""
    from airflow import settings

    session = settings.Session()
    try:
        out = {}
        for ti in dr.get_task_instances(session=session):
            key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
            out[key] = str(ti.state.value if hasattr(ti.state, "value") else ti.state)
        return out
    finally:
        settings.Session.remove()


def xcom(dr, task_id: str, map_index: int = -1) -> Any:
    """The return value a task of a finished run pushed."""
    from airflow import settings
    from airflow.models.xcom import XComModel
    from airflow.sdk.serde import deserialize

    session = settings.Session()
    try:
        row = session.query(XComModel).filter(
            XComModel.dag_id == dr.dag_id, XComModel.run_id == dr.run_id, XComModel.task_id == task_id,
            XComModel.map_index == map_index, XComModel.key == "return_value").one_or_none()
        if row is None:
            return None
        value = row.value
        try:
            import json
            value = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            pass
        try:
            return deserialize(value)
        except Exception:
            return value
    finally:
        settings.Session.remove()


# --- answering human-in-the-loop tasks --------------------------------------------------------------


class HitlResponder(threading.Thread):
    """Answers the first approval task ``task_id`` of ``dag_id`` that waits for input.

    Records the response like ``PATCH .../hitlDetails`` (HITLDetail row + ``handle_event_submit``), as
    user ``user``. ``seen`` keeps the request (subject, body, options) for assertions. Gives up after
    ``timeout`` seconds (the watchdog of :func:`run_dag` then ends the run).
    """

    def __init__(self, dag_id: str, task_id: str, option: str, *, user: str = "alice", user_id: str | None = None,
                 timeout: float = 90.0, poll: float = 0.2, before_answer: Any = None) -> None:
        super().__init__(name=f"hitl-{task_id}", daemon=True)
        self.dag_id, self.task_id, self.option, self.user = dag_id, task_id, option, user
        self.user_id = user_id or user
        """The responder's Airflow user id (their name by default)."""
        self.before_answer = before_answer
        """Called once with no argument when the task waits for input, before answering (what happens
        while a person reads the request)."""
        self.timeout, self.poll = timeout, poll
        self.stop = threading.Event()
        self.seen: dict[str, Any] | None = None
        self.answered_after: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            while not self.stop.is_set() and time.monotonic() - t0 < self.timeout:
                if self._try_answer():
                    self.answered_after = time.monotonic() - t0
                    return
                self.stop.wait(self.poll)
        except BaseException as exc:  # reported by run_dag
            self.error = exc

    def _try_answer(self) -> bool:
        from sqlalchemy.exc import OperationalError

        from airflow import settings
        from airflow._shared.timezones import timezone
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance
        from airflow.models.trigger import handle_event_submit
        from airflow.triggers.base import TriggerEvent
        from airflow.utils.state import TaskInstanceState

        session = settings.Session()
        try:
            ti = session.query(TaskInstance).filter(
                TaskInstance.dag_id == self.dag_id, TaskInstance.task_id == self.task_id,
                TaskInstance.state == TaskInstanceState.AWAITING_INPUT).first()
            if ti is None:
                session.rollback()
                return False
            detail = session.query(HITLDetail).filter(HITLDetail.ti_id == ti.id).one_or_none()
            if detail is None or detail.response_received:
                session.rollback()
                return False
            if self.option not in (detail.options or []):
                raise AssertionError(f"{self.option!r} is not an option of {self.task_id}: {detail.options}")
            self.seen = {"subject": detail.subject, "body": detail.body, "options": list(detail.options),
                         "run_id": ti.run_id}
            if self.before_answer is not None:
                self.before_answer()
                self.before_answer = None
            detail.responded_by = {"id": self.user_id, "name": self.user}
            detail.responded_at = timezone.utcnow()
            detail.chosen_options = [self.option]
            detail.params_input = {}
            session.add(detail)
            handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti, session=session)
            session.commit()
            return True
        except OperationalError:  # SQLite busy while dag.test() writes: try again
            session.rollback()
            return False
        finally:
            settings.Session.remove()
