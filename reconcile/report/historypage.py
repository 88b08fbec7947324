"""The history page (``<report_dir>/index.html``), regenerated after every run beside the run folders.

Top to bottom at 1400x900: a banner with the latest run's verdict and its faults / unexplained counts;
cards (runs, the gate's green streak, open and resolved findings, replay lag); the latest run's
unexplained differences and faults (first few, linking to its page); the timeline
(:mod:`reconcile.report.timeline`) of verdicts, row mismatches, balance differences and replay lag with
the gate's streak drawn over the runs it counts. Below: every run of the window, and each finding's
first- and last-seen run (open ones, then resolved ones). ``findings-history.csv`` holds the same
findings in full (up to :data:`reconcile.report.history.RESOLVED` resolved ones).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

from reconcile.report import cells
from reconcile.report.attribution import Roles
from reconcile.report.html import GREEN, RED, Labels, attribution_of, balance_key, fault_view, unexplained_view
from reconcile.report.templates import render
from reconcile.report.timeline import shapes

__all__ = ["counted_runs", "history_csv", "render_history"]

SHOWN = 200
"""Open / resolved findings listed on the page (all of them in findings-history.csv)."""
LATEST_SHOWN = 4
"""The latest run's faults and unexplained differences shown on the history page."""


def _plural(n: int, one: str) -> str:
    return f"{n:,} {one}" + ("" if n == 1 else "s")


def _href(run_id: str | None) -> str:
    return f"{run_id}/report.html" if run_id else "#"


def _parse(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    try:
        moment = dt.datetime.fromisoformat(str(value))
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def counted_runs(runs: list[dict[str, Any]], evaluation: dict[str, Any] | None) -> tuple[set[str], dict[str, Any] | None]:
    """The runs the gate's ``green_diff_streak`` counts (ids) and the streak's label, from its evidence.

    The evidence lists the newest counted runs (up to ten) and when the streak started: a complete green run
    started since then counts too (complete: the summary does not say it was partial).
    """
    if not evaluation:
        return set(), None
    crit = next((c for c in evaluation.get("criteria") or [] if c.get("name") == "green_diff_streak"), None)
    if crit is None:
        return set(), None
    e = crit.get("evidence") or {}
    ids = set(e.get("recent_green_run_ids") or [])
    since = _parse(e.get("streak_started_at"))
    if since is not None and e.get("consecutive_green"):
        for r in runs:
            started = _parse(r.get("started_at"))
            if (r["status"] == "green" and started is not None and started >= since
                    and (r.get("summary") or {}).get("full_reconciliation") is not False):
                ids.add(r["run_id"])
    count, need = e.get("consecutive_green", 0), e.get("required_runs", "?")
    label = (f"{evaluation.get('gate', '')} gate streak: {count} of {need} runs"
             + (f", {e.get('span_hours', 0):g} h of {e.get('required_hours', 0):g} h" if count else "")
             + (" ✓" if crit.get("passed") else ""))
    broken = (e.get("streak_broken_by") or {}).get("run_id")
    if not count and broken:
        label += " (broken by the red run marked ✕)"
    return ids, {"label": label, "broken_by": broken, "passed": crit.get("passed"), "count": count, "need": need}


def _latest_lists(context: dict[str, Any], seen: dict[str, dict]) -> dict[str, Any]:
    s = context["summary"]
    names = Labels(context.get("roles") or Roles(None), context.get("results") or [])
    att = attribution_of(context)
    faults = [fault_view(f, names, seen, s["run_id"]) for f in att.faults[:LATEST_SHOWN]]
    unexplained = [unexplained_view(u, names, seen, s["run_id"]) for u in att.unexplained[:LATEST_SHOWN]]
    hidden = max(0, len(att.faults) - LATEST_SHOWN) + max(0, len(att.unexplained) - LATEST_SHOWN)
    return {"counts": {"faults": len(att.faults), "unexplained": len(att.unexplained)}, "faults": faults,
            "unexplained": unexplained,
            "faults_none": "No row differs in the latest run." if not s["persistent_mismatches"] else "None stored.",
            "unexplained_none": "Every balance difference of the latest run is explained by a fault."
            if s.get("balance_differences") else "No balance difference in the latest run.",
            "more": f"{hidden:,} more on the latest run page" if hidden else None,
            "attribution_note": None if att.complete else "not every finding of the latest run is stored; see its page."}


def _seen_row(f: dict[str, Any], names: Any) -> dict[str, Any]:
    key = cells.key_pairs(names.keys.get(f["table"]), f["key"]) if f["table"] != "balances" else balance_key(f, names)
    return {"table": f["table"], "kind": f["kind"].replace("_", " "), "key": key,
            "first": cells.utc(f["first_at"], seconds=False), "first_href": _href(f.get("first_run")),
            "last": cells.utc(f["last_at"], seconds=False), "last_href": _href(f.get("last_run")), "runs": f["runs"]}


def history_view(runs: list[dict[str, Any]], seen: dict[str, Any], gate: dict[str, Any] | None,
                 latest: dict[str, Any], *, generated: dt.datetime | None = None) -> dict[str, Any]:
    """Everything the history page shows (``runs`` oldest first, the latest run's context last)."""
    s = latest["summary"]
    evaluation = (gate or {}).get("evaluation")
    ids, streak = counted_runs(runs, evaluation)
    for r in runs:
        r["counted"] = r["run_id"] in ids
    names = Labels(latest.get("roles") or Roles(None), latest.get("results") or [])
    att = attribution_of(latest)
    red = s["verdict"] != "green"
    headline = (f"Latest run RED: {_plural(len(att.faults), 'fault')}, "
                f"{_plural(len(att.unexplained), 'unexplained difference')}"
                if red else "Latest run GREEN: source and target match")
    by_status: dict[str, int] = {}
    for r in runs:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    cards = [{"label": "Runs shown", "value": f"{len(runs):,}", "state": "info",
              "note": " · ".join(f"{n:,} {k}" for k, n in sorted(by_status.items()))}]
    if streak:
        cards.append({"label": f"{evaluation['gate'].capitalize()} gate streak", "value": f"{streak['count']} of {streak['need']}",
                      "state": "ok" if streak["passed"] else "bad", "note": streak["label"], "id": "streak-card"})
        fails = len(evaluation.get("failing") or [])
        cards.append({"label": f"{evaluation['gate'].capitalize()} gate", "state": "ok" if evaluation.get("passed") else "bad",
                      "value": "ready" if evaluation.get("passed") else f"{fails} of {len(evaluation['criteria'])} fail",
                      "note": ", ".join(evaluation.get("failing") or []) or "all criteria pass"})
    elif gate and gate.get("error"):
        cards.append({"label": "Cutover gate", "value": "not evaluated", "state": "warn", "note": gate["error"]})
    open_list = sorted(seen.get("open", {}).values(), key=lambda f: (f["first_at"], f["table"], f["kind"]))
    open_rows = sum(1 for f in open_list if f["table"] != "balances")
    cards.append({"label": "Open findings", "value": f"{len(open_list):,}", "state": "bad" if open_list else "ok",
                  "note": f"in the latest run: {open_rows:,} row, {len(open_list) - open_rows:,} balance"})
    cards.append({"label": "Resolved findings", "value": f"{seen.get('resolved_total', 0):,}", "state": "info",
                  "note": "seen before, gone in the latest run"})
    lag = (s.get("replay") or {}).get("lag_seconds_p99")
    cards.append({"label": "Replay lag p99", "value": "–" if lag is None else f"{float(lag):,.2f} s", "state": "info",
                  "note": "recorded with the latest run"})
    table = []
    for r in reversed(runs):
        rs = r.get("summary") or {}
        ra = rs.get("attribution") or {}
        n = int(rs.get("balance_differences") or 0)
        lag_r = (rs.get("replay") or {}).get("lag_seconds_p99")
        table.append({"run_id": r["run_id"], "href": _href(r["run_id"]), "status": r["status"],
                      "partial": rs.get("full_reconciliation") is False, "started": cells.utc(r["started_at"]),
                      "mismatches": cells.count(rs.get("persistent_mismatches")),
                      "balances": cells.count(n) + (f" ({ra['explained_balance_differences']:,} explained)"
                                                    if n and "explained_balance_differences" in ra else ""),
                      "faults": cells.count(ra.get("faults")), "unexplained": cells.count(ra.get("unexplained")),
                      "unexplained_n": ra.get("unexplained") or 0, "in_flight": cells.count(rs.get("in_flight")),
                      "lag": "–" if lag_r is None else f"{float(lag_r):,.2f} s",
                      "streak": "counted" if r["counted"] else ("broke it" if streak and r["run_id"] == streak.get("broken_by") else "")})
    resolved = seen.get("resolved") or []
    latest_id = s["run_id"]
    return {
        "title": f"Reconciliation history · latest {s['verdict'].upper()}", "colour": RED if red else GREEN,
        "word": "RED" if red else "GREEN", "headline": headline,
        "sub": f"{s['persistent_mismatches']:,} persistent row mismatches · "
               f"{int(s.get('balance_differences') or 0):,} balance differences ({att.explained:,} explained) · "
               f"{_plural(len(runs), 'run')} below",
        "meta": f"latest run {latest_id} · {cells.utc((latest.get('run') or {}).get('finished_at'))}",
        "latest_href": _href(latest_id), "cards": cards, "latest": _latest_lists(latest, seen.get("open", {})),
        "runs": runs, "chart": shapes(runs, streak, href=lambda r: _href(r["run_id"])), "table": table,
        "open": [_seen_row(f, names) for f in open_list[:SHOWN]], "open_total": len(open_list),
        "open_more": f"{len(open_list) - SHOWN:,} more in findings-history.csv" if len(open_list) > SHOWN else None,
        "resolved": [_seen_row(f, names) for f in resolved[:SHOWN]], "resolved_total": seen.get("resolved_total", 0),
        "resolved_more": f"{seen.get('resolved_total', 0) - SHOWN:,} more in findings-history.csv"
        if seen.get("resolved_total", 0) > SHOWN else None,
        "generated": cells.utc(generated or dt.datetime.now(dt.timezone.utc)),
    }


def render_history(runs: list[dict[str, Any]], seen: dict[str, Any], gate: dict[str, Any] | None,
                   latest: dict[str, Any], *, generated: dt.datetime | None = None) -> str:
    """The history page (see the module docstring)."""
    return render("history.html.j2", v=history_view(runs, seen, gate, latest, generated=generated))


def history_csv(seen: dict[str, Any]) -> str:
    """Every finding of the window with its first- and last-seen run (open ones first)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["status", "table", "kind", "key", "currency", "first_run", "first_seen_utc", "last_run",
                "last_seen_utc", "runs"])
    rows = [("open", f) for f in sorted(seen.get("open", {}).values(), key=lambda f: f["first_at"])]
    rows += [("resolved", f) for f in seen.get("resolved") or []]
    for status, f in rows:
        w.writerow([status, f["table"], f["kind"], json.dumps(f["key"], ensure_ascii=False), f.get("currency") or "",
                    f.get("first_run") or "", cells.utc(f["first_at"], exact=True), f.get("last_run") or "",
                    cells.utc(f["last_at"], exact=True), f["runs"]])
    return buf.getvalue()
