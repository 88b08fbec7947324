"""The `reconcile` command line: one sub-command group per stage.

Heavy imports (pandas, Great Expectations, Airflow) stay inside the commands that need them so
`reconcile --help` and `reconcile local up` start fast.
"""

from __future__ import annotations

import logging
import sys

import typer


from ._common import run_app
from . import (airflow_cmd, audit_cmd, backfill_cmd, check_cmd, config_cmd, demo_cmd, diff_cmd, gate_cmd, local_cmd,
               repair_cmd, replay_cmd, reverse_cmd, schema_cmd, workload_cmd)

app = typer.Typer(
    name="reconcile",
    help="Shadow-write reconciliation: move a ledger from Aurora PostgreSQL to Aurora DSQL and prove it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(local_cmd.app, name="local")
app.add_typer(config_cmd.app, name="config")
app.add_typer(workload_cmd.app, name="workload")
app.add_typer(audit_cmd.app, name="audit")
app.add_typer(schema_cmd.app, name="schema")
app.add_typer(backfill_cmd.app, name="backfill")
app.add_typer(replay_cmd.app, name="replay")
app.add_typer(diff_cmd.app, name="diff")
app.add_typer(repair_cmd.app, name="repair")
app.add_typer(check_cmd.app, name="check")
app.add_typer(gate_cmd.app, name="gate")
app.add_typer(airflow_cmd.app, name="airflow")
app.add_typer(reverse_cmd.app, name="reverse")
app.command("demo")(demo_cmd.demo)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details to stderr."),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    """Entry point of the console script: errors become one sentence on stderr and exit code 2."""
    run_app(app)
