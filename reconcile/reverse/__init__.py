"""Reverse replay after write cutover: DSQL's CDC stream (Kinesis) → the old Aurora PostgreSQL source.

* :func:`init_reverse`: the source-side state (schema ``reconcile_reverse``, the replication origin) and
  the stream's start point; the target's control tables (runs, dead letters).
* :class:`~reconcile.reverse.replayer.ReverseReplayer` / :func:`run_reverse`: read every shard, apply
  whole DSQL transactions in commit-time order, exactly once in effect (see its module docstring).
* :func:`reverse_status`: where the reverse replay stands (lag, checkpoints, dead letters).
"""

from __future__ import annotations

import time
from typing import Any

from reconcile.reverse.replayer import ReverseError, ReverseNotReady, ReverseReplayer, ReverseResult
from reconcile.reverse.settings import ReverseSettings

__all__ = ["ReverseError", "ReverseNotReady", "ReverseReplayer", "ReverseResult", "ReverseSettings",
           "init_reverse", "reverse_status", "run_reverse"]


def init_reverse(config: Any, *, start_ts_ns: int | None = None) -> dict[str, Any]:
    """Create the reverse replay's state (idempotent); records from ``start_ts_ns`` on (default: now) count.

    Run it after the forward replay has drained and stopped, and before the application writes to DSQL:
    what DSQL committed before it is the forward replay's own writes, already on the source. The start is
    set by a stream's first init only; for a later write cutover use a new ``reverse.stream_name`` (or a
    fresh stream) so the forward replay's writes since are not replayed back as well.
    """
    from reconcile.connections import connect
    from reconcile.control import migrate
    from reconcile.reverse import decode, source_state
    from reconcile.schema.dialect import dialect_for

    s: ReverseSettings = config.stage("reverse")
    with connect(config.source) as src:
        problems = []
        for spec in config.tables:
            cols = decode.source_columns(src, spec.name)
            if not cols:
                problems.append(f"table {spec.name} does not exist on the source")
            problems += decode.unsupported(spec.name, cols)
        if problems:
            raise ReverseNotReady("The reverse replay cannot bring these back exactly: " + "; ".join(problems) + ".")
        out = source_state.init(src, stream=s.stream_name, origin=s.origin_name,
                                start_ts_ns=time.time_ns() if start_ts_ns is None else start_ts_ns)
    with connect(config.target) as tgt:
        ran = migrate(tgt, dialect=dialect_for(config.target).name)
    if ran:
        out["actions"].append(f"control schema migrated on the target ({len(ran)} step(s))")
    return out


def run_reverse(config: Any, **kwargs: Any) -> ReverseResult:
    replayer = ReverseReplayer.from_config(config)
    try:
        return replayer.run(**kwargs)
    finally:
        replayer.close()


def reverse_status(config: Any, *, now_ns: int | None = None) -> dict[str, Any]:
    """Where the reverse replay stands: the stream row and checkpoints (source), dead letters and runs (target)."""
    from reconcile.connections import connect
    from reconcile.reverse import source_state
    from reconcile.reverse.control import RUN_KIND, ReverseControl

    s: ReverseSettings = config.stage("reverse")
    now_ns = time.time_ns() if now_ns is None else now_ns
    with connect(config.source) as src:
        if not source_state.exists(src) or (state := source_state.read_stream(src, s.stream_name)) is None:
            raise ReverseNotReady(f"The source has no reverse-replay state for stream {s.stream_name}: run "
                                  "`reconcile reverse init` first.")
        checkpoints = source_state.read_checkpoints(src, s.stream_name)
    lag = (now_ns - state.caught_up_ns) / 1e9 if state.caught_up_ns else None
    out: dict[str, Any] = {
        "stream": s.stream_name, "state": state.to_dict(),
        "checkpoints": {k: {"sequence_number": str(v[0]) if v[0] is not None else None, "finished": v[1]}
                        for k, v in sorted(checkpoints.items())},
        "caught_up_lag_seconds": round(lag, 3) if lag is not None else None,
        "within_lag_limit": lag is not None and lag <= s.lag_limit_seconds,
        "lag_limit_seconds": s.lag_limit_seconds,
    }
    with connect(config.target) as tgt:
        ctl = ReverseControl(tgt)
        dls = ctl.dead_letters(s.stream_name)
        from psycopg import sql

        from reconcile.control.migrations import ident

        rows = tgt.execute(sql.SQL("SELECT run_id, status, started_at, finished_at FROM {} WHERE kind = %s "
                                   "ORDER BY started_at DESC LIMIT 5").format(ident("runs")), (RUN_KIND,)).fetchall()
    out["dead_letters_open"] = sum(d.open for d in dls)
    out["dead_letters"] = [d.to_dict() for d in dls]
    out["recent_runs"] = [{"run_id": str(r[0]), "status": r[1], "started_at": r[2].isoformat(),
                           "finished_at": r[3].isoformat() if r[3] else None} for r in rows]
    return out
