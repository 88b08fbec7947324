"""Shadow replay as orchestrated steps: one time-boxed tick per scheduled run, lag reported.

:func:`replay_tick` applies source transactions for at most ``duration`` seconds
(:func:`reconcile.replay.run_replay`) and returns the run summary of the shared contract
(``txns_applied``, ``lag_seconds_p50``, ``lag_seconds_p99``, ``lag_bytes``, ``caught_up``,
``dead_letters_open``, ...). Ticks are safe to overlap with nothing and to retry: the replay
watermark is written in the same target transaction as the changes it covers, so a killed tick
resumes exactly where the last commit left off. A tick that halts on a dead letter
(status ``stopped``) raises :class:`ReplayHalted`: a person must look (``reconcile replay status``).

:func:`replay_init` creates the slot and publication (``slot first, then backfill``); the scheduled
DAG never calls it, since creating the slot after a backfill would miss the writes in between.
"""

from __future__ import annotations

import logging
from typing import Any

from reconcile import metrics
from reconcile.config import Config
from reconcile.errors import TerminalError

__all__ = ["LAG_KEYS", "ReplayHalted", "lag_metrics", "replay_init", "replay_status", "replay_tick"]

log = logging.getLogger("reconcile.pipeline.replay")

LAG_KEYS = ("lag_seconds_p50", "lag_seconds_p99", "lag_bytes", "caught_up", "txns_applied", "changes_applied",
            "conflicts", "dead_letters_open", "last_commit_lsn")
"""Summary keys reported as the lag metric (asset event extra, log line)."""


class ReplayHalted(TerminalError):
    """The replay stopped on a dead letter; it will not go on until a person resolves it."""


def _as_dict(result: Any) -> dict[str, Any]:
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


def replay_init(config: Config, *, replica_identity_full: bool = False) -> dict[str, Any]:
    """Create the publication and the slot (idempotent); run it before the first backfill."""
    from reconcile.preflight import require
    from reconcile.replay import init_replay

    require(config, "replay-init")
    return init_replay(config, replica_identity_full=replica_identity_full)


def replay_tick(config: Config, *, duration: float = 50.0, max_txns: int | None = None,
                until_caught_up: bool = False) -> dict[str, Any]:
    """Replay for at most ``duration`` seconds (or, with ``until_caught_up``, until nothing is left to
    apply, within ``duration``); returns the run summary.

    Raises:
        ReplayHalted: the run stopped on a dead letter (status ``stopped``).
    """
    from reconcile.preflight import require
    from reconcile.replay import run_replay

    require(config, "replay")
    summary = _as_dict(run_replay(config, duration=duration, max_txns=max_txns, until_caught_up=until_caught_up))
    log.info("replay: %s", lag_line(summary))
    metrics.after_replay_tick(config, summary)
    if summary.get("status") == "stopped":
        raise ReplayHalted(f"Replay halted on a dead letter ({summary.get('dead_letters_open')} open); inspect it "
                           "with `reconcile replay status`, resolve it, then let the next run resume.")
    return summary


def replay_status(config: Config) -> dict[str, Any]:
    """``reconcile replay status`` as a dict (slot, watermark, WAL retained, dead letters)."""
    from reconcile.replay import replay_status as status

    return status(config)


def lag_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The lag part of a replay summary (JSON-able), for an asset event's extra or a metric."""
    return {k: summary.get(k) for k in LAG_KEYS}


def lag_line(summary: dict[str, Any]) -> str:
    """One log line: applied, lag p50/p99, WAL behind, caught up."""
    def secs(v: Any) -> str:
        return "n/a" if v is None else f"{float(v):.3f}s"

    return (f"{summary.get('txns_applied', 0)} txns / {summary.get('changes_applied', 0)} changes applied, "
            f"lag p50 {secs(summary.get('lag_seconds_p50'))} p99 {secs(summary.get('lag_seconds_p99'))}, "
            f"{summary.get('lag_bytes')} bytes behind, caught up: {summary.get('caught_up')}, "
            f"dead letters open: {summary.get('dead_letters_open')}")
