"""The evidence sections of the run page, as plain data for ``run.html.j2``: the gate's criteria, the
expectations, replay lag and dead letters, what was covered, balances per currency (all readable cells,
:mod:`reconcile.report.cells`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from reconcile.report import cells
from reconcile.report.notes import balance_phrase

__all__ = ["coverage_view", "currencies_view", "expectations_view", "gate_view", "replay_view", "seconds"]


def seconds(value: Any) -> str:
    return "–" if value is None else f"{float(value):,.2f} s"


def _evidence_pairs(evidence: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for k, v in evidence.items():
        if isinstance(v, str) and len(v) >= 20 and v[4:5] == "-" and "T" in v:
            v = cells.utc(v)
        out.append((k, cells.plain(v, limit=160)))
    return out


def gate_view(gate: dict[str, Any] | None) -> dict[str, Any]:
    if not gate:
        return {"title": "Cutover gate", "note": "The gate was not evaluated for this page."}
    if gate.get("error"):
        return {"title": "Cutover gate", "error": gate["error"]}
    ev = gate.get("evaluation")
    if ev is None:
        return {"title": "Cutover gate", "note": f"The cutover state is {gate.get('state')}: no gate is left to pass."}
    failing = ev.get("failing") or []
    frm, to = {"read": ("shadow", "read_cutover"), "write": ("read_cutover", "write_cutover"),
               "rollback": ("write_cutover", "read_cutover")}.get(ev["gate"], ("", ""))
    verdict = "every criterion passes" if ev.get("passed") else f"{len(failing)} of {len(ev['criteria'])} criteria fail"
    return {"title": f"The {ev['gate']} gate ({frm} → {to}) after this run: {verdict}",
            "note": f"Evaluated {cells.utc(ev.get('evaluated_at'))} from the stored history, this run included "
                    f"(evidence hash {str(ev.get('evidence_hash', ''))[:16]}…; not recorded here: the reconciliation's "
                    "gate_evidence step records the evaluation the approver sees).",
            "passed": ev.get("passed"), "failing": failing,
            "criteria": [{"name": c["name"], "passed": c["passed"], "message": c.get("message"),
                          "evidence": _evidence_pairs(c.get("evidence") or {})} for c in ev["criteria"]]}


def expectations_view(exp: dict[str, Any] | None) -> dict[str, Any]:
    if not exp:
        return {"title": "Expectations", "note": "Not read for this page."}
    if exp.get("error") and not exp.get("run_id"):
        return {"title": "Expectations", "error": exp["error"]}
    if not exp.get("run_id"):
        return {"title": "Expectations", "note": "No expectations run is stored; run `reconcile check`."}
    evaluated, failed = exp.get("evaluated") or 0, exp.get("failed") or 0
    passed = exp.get("passed", evaluated - failed - (exp.get("errors") or 0))
    title = f"Expectations: {passed:,} of {evaluated:,} passed"
    if failed or exp.get("errors"):
        title += f", {failed:,} failed" + (f", {exp['errors']:,} could not run" if exp.get("errors") else "")
    if exp.get("not_applicable"):
        title += f" ({exp['not_applicable']:,} not applicable to this ledger)"
    which = ("the expectations run of this reconciliation" if exp.get("linked")
             else "the latest expectations run (not part of this diff run)")
    def sample(r: Any) -> str:
        if isinstance(r, dict):
            return ", ".join(f"{k}={cells.plain(v, limit=60)}" for k, v in r.items())
        return cells.plain(r, limit=160)
    failures = [{**f, "observed": cells.plain(f.get("observed"), limit=120),
                 "rows": [sample(r) for r in f.get("rows") or []]} for f in exp.get("failures") or []]
    return {"title": title, "failures": failures, "data_docs": exp.get("data_docs"), "error": exp.get("error"),
            "note": f"From {which}: run {exp['run_id']}, {exp.get('status')}, finished {cells.utc(exp.get('finished_at'))}."}


def replay_view(rep: dict[str, Any] | None, lag_limit: float | None) -> dict[str, Any]:
    if not rep:
        return {"facts": [("Replay", "not read for this page")]}
    latest = rep.get("latest") or {}
    facts = []
    if latest:
        facts.append(("Latest replay run", f"{latest.get('status')} · finished {cells.utc(latest.get('finished_at'))} · "
                                           f"lag p50 {seconds(latest.get('lag_seconds_p50'))}, p99 "
                                           f"{seconds(latest.get('lag_seconds_p99'))}"
                                           + (" · caught up" if latest.get("caught_up") else "")))
        facts.append((f"Highest lag p99, last {rep.get('window_hours', 24):g} h",
                      seconds(rep.get("max_p99")) + (f" (the gate allows {lag_limit:g} s)" if lag_limit else "")))
    else:
        facts.append(("Replay", f"no replay run in the last {rep.get('window_hours', 24):g} h"))
    wm = rep.get("watermark")
    if wm:
        facts.append(("Replay watermark", f"{wm.get('lsn')} on slot {wm.get('slot')}, written {cells.utc(wm.get('updated_at'))}"))
    if "dead_letters_open" in rep:
        facts.append(("Open dead letters", f"{rep['dead_letters_open']:,}" + (
            " (source transactions the replay could not apply: resolve them before a cutover)"
            if rep["dead_letters_open"] else "")))
    split = rep.get("split_windows")
    if split and split.get("count"):
        facts.append(("Non-atomic windows", f"{split['count']:,} source transaction(s) applied in pieces "
                                            f"({split['changes']:,} changes) in the last {rep.get('window_hours', 24):g} h"
                      + (f"; {split['open']:,} still partly applied: a reader of the target sees part of them"
                         if split.get("open") else "; every piece applied")))
    return {"facts": facts, "error": rep.get("error"),
            "dead_letters": [{**d, "since": cells.utc(d.get("created_at"))} for d in rep.get("dead_letters") or []]}


def coverage_view(s: dict[str, Any], results: list[dict[str, Any]], balances: dict[str, Any] | None) -> dict[str, Any]:
    from reconcile.report.evidence import coverage

    cov = coverage(s, results)
    tables = []
    for t in cov["tables"]:
        tables.append({**t, **{k: cells.count(t.get(k)) for k in ("rows_source", "rows_target", "missing", "extra",
                                                                    "changed", "in_flight", "segments", "candidates")},
                       "duration": "" if t.get("duration_ms") is None else f"{t['duration_ms'] / 1000:.2f} s",
                       "notes": "; ".join(t["notes"])})
    state = s.get("balances") or {}
    bd = (balances or {}).get("details") or {}
    lines, skipped = [], None
    if not balances or (balances or {}).get("status") in ("skipped", "not_applicable"):
        skipped = (balance_phrase(s).capitalize(), state.get("reason") or "diff_balances did not run")
    else:
        lines.append(f"Balances compared ({(balances or {}).get('status')}): {bd.get('accounts_source', 0):,} accounts on the "
                     f"source, {bd.get('accounts_target', 0):,} on the target, {bd.get('days', 0):,} days of daily totals, "
                     f"{(balances or {}).get('in_flight', 0):,} in flight.")
    na = sorted((state.get("not_applicable") or bd.get("not_applicable") or {}).items())
    full = "a full reconciliation" if cov["full"] else "NOT a full reconciliation (" + "; ".join(cov["partial_reasons"]) + ")"
    sentence = (f"{cov['compared']} of {cov['configured']} tables compared, {cov['segments']:,} segments checksummed, "
                f"balances {state.get('status') or 'not run'}: {full}.")
    return {"tables": tables, "balance_lines": lines, "balances_skipped": skipped, "not_applicable": na,
            "sentence": sentence, "full": cov["full"], "compared": cov["compared"], "configured": cov["configured"]}


def currencies_view(balances: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for c in ((balances or {}).get("details") or {}).get("currencies") or []:
        cur = c.get("currency")
        row = {"currency": cur or "(one currency)",
               "balances_source": cells.amount(c["balances_source"], None) if "balances_source" in c else "n/a",
               "balances_target": cells.amount(c["balances_target"], None) if "balances_target" in c else "n/a",
               "entries_source": cells.count(c.get("entries_source")),
               "entries_target": cells.count(c.get("entries_target")),
               "trial_source": cells.amount(c.get("trial_source")), "trial_target": cells.amount(c.get("trial_target"))}
        for side in ("source", "target"):
            d = cells._decimal(c.get(f"trial_{side}"))
            row[f"trial_{side}_cls"] = "neg" if d not in (None, Decimal(0)) else ""
        rows.append(row)
    return rows
