"""`reconcile config ...`: validate the settings and show what they resolve to."""

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
    as_json: bool = typer.Option(False, "--json", help="Print the resolved settings as JSON."),
) -> None:
    """Load and validate the settings, then print them resolved, secrets masked.

    Exits 0 when valid. An invalid setting raises ConfigError, which the `reconcile` entry
    point prints as one `error: ...` line on stderr with exit code 2.
    """
    settings = load_config(config)
    described = settings.describe()
    if as_json:
        typer.echo(json.dumps(described, indent=2))
        return
    for key, value in _flatten(described):
        typer.echo(f"{key} = {_show(value)}")
    typer.echo("configuration is valid", err=True)


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
