"""What the reconcile DAG files share: default args, the config a task runs with, error mapping.

No database or network call happens here at import time; reconcile itself is imported inside the
functions, which only run inside tasks.

- :func:`task_config` resolves the pipeline config in a running task: ``$RECONCILE_CONFIG`` or the
  Variable ``reconcile_config`` (a file path), then the Connections ``reconcile_source`` and
  ``reconcile_target`` over its endpoints (see ``reconcile/pipeline/config.py``).
- :func:`reconcile_errors` turns a :class:`~reconcile.errors.TerminalError` (bad config, a failed
  check, a refused gate) into ``AirflowFailException`` so Airflow does not retry what cannot succeed;
  transient errors (connections, OCC retries exhausted) propagate and use the task's retries. An
  error that is no reconcile error is classified the way a stage's boundary does
  (:func:`reconcile.occ.stage_error`: a 42xxx database error or a bug is terminal, a dropped
  connection transient).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from datetime import datetime, timedelta
from typing import Any

log = logging.getLogger("reconcile.dags")

START_DATE = datetime(2025, 1, 1)
"""Static start date of every reconcile DAG (never "now")."""

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "reconcile",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}
"""Retries for transient failures; terminal ones fail at once (:func:`reconcile_errors`)."""

TAGS = ["reconcile"]


def env_int(name: str, default: int) -> int:
    """A whole number from the environment (DAG structure knobs, read at parse time: no DB call)."""
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def env_schedule(name: str, default: str | None) -> str | None:
    """A DAG's schedule from the environment (read at parse time: no DB call): a cron expression or
    preset, or ``none`` for manual runs only; unset or empty keeps ``default``."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    return None if value.lower() in ("none", "manual") else value


def _connection(conn_id: str) -> dict[str, Any] | None:
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    return {"conn_type": conn.conn_type, "host": conn.host, "port": conn.port, "login": conn.login,
            "password": conn.password, "schema": conn.schema, "extra": conn.extra_dejson}


def task_config():
    """The :class:`reconcile.config.Config` of the running task (logs where it connects, masked)."""
    from airflow.sdk import Variable

    from reconcile.pipeline.config import (
        CONFIG_ENV,
        CONFIG_VARIABLE,
        CONNECTION_IDS,
        describe_endpoints,
        load_pipeline_config,
    )

    variable = None if os.environ.get(CONFIG_ENV) else Variable.get(CONFIG_VARIABLE, default=None)
    connections = {side: _connection(conn_id) for side, conn_id in CONNECTION_IDS.items()}
    with reconcile_errors():
        cfg = load_pipeline_config(variable=variable, connections=connections)
    log.info("reconcile config: %s", describe_endpoints(cfg))
    return cfg


@contextlib.contextmanager
def reconcile_errors():
    """Fail the task without retries on a terminal error; let transient ones retry."""
    from airflow.sdk.exceptions import AirflowFailException

    from reconcile.occ import stage_error

    try:
        yield
    except Exception as exc:
        if type(exc).__module__.split(".")[0] == "airflow":
            raise  # Airflow's own signals (skip, fail, reschedule) mean what they say
        error = stage_error(exc, "the task")
        if error.retryable:
            raise
        raise AirflowFailException(f"{type(error).__name__}: {error}") from exc


def terminal_errors(fn):
    """Decorator form of :func:`reconcile_errors` for task bodies."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with reconcile_errors():
            return fn(*args, **kwargs)

    return wrapper
