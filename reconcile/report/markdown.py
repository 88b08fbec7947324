"""The short Markdown summary of a diff run (for a task log or a pull request)."""

from __future__ import annotations

from typing import Any

from reconcile.report.coverage import coverage_lines
from reconcile.report.notes import balance_phrase, direction_line, headline, notes


def _cell(value: Any) -> str:
    text = "–" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(context: dict[str, Any], *, top: int = 5) -> str:
    s = context["summary"]
    mark = "✅" if s["verdict"] == "green" else "❌"
    said = notes(s)
    lines = [f"# Diff {headline(s)} {mark}", "",
             f"Run `{s['run_id']}` · start LSN `{s.get('start_lsn')}` · {s['duration_seconds']:.1f} s · "
             f"{s['persistent_mismatches']:,} persistent mismatches · {balance_phrase(s)} · "
             f"{s['in_flight']:,} in flight", "", direction_line(s), "", *[f"- **{_cell(n)}**" for n in said], *([""] if said else []),
             "| table | status | rows source | rows target | missing | extra | changed | in flight |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, t in s["tables"].items():
        lines.append(f"| {_cell(name)} | {t['status']} | {_cell(t['rows_source'])} | {_cell(t['rows_target'])} | "
                     f"{t['missing']} | {t['extra']} | {t['changed']} | {t['in_flight']} |")
    for name, err in (s.get("errors") or {}).items():
        lines.append(f"\n**{_cell(name)}**: {_cell(err)}")
    money = [f for f in context.get("findings", []) if f.get("money_delta") not in (None, "", "0")][:top]
    if money:
        lines += ["", "Largest money discrepancies (target − source):", ""]
        for f in money:
            lines.append(f"- {f['table']} {f['kind']} key {_cell(f['key'])}: {f['money_delta']} {f.get('currency') or ''}".rstrip())
    lines += coverage_lines(s)
    lines += ["", "Details: report.html, findings.csv, summary.json in " + f"`{s['report_dir']}`", ""]
    return "\n".join(lines)
