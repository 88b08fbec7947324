"""Write the report folder of a run: summary.json, report.html, summary.md, findings.csv."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from reconcile.report.html import attribution_of, findings_pages, render_findings_page, render_html
from reconcile.report.markdown import render_markdown

FILES = ("summary.json", "report.html", "summary.md", "findings.csv")
CSV_FIELDS = ("table", "kind", "key", "columns", "money_delta", "currency", "source", "target")


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def render_csv(findings: list[dict], fh: Any) -> None:
    writer = csv.writer(fh)
    writer.writerow(CSV_FIELDS)
    for f in findings:
        writer.writerow([f["table"], f["kind"], _dump(f["key"]), ";".join(f.get("columns") or []),
                         f.get("money_delta") or "", f.get("currency") or "",
                         _dump(f["source"]) if f.get("source") is not None else "",
                         _dump(f["target"]) if f.get("target") is not None else ""])


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a file; a re-run replaces it


def write_all(folder: str | Path, context: dict[str, Any]) -> list[Path]:
    """Write the report files into ``folder`` (created); returns their paths (the four files, then the
    ``findings-<n>.html`` pages a run with many findings gets).

    ``context``: ``summary`` (the contract's summary), ``results`` (per-table rows), ``findings``
    (stored findings, largest money difference first), ``run`` (id, times, settings), ``balances``;
    optionally ``roles`` and ``attribution`` (:mod:`reconcile.report.attribution`) and ``evidence``
    (expectations, replay, gate, finding history: :mod:`reconcile.report.publish`).
    """
    from reconcile.diff.errors import ReportError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"the report folder {folder} cannot be created ({exc.strerror}); set [diff] report_dir "
                          "(or --report-dir) to a folder you can write") from None
    context = {**context, "attribution": attribution_of(context)}   # once for every page
    doc = dict(context["summary"])
    doc["details"] = {"results": context.get("results", []), "findings": context.get("findings", []),
                      "run": context.get("run", {}), "attribution": attribution_of(context).to_dict()}
    _write(folder / "summary.json", json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
    _write(folder / "report.html", render_html(context))
    _write(folder / "summary.md", render_markdown(context))
    import io
    buf = io.StringIO()
    render_csv(context.get("findings", []), buf)
    _write(folder / "findings.csv", buf.getvalue())
    pages = findings_pages(len(context.get("findings", [])))
    for i, page in enumerate(pages, start=1):
        _write(folder / page["href"], render_findings_page(context, i))
    for old in folder.glob("findings-*.html"):  # a re-run with fewer findings leaves no stale page
        if old.name not in {p["href"] for p in pages}:
            old.unlink()
    return [folder / name for name in FILES] + [folder / p["href"] for p in pages]
