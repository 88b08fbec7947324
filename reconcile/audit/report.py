"""The audit's result and its renderings: terminal table, JSON, Markdown and HTML."""

from __future__ import annotations

import datetime as dt
import html
import json
import shutil
import textwrap
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconcile.audit.findings import Finding, Severity, counts, sort_findings
from reconcile.audit.triggers import Invariant
from reconcile.errors import ConfigError

__all__ = ["AuditReport", "render_html", "render_json", "render_markdown", "render_table", "write_report"]


@dataclass(frozen=True)
class AuditReport:
    """One audit run: its identity, what was checked, and every finding."""

    run_id: uuid.UUID
    started_at: dt.datetime
    finished_at: dt.datetime
    source_fingerprint: str
    source: str
    """Where the source is (masked conninfo / description)."""
    schemas: tuple[str, ...]
    findings: tuple[Finding, ...]
    invariants: tuple[Invariant, ...] = ()
    checks: dict[str, Any] = field(default_factory=dict, compare=False)
    """What ran: levels, scan mode, rows scanned, lint diagnostics, skipped checks."""

    @property
    def counts(self) -> dict[str, int]:
        return counts(self.findings)

    @property
    def blockers(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.BLOCKER]

    @property
    def exit_code(self) -> int:
        """0 when no finding is a blocker, 1 when any is."""
        return 1 if self.blockers else 0

    def by_code(self, code: str) -> list[Finding]:
        return [f for f in self.findings if f.code == code]

    def find(self, code: str, obj: str) -> Finding | None:
        return next((f for f in self.findings if f.code == code and f.object == obj), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": str(self.run_id),
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "source_fingerprint": self.source_fingerprint,
            "source": self.source,
            "schemas": list(self.schemas),
            "counts": self.counts,
            "exit_code": self.exit_code,
            "checks": self.checks,
            "findings": [f.to_dict() for f in sort_findings(self.findings)],
            "invariants": [i.to_dict() for i in self.invariants],
        }

    def summary(self) -> str:
        c = self.counts
        verdict = ("BLOCKED: resolve the blockers before migrating" if self.blockers
                   else "no blocker: the schema plan can proceed")
        return (f"{len(self.findings)} findings: {c['blocker']} blocker, {c['must-change']} must-change, "
                f"{c['warning']} warning, {c['info']} info; {verdict} (run {self.run_id})")


def render_json(report: AuditReport) -> str:
    return json.dumps(report.to_dict(), indent=2, default=str)


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width=max(10, width), break_long_words=True, break_on_hyphens=False) or [""]


def render_table(report: AuditReport, *, width: int | None = None, details: bool = False) -> str:
    """A readable terminal table: severity, object, finding (and, with ``details``, why and fix)."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    findings = sort_findings(report.findings)
    sev_w = max(len("SEVERITY"), *(len(f.severity.value) for f in findings)) if findings else 8
    obj_w = min(48, max([len("OBJECT"), *(len(f.object) for f in findings)]))
    msg_w = max(30, width - sev_w - obj_w - 4)
    lines = [f"{'SEVERITY':<{sev_w}}  {'OBJECT':<{obj_w}}  FINDING",
             f"{'-' * sev_w}  {'-' * obj_w}  {'-' * min(msg_w, 60)}"]
    for f in findings:
        left = _wrap(f.object, obj_w)
        right = _wrap(f"[{f.code}] {f.message}", msg_w)
        if details:
            right += _wrap(f"why: {f.why}", msg_w) + _wrap(f"fix: {f.fix}", msg_w)
        for i in range(max(len(left), len(right))):
            sev = f.severity.value if i == 0 else ""
            lines.append(f"{sev:<{sev_w}}  {left[i] if i < len(left) else '':<{obj_w}}  "
                         f"{right[i] if i < len(right) else ''}".rstrip())
    lines.append("")
    for inv in report.invariants:
        lines.append(f"invariant {inv.name}: replaces {inv.spec.get('replaces_trigger')}")
    lines.append(report.summary())
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: AuditReport) -> str:
    c = report.counts
    out = [
        "# DSQL migration audit",
        "",
        f"- Run: `{report.run_id}` ({report.started_at.isoformat(timespec='seconds')})",
        f"- Source: {report.source} (schemas: {', '.join(report.schemas)})",
        f"- Source fingerprint: `{report.source_fingerprint}`",
        f"- Findings: **{c['blocker']} blocker**, {c['must-change']} must-change, {c['warning']} warning, "
        f"{c['info']} info",
        f"- Verdict: {'**blocked**: resolve every blocker before migrating' if report.blockers else 'no blocker'}",
        "",
    ]
    for sev in Severity:
        group = [f for f in sort_findings(report.findings) if f.severity is sev]
        if not group:
            continue
        out += [f"## {sev.value} ({len(group)})", "", "| object | finding | why it matters on DSQL | fix |",
                "|---|---|---|---|"]
        out += [f"| `{_md_cell(f.object)}` | **{f.code}** ({f.level}): {_md_cell(f.message)} | {_md_cell(f.why)} | "
                f"{_md_cell(f.fix)} |" for f in group]
        out.append("")
    if report.invariants:
        out += ["## Invariants replacing triggers", ""]
        out += [f"- `{i.name}`: `{json.dumps(i.to_dict(), sort_keys=True)}`" for i in report.invariants]
        out.append("")
    if report.checks:
        out += ["## What was checked", "", "```json", json.dumps(report.checks, indent=2, default=str), "```", ""]
    return "\n".join(out)


def render_html(report: AuditReport) -> str:
    e = html.escape
    c = report.counts
    rows = []
    for f in sort_findings(report.findings):
        rows.append(
            f'<tr class="{e(f.severity.value)}"><td>{e(f.severity.value)}</td><td><code>{e(f.object)}</code></td>'
            f"<td><b>{e(f.code)}</b> ({e(f.level)}): {e(f.message)}</td><td>{e(f.why)}</td><td>{e(f.fix)}</td></tr>")
    invariants = "".join(f"<li><code>{e(json.dumps(i.to_dict(), sort_keys=True))}</code></li>"
                         for i in report.invariants)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>DSQL migration audit {e(str(report.run_id))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }}
tr.blocker td:first-child {{ background: #f8d0d0; font-weight: bold; }}
tr.must-change td:first-child {{ background: #fbe3c4; }}
tr.warning td:first-child {{ background: #fff6c4; }}
tr.info td:first-child {{ background: #e4eefb; }}
</style></head><body>
<h1>DSQL migration audit</h1>
<ul>
<li>Run <code>{e(str(report.run_id))}</code> ({e(report.started_at.isoformat(timespec='seconds'))})</li>
<li>Source: {e(report.source)} (schemas: {e(', '.join(report.schemas))})</li>
<li>Source fingerprint: <code>{e(report.source_fingerprint)}</code></li>
<li>Findings: <b>{c['blocker']} blocker</b>, {c['must-change']} must-change, {c['warning']} warning,
{c['info']} info</li>
</ul>
<table><thead><tr><th>severity</th><th>object</th><th>finding</th><th>why it matters on DSQL</th><th>fix</th>
</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
{f'<h2>Invariants replacing triggers</h2><ul>{invariants}</ul>' if invariants else ''}
</body></html>
"""


def write_report(report: AuditReport, path: Path | str) -> Path:
    """Write the Markdown (``.md``) or HTML (``.html``/``.htm``) report.

    Raises:
        ConfigError: the file name has another extension.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".md", ".markdown"):
        text = render_markdown(report)
    elif suffix in (".html", ".htm"):
        text = render_html(report)
    else:
        raise ConfigError(f"--report {path} has an unknown extension; name it FILE.md (Markdown) or "
                          "FILE.html (HTML)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
