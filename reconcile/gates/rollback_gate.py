"""The rollback gate's criteria: may the cutover go back from ``write_cutover`` to ``read_cutover``?

After the write cutover the target (DSQL) is the system of record and the reverse replay
(:mod:`reconcile.reverse`) copies its changes back to the old source. Going back is safe when the old
source holds every one of them, so the gate reads:

==============================  ==========================================================================
criterion                       evidence read
==============================  ==========================================================================
reverse_replay_lag              the reverse replay's state on the source (``reconcile_reverse.streams`` of
                                ``[reverse] stream_name``): its caught-up point (every DSQL change committed
                                before it is applied to the source) within ``[reverse] lag_limit_seconds``
                                of now (the target's clock, which stamps DSQL's commit times)
reverse_reconciliation_green    the latest complete *reverse* reconciliation (a diff run with direction
                                ``reverse``: :mod:`reconcile.direction`) of this migration started after the
                                write cutover: green, its balance diff green and its expectations run green
                                (the rule a forward reconciliation counts by), finished within
                                ``[gates] max_diff_age_hours``
reverse_dead_letters            ``reconcile.reverse_dead_letters`` of the stream with ``resolved_at IS NULL``:
                                none
==============================  ==========================================================================

The source's reverse state is read just before the target's read transaction (it lives in another
database); everything else comes from the one snapshot the other gates read. No evidence is never a
pass: a criterion with nothing stored to read fails and says what to run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import psycopg
from psycopg import sql

from reconcile.control import ident
from reconcile.errors import ReconcileError
from reconcile.gates.evidence import Criterion, iso
from reconcile.gates.settings import GateSettings

__all__ = ["ROLLBACK_CRITERIA", "HINTS", "ReverseSnapshot", "reverse_snapshot", "rollback_criteria"]

ROLLBACK_CRITERIA = ("reverse_replay_lag", "reverse_reconciliation_green", "reverse_dead_letters")
HINTS = {
    "reverse_replay_lag": "run `reconcile reverse run` until `reconcile reverse status` is caught up",
    "reverse_reconciliation_green": "run `reconcile diff` (reverse after write cutover) and `reconcile check` "
                                    "until green",
    "reverse_dead_letters": "resolve the reverse dead letters (`reconcile reverse status` lists them)",
}
"""What to run when a criterion fails (the refusal names it)."""
_LISTED = 10


@dataclasses.dataclass(frozen=True)
class ReverseSnapshot:
    """The reverse replay's state read from the old source (``state`` None: not initialised)."""

    stream: str
    lag_limit_seconds: float
    state: dict[str, Any] | None = None
    error: str | None = None
    """Why the source could not be read (the criterion fails with it)."""


def reverse_snapshot(config: Any) -> ReverseSnapshot:
    """Read the reverse replay's stream row from the source; a source that cannot be read is recorded, not raised."""
    from reconcile.connections import connect
    from reconcile.reverse import source_state

    s = config.stage("reverse")
    try:
        with connect(config.source) as src:
            state = source_state.read_stream(src, s.stream_name) if source_state.exists(src) else None
    except (psycopg.Error, OSError, ReconcileError) as exc:
        return ReverseSnapshot(s.stream_name, s.lag_limit_seconds,
                               error=config.safe_message(exc) if hasattr(config, "safe_message") else type(exc).__name__)
    return ReverseSnapshot(s.stream_name, s.lag_limit_seconds, state.to_dict() if state is not None else None)


def _lag(snap: ReverseSnapshot, now: dt.datetime) -> Criterion:
    name = "reverse_replay_lag"
    evidence: dict[str, Any] = {"stream": snap.stream, "lag_limit_seconds": snap.lag_limit_seconds}
    if snap.error is not None:
        return Criterion(name, False, {**evidence, "error": snap.error},
                         f"the reverse replay's state could not be read from the source ({snap.error.rstrip('.')})")
    if snap.state is None:
        return Criterion(name, False, evidence, f"the source holds no reverse replay state for stream {snap.stream}; "
                                                "run `reconcile reverse init`, then `reconcile reverse run`")
    st = snap.state
    evidence.update({"applied_txns": st.get("applied_txns"), "applied_changes": st.get("applied_changes"),
                     "caught_up_ns": st.get("caught_up_ns"), "applied_ts_ns": st.get("applied_ts_ns")})
    caught = st.get("caught_up_ns")
    if not caught:
        return Criterion(name, False, evidence, "the reverse replay has not caught up with the stream yet; run "
                                                "`reconcile reverse run`")
    now_ns = int(now.timestamp()) * 1_000_000_000 + now.microsecond * 1000
    lag = round((now_ns - int(caught)) / 1e9, 3)
    evidence["lag_seconds"] = lag
    if lag > snap.lag_limit_seconds:
        return Criterion(name, False, evidence, f"the reverse replay was last caught up {lag:g} s ago, more than "
                                                f"[reverse] lag_limit_seconds = {snap.lag_limit_seconds:g}")
    return Criterion(name, True, evidence, f"the reverse replay was caught up {max(lag, 0):g} s ago (limit "
                                           f"{snap.lag_limit_seconds:g} s)")


def _reconciliation(conn: psycopg.Connection, s: GateSettings, state: dict[str, Any], now: dt.datetime,
                    scope: Any) -> Criterion:
    from reconcile.gates.criteria import FINAL_DIFF, diff_runs

    name = "reverse_reconciliation_green"
    if state["state"] != "write_cutover":
        return Criterion(name, False, {"state": state["state"]},
                         f"the state is {state['state']}, not write_cutover: no reverse reconciliation applies")
    since = state["entered_at"]
    final = sql.SQL("r.status IN ({}) AND r.started_at >= %s").format(
        sql.SQL(", ").join([sql.Placeholder()] * len(FINAL_DIFF)))
    runs = diff_runs(conn, scope, final, [*FINAL_DIFF, since], limit=50)
    evidence: dict[str, Any] = {"write_cutover_at": iso(since), "reverse_runs": len(runs),
                                "run_ids": [r["run_id"] for r in runs[:_LISTED]]}
    latest = next((r for r in runs if r["complete"]), None)
    if latest is None:
        return Criterion(name, False, evidence,
                         "no complete reverse reconciliation of this migration since the write cutover; run "
                         "`reconcile diff` over every table (reverse after write cutover) and `reconcile check`"
                         if not runs else
                         f"none of the {len(runs)} reverse diff run(s) since the write cutover compared every table "
                         "and the balances; run `reconcile diff` over every table")
    end = latest["finished_at"] or latest["started_at"]
    age = round((now - end).total_seconds() / 3600, 3)
    summary = latest["summary"]
    evidence.update({"run_id": latest["run_id"], "status": latest["status"], "balances": latest["balances"],
                     "checks": latest["checks"], "started_at": iso(latest["started_at"]), "finished_at": iso(end),
                     "age_hours": age, "max_age_hours": s.max_diff_age_hours,
                     "persistent_mismatches": summary.get("persistent_mismatches"),
                     "balance_differences": summary.get("balance_differences"),
                     "report_dir": summary.get("report_dir")})
    if not latest["counts"]:
        what = (f"its diff is {latest['status']}" if latest["status"] != "green"
                else f"its balance diff is {latest['balances']}" if scope.balances and latest["balances"] != "green"
                else f"its expectations run is {latest['checks'] or 'missing'}")
        return Criterion(name, False, evidence, f"the latest complete reverse reconciliation is not green: {what}")
    if age > s.max_diff_age_hours:
        return Criterion(name, False, evidence, f"the latest complete reverse reconciliation finished {age:g} h ago, "
                                                f"more than {s.max_diff_age_hours:g} h")
    return Criterion(name, True, evidence, "the latest complete reverse reconciliation since the write cutover is "
                                           "green (diff, balances, expectations)")


def _dead_letters(conn: psycopg.Connection, snap: ReverseSnapshot) -> Criterion:
    name = "reverse_dead_letters"
    rows = conn.execute(sql.SQL("SELECT dead_letter_id, tx_id, tables, reason FROM {} WHERE resolved_at IS NULL "
                                "AND stream = %s ORDER BY created_at").format(ident("reverse_dead_letters")),
                        (snap.stream,)).fetchall()
    evidence = {"stream": snap.stream, "open": len(rows),
                "dead_letters": [{"id": str(r[0]), "tx_id": r[1], "tables": r[2], "reason": r[3]}
                                 for r in rows[:_LISTED]]}
    if rows:
        return Criterion(name, False, evidence, f"{len(rows)} reverse dead letter(s) of stream {snap.stream} are open; "
                                                "resolve them first (`reconcile reverse status`)")
    return Criterion(name, True, evidence, f"no open reverse dead letter on stream {snap.stream}")


def rollback_criteria(conn: psycopg.Connection, s: GateSettings, state: dict[str, Any], now: dt.datetime,
                      scope: Any, snap: ReverseSnapshot) -> list[Criterion]:
    """Inside the target's read transaction: every rollback criterion, in :data:`ROLLBACK_CRITERIA` order.

    ``scope``: the migration's :class:`~reconcile.gates.criteria.EvidenceScope` (its direction is set to
    reverse here); ``snap``: :func:`reverse_snapshot` read from the source just before.
    """
    reverse = dataclasses.replace(scope, direction="reverse")
    return [_lag(snap, now), _reconciliation(conn, s, state, now, reverse), _dead_letters(conn, snap)]
