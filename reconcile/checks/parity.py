"""Parity and freshness: the target keeps up with the source, and nothing is stuck on the way.

Evidence comes from the control schema on the target (read once, when the checks are built):

* ``parity`` (runs on the target, counts the source just before): each configured table's target row count equals the source's,
  give or take the in-flight count of the latest diff run (``reconcile.runs`` kind ``'diff'``, its
  summary's ``tables[name].in_flight``) plus ``[checks] row_count_tolerance``; with no diff run the
  counts must be equal. GX ``ExpectTableRowCountToBeBetween`` on the target table, bounds from the
  source count taken just before.
* ``freshness`` (target): no open dead letters (``reconcile.dead_letters.resolved_at IS NULL``),
  no reject without an acknowledgement (``reconcile.check_acknowledgements``, kind ``'reject'``),
  both as ``UnexpectedRowsExpectation`` over the control tables; and the replay lag p99 of the
  latest replay run that wrote a summary under ``[checks] max_replay_lag_seconds``
  (``ExpectColumnValuesToBeBetween`` on a one-row frame of facts, also holding the
  ``reconcile.replay_state`` watermark). With no replay run the lag check has nothing to judge and
  passes, unless ``[checks] require_replay``.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql

from reconcile.checks.chunks import chunked_count
from reconcile.checks.spec import ROW_WISE, Check, ident
from reconcile.config import Config

__all__ = ["freshness_checks", "latest_summary", "parity_checks"]

LAG_COLUMNS = ("run_id", "status", "lag_seconds_p99", "lag_bytes", "caught_up", "slots")


def latest_summary(target: psycopg.Connection, kind: str) -> tuple[str, str, dict[str, Any]] | None:
    """(run_id, status, summary) of the latest finished run of ``kind`` with a summary, or None."""
    row = target.execute(sql.SQL(
        "SELECT run_id, status, summary, finished_at FROM {} WHERE kind = %s AND summary IS NOT NULL "
        "AND finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 1").format(sql.Identifier("reconcile", "runs")),
        (kind,)).fetchone()
    if row is None:
        return None
    try:
        summary = json.loads(row[2])
    except ValueError:
        summary = {}
    return str(row[0]), row[1], summary if isinstance(summary, dict) else {}


def parity_checks(config: Config, source: psycopg.Connection, target: psycopg.Connection) -> list[Check]:
    """Row-count parity of every configured table (runs on the target; counts the source now)."""
    diff = latest_summary(target, "diff")
    tables = (diff[2].get("tables") or {}) if diff else {}
    out = []
    for spec in config.tables:
        rows = chunked_count(source, spec.name, config.checks.chunk_rows)  # key ranges: one short read each
        in_flight = int((tables.get(spec.name) or {}).get("in_flight") or 0)
        tolerance = in_flight + config.checks.row_count_tolerance
        evidence = {"rows_source": rows, "in_flight": in_flight, "tolerance": tolerance,
                    "diff_run": diff[0] if diff else None}
        out.append(Check(
            "parity", f"row_count:{spec.name}", "ExpectTableRowCountToBeBetween",
            {"min_value": max(0, rows - tolerance), "max_value": rows + tolerance},
            f"{spec.name} on the target has more or fewer rows than the source's {rows} "
            f"(allowed difference {tolerance}: in flight {in_flight})", table=spec.name, sides=("target",),
            evidence=evidence, chunking=ROW_WISE))  # the chunks' counts are summed, then judged
    return out


def freshness_checks(config: Config, target: psycopg.Connection) -> list[Check]:
    """Dead letters, rejects and replay lag (run on the target)."""
    acks = ident("reconcile", "check_acknowledgements")
    checks = [
        Check("freshness", "no_open_dead_letters", "UnexpectedRowsExpectation",
              {"unexpected_rows_query": "SELECT d.dead_letter_id, d.slot_name, d.xid, d.commit_lsn, d.table_name, "
                                        "d.reason, d.created_at FROM (SELECT * FROM {batch}) AS d WHERE d.resolved_at IS NULL"},
              "a source transaction the replay could not apply is still open in reconcile.dead_letters",
              table="reconcile.dead_letters", sides=("target",), chunking=ROW_WISE),
        Check("freshness", "no_unacknowledged_rejects", "UnexpectedRowsExpectation",
              {"unexpected_rows_query": "SELECT r.reject_id, r.stage, r.table_name, r.row_key, r.reason "
                                        f"FROM (SELECT * FROM {{batch}}) AS r WHERE NOT EXISTS (SELECT 1 FROM {acks} AS a "
                                        "WHERE a.kind = 'reject' AND a.ref = CAST(r.reject_id AS text))"},
              "a row the target refused (reconcile.rejects) has not been acknowledged",
              table="reconcile.rejects", sides=("target",), chunking=ROW_WISE),
    ]
    replay = latest_summary(target, "replay")
    slots = [dict(zip(("slot_name", "last_commit_lsn", "caught_up_lsn", "updated_at"), r)) for r in target.execute(
        sql.SQL("SELECT slot_name, last_commit_lsn, caught_up_lsn, updated_at FROM {} ORDER BY slot_name").format(
            sql.Identifier("reconcile", "replay_state")))]
    frame: tuple[dict[str, Any], ...] = ()
    if replay is not None:
        run_id, status, summary = replay
        lag = summary.get("lag_seconds_p99")
        frame = ({"run_id": run_id, "status": status,
                  "lag_seconds_p99": float(lag) if lag is not None else None,
                  "lag_bytes": summary.get("lag_bytes"), "caught_up": summary.get("caught_up"),
                  "slots": json.dumps(slots, default=str)},)
    limit = config.checks.max_replay_lag_seconds
    evidence = {"columns": list(LAG_COLUMNS), "replay_run": replay[0] if replay else None,
                "replay_state": json.loads(json.dumps(slots, default=str))}
    checks.append(Check("freshness", "replay_lag_p99", "ExpectColumnValuesToBeBetween",
                        {"column": "lag_seconds_p99", "min_value": 0, "max_value": limit},
                        f"the latest replay run's lag p99 is above {limit} s", frame=frame,
                        frame_name="replay_lag", sides=("target",), evidence=evidence))
    if config.checks.require_replay:
        checks.append(Check("freshness", "replay_has_run", "ExpectTableRowCountToBeBetween",
                            {"min_value": 1}, "no replay run has been recorded yet", frame=frame,
                            frame_name="replay_lag", sides=("target",), evidence=evidence))
    return checks
