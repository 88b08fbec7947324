"""`reconcile replay ...`: Capture source changes through a logical slot and replay them into the target, exactly once.

Results go to stdout (text, or ``--json``), logs to stderr. ``run`` exits 0 when done, 1 when it
stopped at a dead letter, 2 on an error.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import typer

from ._common import CONFIG_OPTION, Number, load, preflight, run_app

app = typer.Typer(help="Capture source changes through a logical slot and replay them into the target, exactly once.",
                  no_args_is_help=True)
dead_letters_app = typer.Typer(help="Source transactions replay could not apply: list, retry, skip.",
                               no_args_is_help=True)
app.add_typer(dead_letters_app, name="dead-letters")

JSON_OPTION = typer.Option(False, "--json", help="Print the result as JSON on stdout.")


def _echo_json(doc) -> None:
    typer.echo(json.dumps(doc, indent=2, default=str, ensure_ascii=False))


def _logging(verbose: bool) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("reconcile.replay").setLevel(logging.INFO if verbose else logging.WARNING)


@app.command("init")
def init_cmd(
    replica_identity_full: bool = typer.Option(
        False, "--replica-identity-full", envvar="RECONCILE_REPLAY_REPLICA_IDENTITY_FULL",
        help="Set REPLICA IDENTITY FULL on configured tables that have no primary key (else they are refused)."),
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Check the source, then create the publication and the logical slot (idempotent; run before backfill)."""
    from reconcile.replay import init_replay

    cfg = load(config)
    preflight(cfg, "replay-init")
    result = init_replay(cfg, replica_identity_full=replica_identity_full)
    if as_json:
        _echo_json(result)
        return
    for line in result["actions"]:
        typer.echo(line)
    for note in result["notes"]:
        typer.echo(f"note: {note}")


@app.command("run")
def run_cmd(
    until_caught_up: bool = typer.Option(False, "--until-caught-up", envvar="RECONCILE_REPLAY_UNTIL_CAUGHT_UP",
                                         help="Stop once everything committed on the source before the last read "
                                              "is applied (the default when no other stop is given)."),
    duration: Optional[float] = typer.Option(None, "--duration", envvar="RECONCILE_REPLAY_DURATION", parser=Number(float, gt=0, le=30 * 86_400),
                                             help="Stop after this many seconds (time-boxed Airflow tasks)."),
    max_txns: Optional[int] = typer.Option(None, "--max-txns", envvar="RECONCILE_REPLAY_MAX_TXNS", parser=Number(int, ge=1),
                                           help="Stop after applying this many source transactions."),
    follow: bool = typer.Option(False, "--follow", envvar="RECONCILE_REPLAY_FOLLOW",
                                help="Keep replaying until interrupted (Ctrl-C or SIGTERM stops cleanly)."),
    skip_backfill_check: bool = typer.Option(
        False, "--skip-backfill-check", envvar="RECONCILE_REPLAY_SKIP_BACKFILL_CHECK",
        help="Apply even though the initial backfill is incomplete (only for tables that need no backfill)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log each step on stderr."),
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Replay source transactions into the target, in commit order, exactly once."""
    import dataclasses

    from reconcile.replay import Replayer

    _logging(verbose)
    cfg = load(config)
    preflight(cfg, "replay")
    if skip_backfill_check:
        cfg = dataclasses.replace(cfg, stages={**cfg.stages,
                                               "replay": dataclasses.replace(cfg.replay, require_backfill=False)})
    stop = threading.Event()
    if follow and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Replayer.from_config(cfg) as replayer:
        try:
            result = replayer.run(until_caught_up=until_caught_up, duration=duration, max_txns=max_txns,
                                  follow=follow, stop_event=stop)
        except KeyboardInterrupt:
            stop.set()
            raise
    if as_json:
        _echo_json(result.to_dict())
    else:
        typer.echo(result.text())
    raise typer.Exit(result.exit_code)


@app.command("status")
def status_cmd(config: Optional[Path] = CONFIG_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Lag in bytes and seconds, WAL the slot retains, apply rate, conflicts, dead letters, watermark."""
    from reconcile.replay import replay_status

    st = replay_status(load(config))
    if as_json:
        _echo_json(st)
        return
    slot = st["slot"]
    if slot is None:
        typer.echo(f"slot {st['slot_name']}: missing")
    else:
        typer.echo(f"slot {st['slot_name']}: {'active' if slot['active'] else 'idle'}, confirmed "
                   f"{slot['confirmed_flush_lsn']}, source at {slot['current_lsn']}, retains "
                   f"{st['retained_wal_bytes']:,} bytes of WAL")
        lag_s = st.get("lag_seconds")
        typer.echo(f"lag: {st['lag_bytes']:,} bytes, "
                   f"{'?' if lag_s is None else f'{lag_s:.3f}'} s ({st.get('lag_seconds_source')})")
    wm = st["watermark"] or {}
    typer.echo(f"watermark: last commit {wm.get('last_commit_lsn') or '-'} (xid {wm.get('last_xid') or '-'}), "
               f"caught up to {wm.get('caught_up_lsn') or '-'}, {wm.get('applied_txns') or 0:,} transactions applied")
    rate = st["apply_rate_changes_per_second"]
    typer.echo(f"apply rate (last run): {'-' if rate is None else f'{rate:,.0f} changes/s'}; conflicts "
               f"{st['conflicts']}, retries {st['retries']} over the last {st['recent_runs']} run(s)")
    typer.echo(f"dead letters open: {st['dead_letters_open']}; split windows: {len(st['split_windows'])}")
    for w in st["warnings"]:
        typer.echo(f"warning: {w}")


@app.command("drop")
def drop_cmd(
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Drop the replication slot and the publication (replay cannot resume afterwards without a new backfill)."""
    from reconcile.replay import drop_replay

    cfg = load(config)
    if not yes:
        typer.confirm(f"Drop replication slot {cfg.replay.slot_name} and publication {cfg.replay.publication}? "
                      "Changes not yet replayed are lost for good", abort=True)
    result = drop_replay(cfg)
    if as_json:
        _echo_json(result)
    else:
        for line in result["actions"]:
            typer.echo(line)


@dead_letters_app.command("list")
def dl_list_cmd(
    all_: bool = typer.Option(False, "--all", help="Include resolved dead letters."),
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Dead letters of the slot, oldest first (open ones only unless --all)."""
    from reconcile.replay import list_dead_letters

    rows = list_dead_letters(load(config), include_resolved=all_)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        typer.echo("no dead letters")
        return
    for d in rows:
        state = "open" if d["open"] else f"{d['resolution']} by {d['resolved_by']}"
        typer.echo(f"{d['dead_letter_id']}  xid {d['xid']}  {d['commit_lsn']}  {d['change_count']} changes  "
                   f"[{state}]  {d['reason']}")


@dead_letters_app.command("show")
def dl_show_cmd(dead_letter_id: str = typer.Argument(..., help="The dead letter's id."),
                config: Optional[Path] = CONFIG_OPTION) -> None:
    """Print the whole source transaction a dead letter holds, as JSON."""
    from reconcile.replay import dead_letter_payload

    _echo_json(dead_letter_payload(load(config), dead_letter_id))


@dead_letters_app.command("retry")
def dl_retry_cmd(
    dead_letter_id: str = typer.Argument(..., help="The dead letter's id."),
    split: bool = typer.Option(False, "--split", help="Apply it in budget-sized pieces (a recorded non-atomic "
                                                      "window), for a transaction too big for one DSQL transaction."),
    by: Optional[str] = typer.Option(None, "--by", envvar="RECONCILE_REPLAY_BY", help="Who decides (default: login)."),
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Release a dead letter: the next `replay run` applies its transaction again."""
    from reconcile.replay import retry_dead_letter

    result = retry_dead_letter(load(config), dead_letter_id, split=split, by=by)
    if as_json:
        _echo_json(result)
    else:
        typer.echo(f"dead letter {dead_letter_id}: {result['resolution']}; {result['next']}")


@dead_letters_app.command("skip")
def dl_skip_cmd(
    dead_letter_id: str = typer.Argument(..., help="The dead letter's id."),
    reason: str = typer.Option(..., "--reason", help="Why it is safe to skip (recorded)."),
    by: Optional[str] = typer.Option(None, "--by", envvar="RECONCILE_REPLAY_BY", help="Who decides (default: login)."),
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Skip a dead letter's transaction for good; replay moves past it without applying it."""
    from reconcile.replay import skip_dead_letter

    result = skip_dead_letter(load(config), dead_letter_id, reason=reason, by=by)
    if as_json:
        _echo_json(result)
    else:
        typer.echo(f"dead letter {dead_letter_id}: skipped by {result['resolved_by']} ({result['resolution_reason']}); "
                   f"{result['next']}")


def main() -> None:
    """Run this group alone (``python -m reconcile.cli.replay_cmd``), as the console script would."""
    run_app(app)


if __name__ == "__main__":
    main()
