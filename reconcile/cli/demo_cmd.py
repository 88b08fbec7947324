"""`reconcile demo`: the whole pipeline on the embedded local databases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ._common import Number


def demo(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="RECONCILE_LOCAL_DIR",
                                            help="Folder for the local servers (default: .reconcile/local)."),
    transactions: int = typer.Option(100_000, parser=Number(int, ge=1, le=100_000_000), help="Journal transactions to seed on the source."),
    accounts: int = typer.Option(10_000, parser=Number(int, ge=1, le=10_000_000), help="Accounts to seed."),
    tps: int = typer.Option(100, parser=Number(int, ge=0, le=100_000), help="Business transactions per second of the live workload (0: none)."),
    seed: int = typer.Option(42, parser=Number(int, ge=0, le=2**63 - 1), help="Seed of the deterministic demo ledger."),
    inject: bool = typer.Option(False, "--inject", help="Plant a few discrepancies on the target first, so the "
                                                        "report shows what findings look like (verdict red)."),
    airflow: bool = typer.Option(True, "--airflow/--no-airflow",
                                 help="Run backfill, replay and reconciliation as the Airflow DAGs (dag.test()), "
                                      "or as direct library calls."),
    journey: bool = typer.Option(False, "--journey",
                                 help="After the shadow phase, walk the whole cutover: retire blockers on evidence, "
                                      "read and write gates, the application on the target with the reverse replay "
                                      "from DSQL's CDC, a reverse reconciliation, the rollback gate, the application "
                                      "back on the source, a final reconciliation; prints the timeline."),
    write_seconds: float = typer.Option(15.0, "--write-seconds", parser=Number(float, gt=0, le=3600),
                                        help="With --journey: seconds the workload writes on each side after a cutover."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON after the summary."),
) -> None:
    """Run the whole pipeline locally: seed, live writes, audit, schema, replay, backfill, diff, checks, gate, report.

    Exit code 0 when the verdict is green, 1 when it is red (e.g. with --inject).
    """
    if journey:
        if inject:
            raise typer.BadParameter("--journey walks the gates on honest evidence; planted faults (--inject) would "
                                     "stop it at the first gate: run them separately.", param_hint="--inject")
        from reconcile.demo.journey import run_journey

        walked = run_journey(data_dir=data_dir, transactions=transactions, accounts=accounts, tps=tps, seed=seed,
                             airflow=airflow, write_seconds=write_seconds, echo=typer.echo)
        if as_json:
            typer.echo(json.dumps(walked.to_dict(), indent=2, default=str))
        raise typer.Exit(0 if walked.verdict == "green" else 1)
    from reconcile.demo import run_demo

    result = run_demo(data_dir=data_dir, transactions=transactions, accounts=accounts, tps=tps, seed=seed,
                      inject=inject, airflow=airflow, echo=typer.echo)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
    raise typer.Exit(0 if result.verdict == "green" else 1)
