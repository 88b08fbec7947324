"""Shared CLI plumbing: options and connections every command group uses."""

from __future__ import annotations

from pathlib import Path

import psycopg
import typer

CONFIG_OPTION = typer.Option(None, "--config", "-c", envvar="RECONCILE_CONFIG",
                             help="Path to reconcile.toml (default: ./reconcile.toml, else built-in local defaults).")


def run_app(app: typer.Typer) -> None:
    """Run a typer app as a console script: a ReconcileError becomes one line on stderr and its exit code.

    A database error no stage boundary classified is classified here (:func:`reconcile.occ.stage_error`:
    its SQLSTATE and whether a rerun can help), never shown as a traceback.
    """
    from reconcile.config import redact
    from reconcile.errors import ReconcileError
    from reconcile.occ import stage_error

    try:
        app()
    except (ReconcileError, psycopg.Error) as exc:
        error = stage_error(exc, "the command", redact=redact)
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(error.exit_code) from None


def load(config_path: Path | None):
    """The resolved configuration (see reconcile.config.load_config)."""
    from reconcile.config import load_config

    return load_config(config_path)


def open_source(config_path: Path | None, *, autocommit: bool = True) -> psycopg.Connection:
    """A connection to the configured source database."""
    from reconcile.connections import connect

    return connect(load(config_path).source, autocommit=autocommit)


def open_target(config_path: Path | None, *, autocommit: bool = True) -> psycopg.Connection:
    """A connection to the configured target database (a DsqlConnection)."""
    from reconcile.connections import connect

    return connect(load(config_path).target, autocommit=autocommit)


def preflight(config, stage: str):
    """Check ``config`` against the databases before ``stage`` starts (reconcile.preflight.require).

    Raises:
        ConfigMismatch: a table, key or role column does not fit (one sentence with the fix; exit 2).
    """
    from reconcile.preflight import require

    return require(config, stage)
