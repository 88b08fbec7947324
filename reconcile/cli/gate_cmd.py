"""`reconcile gate ...`: Cutover gates: evaluate criteria, approve, roll back, publish the state."""

from __future__ import annotations

import typer

app = typer.Typer(help="Cutover gates: evaluate criteria, approve, roll back, publish the state.", no_args_is_help=True)
