"""Replay's entry points from a configuration: what the CLI and the Airflow DAG call.

Every function takes a :class:`reconcile.config.Config` (its ``[replay]`` section is
:class:`~reconcile.replay.settings.ReplaySettings`) and returns JSON-able data.
"""

from __future__ import annotations

import datetime as dt
import getpass
import threading
from typing import Any

from reconcile.config import Config
from reconcile.replay import pgoutput as po
from reconcile.replay.apply import read_watermark
from reconcile.replay.errors import ReplayError, SlotBusy
from reconcile.budget import budget_from
from reconcile.occ import policy_from
from reconcile.replay.runner import Replayer, ReplayResult
from reconcile.replay.source import (
    Assembler,
    SlotReader,
    drop_capture,
    init_capture,
    prepare_session,
    publication_tables,
    slot_row,
)
from reconcile.replay.state import ReplayControl


def _connect(endpoint):
    from reconcile.connections import connect

    return connect(endpoint)


def init_replay(config: Config, *, replica_identity_full: bool = False) -> dict[str, Any]:
    """Check the source's prerequisites, then create the publication and the logical slot (idempotent).

    Run it before the first backfill chunk: the slot must retain every write that races the copy.

    Raises:
        PrerequisiteFailed: wal_level, a table without key or replica identity, privileges (each named).
    """
    s = config.replay
    with _connect(config.source) as conn:
        return init_capture(conn, config.tables, slot_name=s.slot_name, publication=s.publication,
                            replica_identity_full=replica_identity_full)


def drop_replay(config: Config) -> dict[str, Any]:
    """Drop the slot and the publication (on purpose only: the source stops retaining WAL for replay)."""
    s = config.replay
    with _connect(config.source) as conn:
        return drop_capture(conn, slot_name=s.slot_name, publication=s.publication)


def run_replay(config: Config, *, until_caught_up: bool = False, duration: float | None = None,
               max_txns: int | None = None, follow: bool = False,
               stop_event: threading.Event | None = None) -> ReplayResult:
    """Replay source transactions into the target (see :mod:`reconcile.replay.runner`).

    With no stop condition it runs until caught up. Records a ``reconcile.runs`` row of kind ``replay``.
    """
    with Replayer.from_config(config) as r:
        return r.run(until_caught_up=until_caught_up, duration=duration, max_txns=max_txns, follow=follow,
                     stop_event=stop_event)


def _control(config: Config, conn) -> ReplayControl:
    return ReplayControl(conn, budget=budget_from(config), policy=policy_from(config))


def _has_control_schema(conn) -> bool:
    return bool(conn.execute("SELECT to_regclass('reconcile.replay_state') IS NOT NULL "
                             "AND to_regclass('reconcile.replay_windows') IS NOT NULL").fetchone()[0])


def _pending_commit_ts(config: Config, conn, watermark: int) -> tuple[dt.datetime | None, str]:
    """Commit time of the oldest source transaction not yet applied (peeked), and how it was found."""
    s = config.replay
    reader = SlotReader(conn, slot_name=s.slot_name, publication=s.publication)
    try:
        txns, _ = Assembler(config.tables).assemble(reader.peek(64))
    except SlotBusy:
        return None, "slot busy (a replayer is reading it)"
    for t in txns:
        if t.commit_lsn > watermark:
            return po.pg_timestamp(t.commit_ts), "peek"
    return None, "peek"


def replay_status(config: Config) -> dict[str, Any]:
    """Lag (bytes, seconds), retained WAL (with a warning above ``wal_warn_bytes``), apply rate,
    conflicts and retries of recent runs, open dead letters, split windows and the watermark."""
    s = config.replay
    warnings: list[str] = []
    out: dict[str, Any] = {"slot_name": s.slot_name, "publication": s.publication}
    with _connect(config.target) as tgt:
        if _has_control_schema(tgt):
            control = _control(config, tgt)
            wm = read_watermark(tgt, s.slot_name)
            open_dls = control.dead_letters(s.slot_name, open_only=True)
            runs = control.recent_runs()
            windows = control.windows(s.slot_name)
        else:
            wm, open_dls, runs, windows = None, [], [], []
    with prepare_session(_connect(config.source)) as src:
        slot = slot_row(src, s.slot_name)
        pub = publication_tables(src, s.publication)
        pending_ts, how = (None, "no slot")
        if slot is not None:
            pending_ts, how = _pending_commit_ts(config, src, wm.last_commit_lsn if wm else 0)
        (now,) = src.execute("SELECT now()").fetchone()
    out["slot"] = {k: v for k, v in (slot or {}).items() if k != "current_database"} or None
    out["publication_tables"] = sorted(pub) if pub is not None else None
    out["watermark"] = wm.to_dict() if wm else None
    if slot is None:
        warnings.append(f"There is no replication slot {s.slot_name} on the source: run `reconcile replay init`.")
        out.update(lag_bytes=None, lag_seconds=None, retained_wal_bytes=None)
    else:
        done = max(po.lsn_to_int(slot["confirmed_flush_lsn"]), wm.last_end_lsn if wm else 0,
                   wm.caught_up_lsn if wm else 0)
        out["lag_bytes"] = max(0, po.lsn_to_int(slot["current_lsn"]) - done)
        out["retained_wal_bytes"] = slot["retained_bytes"]
        if pending_ts is not None:
            out["lag_seconds"] = round(max(0.0, (now - pending_ts).total_seconds()), 3)
        elif how == "peek":
            out["lag_seconds"] = 0.0
        else:  # a replayer holds the slot: estimate from the last applied commit
            last = wm.last_commit_ts if wm else None
            out["lag_seconds"] = round(max(0.0, (now - last).total_seconds()), 3) if last else None
        out["lag_seconds_source"] = how
        if slot["retained_bytes"] is not None and slot["retained_bytes"] > s.wal_warn_bytes:
            warnings.append(
                f"The slot retains {slot['retained_bytes']:,} bytes of WAL (warning above {s.wal_warn_bytes:,}): an "
                "idle slot bloats Aurora storage; run `reconcile replay run`, or `reconcile replay drop` if replay is "
                "abandoned.")
    if pub is None and slot is not None:
        warnings.append(f"Publication {s.publication} is missing: rerun `reconcile replay init`.")
    latest = next((r for r in runs if r["summary"]), None)
    out["last_run"] = None if latest is None else {
        "run_id": latest["run_id"], "status": latest["status"],
        "started_at": latest["started_at"].isoformat() if latest["started_at"] else None,
        "finished_at": latest["finished_at"].isoformat() if latest["finished_at"] else None,
        **{k: latest["summary"].get(k) for k in ("txns_applied", "changes_applied", "target_commits", "conflicts",
                                                 "retries", "lag_seconds_p50", "lag_seconds_p99",
                                                 "apply_rate_changes_per_second", "caught_up")}}
    out["apply_rate_changes_per_second"] = latest["summary"].get("apply_rate_changes_per_second") if latest else None
    out["recent_runs"] = len(runs)
    out["conflicts"] = sum(int(r["summary"].get("conflicts") or 0) for r in runs)
    out["retries"] = sum(int(r["summary"].get("retries") or 0) for r in runs)
    out["dead_letters_open"] = len(open_dls)
    out["dead_letters"] = [d.to_dict() for d in open_dls]
    out["split_windows"] = windows
    if open_dls:
        warnings.append(f"{len(open_dls)} open dead letter(s): replay is stopped at the first; see "
                        "`reconcile replay dead-letters list`.")
    out["warnings"] = warnings
    return out


def list_dead_letters(config: Config, *, include_resolved: bool = False) -> list[dict[str, Any]]:
    """Dead letters of the configured slot (open ones only unless ``include_resolved``), oldest first."""
    with _connect(config.target) as tgt:
        if not _has_control_schema(tgt):
            return []
        return [d.to_dict() for d in _control(config, tgt).dead_letters(config.replay.slot_name,
                                                                         open_only=not include_resolved)]


def dead_letter_payload(config: Config, dead_letter_id: str) -> dict[str, Any]:
    """The whole source transaction a dead letter holds (joined from its parts if needed)."""
    with _connect(config.target) as tgt:
        return _control(config, tgt).payload(dead_letter_id)


def retry_dead_letter(config: Config, dead_letter_id: str, *, split: bool = False, by: str | None = None) -> dict[str, Any]:
    """Release an open dead letter so the next run applies its transaction again (``split``: in pieces,
    accepting a recorded non-atomic window)."""
    with _connect(config.target) as tgt:
        dl = _control(config, tgt).resolve(dead_letter_id, resolution="retry-split" if split else "retry",
                                           by=by or _who(), reason="retry in pieces" if split else "retry")
    return {**dl.to_dict(), "next": "the next `reconcile replay run` applies it" + (" in pieces" if split else "")}


def skip_dead_letter(config: Config, dead_letter_id: str, *, reason: str, by: str | None = None) -> dict[str, Any]:
    """Skip a dead letter's transaction for good (recorded with who and why); replay moves past it."""
    if not reason or not reason.strip():
        raise ReplayError("Skipping a dead letter needs a reason (it is recorded for the reconciliation): pass "
                          "--reason \"...\".")
    with _connect(config.target) as tgt:
        dl = _control(config, tgt).resolve(dead_letter_id, resolution="skip", by=by or _who(), reason=reason.strip())
    return {**dl.to_dict(), "next": "the next `reconcile replay run` moves past it without applying it"}


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"
