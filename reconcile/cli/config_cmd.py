"""`reconcile config ...`: validate the settings, show what they resolve to, and check them against the databases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from reconcile.cli._common import CONFIG_OPTION
from reconcile.config import load_config

app = typer.Typer(
    help="Check the configuration (environment > reconcile.toml > defaults) and show it resolved.",
    no_args_is_help=True,
)


@app.command()
def check(
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the resolved settings (and the database check) as JSON."),
    offline: bool = typer.Option(False, "--offline", envvar="RECONCILE_CONFIG_OFFLINE",
                                 help="Only validate the settings; do not check them against the databases."),
) -> None:
    """Validate the settings, print them resolved (secrets masked), then check them against the databases.

    The database check (reconcile.preflight, the same every stage runs before it starts) names each
    configured table, key or role column that does not fit the source (or the target, once the schema
    is applied) with its fix, and runs the data check of keys of tables without a primary key.

    Exits 0 when valid (warnings allowed), 2 when a setting is invalid or does not fit a database. An
    invalid setting raises ConfigError, which the `reconcile` entry point prints as one `error: ...`
    line on stderr.
    """
    settings = load_config(config)
    described = settings.describe()
    found = None
    if not offline:
        from reconcile.preflight import run_preflight

        found = run_preflight(settings, "config")
    if as_json:
        typer.echo(json.dumps(described | ({"databases": found.to_dict()} if found else {}), indent=2))
    else:
        for key, value in _flatten(described):
            typer.echo(f"{key} = {_show(value)}")
        if found is not None:
            for line in found.verified:
                typer.echo(f"checked: {line}")
            for m in found.mismatches:
                typer.echo(f"{m.severity}: {m.text}")
    if found is not None and found.errors:
        typer.echo(f"the configuration does not fit the databases: {len(found.errors)} error(s)"
                   + (f", {len(found.warnings)} warning(s)" if found.warnings else "") + " (fixes above)", err=True)
        raise typer.Exit(2)
    where = "" if found is None else (" and fits the source and the target" if found.target_checked
                                      else " and fits the source")
    warned = f" ({len(found.warnings)} warning(s) above)" if found is not None and found.warnings else ""
    typer.echo(f"configuration is valid{where}{warned}", err=True)


@app.command()
def schema() -> None:
    """Print the JSON Schema of reconcile.toml: every key, its type, range and default (for editors and tools)."""
    from reconcile.config_reference import config_schema

    typer.echo(json.dumps(config_schema(), indent=2))


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Dotted ``key = value`` pairs; tables and lists of tables become ``tables[0].name``."""
    if isinstance(data, dict):
        pairs: list[tuple[str, Any]] = []
        for key, value in data.items():
            pairs += _flatten(value, f"{prefix}.{key}" if prefix else key)
        return pairs
    if isinstance(data, list) and any(isinstance(item, dict) for item in data):
        pairs = []
        for i, item in enumerate(data):
            pairs += _flatten(item, f"{prefix}[{i}]")
        return pairs
    return [(prefix, data)]


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, (bool, list)):
        return json.dumps(value)
    return str(value)
