"""`reconcile check ...`: Run the invariant expectations (Great Expectations) on source and target."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run the invariant expectations (Great Expectations) on source and target.", no_args_is_help=True)
