"""`reconcile workload ...`: seed the demo ledger on the source and run a live write load on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ._common import CONFIG_OPTION, Number, open_source, open_target

app = typer.Typer(help="The demo ledger on the source: seed it, then put a live write load on it.",
                  no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="Print the report as JSON on stdout.")


@app.command("seed")
def seed_cmd(
    accounts: int = typer.Option(10_000, "--accounts", envvar="RECONCILE_WORKLOAD_ACCOUNTS",
                                 parser=Number(int, ge=1, le=10_000_000),
                                 help="Customer accounts (each currency adds a settlement and an equity account)."),
    transactions: int = typer.Option(100_000, "--transactions", envvar="RECONCILE_WORKLOAD_TRANSACTIONS",
                                     parser=Number(int, ge=0, le=100_000_000),
                                     help="Business journal transactions, two entries each."),
    seed: int = typer.Option(42, "--seed", envvar="RECONCILE_WORKLOAD_SEED", parser=Number(int, ge=0, le=2**63 - 1),
                             help="Random seed: the same seed gives byte-identical tables."),
    reset: bool = typer.Option(False, "--reset", envvar="RECONCILE_WORKLOAD_RESET",
                               help="Drop an existing ledger schema on the source first (deletes its data)."),
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Create the ledger schema on the source and fill it, deterministically, in one transaction."""
    from reconcile.workload import seed as run_seed

    with open_source(config) as conn:
        report = run_seed(conn, accounts=accounts, transactions=transactions, seed=seed, reset=reset)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(report.summary())


@app.command("run")
def run_cmd(
    tps: float = typer.Option(50, "--tps", envvar="RECONCILE_WORKLOAD_TPS", parser=Number(float, gt=0, le=100_000),
                              help="Business transactions per second, over all workers."),
    duration: float = typer.Option(10.0, "--duration", envvar="RECONCILE_WORKLOAD_DURATION", parser=Number(float, gt=0, le=30 * 86_400),
                                   help="Seconds to run (Ctrl-C stops early and still prints the report)."),
    workers: int = typer.Option(4, "--workers", envvar="RECONCILE_WORKLOAD_WORKERS", parser=Number(int, ge=1, le=256),
                                help="Threads, each with its own source connection."),
    seed: Optional[int] = typer.Option(None, "--seed", envvar="RECONCILE_WORKLOAD_SEED",
                                       parser=Number(int, ge=0, le=2**63 - 1),
                                       help="Make the choice of kinds, accounts and amounts repeatable."),
    hot_fraction: float = typer.Option(0.2, "--hot-fraction", envvar="RECONCILE_WORKLOAD_HOT_FRACTION",
                                       parser=Number(float, ge=0, le=1),
                                       help="Share of transfers that hit one of the hot accounts."),
    write_to: str = typer.Option("source", "--write-to", envvar="RECONCILE_WORKLOAD_WRITE_TO",
                                 help="Where the application writes: source (the trigger keeps balances) or target "
                                      "(after write cutover: the application keeps balances, under OCC retries)."),
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Post transfers, deposits, withdrawals and reversals at a steady rate (on the source by default).

    Exit code 0 when every attempted transaction either committed or was declined, 1 when some
    failed (see the error samples), 2 on a setup error.
    """
    from reconcile.errors import ConfigError
    from reconcile.workload import run_workload
    from reconcile.workload.run import WRITE_MODES

    if write_to not in WRITE_MODES:
        raise ConfigError(f"--write-to must be one of {', '.join(WRITE_MODES)}, got {write_to!r}")
    opener = open_target if write_to == "target" else open_source
    report = run_workload(lambda: opener(config), tps=tps, duration=duration, workers=workers,
                          seed=seed, hot_fraction=hot_fraction, write_to=write_to)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(report.summary())
        for sample in report.error_samples:
            typer.echo(f"  error: {sample}", err=True)
    if report.errors:
        raise typer.Exit(1)
