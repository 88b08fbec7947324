"""`reconcile airflow up | down | status`: a real multi-worker Airflow on this machine.

Airflow 3 with the Edge executor: api-server, scheduler, dag-processor and N edge workers (each in
its own folder, as separate hosts), the metadata database on an embedded PostgreSQL server, reports
on a local S3 (moto). See :mod:`reconcile.local.airflow_cluster`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ._common import CONFIG_OPTION, Number

app = typer.Typer(help="Run the DAGs on a local multi-worker Airflow (Edge executor, PostgreSQL metadata DB).",
                  no_args_is_help=True)

DIR_OPTION = typer.Option(None, "--dir", envvar="RECONCILE_AIRFLOW_DIR",
                          help="Folder of the setup (default: .reconcile/airflow).")


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):,.0f} MiB"


def _print(status, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(status.to_dict(), indent=2, default=str))
        return
    workers = {w["worker_name"]: w for w in status.workers}
    typer.echo(f"{'process':<14} {'state':<8} {'pid':>7} {'RSS':>9} {'PSS':>9}  procs")
    for p in status.processes:
        extra = f"  edge: {workers[p.name]['state']}" if p.name in workers else ""
        typer.echo(f"{p.name:<14} {'running' if p.running else 'stopped':<8} {p.pid or '-':>7} {_mib(p.rss):>9} "
                   f"{_mib(p.pss):>9}  {p.processes}{extra}")
    typer.echo(f"{'total':<14} {'':<8} {'':>7} {_mib(sum(p.rss for p in status.processes)):>9} "
               f"{_mib(sum(p.pss for p in status.processes)):>9}")
    if status.api_url:
        typer.echo(f"API and UI: {status.api_url}  ({'healthy' if status.healthy else 'not healthy'}; "
                   f"user admin, password in {status.folder / 'secrets' / 'passwords.json'})")
    if status.s3_endpoint:
        typer.echo(f"local S3/CloudWatch (moto): {status.s3_endpoint}")


@app.command()
def up(workers: int = typer.Option(2, "--workers", "-w", parser=Number(int, ge=1, le=64), help="Edge workers to run."),
       concurrency: int = typer.Option(2, "--concurrency", parser=Number(int, ge=1, le=256),
                                       help="Tasks each worker runs at once."),
       config_path: Optional[Path] = CONFIG_OPTION,
       port: Optional[int] = typer.Option(None, "--port", parser=Number(int, ge=1, le=65_535), help="API server port (default: a free one)."),
       storage: str = typer.Option("s3", "--storage",
                                   help="Where reports go: s3 (a local moto S3), path (a shared folder in the "
                                        "setup), or config (as the config file says)."),
       metrics: bool = typer.Option(True, "--metrics/--no-metrics",
                                    help="Publish the pipeline's metrics to the local CloudWatch (moto)."),
       triggerer: bool = typer.Option(False, "--triggerer/--no-triggerer",
                                      help="Also run a triggerer (the cutover DAG's approval step needs one)."),
       dags_folder: Optional[Path] = typer.Option(None, "--dags-folder", help="DAGs folder (default: this repo's dags/)."),
       folder: Optional[Path] = DIR_OPTION,
       timeout: float = typer.Option(240.0, "--timeout", parser=Number(float, gt=0, le=86_400), help="Seconds to wait for everything to be ready."),
       as_json: bool = typer.Option(False, "--json", help="Print machine-readable status.")) -> None:
    """Start the metadata database, moto, the API server, scheduler, DAG processor and the edge workers
    (what already runs is left alone; extra workers are stopped). Waits until all are ready."""
    from reconcile.local.airflow_cluster import Cluster

    status = Cluster(folder).up(workers=workers, concurrency=concurrency, config=config_path, port=port,
                                storage=storage, metrics=metrics, triggerer=triggerer, dags_folder=dags_folder,
                                timeout=timeout)
    _print(status, as_json)
    if not as_json:
        typer.echo(f"ready in {status.startup_seconds:.1f}s (setup in {status.folder}); stop with `reconcile airflow down`")


@app.command()
def down(folder: Optional[Path] = DIR_OPTION,
         destroy: bool = typer.Option(False, "--destroy", help="Also delete the setup's folder (metadata, logs).")) -> None:
    """Stop every process of the setup (workers first) and its metadata database."""
    from reconcile.local.airflow_cluster import Cluster

    cluster = Cluster(folder)
    stopped = cluster.down()
    for name, was_running in stopped.items():
        typer.echo(f"{name:<14} {'stopped' if was_running else 'was not running'}")
    if destroy:
        cluster.destroy()
        typer.echo(f"deleted {cluster.folder}")


@app.command()
def status(folder: Optional[Path] = DIR_OPTION,
           as_json: bool = typer.Option(False, "--json", help="Print machine-readable status.")) -> None:
    """Each process with its memory (RSS and PSS of its process tree), the API's health and the edge
    workers. Exit 1 when the setup is not fully up."""
    from reconcile.local.airflow_cluster import Cluster

    st = Cluster(folder).status()
    _print(st, as_json)
    if not st.healthy or not all(p.running for p in st.processes):
        raise typer.Exit(1)
