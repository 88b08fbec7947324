"""`reconcile backfill ...`: copy the source into the target in resumable chunks; list rejects; status.

``reconcile backfill`` (or ``reconcile backfill run``) resumes where the last run stopped. Results go
to stdout (text, or ``--json``), progress and logs to stderr. Exit codes: 0 every row copied, 1 some
rows were rejected (see ``reconcile backfill rejects``), 2 an error or failed chunks.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from ._common import CONFIG_OPTION, Number, load, preflight, run_app

app = typer.Typer(help="Copy the source tables into the target in resumable, budget-sized chunks.",
                  invoke_without_command=True)

TABLE_OPTION = typer.Option(None, "--table", "-t", envvar="RECONCILE_BACKFILL_TABLES",
                            help="Table to copy (schema.table); repeat for several. Default: every configured table.")
FROM_OPTION = typer.Option(None, "--from-key", envvar="RECONCILE_BACKFILL_FROM_KEY",
                           help="Copy only chunks holding keys >= this one (one --table; a composite key as a JSON "
                                "array, e.g. '[\"EUR\", 17]').")
TO_OPTION = typer.Option(None, "--to-key", envvar="RECONCILE_BACKFILL_TO_KEY",
                         help="Copy only chunks holding keys < this one (exclusive; one --table).")
FORCE_OPTION = typer.Option(False, "--force", envvar="RECONCILE_BACKFILL_FORCE",
                            help="Copy the selected chunks again from their start, even when done (a triggered re-copy).")
REPLAN_OPTION = typer.Option(False, "--replan", envvar="RECONCILE_BACKFILL_REPLAN",
                             help="Drop the stored chunk plan of the selected tables, plan again and copy everything.")
WORKERS_OPTION = typer.Option(4, "--workers", "-w", envvar="RECONCILE_BACKFILL_WORKERS", parser=Number(setting="reconcile.backfill.config:BackfillSettings.workers"),
                              help="Chunks copied at once (threads, each with its own connections).")
RATE_OPTION = typer.Option(0.0, "--max-rows-per-second", envvar="RECONCILE_BACKFILL_MAX_ROWS_PER_SECOND",
                           parser=Number(setting="reconcile.backfill.config:BackfillSettings.max_rows_per_second"),
                           help="Throttle over all workers to protect the source; 0 = unlimited.")
CHUNK_ROWS_OPTION = typer.Option(50_000, "--chunk-rows", envvar="RECONCILE_BACKFILL_CHUNK_ROWS",
                                 parser=Number(setting="reconcile.backfill.config:BackfillSettings.chunk_rows"),
                                 help="Rows per chunk when a table is planned (the checkpoint and parallelism unit).")
BATCH_SECONDS_OPTION = typer.Option(0.5, "--batch-seconds", envvar="RECONCILE_BACKFILL_BATCH_SECONDS",
                                    parser=Number(setting="reconcile.backfill.config:BackfillSettings.batch_seconds"),
                                    help="Time target of one batch (source read + target transaction); batches "
                                         "adapt toward it, never beyond the transaction budget.")
METHOD_OPTION = typer.Option("auto", "--write-method", envvar="RECONCILE_BACKFILL_WRITE_METHOD",
                             help="auto (COPY into empty key ranges, else upsert), unnest, values or executemany.")
REPLAY_OPTION = typer.Option(False, "--replay/--no-replay", envvar="RECONCILE_BACKFILL_REPLAY",
                             help="Replay will follow: refuse to start unless its replication slot exists on the source.")
SLOT_OPTION = typer.Option(None, "--slot-name", envvar="RECONCILE_BACKFILL_SLOT_NAME",
                           help="The source's logical replication slot for replay (default: [replay] slot_name "
                                "in the config, the slot replay reads).")
LEASE_OPTION = typer.Option(600.0, "--lease-seconds", envvar="RECONCILE_BACKFILL_LEASE_SECONDS",
                            parser=Number(setting="reconcile.backfill.config:BackfillSettings.lease_seconds"),
                            help="A running chunk silent for this long may be taken over by another run.")
PROGRESS_OPTION = typer.Option(None, "--progress/--no-progress", envvar="RECONCILE_BACKFILL_PROGRESS",
                               help="Live progress on stderr (default: a line on a terminal, log lines otherwise).")
JSON_OPTION = typer.Option(False, "--json", help="Print the result as JSON on stdout.")


def _settings(config, *, table, from_key, to_key, force, replan, workers, max_rows_per_second, chunk_rows,
              batch_seconds, write_method, replay, slot_name, lease_seconds):
    from reconcile.backfill import BackfillSettings, parse_key_arg

    tables = tuple(table or ())
    keys = {}
    for name, text in (("--from-key", from_key), ("--to-key", to_key)):
        if text is None:
            continue
        if len(tables) != 1:
            raise typer.BadParameter(f"{name} needs exactly one --table (a key means nothing across tables)")
        keys[name] = parse_key_arg(text, config.table(tables[0]).key, option=name)
    return BackfillSettings(tables=tables, from_key=keys.get("--from-key"), to_key=keys.get("--to-key"), force=force,
                            replan=replan, workers=workers, max_rows_per_second=max_rows_per_second,
                            chunk_rows=chunk_rows, batch_seconds=batch_seconds, write_method=write_method,
                            replay=replay, slot_name=slot_name or config.replay.slot_name,
                            lease_seconds=lease_seconds)


def _run(config_path: Optional[Path], as_json: bool, progress: Optional[bool], **options) -> None:
    from reconcile.backfill import Progress, run_backfill

    config = load(config_path)
    settings = _settings(config, **options)
    preflight(config, "backfill")
    reporter = Progress(enabled=progress is not False)
    if reporter.enabled and not reporter.tty:
        # Not a terminal (Airflow, CI): progress travels as structured log lines on stderr.
        if not logging.getLogger().handlers:  # run standalone: the log lines need a handler
            logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("reconcile.backfill").setLevel(logging.INFO)
    summary = run_backfill(config, settings, progress=reporter)
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        typer.echo(summary.text())
    raise typer.Exit(summary.exit_code)


@app.callback(invoke_without_command=True)
def backfill(
    ctx: typer.Context,
    table: Optional[list[str]] = TABLE_OPTION,
    from_key: Optional[str] = FROM_OPTION,
    to_key: Optional[str] = TO_OPTION,
    force: bool = FORCE_OPTION,
    replan: bool = REPLAN_OPTION,
    workers: int = WORKERS_OPTION,
    max_rows_per_second: float = RATE_OPTION,
    chunk_rows: int = CHUNK_ROWS_OPTION,
    batch_seconds: float = BATCH_SECONDS_OPTION,
    write_method: str = METHOD_OPTION,
    replay: bool = REPLAY_OPTION,
    slot_name: Optional[str] = SLOT_OPTION,
    lease_seconds: float = LEASE_OPTION,
    progress: Optional[bool] = PROGRESS_OPTION,
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Copy the source into the target; without a sub-command this is `backfill run`."""
    if ctx.invoked_subcommand is None:
        _run(config, as_json, progress, table=table, from_key=from_key, to_key=to_key, force=force, replan=replan,
             workers=workers, max_rows_per_second=max_rows_per_second, chunk_rows=chunk_rows,
             batch_seconds=batch_seconds, write_method=write_method, replay=replay, slot_name=slot_name,
             lease_seconds=lease_seconds)


@app.command("run")
def run_cmd(
    table: Optional[list[str]] = TABLE_OPTION,
    from_key: Optional[str] = FROM_OPTION,
    to_key: Optional[str] = TO_OPTION,
    force: bool = FORCE_OPTION,
    replan: bool = REPLAN_OPTION,
    workers: int = WORKERS_OPTION,
    max_rows_per_second: float = RATE_OPTION,
    chunk_rows: int = CHUNK_ROWS_OPTION,
    batch_seconds: float = BATCH_SECONDS_OPTION,
    write_method: str = METHOD_OPTION,
    replay: bool = REPLAY_OPTION,
    slot_name: Optional[str] = SLOT_OPTION,
    lease_seconds: float = LEASE_OPTION,
    progress: Optional[bool] = PROGRESS_OPTION,
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Copy the selected tables' chunks that are not done yet (resumes a stopped run).

    Exit code 0 when every row was copied, 1 when some rows were rejected, 2 on errors.
    """
    _run(config, as_json, progress, table=table, from_key=from_key, to_key=to_key, force=force, replan=replan,
         workers=workers, max_rows_per_second=max_rows_per_second, chunk_rows=chunk_rows,
         batch_seconds=batch_seconds, write_method=write_method, replay=replay, slot_name=slot_name,
         lease_seconds=lease_seconds)


def _control(config_path: Optional[Path]):
    from reconcile.backfill import Control
    from reconcile.budget import budget_from
    from reconcile.occ import policy_from
    from reconcile.connections import connect

    config = load(config_path)
    conn = connect(config.target)
    return conn, Control(conn, budget=budget_from(config), policy=policy_from(config))


def _no_control_schema(conn) -> bool:
    row = conn.execute("SELECT to_regclass('reconcile.chunks') IS NULL").fetchone()
    return bool(row[0])


@app.command("rejects")
def rejects_cmd(
    table: Optional[str] = typer.Option(None, "--table", "-t", help="Only this table's rejects."),
    limit: int = typer.Option(100, "--limit", parser=Number(int), help="Most rows to list (newest first); 0 lists all."),
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """List the rows the target refused during backfills, with their key and reason."""
    from reconcile.backfill.keys import show_key

    if table is not None:
        table = load(config).table(table).name  # an unknown name is refused, not listed as "no rejects"
    conn, control = _control(config)
    with conn:
        if _no_control_schema(conn):
            rows, total = [], 0
        else:
            rows = control.rejects(table, limit=limit or None)
            total = control.count_rejects(table)
    if as_json:
        typer.echo(json.dumps({"total": total, "rejects": [
            {"table": r.table, "key": list(r.key), "sqlstate": r.sqlstate, "reason": r.reason,
             "chunk_id": r.chunk_id, "run_id": r.run_id, "created_at": str(r.created_at),
             "row_data": r.row_data} for r in rows]}, indent=2, ensure_ascii=False))
        return
    if not rows:
        typer.echo("no rejected rows")
        return
    for r in rows:
        typer.echo(f"{r.table}  key {show_key(r.key)}  {r.sqlstate or '-'}  {r.reason}")
    if total > len(rows):
        typer.echo(f"... {total - len(rows):,} more (use --limit 0 to list all)")


@app.command("status")
def status_cmd(
    table: Optional[list[str]] = typer.Option(None, "--table", "-t", help="Only these tables."),
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Chunks done, running, pending and failed per table, rows copied and rejected."""
    import dataclasses

    cfg = load(config)
    names = [cfg.table(t).name for t in table] if table else None  # an unknown name is refused
    conn, control = _control(config)
    with conn:
        statuses = [] if _no_control_schema(conn) else control.status(names)
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(s) for s in statuses], indent=2))
        return
    if not statuses:
        typer.echo("nothing planned yet; run `reconcile backfill`")
        return
    for s in statuses:
        planned = f" of {s.planned_rows:,} planned" if s.planned_rows is not None else ""
        typer.echo(f"{s.table}: {s.done}/{s.chunks} chunks done, {s.running} running, {s.pending} pending, "
                   f"{s.failed} failed; {s.rows:,} rows copied{planned}, {s.rejected:,} rejected")


def main() -> None:
    """Run this group alone (``python -m reconcile.cli.backfill_cmd``), as the console script would."""
    run_app(app)


if __name__ == "__main__":
    main()
