"""`reconcile repair`: re-copy the keys a diff found wrong while the replay keeps running, then verify them.

Uses the DBLog protocol (low/high watermarks in the source's change stream, applied by the replay in its
commit order: :mod:`reconcile.repair`), so the replay must be running (the ``reconcile_shadow_replay`` DAG
or ``reconcile replay run --follow``). Results go to stdout (text, or ``--json``), logs to stderr. Exit
codes: 0 every key repaired (equal on re-verification), 1 some key still differs or was not applied, 2 an
error (nothing to repair, the replay did not reach the watermarks in time, ...).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from ._common import CONFIG_OPTION, Number, load, preflight, run_app

app = typer.Typer(help="Re-copy the keys a diff found wrong through the running replay, then verify them again.",
                  invoke_without_command=True)


@app.callback(invoke_without_command=True)
def repair(
    run: Optional[str] = typer.Option(None, "--run", envvar="RECONCILE_REPAIR_RUN",
                                      help="Diff run whose findings to repair (default: the latest finished one)."),
    table: Optional[list[str]] = typer.Option(None, "--table", "-t", envvar="RECONCILE_REPAIR_TABLES",
                                              help="Only this table (schema.table); repeat for several."),
    whole_table: bool = typer.Option(False, "--whole-table", envvar="RECONCILE_REPAIR_WHOLE_TABLE",
                                     help="Copy every row of --table through the replay: the backfill of a table "
                                          "added to a migration whose replay is already running."),
    wait: Optional[float] = typer.Option(None, "--wait", envvar="RECONCILE_REPAIR_WAIT",
                                         parser=Number(setting="reconcile.repair.settings:RepairSettings.apply_wait_seconds"),
                                         help="Seconds to wait for the replay to apply the copies (default: "
                                              "repair.apply_wait_seconds in the config)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log each chunk on stderr."),
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Repair a diff run's findings (or --whole-table) through the replay; exit 0 repaired, 1 not all, 2 error."""
    from reconcile.repair import run_repair

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("reconcile.repair").setLevel(logging.INFO if verbose else logging.WARNING)
    if whole_table and not table:
        typer.echo("error: --whole-table needs --table (the table to copy whole)", err=True)
        raise typer.Exit(2)
    cfg = load(config)
    preflight(cfg, "diff")
    result = run_repair(cfg, diff_run_id=run, tables=table or None, whole_table=whole_table, apply_wait_seconds=wait)
    doc = result.to_dict()
    if as_json:
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False, default=str))
    else:
        typer.echo(f"repair {result.repair_id}: {result.status}: {doc.get('sentence')}")
        for name, t in (doc.get("tables") or {}).items():
            typer.echo(f"  {name:<28} chunks {t['chunks']}  copied {t['copied']:,}  dropped {t['dropped']:,}  "
                       f"repaired {t.get('repaired', 0):,}  still differ {t.get('still_differs', 0):,}")
    raise typer.Exit(result.exit_code)


def main() -> None:
    """Run this group alone, as the console script would."""
    run_app(app)


if __name__ == "__main__":
    main()
