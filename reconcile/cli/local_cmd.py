"""`reconcile local ...`: the embedded source and target servers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from reconcile.local import stack

app = typer.Typer(help="Run the local stack: an Aurora-PostgreSQL-like source and a DSQL stand-in target.",
                  no_args_is_help=True)

DATA_DIR = typer.Option(None, "--data-dir", envvar="RECONCILE_LOCAL_DIR",
                        help="Folder holding both servers' data (default: .reconcile/local).")


def _print_status(statuses: dict[str, stack.ServerStatus], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({r: {"running": s.running, "pid": s.pid, "port": s.port, "url": s.url,
                                   "pgdata": str(s.pgdata), "initialized": s.initialized}
                               for r, s in statuses.items()}, indent=2))
        return
    for role, s in statuses.items():
        state = "running" if s.running else ("stopped" if s.initialized else "not created")
        where = f"  {s.url}" if s.running else ""
        typer.echo(f"{role:<7} {state:<11}{where}")


@app.command()
def up(data_dir: Optional[Path] = DATA_DIR,
       as_json: bool = typer.Option(False, "--json", help="Print machine-readable status.")) -> None:
    """Create (first time) and start both servers; fast no-op when they already run."""
    t0 = time.monotonic()
    statuses = stack.up(data_dir)
    _print_status(statuses, as_json)
    if not as_json:
        typer.echo(f"ready in {time.monotonic() - t0:.1f}s (data in {stack.resolve_data_dir(data_dir)})")


@app.command()
def down(data_dir: Optional[Path] = DATA_DIR) -> None:
    """Stop our two servers (only ours); their data stays for the next `up`."""
    for role, was_running in stack.down(data_dir).items():
        typer.echo(f"{role:<7} {'stopped' if was_running else 'was not running'}")


@app.command()
def status(data_dir: Optional[Path] = DATA_DIR,
           as_json: bool = typer.Option(False, "--json", help="Print machine-readable status.")) -> None:
    """Show whether each server runs, and where. Exit 1 when either is down."""
    statuses = stack.status(data_dir)
    _print_status(statuses, as_json)
    if not all(s.running for s in statuses.values()):
        raise typer.Exit(1)


@app.command()
def url(role: str = typer.Argument(..., help="source or target"), data_dir: Optional[Path] = DATA_DIR) -> None:
    """Print a libpq connection URI for psql, psycopg or SQLAlchemy (postgresql+psycopg://...)."""
    typer.echo(stack.url(role, data_dir))


@app.command()
def guards(state: str = typer.Argument(..., help="on or off"), data_dir: Optional[Path] = DATA_DIR) -> None:
    """Switch the target's DSQL guards on or off for new sessions (off only for benchmarks)."""
    from reconcile.local import guards as g

    if state not in ("on", "off"):
        raise typer.BadParameter("use 'on' or 'off'")
    g.configure(stack.url("target", data_dir), enabled=(state == "on"))
    typer.echo(f"DSQL guards {state} on the target (new sessions)")
