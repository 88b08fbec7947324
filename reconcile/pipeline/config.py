"""Which config an orchestrated task runs with: file, then Airflow Connections over its endpoints.

Resolution (highest precedence first), done once per task at run time, never at DAG parse time:

1. the config file: ``$RECONCILE_CONFIG`` (a path), else the Airflow Variable ``reconcile_config``
   (a path), else ``./reconcile.toml`` when present, else the defaults (the embedded local stack);
   ``RECONCILE__*`` environment variables override the file as everywhere (:mod:`reconcile.config`);
2. the Airflow Connections ``reconcile_source`` and ``reconcile_target``, when defined, replace the
   file's ``[source]`` and ``[target]`` endpoints (:func:`endpoint_from_connection`).

This module has no Airflow import: the DAG helper (``dags/reconcile_common.py``) reads the Variable
and the Connections and hands them over as plain dicts.

A connection's password never goes into the endpoint (nor a log, nor XCom): it is put in this
process's environment under :data:`PASSWORD_ENV` and the endpoint names that variable as its
``password_env``, exactly like a password configured by hand.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from reconcile.config import (
    Config,
    DsqlEndpoint,
    Endpoint,
    LocalEndpoint,
    PostgresEndpoint,
    load_config,
)
from reconcile.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "CONFIG_VARIABLE",
    "CONNECTION_IDS",
    "PASSWORD_ENV",
    "config_path",
    "endpoint_from_connection",
    "load_pipeline_config",
]

CONFIG_ENV = "RECONCILE_CONFIG"
"""Environment variable holding the path of the config file."""
CONFIG_VARIABLE = "reconcile_config"
"""Airflow Variable holding the path of the config file (used when ``$RECONCILE_CONFIG`` is unset)."""
CONNECTION_IDS = {"source": "reconcile_source", "target": "reconcile_target"}
"""Airflow Connection ids mapped onto the config's endpoints."""
PASSWORD_ENV = {"source": "RECONCILE_AIRFLOW_SOURCE_PASSWORD", "target": "RECONCILE_AIRFLOW_TARGET_PASSWORD"}
"""Process-local variables a connection's password is handed through (see the module docstring)."""

_POSTGRES_TYPES = {"postgres", "postgresql", "generic"}
_DSQL_TYPES = {"dsql", "aws", "aurora_dsql"}
# libpq parameters a Connection's extra may carry (anything else there is ignored, never guessed).
_LIBPQ_EXTRA = ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "options",
                "application_name", "target_session_attrs", "hostaddr", "keepalives", "keepalives_idle")
_DSQL_EXTRA = ("region", "profile", "token_expires_in", "sslrootcert", "hostaddr")


def config_path(*, variable: str | None = None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The config file to load: ``$RECONCILE_CONFIG``, else the Variable's value, else None (defaults)."""
    env = os.environ if environ is None else environ
    for origin, value in ((f"${CONFIG_ENV}", env.get(CONFIG_ENV)), (f"Variable {CONFIG_VARIABLE}", variable)):
        if value and value.strip():
            path = Path(value.strip()).expanduser()
            if not path.is_file():
                raise ConfigError(f"{origin} points to {path}, which does not exist; set it to the path of a "
                                  "reconcile.toml readable by the Airflow workers")
            return path
    return None


def endpoint_from_connection(side: str, conn: Mapping[str, Any],
                             environ: MutableMapping[str, str] | None = None) -> Endpoint:
    """Build ``side``'s endpoint from an Airflow Connection given as a dict.

    Args:
        side: "source" or "target".
        conn: ``conn_type``, ``host``, ``port``, ``login``, ``password``, ``schema`` (the database)
            and ``extra`` (a dict). A ``dsql``/``aws`` type, or a host of the form
            ``<id>.dsql.<region>.on.aws``, gives a DSQL endpoint (IAM tokens, ``login`` as the role);
            ``postgres`` gives a libpq conninfo.
        environ: Where the password is handed over (default ``os.environ``).

    Raises:
        ConfigError: the connection's type is not one we can use, or it has no host.
    """
    env = os.environ if environ is None else environ
    conn_type = (conn.get("conn_type") or "postgres").lower()
    host = (conn.get("host") or "").strip()
    extra = conn.get("extra") or {}
    conn_id = CONNECTION_IDS.get(side, side)
    if not host:
        raise ConfigError(f"Airflow Connection {conn_id} has no host; set the {side} server's host name "
                          "on the connection")
    if conn_type in _DSQL_TYPES or (side == "target" and ".dsql" in host and host.endswith(".on.aws")):
        kwargs: dict[str, Any] = {k: extra[k] for k in _DSQL_EXTRA if extra.get(k) is not None}
        if "token_expires_in" in kwargs:
            kwargs["token_expires_in"] = int(kwargs["token_expires_in"])
        if conn.get("port"):
            kwargs["port"] = int(conn["port"])
        return DsqlEndpoint(side, endpoint=host, user=conn.get("login") or "admin", **kwargs)  # type: ignore[arg-type]
    if conn_type not in _POSTGRES_TYPES:
        raise ConfigError(f"Airflow Connection {conn_id} has type {conn_type!r}; use a postgres connection "
                          "(or dsql/aws for an Aurora DSQL target)")
    from psycopg.conninfo import make_conninfo

    params: dict[str, Any] = {"host": host}
    if conn.get("port"):
        params["port"] = int(conn["port"])
    if conn.get("login"):
        params["user"] = conn["login"]
    if conn.get("schema"):
        params["dbname"] = conn["schema"]
    params.update({k: extra[k] for k in _LIBPQ_EXTRA if extra.get(k) is not None})
    password_env = None
    if conn.get("password"):
        password_env = PASSWORD_ENV[side]
        env[password_env] = conn["password"]
    return PostgresEndpoint(side, conninfo=make_conninfo("", **params), password_env=password_env)  # type: ignore[arg-type]


def load_pipeline_config(*, path: Path | str | None = None, variable: str | None = None,
                         connections: Mapping[str, Mapping[str, Any] | None] | None = None,
                         environ: MutableMapping[str, str] | None = None) -> Config:
    """The config a task runs with (see the module docstring for the order).

    Args:
        path: An explicit config file (wins over ``$RECONCILE_CONFIG`` and the Variable).
        variable: The value of the Airflow Variable ``reconcile_config`` (None when unset).
        connections: ``{"source": conn-dict or None, "target": ...}`` from Airflow Connections.
        environ: The environment (default ``os.environ``); also receives connection passwords.

    Raises:
        ConfigError: the file or a connection is invalid (one sentence with the fix).
    """
    env = os.environ if environ is None else environ
    file = Path(path) if path is not None else config_path(variable=variable, environ=env)
    cfg = load_config(file, environ=env)
    changes: dict[str, Endpoint] = {}
    for side, conn in (connections or {}).items():
        if conn:
            changes[side] = endpoint_from_connection(side, conn, env)
    if changes:
        cfg = dataclasses.replace(cfg, **changes)
    return cfg


def describe_endpoints(cfg: Config) -> dict[str, Any]:
    """Where a task connects, secrets masked (what a task logs first)."""
    out = {}
    for side in ("source", "target"):
        ep = getattr(cfg, side)
        out[side] = ep.describe() if not isinstance(ep, LocalEndpoint) else {"kind": "local",
                                                                             "data_dir": str(ep.data_dir)}
    out["config_file"] = str(cfg.path) if cfg.path else None
    return out
