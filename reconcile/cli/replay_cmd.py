"""`reconcile replay ...`: Capture source changes through a logical slot and replay them into the target, exactly once."""

from __future__ import annotations

import typer

app = typer.Typer(help="Capture source changes through a logical slot and replay them into the target, exactly once.", no_args_is_help=True)
