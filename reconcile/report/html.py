"""The self-contained HTML report of a diff run (inline CSS and SVG; nothing is fetched).

Layout, top to bottom: a verdict banner (green ``#1a7f37`` / red ``#cf222e``, full width, so it
is visible at a glance and testable by pixel colour), key figures, a bar chart of findings per
table and kind, per-table status, counts by kind, the largest money discrepancies, column-level
detail of changed rows, balance diffs per currency and their findings, then run facts (LSNs,
durations, settings). Every value is HTML-escaped.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from html import escape
from typing import Any

from reconcile.report.coverage import coverage_html
from reconcile.report.notes import balance_phrase, notes as scope_notes

GREEN, RED, AMBER = "#1a7f37", "#cf222e", "#9a6700"
KIND_COLOURS = {"missing_in_target": "#cf222e", "extra_in_target": "#8250df", "changed": "#bc4c00",
                "balance_mismatch": "#0550ae", "balance_vs_entries": "#116329", "trial_balance": "#953800",
                "currency_total": "#6639ba", "unbalanced_txn": "#a40e26", "daily_total": "#57606a"}
MAX_ROWS = 200

CSS = """
*{box-sizing:border-box}body{margin:0;font:14px/1.45 -apple-system,'Segoe UI',Helvetica,Arial,sans-serif;
color:#1f2328;background:#fff}main{padding:0 28px 40px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;
padding-bottom:4px}.banner{color:#fff;padding:22px 28px}.banner h1{margin:0;font-size:34px;letter-spacing:.5px}
.banner p{margin:6px 0 0;font-size:15px;opacity:.95}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:18px 0}
.card{border:1px solid #d0d7de;border-radius:8px;padding:10px 14px;min-width:150px}.card b{display:block;font-size:24px}
.card span{color:#57606a;font-size:12px;text-transform:uppercase;letter-spacing:.4px}table{border-collapse:collapse;
width:100%;margin:6px 0 4px}th,td{border:1px solid #d0d7de;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}.badge{display:inline-block;
padding:1px 8px;border-radius:10px;color:#fff;font-weight:600;font-size:12px}code{font:12px ui-monospace,Menlo,monospace;
background:#f6f8fa;padding:1px 4px;border-radius:4px;word-break:break-all}.muted{color:#57606a}.neg{color:#cf222e}
"""


def _e(value: Any) -> str:
    if value is None:
        return '<span class="muted">NULL</span>'
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False, default=str)
    return escape(str(value))


def _badge(status: str) -> str:
    colour = {"green": GREEN, "red": RED, "error": AMBER, "skipped": "#57606a"}.get(status, "#57606a")
    return f'<span class="badge" style="background:{colour}">{escape(status)}</span>'


def _num(n: Any) -> str:
    if n is None:
        return '<span class="muted">–</span>'
    return f"{n:,}" if isinstance(n, int) else escape(str(n))


def _money(text: Any) -> str:
    if text in (None, ""):
        return ""
    try:
        d = Decimal(str(text))
    except InvalidOperation:
        return escape(str(text))
    cls = ' class="n neg"' if d < 0 else ' class="n"'
    return f"<td{cls}>{escape(str(text))}</td>"


def _abs_delta(f: dict) -> Decimal:
    try:
        return abs(Decimal(str(f.get("money_delta"))))
    except InvalidOperation:
        return Decimal(0)


def chart_svg(per_table: dict[str, dict[str, int]]) -> str:
    """Horizontal stacked bars: findings per table, coloured by kind (an inline SVG)."""
    rows = [(t, kinds) for t, kinds in per_table.items()]
    if not rows:
        return ""
    width, label_w, bar_h, gap = 760, 190, 22, 10
    biggest = max((sum(k.values()) for _, k in rows), default=0) or 1
    height = len(rows) * (bar_h + gap) + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="Findings per table and kind">']
    for i, (table, kinds) in enumerate(rows):
        y = 10 + i * (bar_h + gap)
        parts.append(f'<text x="0" y="{y + 16}" font-size="13" fill="#1f2328">{escape(table)}</text>')
        x = label_w
        total = sum(kinds.values())
        for kind, n in sorted(kinds.items()):
            if n <= 0:
                continue
            w = max(2.0, (width - label_w - 70) * n / biggest)
            parts.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{KIND_COLOURS.get(kind, "#57606a")}">'
                         f'<title>{escape(kind)}: {n}</title></rect>')
            x += w
        parts.append(f'<text x="{x + 6:.1f}" y="{y + 16}" font-size="13" fill="#57606a">{total:,}</text>')
    ly = len(rows) * (bar_h + gap) + 22
    kinds_present = sorted({k for _, ks in rows for k, n in ks.items() if n > 0})
    lx = label_w
    for kind in kinds_present:
        parts.append(f'<rect x="{lx}" y="{ly - 10}" width="10" height="10" fill="{KIND_COLOURS.get(kind, "#57606a")}"/>'
                     f'<text x="{lx + 14}" y="{ly}" font-size="12" fill="#57606a">{escape(kind)}</text>')
        lx += 24 + 7 * len(kind)
    parts.append("</svg>")
    return "".join(parts)


def render_html(context: dict[str, Any]) -> str:
    s = context["summary"]
    run = context.get("run", {})
    findings: list[dict] = context.get("findings", [])
    results: list[dict] = context.get("results", [])
    balances = context.get("balances") or {}
    verdict = s["verdict"]
    colour = GREEN if verdict == "green" else RED
    headline = "GREEN: source and target match" if verdict == "green" else "RED: differences found"
    if s.get("full_reconciliation") is False:
        headline += " (not a full reconciliation)"
    sub = (f'{s["persistent_mismatches"]:,} persistent row mismatches · {escape(balance_phrase(s))} · '
           f'{s["in_flight"]:,} in flight · run {escape(s["run_id"])}')
    out = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Diff {escape(verdict.upper())} · '
           f'{escape(s["run_id"])}</title><style>{CSS}</style></head><body>',
           f'<div class="banner" id="verdict" style="background:{colour}"><h1>{escape(headline)}</h1><p>{sub}</p></div>',
           "<main>"]
    said = scope_notes(s)
    if said:
        out.append('<h2>Scope of this run</h2><ul id="scope">' + "".join(
            f"<li>{escape(n)}</li>" for n in said) + "</ul>")
    if s.get("errors"):
        out.append('<h2>Errors</h2><ul>' + "".join(f"<li><b>{escape(k)}</b>: {escape(v)}</li>"
                                                    for k, v in s["errors"].items()) + "</ul>")
    compared = (s.get("balances") or {}).get("status") in (None, "green", "red")
    cards = [("Verdict", verdict.upper()), ("Persistent mismatches", f'{s["persistent_mismatches"]:,}'),
             ("Balance differences", f'{s["balance_differences"]:,}' if compared else balance_phrase(s)), ("In flight", f'{s["in_flight"]:,}'),
             ("Tables", f'{len(s["tables"]):,}'), ("Duration", f'{s["duration_seconds"]:.1f} s'),
             ("Start LSN", s.get("start_lsn") or "–")]
    out.append('<div class="cards">' + "".join(f'<div class="card"><span>{escape(k)}</span><b>{escape(v)}</b></div>'
                                                for k, v in cards) + "</div>")

    # Chart and counts by kind
    per_table: dict[str, dict[str, int]] = {}
    for name, t in s["tables"].items():
        per_table[name] = {"missing_in_target": t["missing"], "extra_in_target": t["extra"], "changed": t["changed"]}
    bal_kinds = (balances.get("details") or {}).get("by_kind") or {}
    if bal_kinds:
        per_table["balances"] = dict(bal_kinds)
    out.append("<h2>Findings by table and kind</h2>")
    if any(sum(k.values()) for k in per_table.values()):
        out.append(chart_svg(per_table))
    else:
        out.append('<p class="muted">No persistent findings.</p>')
    totals: dict[str, int] = {}
    for kinds in per_table.values():
        for k, n in kinds.items():
            totals[k] = totals.get(k, 0) + n
    out.append("<table><tr><th>Kind</th><th>Count</th></tr>" + "".join(
        f'<tr><td>{escape(k)}</td><td class="n">{n:,}</td></tr>' for k, n in sorted(totals.items())) + "</table>")

    # Per-table status
    by_name = {r["table"]: r for r in results}
    out.append("<h2>Tables</h2><table><tr><th>Table</th><th>Status</th><th>Rows source</th><th>Rows target</th>"
               "<th>Missing</th><th>Extra</th><th>Changed</th><th>In flight</th><th>Queries</th><th>Duration</th>"
               "<th>Notes</th></tr>")
    for name, t in s["tables"].items():
        r = by_name.get(name, {})
        d = r.get("details") or {}
        notes = []
        if d.get("only_source"):
            notes.append("only on source: " + ", ".join(d["only_source"]))
        if d.get("only_target"):
            notes.append("only on target: " + ", ".join(d["only_target"]))
        if d.get("lag_aware"):
            notes.append("lag-aware" + ("" if d.get("watermark_passed", True) else " (watermark did not pass in time)"))
        if r.get("error"):
            notes.append(r["error"])
        dur = r.get("duration_ms")
        out.append(f'<tr><td><code>{escape(name)}</code></td><td>{_badge(t["status"])}</td>'
                   f'<td class="n">{_num(t["rows_source"])}</td><td class="n">{_num(t["rows_target"])}</td>'
                   f'<td class="n">{_num(t["missing"])}</td><td class="n">{_num(t["extra"])}</td>'
                   f'<td class="n">{_num(t["changed"])}</td><td class="n">{_num(t["in_flight"])}</td>'
                   f'<td class="n">{_num(r.get("queries"))}</td>'
                   f'<td class="n">{"" if dur is None else f"{dur / 1000:.2f} s"}</td><td>{escape("; ".join(notes))}</td></tr>')
    out.append("</table>")

    # Largest money discrepancies
    money = sorted((f for f in findings if f.get("money_delta") not in (None, "", "0")), key=_abs_delta, reverse=True)
    out.append("<h2>Largest money discrepancies</h2>")
    if money:
        out.append("<table><tr><th>Table</th><th>Kind</th><th>Key</th><th>Currency</th><th>Target − source</th></tr>")
        for f in money[:50]:
            out.append(f'<tr><td><code>{escape(f["table"])}</code></td><td>{escape(f["kind"])}</td>'
                       f'<td><code>{_e(f["key"])}</code></td><td>{_e(f.get("currency"))}</td>{_money(f["money_delta"])}</tr>')
        out.append("</table>")
    else:
        out.append('<p class="muted">None.</p>')

    # Column-level detail
    rows = [f for f in findings if f["table"] != "balances"][:MAX_ROWS]
    out.append("<h2>Row findings (column-level detail)</h2>")
    if rows:
        out.append("<table><tr><th>Table</th><th>Kind</th><th>Key</th><th>Column</th><th>Source</th><th>Target</th></tr>")
        for f in rows:
            if f["kind"] == "changed":
                for col in f.get("columns") or []:
                    out.append(f'<tr><td><code>{escape(f["table"])}</code></td><td>changed</td><td><code>{_e(f["key"])}</code></td>'
                               f'<td><code>{escape(col)}</code></td><td><code>{_e((f["source"] or {}).get(col))}</code></td>'
                               f'<td><code>{_e((f["target"] or {}).get(col))}</code></td></tr>')
            else:
                row = f["source"] if f["kind"] == "missing_in_target" else f["target"]
                out.append(f'<tr><td><code>{escape(f["table"])}</code></td><td>{escape(f["kind"])}</td>'
                           f'<td><code>{_e(f["key"])}</code></td><td>(whole row)</td>'
                           f'<td><code>{_e(row) if f["kind"] == "missing_in_target" else "—"}</code></td>'
                           f'<td><code>{_e(row) if f["kind"] == "extra_in_target" else "—"}</code></td></tr>')
        out.append("</table>")
        if len([f for f in findings if f["table"] != "balances"]) > MAX_ROWS:
            out.append(f'<p class="muted">First {MAX_ROWS} shown; findings.csv lists every stored finding.</p>')
    else:
        out.append('<p class="muted">None.</p>')

    # Balances
    out.append("<h2>Balances</h2>")
    bd = balances.get("details") or {}
    state = s.get("balances") or {}
    if not balances or balances.get("status") in ("skipped", "not_applicable"):
        why = state.get("reason") or "diff_balances did not run"
        out.append(f'<p id="balances-state"><b>{escape(balance_phrase(s).capitalize())}</b>: {escape(why)}.</p>')
    else:
        for kind, why in sorted((state.get("not_applicable") or bd.get("not_applicable") or {}).items()):
            out.append(f'<p class="muted">{escape(kind)}: not applicable ({escape(why)})</p>')
        out.append(f'<p>Status {_badge(balances["status"])} · {bd.get("accounts_source", 0):,} accounts on the source, '
                   f'{bd.get("accounts_target", 0):,} on the target · {bd.get("days", 0):,} days of daily totals compared'
                   f' · {balances.get("in_flight", 0):,} in flight</p>')
        if bd.get("currencies"):
            out.append("<table><tr><th>Currency</th><th>Sum of balances (source)</th><th>Sum of balances (target)</th>"
                       "<th>Entries source</th><th>Entries target</th><th>Trial balance source</th>"
                       "<th>Trial balance target</th></tr>")
            for c in bd["currencies"]:
                out.append(f'<tr><td>{_e(c["currency"])}</td><td class="n">{_e(c.get("balances_source", "n/a"))}</td>'
                           f'<td class="n">{_e(c.get("balances_target", "n/a"))}</td><td class="n">{_num(c["entries_source"])}</td>'
                           f'<td class="n">{_num(c["entries_target"])}</td><td class="n">{_e(c["trial_source"])}</td>'
                           f'<td class="n">{_e(c["trial_target"])}</td></tr>')
            out.append("</table>")
        bf = [f for f in findings if f["table"] == "balances"][:MAX_ROWS]
        if bf:
            out.append("<table><tr><th>Kind</th><th>Key</th><th>Currency</th><th>Source</th><th>Target</th>"
                       "<th>Difference</th></tr>")
            for f in bf:
                out.append(f'<tr><td>{escape(f["kind"])}</td><td><code>{_e(f["key"])}</code></td><td>{_e(f.get("currency"))}</td>'
                           f'<td><code>{_e(f["source"])}</code></td><td><code>{_e(f["target"])}</code></td>'
                           f'{_money(f.get("money_delta")) or "<td></td>"}</tr>')
            out.append("</table>")

    out.append(coverage_html(s))

    # Run facts
    settings = run.get("settings") or {}
    facts = [("Run id", s["run_id"]), ("Status", s.get("status", verdict)), ("Started", run.get("started_at")),
             ("Finished", run.get("finished_at")), ("Duration", f'{s["duration_seconds"]:.3f} s'),
             ("Start LSN (source)", s.get("start_lsn")), ("Replay slot", settings.get("slot_name")),
             ("Lag wait", f'{settings.get("lag_wait_seconds")} s'), ("Report folder", s.get("report_dir"))]
    out.append("<h2>Run</h2><table>" + "".join(f"<tr><th>{escape(k)}</th><td><code>{_e(v)}</code></td></tr>"
                                              for k, v in facts) + "</table>")
    diff_settings = settings.get("diff") or {}
    if diff_settings:
        out.append("<h2>Settings</h2><table>" + "".join(
            f"<tr><th>{escape(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in sorted(diff_settings.items()))
            + "</table>")
    out.append("</main></body></html>\n")
    return "".join(out)
