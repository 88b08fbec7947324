"""`reconcile reverse ...`: after write cutover, replay DSQL's CDC stream (Kinesis) back onto the old source.

Results go to stdout (text, or ``--json``), logs to stderr. ``run`` exits 0 when done, 1 when it stopped
at a dead letter, 2 on an error; ``status`` exits 1 when the reverse replay is not caught up within
``reverse.lag_limit_seconds`` or has open dead letters.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Optional

import typer

from ._common import CONFIG_OPTION, Number, load

app = typer.Typer(help="After write cutover: replay DSQL's CDC stream back onto the old source (the road back).",
                  no_args_is_help=True)
dead_letters_app = typer.Typer(help="DSQL transactions the source refused: skip them with a reason.",
                               no_args_is_help=True)
app.add_typer(dead_letters_app, name="dead-letters")

JSON_OPTION = typer.Option(False, "--json", help="Print the result as JSON on stdout.")


def _echo_json(doc) -> None:
    typer.echo(json.dumps(doc, indent=2, default=str, ensure_ascii=False))


@app.command("init")
def init_cmd(
    start_ts_ns: Optional[int] = typer.Option(
        None, "--start-ts-ns", envvar="RECONCILE_REVERSE_START_TS_NS", parser=Number(int, ge=0, le=2**63 - 1),
        help="Replay DSQL transactions committed from this time on (ns since the epoch; default: now). Only the "
             "first init of a stream sets it."),
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Create the reverse replay's state on the source and its control tables on the target (idempotent).

    Run it after the forward replay has drained and stopped, before the application writes to DSQL.
    """
    from reconcile.reverse import init_reverse

    result = init_reverse(load(config), start_ts_ns=start_ts_ns)
    if as_json:
        _echo_json(result)
        return
    for line in result["actions"]:
        typer.echo(line)


@app.command("run")
def run_cmd(
    duration: Optional[float] = typer.Option(None, "--duration", envvar="RECONCILE_REVERSE_DURATION", parser=Number(float, gt=0, le=30 * 86_400),
                                             help="Stop after this many seconds (default: once caught up)."),
    follow: bool = typer.Option(False, "--follow", envvar="RECONCILE_REVERSE_FOLLOW",
                                help="Keep replaying until interrupted (Ctrl-C or SIGTERM stops cleanly)."),
    max_txns: Optional[int] = typer.Option(None, "--max-txns", envvar="RECONCILE_REVERSE_MAX_TXNS",
                                           parser=Number(int, ge=1, le=10_000_000),
                                           help="Apply at most this many DSQL transactions, then stop."),
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Read every shard, apply whole DSQL transactions on the source in commit-time order, exactly once."""
    from reconcile.reverse import run_reverse

    stop = threading.Event()
    if follow:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    result = run_reverse(load(config), duration=duration, until_caught_up=not follow, stop=stop, max_txns=max_txns)
    if as_json:
        _echo_json(result.to_dict())
    else:
        typer.echo(result.text())
    raise typer.Exit(result.exit_code)


@app.command("status")
def status_cmd(config: Optional[Path] = CONFIG_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Where the reverse replay stands: lag, shard checkpoints, dead letters, recent runs."""
    from reconcile.reverse import reverse_status

    doc = reverse_status(load(config))
    if as_json:
        _echo_json(doc)
    else:
        st = doc["state"]
        lag = doc["caught_up_lag_seconds"]
        typer.echo(f"stream {doc['stream']}: {st['applied_txns']:,} DSQL transactions applied "
                   f"({st['applied_changes']:,} changes, {st['stale_changes']:,} stale or duplicate, "
                   f"{st['late_changes']:,} late); caught up {f'{lag:.1f} s ago' if lag is not None else 'never'} "
                   f"(limit {doc['lag_limit_seconds']:g} s); {doc['dead_letters_open']} open dead letter(s)")
        for shard, cp in doc["checkpoints"].items():
            typer.echo(f"  {shard}: {cp['sequence_number'] or '-'}{' (finished)' if cp['finished'] else ''}")
        for d in doc["dead_letters"]:
            if d["open"]:
                typer.echo(f"  dead letter {d['dead_letter_id']}: {d['reason']}")
    if not doc["within_lag_limit"] or doc["dead_letters_open"]:
        raise typer.Exit(1)


@dead_letters_app.command("skip")
def skip_cmd(
    dead_letter_id: str = typer.Argument(..., help="The dead letter's id (see `reconcile reverse status`)."),
    reason: str = typer.Option(..., "--reason", help="Why it is right not to apply this DSQL transaction."),
    by: Optional[str] = typer.Option(None, "--by", envvar="USER", help="Who decided."),
    config: Optional[Path] = CONFIG_OPTION,
) -> None:
    """Resolve a dead letter as skipped: the reverse replay passes over that DSQL transaction from now on."""
    from reconcile.connections import connect
    from reconcile.reverse.control import ReverseControl

    cfg = load(config)
    with connect(cfg.target) as conn:
        d = ReverseControl(conn).resolve(dead_letter_id, resolution="skip", by=by, reason=reason)
    typer.echo(f"dead letter {d.dead_letter_id} skipped by {d.resolved_by or '?'}: {d.resolution_reason}")
