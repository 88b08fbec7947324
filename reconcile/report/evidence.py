"""The evidence around a diff run, read from the control schema for its page.

Everything here only reads (plain SELECTs on an autocommit target connection) and is JSON-able:

* :func:`expectations`: the check run of this reconciliation (the one whose Data Docs went into this
  run's report folder, as the Airflow DAG runs it) or else the latest one, with every failed
  expectation, its sample rows and its Data Docs page;
* :func:`replay`: the replay's lag (the latest replay runs in the gate's window) and the open dead
  letters;
* :func:`gate`: the next gate's evaluation at this moment, through :func:`reconcile.gates.evaluate`
  (not recorded: the DAG's ``gate_evidence`` step records its own);
* :func:`coverage`: what the run compared (from its results).

A part that cannot be read (a table an older control schema lacks, a gate error) says so in its
``error`` instead of failing the report.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from reconcile.control import ident

__all__ = ["coverage", "expectations", "gate", "replay", "run_link"]

log = logging.getLogger(__name__)

NEXT_GATE = {"shadow": "read", "read_cutover": "write", "write_cutover": "rollback"}
"""The cutover state -> the gate that moves it on."""
LISTED = 10
"""Dead letters and sample rows listed on the page (the counts stay exact)."""


def _json(text: Any) -> Any:
    if text is None or not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _failed_read(what: str, exc: BaseException) -> dict[str, Any]:
    log.warning("report: could not read %s: %s", what, type(exc).__name__)
    return {"error": f"could not read {what} ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"}


# -- expectations ---------------------------------------------------------------------------------------


def _gx_suite(suite: str, asset: str | None, side: str) -> str:
    """The suite name Great Expectations filed the result under (see ``reconcile.checks.gxrun``)."""
    base = suite if asset in (None, suite) else f"{suite}:{asset}"
    return f"{base}@{side}"


def _docs_pages(index: str | None) -> dict[str, str]:
    """GX suite name -> its newest validation page under the Data Docs folder of ``index``."""
    if not index:
        return {}
    root = Path(index).parent / "validations"
    pages: dict[str, str] = {}
    if root.is_dir():
        for path in sorted(root.rglob("*.html")):          # sorted: the newest run folder last
            name = path.stem.partition("-")[2]
            if name:
                pages[name] = str(path)
    return pages


def link(path: str | None, folder: Path) -> str | None:
    """A link from the run page in ``folder`` to ``path``: relative when it is inside the report folder's
    parent (travels with the reports to a shared path or S3), else a ``file:`` URI."""
    if not path:
        return None
    target = Path(path).resolve()
    base = Path(folder).resolve()
    try:
        target.relative_to(base.parent)
    except ValueError:
        return target.as_uri()
    return Path(os.path.relpath(target, base)).as_posix()


def _sample(details: dict[str, Any], observed: Any) -> list[Any]:
    result = details.get("result") or {}
    for rows in (result.get("sample_rows"), (result.get("details") or {}).get("unexpected_rows"),
                 result.get("partial_unexpected_list"),
                 observed.get("partial_unexpected_list") if isinstance(observed, dict) else None):
        if rows:
            return list(rows)[:LISTED]
    return []


def expectations(conn: psycopg.Connection, run_id: str, folder: Path) -> dict[str, Any]:
    """The expectations run of this reconciliation, or the latest one (``linked`` says which).

    Returns ``{"run_id", "status", "linked", "finished_at", "evaluated", "passed", "failed", "errors",
    "not_applicable", "data_docs", "failures": [{suite, side, name, description, observed, rows, page}]}``,
    ``{"run_id": None}`` when no expectations run is stored.
    """
    try:
        runs = conn.execute(sql.SQL("SELECT run_id::text, status, started_at, finished_at, settings, summary FROM {} "
                                    "WHERE kind = 'check' AND status <> 'running' "
                                    "ORDER BY started_at DESC LIMIT 50").format(ident("runs"))).fetchall()
    except psycopg.Error as exc:
        return _failed_read("the expectations runs", exc)
    if not runs:
        return {"run_id": None}
    mine = Path(folder).name

    def linked(row: tuple) -> bool:
        """The DAG's checks step writes its Data Docs into ``<report_dir>/<diff run>/checks``."""
        settings = _json(row[4])
        where = settings.get("report_dir") if isinstance(settings, dict) else None
        return bool(where) and Path(where).parent.name == mine
    row = next((r for r in runs if linked(r)), runs[0])
    summary = _json(row[5]) or {}
    out: dict[str, Any] = {"run_id": row[0], "status": row[1], "linked": linked(row), "started_at": row[2],
                           "finished_at": row[3], "evaluated": summary.get("evaluated"),
                           "failed": summary.get("failed"), "not_applicable": summary.get("not_applicable"),
                           "error": summary.get("error"), "data_docs": link(summary.get("data_docs"), folder)}
    try:
        from reconcile.checks.store import load_results

        results = load_results(conn, row[0])
    except psycopg.Error as exc:
        out.update(_failed_read("the expectation results", exc))
        return out
    pages = _docs_pages(summary.get("data_docs"))
    failures = []
    statuses: dict[str, int] = {}
    for r in results:
        status = r.get("status") or ("passed" if r["success"] else "failed")
        statuses[status] = statuses.get(status, 0) + 1
        if status not in ("failed", "error"):
            continue
        details = _json(r.get("details")) or {}
        observed = _json(r.get("observed"))
        failures.append({"suite": r["suite"], "side": r["side"], "name": r["name"], "asset": r.get("asset"),
                         "expectation": r["expectation"], "status": status,
                         "description": details.get("description") or "",
                         "exception": details.get("exception"), "observed": observed,
                         "rows": _sample(details, observed),
                         "page": link(pages.get(_gx_suite(r["suite"], r.get("asset"), r["side"])), folder)})
    out.update(failures=failures, passed=statuses.get("passed", 0), errors=statuses.get("error", 0),
               failed=statuses.get("failed", 0) if results else out["failed"])
    if results:
        out["evaluated"] = sum(n for s, n in statuses.items() if s != "not_applicable")
        out["not_applicable"] = statuses.get("not_applicable", 0)
    return out


# -- replay and dead letters ----------------------------------------------------------------------------


def replay(conn: psycopg.Connection, *, window_hours: float = 24.0, slot: str | None = None) -> dict[str, Any]:
    """The replay's recent lag and the open dead letters.

    Returns ``{"window_hours", "runs", "latest": {run_id, status, finished_at, lag_seconds_p50,
    lag_seconds_p99, caught_up}, "max_p99", "lag_seconds_p99", "watermark": {slot, last_commit_ts,
    updated_at}, "dead_letters_open", "dead_letters": [...], "split_windows": {count, open, changes}}``
    (source transactions applied in pieces within the window, or still partly applied); ``lag_seconds_p99`` is
    the latest known p99
    (what the history charts).
    """
    out: dict[str, Any] = {"window_hours": window_hours}
    try:
        rows = conn.execute(sql.SQL(
            "SELECT run_id::text, status, started_at, finished_at, summary FROM {} WHERE kind = 'replay' "
            "AND summary IS NOT NULL AND coalesce(finished_at, started_at) >= now() - %s * interval '1 hour' "
            "ORDER BY coalesce(finished_at, started_at) DESC LIMIT 200").format(ident("runs")),
            (window_hours,)).fetchall()
    except psycopg.Error as exc:
        return _failed_read("the replay runs", exc)
    runs = [{"run_id": r[0], "status": r[1], "started_at": r[2], "finished_at": r[3], **(_json(r[4]) or {})}
            for r in rows]
    for r in runs:
        r["run_id"] = r.get("run_id") or ""
    p99s = [r["lag_seconds_p99"] for r in runs if isinstance(r.get("lag_seconds_p99"), (int, float))]
    latest = next((r for r in runs if isinstance(r.get("lag_seconds_p99"), (int, float))), runs[0] if runs else None)
    out.update(runs=len(runs), max_p99=max(p99s) if p99s else None,
               lag_seconds_p99=latest.get("lag_seconds_p99") if latest else None,
               latest={k: latest.get(k) for k in ("run_id", "status", "started_at", "finished_at", "lag_seconds_p50",
                                                  "lag_seconds_p99", "caught_up", "txns_applied")} if latest else None)
    try:
        if slot:
            wm = conn.execute(sql.SQL("SELECT slot_name, last_commit_lsn, updated_at FROM {} WHERE slot_name = %s").format(
                ident("replay_state")), (slot,)).fetchone()
            out["watermark"] = {"slot": wm[0], "lsn": wm[1], "updated_at": wm[2]} if wm else None
        (count,) = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE resolved_at IS NULL").format(
            ident("dead_letters"))).fetchone()
        letters = conn.execute(sql.SQL(
            "SELECT dead_letter_id::text, xid, table_name, reason, created_at FROM {} WHERE resolved_at IS NULL "
            "ORDER BY created_at LIMIT %s").format(ident("dead_letters")), (LISTED,)).fetchall()
    except psycopg.Error as exc:
        out.update(_failed_read("the dead letters", exc))
        return out
    out.update(dead_letters_open=int(count), dead_letters=[
        {"id": r[0], "xid": r[1], "table": r[2], "reason": r[3], "created_at": r[4]} for r in letters])
    try:  # source transactions applied in pieces (the split policy): a reader may have seen part of one
        win = conn.execute(sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE finished_at IS NULL), coalesce(sum(changes), 0) FROM {} "
            "WHERE finished_at IS NULL OR finished_at >= now() - %s * interval '1 hour'").format(
            ident("replay_windows")), (window_hours,)).fetchone()
    except psycopg.Error as exc:
        out.update(_failed_read("the replay's non-atomic windows", exc))
        return out
    out["split_windows"] = {"count": int(win[0]), "open": int(win[1]), "changes": int(win[2])}
    return out


# -- the gate -------------------------------------------------------------------------------------------


def gate(config: Any, conn: psycopg.Connection) -> dict[str, Any]:
    """The next gate's evaluation now (not recorded): ``{"state", "gate", "evaluation"}`` or ``{"error"}``."""
    from reconcile.errors import ReconcileError

    try:
        from reconcile import gates

        state = gates.current_state(config, conn=conn)
        name = NEXT_GATE.get(state)
        if name is None:
            return {"state": state, "gate": None, "evaluation": None}
        return {"state": state, "gate": name, "evaluation": gates.evaluate(config, name, record=False, conn=conn).to_dict()}
    except (ReconcileError, psycopg.Error) as exc:
        log.warning("report: the gate could not be evaluated: %s", config.safe_message(exc))
        return {"error": f"the gate could not be evaluated: {config.safe_message(exc)}"}


# -- coverage -------------------------------------------------------------------------------------------


def coverage(summary: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """What the run compared: tables (rows, segments checksummed, candidates re-read), the balances."""
    by_name = {r["table"]: r for r in results}
    tables = []
    for name, t in (summary.get("tables") or {}).items():
        r = by_name.get(name, {})
        d = r.get("details") or {}
        notes = []
        if d.get("only_source"):
            notes.append("only on the source: " + ", ".join(d["only_source"]))
        if d.get("only_target"):
            notes.append("only on the target: " + ", ".join(d["only_target"]))
        if d.get("lag_aware") and d.get("watermark_passed") is False:
            notes.append("the replay watermark did not pass in time: compared statically")
        if r.get("error"):
            notes.append(r["error"])
        tables.append({"name": name, **t, "segments": d.get("segments"), "candidates": d.get("candidates"),
                       "buckets": d.get("buckets_fetched"), "key": d.get("key"), "lag_aware": d.get("lag_aware"),
                       "queries": r.get("queries"), "duration_ms": r.get("duration_ms"), "notes": notes})
    compared = [t for t in tables if t["status"] in ("green", "red")]
    return {"tables": tables, "compared": len(compared), "configured": len(tables),
            "segments": sum(t["segments"] or 0 for t in tables),
            "rows_source": sum(t["rows_source"] or 0 for t in tables),
            "balances": summary.get("balances") or {}, "full": summary.get("full_reconciliation") is not False,
            "partial_reasons": summary.get("partial_reasons") or []}


# -- the run page a gate decision rests on --------------------------------------------------------------


def run_link(conn: psycopg.Connection, evaluation: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The diff run an evaluation rests on (its ``latest_diff_clean`` evidence names it; else the latest
    finished diff run) with its verdict, faults / unexplained counts and the links to its page and the history.

    Returns ``{"run_id", "verdict", "finished_at", "faults", "unexplained", "explained", "balance_differences",
    "report_page", "history_page"}``, or None when no finished diff run is stored.
    """
    run_id = None
    for c in (evaluation or {}).get("criteria") or []:
        if c.get("name") in ("latest_diff_clean", "reverse_reconciliation_green"):
            run_id = (c.get("evidence") or {}).get("run_id")
    try:
        if run_id:
            row = conn.execute(sql.SQL("SELECT run_id::text, status, finished_at, summary FROM {} WHERE run_id = %s "
                                       "AND kind = 'diff'").format(ident("runs")), (run_id,)).fetchone()
        else:
            row = conn.execute(sql.SQL("SELECT run_id::text, status, finished_at, summary FROM {} WHERE kind = 'diff' "
                                       "AND status <> 'running' ORDER BY started_at DESC LIMIT 1").format(
                ident("runs"))).fetchone()
    except psycopg.Error as exc:
        log.warning("report: could not read the diff run for the approval (%s)", type(exc).__name__)
        return None
    if row is None:
        return None
    summary = _json(row[3]) or {}
    att = summary.get("attribution") or {}
    page = summary.get("report_page") or (f"{summary['report_dir']}/report.html" if summary.get("report_dir") else None)
    return {"run_id": row[0], "verdict": summary.get("verdict") or row[1], "finished_at": row[2],
            "faults": att.get("faults"), "unexplained": att.get("unexplained"),
            "explained": att.get("explained_balance_differences"),
            "balance_differences": summary.get("balance_differences"),
            "persistent_mismatches": summary.get("persistent_mismatches"),
            "report_page": page, "history_page": summary.get("history_page")}
