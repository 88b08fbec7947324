"""`reconcile audit`: what in the source will not survive Aurora DSQL.

Exit code 0 when no finding is a blocker, 1 when any is, 2 on an error.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from ._common import CONFIG_OPTION, Number

log = logging.getLogger(__name__)

app = typer.Typer(help="Audit the source for Aurora DSQL: blockers, required changes, warnings.",
                  invoke_without_command=True)

FORMATS = ("table", "json")


@app.callback(invoke_without_command=True)
def audit(
    config: Optional[Path] = CONFIG_OPTION,
    scan_data: bool = typer.Option(False, "--scan-data", envvar="RECONCILE_AUDIT_SCAN_DATA",
                                   help="Also scan the rows (bounded, chunked) for values DSQL will refuse."),
    sample: Optional[int] = typer.Option(None, "--sample", envvar="RECONCILE_AUDIT_SAMPLE", parser=Number(int, ge=1),
                                         help="With --scan-data: rows sampled per table (default 10,000)."),
    full: bool = typer.Option(False, "--full", envvar="RECONCILE_AUDIT_FULL",
                              help="With --scan-data: read every row, in keyset chunks."),
    fmt: str = typer.Option("table", "--format", envvar="RECONCILE_AUDIT_FORMAT",
                            help="Output on stdout: table or json."),
    report: Optional[Path] = typer.Option(None, "--report", envvar="RECONCILE_AUDIT_REPORT",
                                          help="Also write a report file: FILE.md (Markdown) or FILE.html."),
    details: bool = typer.Option(False, "--details", envvar="RECONCILE_AUDIT_DETAILS",
                                 help="In the table, also show why each finding matters and the fix."),
    store: bool = typer.Option(True, "--store/--no-store", envvar="RECONCILE_AUDIT_STORE",
                               help="Record the run and its findings in the control schema on the target."),
    workload: bool = typer.Option(True, "--workload/--no-workload", envvar="RECONCILE_AUDIT_WORKLOAD",
                                  help="Check statement sizes in pg_stat_statements (read only: when the "
                                       "extension is missing, the audit says how to enable it)."),
) -> None:
    """Report what in the source DSQL will refuse or change: statements (dsql-lint), catalog, data, workload."""
    from reconcile.audit.scan import DEFAULT_SAMPLE_ROWS
    from reconcile.audit import AuditOptions, render_json, render_table, run_audit, store_report, write_report
    from reconcile.budget import budget_from
    from reconcile.config import mask_conninfo
    from reconcile.connections import connect
    from reconcile.identity import run_scope
    from reconcile.occ import RetryCounters, policy_from
    from reconcile.schema import dialect_for

    from ._common import load, preflight

    if fmt not in FORMATS:
        raise typer.BadParameter(f"must be one of {', '.join(FORMATS)}, got {fmt!r}", param_hint="--format")
    if (sample is not None or full) and not scan_data:
        raise typer.BadParameter("--sample and --full only apply with --scan-data; add --scan-data",
                                 param_hint="--sample/--full")
    if sample is not None and full:
        raise typer.BadParameter("choose --sample N or --full, not both", param_hint="--sample/--full")
    if report is not None and report.suffix.lower() not in (".md", ".markdown", ".html", ".htm"):
        raise typer.BadParameter(f"{report} must end in .md or .html", param_hint="--report")

    cfg = load(config)
    preflight(cfg, "audit")
    options = AuditOptions(scan=("full" if full else "sample") if scan_data else None,
                           sample_rows=sample or DEFAULT_SAMPLE_ROWS, workload=workload)
    described = cfg.source.describe()
    where = described.get("conninfo") or described.get("data_dir") or cfg.source.kind
    with connect(cfg.source) as source:
        result = run_audit(source, tables=cfg.tables, options=options,
                           source=f"{cfg.source.kind} {mask_conninfo(str(where))}")

    if fmt == "json":
        typer.echo(render_json(result))
    else:
        typer.echo(render_table(result, details=details))
    if report is not None:
        path = write_report(result, report)
        typer.echo(f"report written to {path}", err=True)
    if store:
        budget, policy = budget_from(cfg), policy_from(cfg)
        counters = RetryCounters()
        with connect(cfg.target) as target:
            written = store_report(target, result, dialect=dialect_for(cfg.target).name, budget=budget,
                                   policy=policy, counters=counters, scope=run_scope(cfg))
        typer.echo(f"stored run {result.run_id} ({written} findings) in the target's control schema "
                   f"({counters.retries} retries)", err=True)
    sys.stdout.flush()
    raise typer.Exit(result.exit_code)
