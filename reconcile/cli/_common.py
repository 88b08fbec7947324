"""Shared CLI plumbing: options and connections every command group uses."""

from __future__ import annotations

from pathlib import Path

import psycopg
import typer

CONFIG_OPTION = typer.Option(None, "--config", "-c", envvar="RECONCILE_CONFIG",
                             help="Path to reconcile.toml (default: ./reconcile.toml, else built-in local defaults).")


def open_source(config_path: Path | None, *, autocommit: bool = True) -> psycopg.Connection:
    """A connection to the configured source database."""
    from reconcile.local import stack

    return psycopg.connect(stack.url("source"), autocommit=autocommit)


def open_target(config_path: Path | None, *, autocommit: bool = True) -> psycopg.Connection:
    """A connection to the configured target database."""
    from reconcile.local import stack

    return psycopg.connect(stack.url("target"), autocommit=autocommit)
