"""Shared CLI plumbing: options and connections every command group uses."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import psycopg
import typer

CONFIG_OPTION = typer.Option(None, "--config", "-c", envvar="RECONCILE_CONFIG",
                             help="Path to reconcile.toml (default: ./reconcile.toml, else built-in local defaults).")


class Number:
    """A typer ``parser`` for a numeric option: a finite int or float within its range, else usage error (exit 2).

    The range is given (``Number(float, gt=0, le=3600)``), or taken from a settings field
    (``Number(setting="reconcile.diff.settings:DiffSettings.lag_wait_seconds")``, read on first use so the
    CLI starts without importing the stage), with the same default rule as the config file
    (:mod:`reconcile.settings_schema`): 0 or more and at most DEFAULT_MAX when no bound is given.

    >>> Number(int, ge=1, le=64)("8")
    8
    >>> Number(float, gt=0)("nan")
    Traceback (most recent call last):
    ...
    typer._click.exceptions.BadParameter: must be a finite number, got 'nan'
    """

    def __init__(self, kind: type = float, *, ge: float | None = None, gt: float | None = None,
                 le: float | None = None, lt: float | None = None, setting: str | None = None) -> None:
        self.kind, self.setting = kind, setting
        self.bounds = {"ge": ge, "gt": gt, "le": le, "lt": lt}
        self.__name__ = kind.__name__  # typer shows it as the option's type

    def _spec(self):
        from reconcile.settings_schema import DEFAULT_MAX, FieldSpec, spec_of

        if self.setting is not None:
            import importlib

            module, _, rest = self.setting.partition(":")
            cls_name, _, field_name = rest.partition(".")
            return spec_of(getattr(importlib.import_module(module), cls_name), field_name)
        b = dict(self.bounds)
        if b["ge"] is None and b["gt"] is None:
            b["ge"] = 0
        if b["le"] is None and b["lt"] is None:
            b["le"] = DEFAULT_MAX
        return FieldSpec("value", "int" if self.kind is int else "float", False, None, **b)

    def __call__(self, value: Any) -> Any:
        from reconcile.settings_schema import range_problem, show

        spec = self._spec()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value
        else:
            text = str(value).strip()
            try:
                number = int(text) if spec.kind == "int" else float(text)
            except ValueError:
                what = "a whole number" if spec.kind == "int" else "a number"
                raise typer.BadParameter(f"must be {what}, got {show(value)}") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise typer.BadParameter(f"must be a finite number, got {show(value)}")
        low_ok = (spec.gt is None or number > spec.gt) and (spec.ge is None or number >= spec.ge)
        high_ok = (spec.lt is None or number < spec.lt) and (spec.le is None or number <= spec.le)
        if not (low_ok and high_ok):
            raise typer.BadParameter(f"{range_problem(spec, number)}, got {show(value)}")
        return number


def report_folder(value: Any) -> Path:
    """A typer ``parser`` for a report folder option: absolute (relative to the working directory), created,
    writable; else a usage error (exit 2) naming the folder and why, before any work starts."""
    import os

    path = Path(str(value)).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise typer.BadParameter(f"{value} cannot be a report folder ({exc.strerror}); give a folder you can "
                                 "write (it is created when missing)") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"{value} is not writable; give a folder you can write")
    return path


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
