"""Reverse replay as orchestrated steps: after write cutover, one bounded slice per scheduled run.

Which direction may apply is decided by the cutover state (:func:`reconcile.gates.current_state`):

* ``write_cutover``: DSQL is the system of record. The reverse replay (DSQL's CDC stream → the old source,
  :mod:`reconcile.reverse`) runs; the forward shadow replay does not (the source no longer takes the
  application's writes, and what it does take is the reverse replay's own origin-tagged writes, which the
  forward decoding filters out anyway).
* ``shadow`` / ``read_cutover``: the source is the system of record. The forward replay runs; the reverse
  replay does not (applying DSQL's changes onto the system of record would be the harmful thing).

:func:`reverse_gate` and :func:`forward_gate` answer that question for the two DAGs' first task (with the
reason, for the log line). :func:`reverse_tick` applies whole DSQL transactions for at most ``duration``
seconds (and, with ``max_txns``, stops once that many were applied) and returns a small, secret-free
summary (:data:`SUMMARY_KEYS`): safe to push to XCom. A tick is safe to retry and to kill: every source
transaction the reverse replay commits carries the shard checkpoints and per-key versions of the rows it
wrote (see :mod:`reconcile.reverse.replayer`), so the next tick resumes exactly after the last commit and a
re-read record is never applied twice. A tick that stops on a dead letter raises :class:`ReverseHalted`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from reconcile import metrics
from reconcile.config import Config
from reconcile.errors import TerminalError

__all__ = ["REVERSE_STATE", "SUMMARY_KEYS", "ReverseHalted", "forward_gate", "reverse_gate", "reverse_summary",
           "reverse_tick"]

log = logging.getLogger("reconcile.pipeline.reverse")

REVERSE_STATE = "write_cutover"
"""The one cutover state in which DSQL is the system of record and the reverse replay applies."""

SUMMARY_KEYS = ("run_id", "status", "stream", "txns_applied", "changes_applied", "changes_stale", "changes_late",
                "records_read", "lag_seconds_p50", "lag_seconds_p99", "caught_up", "dead_letters_open",
                "duration_seconds")
"""What a reverse tick reports (XCom, asset event, metrics): counts, lag, flags and ids; no message text, no
settings, nothing from a connection string."""


class ReverseHalted(TerminalError):
    """The reverse replay stopped on a dead letter; it will not go on until a person resolves it."""


def _state(config: Config) -> str:
    from reconcile.gates import current_state

    return current_state(config)


def reverse_gate(config: Config, *, state: str | None = None) -> dict[str, Any]:
    """Whether the reverse replay may apply now: ``{"state", "run", "reason"}`` (JSON-able, no secret).

    Only in ``write_cutover``: before it the source is the system of record and must not receive DSQL's
    changes.
    """
    state = state or _state(config)
    if state == REVERSE_STATE:
        return {"state": state, "run": True,
                "reason": "the cutover state is write_cutover: DSQL is the system of record, replaying it back"}
    return {"state": state, "run": False,
            "reason": f"the cutover state is {state}, not write_cutover: the source is still the system of "
                      "record, so nothing is replayed back onto it"}


def forward_gate(config: Config, *, force: bool = False, state: str | None = None) -> dict[str, Any]:
    """Whether the forward shadow replay may apply now: ``{"state", "run", "reason"}``.

    Not in ``write_cutover`` (unless ``force``): the application writes DSQL, and the source's changes then are
    the reverse replay's own origin-tagged writes, which the forward decoding filters out anyway. Forward
    resumes after a rollback (``write_cutover → read_cutover``) from where its watermark stands.
    """
    state = state or _state(config)
    if state != REVERSE_STATE:
        return {"state": state, "run": True, "reason": f"the cutover state is {state}: the source is the system "
                                                       "of record"}
    if force:
        return {"state": state, "run": True, "reason": "the cutover state is write_cutover, but this run was "
                                                       "forced (run_after_write_cutover)"}
    return {"state": state, "run": False,
            "reason": "the cutover state is write_cutover: DSQL is the system of record and the reverse replay "
                      "(reconcile_reverse_replay) carries its changes back; the forward replay resumes after a "
                      "rollback (set run_after_write_cutover to force a run)"}


def reverse_summary(result: Any) -> dict[str, Any]:
    """The reported part of a :class:`~reconcile.reverse.ReverseResult` (or its dict)."""
    d = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    return {k: d.get(k) for k in SUMMARY_KEYS}


def reverse_tick(config: Config, *, duration: float = 50.0, max_txns: int | None = None,
                 until_caught_up: bool = False) -> dict[str, Any]:
    """Apply DSQL transactions to the source for at most ``duration`` seconds; returns :func:`reverse_summary`.

    Args:
        duration: the slice's length in seconds (the hard bound).
        max_txns: also stop once this many DSQL transactions were applied (at the end of that round).
        until_caught_up: also stop as soon as nothing is left to apply (a manual drain).

    Raises:
        ReverseHalted: the run stopped on a dead letter (status ``stopped``).
        ReverseNotReady: ``reconcile reverse init`` has not run for ``[reverse] stream_name``.
    """
    from reconcile.reverse import run_reverse

    if duration <= 0:
        from reconcile.errors import InvalidArgument

        raise InvalidArgument(f"duration must be more than 0 seconds, got {duration}")
    if until_caught_up:
        # The replayer's "until caught up" ignores a duration; a timer on its stop event bounds the drain.
        stop = threading.Event()
        timer = threading.Timer(duration, stop.set)
        timer.daemon = True
        timer.start()
        try:
            result = run_reverse(config, until_caught_up=True, stop=stop, max_txns=max_txns)
        finally:
            timer.cancel()
    else:
        result = run_reverse(config, duration=duration, until_caught_up=False, max_txns=max_txns)
    summary = reverse_summary(result)
    log.info("reverse replay: %s", lag_line(summary))
    metrics.after_reverse_tick(config, summary)
    if summary.get("status") == "stopped":
        raise ReverseHalted(f"The reverse replay halted on a dead letter ({summary.get('dead_letters_open')} open); "
                            "inspect it with `reconcile reverse status`, then skip it with a reason "
                            "(`reconcile reverse dead-letters skip`) or fix the source, and let the next run resume.")
    return summary


def lag_line(summary: dict[str, Any]) -> str:
    """One log line: applied, lag p50/p99, caught up, dead letters."""
    def secs(v: Any) -> str:
        return "n/a" if v is None else f"{float(v):.3f}s"

    return (f"{summary.get('txns_applied', 0)} DSQL txns / {summary.get('changes_applied', 0)} changes applied "
            f"({summary.get('records_read', 0)} records read), lag p50 {secs(summary.get('lag_seconds_p50'))} "
            f"p99 {secs(summary.get('lag_seconds_p99'))}, caught up: {summary.get('caught_up')}, "
            f"dead letters open: {summary.get('dead_letters_open')}")
