"""`reconcile check ...`: Run the invariant expectations (Great Expectations) on source and target.

``reconcile check`` (or ``reconcile check run``) runs the suites of ``[checks] suites`` and records the run.
Results go to stdout (text, or ``--json``: the run summary plus every result), logs to stderr. Exit codes:
0 every expectation passed, 1 some failed, 2 an error. ``reconcile check generate`` writes the suites as
GX JSON (for review, or for ``checks/expectations/``); ``reconcile check ack reject ID --by --reason``
acknowledges a reject so the freshness suite stops counting it. Great Expectations is imported only by
the commands that run it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ._common import CONFIG_OPTION, load, preflight, report_folder, run_app

app = typer.Typer(help="Run the invariant expectations (Great Expectations) on source and target.",
                  invoke_without_command=True)

SIDE_OPTION = typer.Option(None, "--side", "-s", envvar="RECONCILE_CHECK_SIDE",
                           help="source or target (default: both).")
REPORT_OPTION = typer.Option(None, "--report-dir", "-r", envvar="RECONCILE_CHECK_REPORT_DIR", parser=report_folder,
                             help="Folder for the GX Data Docs (written to <folder>/data_docs).")
SUITE_OPTION = typer.Option(None, "--suite", envvar="RECONCILE_CHECK_SUITES",
                            help="Suite kind to run (ledger, generated, parity, freshness); repeat for several. "
                                 "Default: checks.suites in the config.")
JSON_OPTION = typer.Option(False, "--json", help="Print the run summary and every result as JSON on stdout.")


def _run(config_path: Optional[Path], side: Optional[str], report_dir: Optional[Path], suite: Optional[list[str]],
         as_json: bool) -> None:
    from reconcile.checks import run_checks

    if side is not None and side not in ("source", "target"):
        raise typer.BadParameter("use --side source or --side target (or neither for both)")
    config = load(config_path)
    preflight(config, "check")
    result = run_checks(config, sides=(side,) if side else ("source", "target"), report_dir=report_dir,
                        suites=tuple(suite) if suite else None)
    if as_json:
        typer.echo(json.dumps(result.to_dict(results=True), indent=2, default=str))
    else:
        evaluated = {o.suite for o in result.evaluated}
        broken = {o.suite for o in result.failed if o.exception}
        for name, entry in result.suites().items():
            mark = ("ok  " if entry["success"] else "ERR " if name in broken else "FAIL") if name in evaluated else "n/a "
            failed = f"  failed: {', '.join(entry['failed'])}" if entry["failed"] else ""
            na = f"  not applicable: {', '.join(entry['not_applicable'])}" if entry["not_applicable"] else ""
            typer.echo(f"{mark} {name}{failed}{na}")
        for o in result.failed:
            if o.exception:  # not a finding: the expectation could not run, so its headline would be false
                typer.echo(f"  {o.side} {o.check.suite} {o.check.name}: could not be evaluated ({o.exception})")
            else:
                typer.echo(f"  {o.side} {o.check.suite} {o.check.name}: {o.check.description} "
                           f"(observed {json.dumps(o.observed, default=str)})")
        reasons: dict[tuple[str, str], str] = {}
        for o in result.not_applicable:  # one line per check, whichever sides it was listed for
            reasons.setdefault((o.check.suite, o.check.name), o.not_applicable)
        for (suite, name), reason in reasons.items():
            typer.echo(f"  not applicable {suite} {name}: {reason}")
        docs = f"; data docs: {result.data_docs}" if result.data_docs else ""
        na_count = f", {len(reasons)} not applicable" if reasons else ""
        errors = sum(1 for o in result.failed if o.exception)
        status = f"error ({errors} could not be evaluated)" if errors else result.status
        typer.echo(f"{status}: {len(result.evaluated)} expectations, {len(result.failed)} failed{na_count} "
                   f"({result.duration_seconds:.1f} s, run {result.run_id}){docs}")
    if any(o.exception for o in result.outcomes):  # an expectation could not be evaluated: an error, not a finding
        raise typer.Exit(2)
    raise typer.Exit(0 if result.success else 1)


@app.callback()
def main(ctx: typer.Context, config_path: Optional[Path] = CONFIG_OPTION, side: Optional[str] = SIDE_OPTION,
         report_dir: Optional[Path] = REPORT_OPTION, suite: Optional[list[str]] = SUITE_OPTION,
         as_json: bool = JSON_OPTION) -> None:
    """Run the expectation suites (exit 0 all green, 1 some failed, 2 error)."""
    if ctx.invoked_subcommand is None:
        _run(config_path, side, report_dir, suite, as_json)


@app.command("run")
def run(config_path: Optional[Path] = CONFIG_OPTION, side: Optional[str] = SIDE_OPTION,
        report_dir: Optional[Path] = REPORT_OPTION, suite: Optional[list[str]] = SUITE_OPTION,
        as_json: bool = JSON_OPTION) -> None:
    """Run the expectation suites (the same as `reconcile check`)."""
    _run(config_path, side, report_dir, suite, as_json)


@app.command("generate")
def generate(config_path: Optional[Path] = CONFIG_OPTION,
             out: Path = typer.Option(Path("checks/expectations"), "--out", "-o",
                                      help="Folder for one <suite>.json per suite."),
             as_json: bool = JSON_OPTION) -> None:
    """Write the ledger and generated suites (from the source catalog) as GX suite JSON."""
    from reconcile.checks import generate_suite, ledger_checks, write_suites
    from reconcile.connections import connect

    config = load(config_path)
    with connect(config.source) as source:
        checks = ledger_checks(config) + generate_suite(config, source=source)
    paths = write_suites(checks, out)
    if as_json:
        typer.echo(json.dumps({"written": [str(p) for p in paths], "expectations": len(checks)}))
    else:
        for p in paths:
            typer.echo(f"wrote {p}")


@app.command("ack")
def ack(kind: str = typer.Argument(..., help="What to acknowledge: reject."),
        ref: str = typer.Argument(..., help="Its id (reconcile.rejects.reject_id)."),
        by: str = typer.Option(..., "--by", help="Who acknowledges."),
        reason: str = typer.Option(..., "--reason", help="Why it is acceptable."),
        config_path: Optional[Path] = CONFIG_OPTION) -> None:
    """Acknowledge a reject so the freshness suite stops counting it (recorded with who and why)."""
    from reconcile.checks import acknowledge
    from reconcile.occ import policy_from
    from reconcile.connections import connect
    from reconcile.control import migrate
    from reconcile.schema.dialect import dialect_for

    if kind != "reject":
        raise typer.BadParameter("only 'reject' can be acknowledged (dead letters are resolved by the replay)")
    config = load(config_path)
    with connect(config.target) as target:
        migrate(target, dialect=dialect_for(config.target).name)
        acknowledge(target, kind, ref, by=by, reason=reason, policy=policy_from(config))
    typer.echo(f"acknowledged {kind} {ref} by {by}")


if __name__ == "__main__":  # pragma: no cover
    run_app(app)
