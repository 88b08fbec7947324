"""Reports of a diff run: a folder per run with JSON, HTML, Markdown and CSV, optionally on S3.

``<report_dir>/<run_id>/``:

* ``summary.json``: the run summary (the shared contract's keys) plus per-table results, the
  balance figures and the stored findings, for machines;
* ``report.html``: the run page, self-contained (inline CSS and SVG, no external fetch): the verdict,
  the faults (row findings with the balance differences they explain) and the unexplained differences
  first, then the gate's evaluation, the expectations, replay lag and dead letters, what was covered,
  balances per currency, every finding with readable cells, run facts (:mod:`reconcile.report.html`);
* ``summary.md``: a few lines for a task log or a pull request;
* ``findings.csv``: every stored finding, one per line;
* ``findings-<n>.html``: every finding with readable cells, 1,000 a page (when they do not fit the run page).

``<report_dir>/index.html`` (with ``findings-history.csv``) is the history across runs, regenerated after
every run: a timeline of verdicts, mismatches, balance differences and replay lag with the gate's streak,
and each finding's first- and last-seen run (:mod:`reconcile.report.historypage`).

Modules: :mod:`~reconcile.report.attribution` (which balance differences each row finding explains),
:mod:`~reconcile.report.evidence` and :mod:`~reconcile.report.history` (what the pages read from the
control schema), :mod:`~reconcile.report.cells` (readable values), :mod:`~reconcile.report.html` and
:mod:`~reconcile.report.historypage` (the pages, from Jinja2 templates with autoescaping),
:mod:`~reconcile.report.publish` (what ``finish_diff`` calls).
"""

from __future__ import annotations

from reconcile.report.files import write_all
from reconcile.report.publish import RunReport
from reconcile.report.s3 import upload_files, upload_folder

__all__ = ["RunReport", "upload_files", "upload_folder", "write_all"]
