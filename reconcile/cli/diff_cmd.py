"""`reconcile diff ...`: compare source and target: entry-level diffs, balance diffs and reports.

``reconcile diff`` runs a whole diff (every configured table, then the balances) and writes the
report folder. Results go to stdout (text, or ``--json``), logs to stderr. Exit codes: 0 green
(no persistent mismatch, no balance difference), 1 red, 2 an error.
``reconcile diff show [RUN_ID]`` lists past runs, or one run's tables and findings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

from ._common import CONFIG_OPTION, Number, load, preflight, report_folder, run_app

app = typer.Typer(help="Compare source and target: entry-level diffs, balance diffs and reports.",
                  invoke_without_command=True)

TABLE_OPTION = typer.Option(None, "--table", "-t", envvar="RECONCILE_DIFF_TABLES",
                            help="Table to compare (schema.table); repeat for several. Default: every configured table.")
REPORT_DIR_OPTION = typer.Option(None, "--report-dir", envvar="RECONCILE_DIFF_REPORT_DIR", parser=report_folder,
                                 help="Parent folder of the run's report folder (default: diff.report_dir in the config).")
LAG_WAIT_OPTION = typer.Option(None, "--lag-wait", envvar="RECONCILE_DIFF_LAG_WAIT",
                               parser=Number(setting="reconcile.diff.settings:DiffSettings.lag_wait_seconds"),
                               help="Seconds to wait for the replay watermark before re-checking (default: diff.lag_wait_seconds in the config).")
JSON_OPTION = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
DIRECTION_OPTION = typer.Option(None, "--direction", envvar="RECONCILE_DIFF_DIRECTION",
                                help="forward (the source is the system of record) or reverse (after write cutover: "
                                     "the target is); default: from the cutover state (write_cutover: reverse).")
CHECKS_OPTION = typer.Option(False, "--checks/--no-checks", envvar="RECONCILE_DIFF_CHECKS",
                             help="Run the expectations too, as part of this run (a whole reconciliation, as the "
                                  "reconcile_reconcile DAG runs it: the only kind a cutover gate counts); the exit "
                                  "code is then the reconciliation's.")
MODE_OPTION = typer.Option(None, "--full/--incremental", envvar="RECONCILE_DIFF_FULL",
                           help="Read every row (--full), or only what changed since the last verification plus one "
                                "sweep slice (--incremental); default: diff.mode in the config.")


def _text(summary: dict) -> str:
    from reconcile.report.notes import balance_phrase, headline, notes

    lines = [f"diff {headline(summary)}: {summary['persistent_mismatches']:,} persistent mismatches, "
             f"{balance_phrase(summary)}, {summary['in_flight']:,} in flight "
             f"(run {summary['run_id']}, {summary.get('direction') or 'forward'}, start LSN {summary['start_lsn']}, "
             f"{summary['duration_seconds']:.1f} s)"]
    lines += [f"  {note}" for note in notes(summary)]
    for name, t in summary["tables"].items():
        lines.append(f"  {name:<28} {t['status']:<6} missing {t['missing']:,}  extra {t['extra']:,}  "
                     f"changed {t['changed']:,}  in flight {t['in_flight']:,}")
    for name, err in (summary.get("errors") or {}).items():
        lines.append(f"  error {name}: {err}")
    if "reconciliation" in summary:  # --checks: the whole reconciliation
        checks = summary.get("checks")
        if checks is None:
            lines.append("  expectations: did not run (see the log)")
        else:
            lines.append(f"  expectations: {(checks.get('evaluated') or 0) - (checks.get('failed') or 0)}/"
                         f"{checks.get('evaluated') or 0} green (check run {checks.get('run_id')})")
        rec = summary["reconciliation"]
        failed = f" (failed: {', '.join(rec['failed_steps'])})" if rec.get("failed_steps") else ""
        lines.append(f"reconciliation {rec['verdict'].upper()}{failed}")
    lines.append(f"report: {summary['report_dir']}/report.html")
    return "\n".join(lines)


@app.callback(invoke_without_command=True)
def diff(
    ctx: typer.Context,
    table: Optional[list[str]] = TABLE_OPTION,
    report_dir: Optional[Path] = REPORT_DIR_OPTION,
    lag_wait: Optional[float] = LAG_WAIT_OPTION,
    full: Optional[bool] = MODE_OPTION,
    direction: Optional[str] = DIRECTION_OPTION,
    checks: bool = CHECKS_OPTION,
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Compare every configured table (or --table) and the balances; exit 0 green, 1 red, 2 when a table or the
    balances could not be compared (the summary's errors say why). With --checks, the expectations run as part
    of the same run and the exit code is the whole reconciliation's (0 only when diff, balances and expectations
    are green)."""
    if ctx.invoked_subcommand is not None:
        return
    from reconcile.diff import run_diff
    from reconcile.direction import check_direction

    check_direction(direction)
    cfg = load(config)
    preflight(cfg, "diff")
    if checks:
        preflight(cfg, "check")
    mode = None if full is None else ("full" if full else "incremental")
    if checks:
        summary = _whole_reconciliation(cfg, tables=table or None, report_dir=report_dir, lag_wait=lag_wait,
                                        mode=mode, direction=direction)
        verdict = summary["reconciliation"]["verdict"]
    else:
        result = run_diff(cfg, tables=table or None, report_dir=report_dir, lag_wait_seconds=lag_wait, mode=mode,
                          direction=direction)
        summary, verdict = result.to_dict(), result.verdict
    typer.echo(json.dumps(summary, indent=2, ensure_ascii=False, default=str) if as_json else _text(summary))
    if summary.get("status") == "error":
        raise typer.Exit(2)
    raise typer.Exit(0 if verdict == "green" else 1)


def _whole_reconciliation(cfg, *, tables, report_dir, lag_wait, mode, direction) -> dict:
    """Diff, balances and expectations as one reconciliation (the DAG's steps, in one process)."""
    from reconcile.pipeline.diff import checks_step, diff_balances_step, diff_finish, diff_one_table, diff_start

    started = diff_start(cfg, tables=tables, lag_wait_seconds=lag_wait, mode=mode, direction=direction)
    run_id = started["run_id"]
    for name in started["tables"]:
        diff_one_table(cfg, run_id, name)
    if not tables or any(cfg.table(t).role in ("accounts", "entries") for t in tables):
        diff_balances_step(cfg, run_id)
    folder = str(Path(report_dir) / run_id / "checks") if report_dir else None
    try:
        result = checks_step(cfg, report_dir=folder, diff_run_id=run_id)
    except Exception as exc:  # the run is still closed, red: the summary says why
        logging.getLogger(__name__).error("the expectations did not run: %s", exc)
        result = None
    summary = diff_finish(cfg, run_id, report_dir=str(report_dir) if report_dir else None, checks=result,
                          checks_expected=True)
    summary["checks"] = None if result is None else {k: result.get(k) for k in (
        "run_id", "success", "evaluated", "failed", "not_applicable", "data_docs")}
    return summary


@app.command("show")
def show_cmd(
    run_id: Optional[str] = typer.Argument(None, help="A run to show in detail; default: list recent runs."),
    limit: int = typer.Option(20, "--limit", parser=Number(int, ge=1), help="Runs (or findings) to list."),
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """List recent diff runs, or one run's summary and findings."""
    from reconcile.connections import connect
    from reconcile.diff import store

    cfg = load(config)
    with connect(cfg.target) as conn:
        if run_id is None:
            runs = store.list_runs(conn, limit=limit)
            if as_json:
                typer.echo(json.dumps(runs, indent=2, ensure_ascii=False))
                return
            if not runs:
                typer.echo("no diff runs yet; run `reconcile diff`")
            for r in runs:
                s = r["summary"] or {}
                balances = (s.get("balances") or {}).get("status")
                shown = s.get("balance_differences", "-") if balances in (None, "green", "red") else balances
                partial = "  NOT FULL" if s.get("full_reconciliation") is False else ""
                partial += "  REVERSE" if s.get("direction") == "reverse" else ""
                typer.echo(f"{r['run_id']}  {r['status']:<7} {r['started_at']}  "
                           f"mismatches {s.get('persistent_mismatches', '-')}  balances {shown}  "
                           f"in flight {s.get('in_flight', '-')}{partial}")
            return
        run = store.get_run(conn, run_id)
        if run is None:
            from reconcile.diff.errors import RunNotFound
            raise RunNotFound(f"no diff run {run_id}; list runs with `reconcile diff show`")
        found = store.load_findings(conn, run_id, limit=limit)
    if as_json:
        typer.echo(json.dumps({"run_id": run_id, "status": run["status"], "summary": run["summary"],
                               "findings": found}, indent=2, ensure_ascii=False, default=str))
        return
    if run["summary"]:
        typer.echo(_text(run["summary"]))
    else:
        typer.echo(f"run {run_id}: {run['status']} (not finished)")
    for f in found:
        extra = f" columns {','.join(f['columns'])}" if f["columns"] else ""
        money = f" delta {f['money_delta']} {f['currency'] or ''}" if f["money_delta"] not in (None, "0") else ""
        typer.echo(f"  {f['table']} {f['kind']} key {json.dumps(f['key'], ensure_ascii=False)}{extra}{money}")


def main() -> None:
    """Run this group alone, as the console script would."""
    run_app(app)


if __name__ == "__main__":
    main()
