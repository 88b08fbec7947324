"""The coverage and repair parts of a diff report: what the run verified, since when every row is
verified, when each slice of each table was last fully verified, and what was repaired.

Read from the run summary's ``coverage`` (:mod:`reconcile.diff.coverage`) and ``repairs``
(:mod:`reconcile.repair`); every value is HTML-escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

__all__ = ["coverage_html", "coverage_lines", "coverage_note"]


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else ("–" if value is None else str(value))


def _bound(value: Any) -> str:
    if value is None:
        return "∞"
    return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def _what(t: dict[str, Any]) -> str:
    """One phrase: what the run verified of a table."""
    if t.get("mode") == "incremental":
        ch, sw = t.get("changed") or {}, t.get("sweep") or {}
        return (f"{_n(ch.get('changes'))} tracked changes ({_n(ch.get('keys'))} keys, {_n(ch.get('ranges'))} ranges, "
                f"{_n(ch.get('carried_findings'))} earlier findings) + sweep slice {(sw.get('slice') or 0) + 1} of "
                f"{_n(sw.get('slices'))} [{_bound(sw.get('lo'))} .. {_bound(sw.get('hi'))})")
    if t.get("mode") == "full":
        return "every row" + (f" ({t['reason']})" if t.get("reason") else "")
    return "not verified"


def coverage_note(summary: dict[str, Any]) -> str | None:
    """One sentence for the notes under the verdict (None without coverage data)."""
    cov = summary.get("coverage")
    if not cov:
        return None
    since = cov.get("all_verified_since")
    head = "Incremental run" if cov.get("mode") == "incremental" else "Full run"
    tail = (f"every row of every table verified since {since}" if since
            else "not every row has been verified yet (a sweep pass or a full diff is still to complete)")
    return f"{head}: {tail}; guarantee: {cov.get('guarantee')}."


def coverage_lines(summary: dict[str, Any]) -> list[str]:
    """Markdown lines of the coverage and the repairs."""
    cov = summary.get("coverage")
    lines: list[str] = []
    if cov:
        lines += ["", f"Coverage ({cov.get('mode')}, sweep of {cov.get('sweep_runs')} runs):", ""]
        for name, t in (cov.get("tables") or {}).items():
            state = t.get("state") or {}
            read = t.get("rows_read") or {}
            lines.append(f"- {name}: {_what(t)}; rows read {_n(read.get('source'))} source / {_n(read.get('target'))} "
                         f"target; every row verified since {state.get('all_verified_since') or 'not yet'}")
    rep = summary.get("repairs")
    if rep:
        lines += ["", f"Repairs: {rep.get('sentence')}"]
    return lines


def coverage_html(summary: dict[str, Any]) -> str:
    """The "Coverage" section (and "Repairs" when the run repaired something)."""
    cov = summary.get("coverage")
    out: list[str] = []
    if cov:
        out.append(f'<h2>Coverage</h2><p>{escape(coverage_note(summary) or "")}</p>')
        out.append("<table><tr><th>Table</th><th>Verified this run</th><th>Rows read (source / target)</th>"
                   "<th>Every row verified since</th><th>Slices (last fully verified)</th></tr>")
        for name, t in (cov.get("tables") or {}).items():
            state = t.get("state") or {}
            read = t.get("rows_read") or {}
            slices = "<br>".join(
                f"slice {s['slice'] + 1} [{escape(_bound(s.get('lo')))} .. {escape(_bound(s.get('hi')))}): "
                f"{escape(str(s.get('last_verified_at') or 'not in this pass'))}"
                + (f" ({escape(str(s.get('last_mode')))}, {escape(str(s.get('last_status')))})" if s.get("last_mode")
                   else "") for s in state.get("slices") or [])
            out.append(f"<tr><td><code>{escape(name)}</code></td><td>{escape(_what(t))}</td>"
                       f'<td class="n">{_n(read.get("source"))} / {_n(read.get("target"))}</td>'
                       f"<td>{escape(str(state.get('all_verified_since') or 'not yet'))}</td>"
                       f"<td>{slices}</td></tr>")
        out.append("</table>")
    rep = summary.get("repairs")
    if rep:
        out.append(f"<h2>Repairs</h2><p>{escape(str(rep.get('sentence')))}</p>")
        outcomes = rep.get("outcomes") or {}
        if outcomes:
            out.append("<table><tr><th>Outcome</th><th>Keys</th></tr>" + "".join(
                f'<tr><td>{escape(k)}</td><td class="n">{_n(v)}</td></tr>' for k, v in sorted(outcomes.items()))
                + "</table>")
    return "".join(out)
