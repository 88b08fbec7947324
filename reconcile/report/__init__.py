"""Reports of a diff run: a folder per run with JSON, HTML, Markdown and CSV, optionally on S3.

``<report_dir>/<run_id>/``:

* ``summary.json``: the run summary (the shared contract's keys) plus per-table results, the
  balance figures and the stored findings, for machines;
* ``report.html``: one self-contained page for reviewers (inline CSS and SVG, no external fetch):
  the verdict banner, key figures, a chart of findings by table and kind, per-table status,
  counts by kind, the largest money discrepancies first, column-level detail, balance diffs,
  in-flight count, LSNs, durations and settings;
* ``summary.md``: a few lines for a task log or a pull request;
* ``findings.csv``: every stored finding, one per line.
"""

from __future__ import annotations

from reconcile.report.files import write_all
from reconcile.report.s3 import upload_folder

__all__ = ["upload_folder", "write_all"]
