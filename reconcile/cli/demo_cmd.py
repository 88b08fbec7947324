"""`reconcile demo`: the main job on the embedded local databases."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def demo(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="RECONCILE_LOCAL_DIR",
                                            help="Folder for the local servers (default: .reconcile/local)."),
    transactions: int = typer.Option(100_000, help="Journal transactions to seed on the source."),
    accounts: int = typer.Option(10_000, help="Accounts to seed."),
    tps: int = typer.Option(100, help="Business transactions per second of the live workload."),
    duration: float = typer.Option(10.0, help="Seconds of live workload."),
    seed: int = typer.Option(42, help="Seed of the deterministic demo ledger."),
) -> None:
    """Bring the local stack up, seed the demo ledger, run a short live workload, say what's where."""
    from reconcile.demo import run_demo

    run_demo(data_dir=data_dir, transactions=transactions, accounts=accounts, tps=tps,
             duration=duration, seed=seed, echo=typer.echo)
