"""`reconcile diff ...`: Compare source and target: entry-level diffs, balance diffs and reports."""

from __future__ import annotations

import typer

app = typer.Typer(help="Compare source and target: entry-level diffs, balance diffs and reports.", no_args_is_help=True)
