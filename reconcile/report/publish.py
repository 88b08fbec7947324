"""Publishing a diff run's report: attribution and evidence, the run folder, the history page, S3.

:func:`reconcile.diff.finish_diff` uses :class:`RunReport` in two steps around closing the run:

1. ``RunReport(config, conn, folder, context, s3_uri=...)`` attributes the findings
   (:mod:`reconcile.report.attribution`) and reads what does not depend on this run being closed (the
   expectations, the replay lag and dead letters); :meth:`RunReport.summary_fields` is what the run's
   summary gains: ``attribution`` (faults / unexplained counts), ``report_page`` and ``history_page`` (an
   absolute path, or the S3 URI when ``[diff] s3_uri`` is set), ``replay`` (lag p99, open dead letters),
   ``expectations`` (the check run read) and ``s3_uri``;
2. after the run is closed, :meth:`RunReport.write` evaluates the gate (so the evaluation counts this
   run), reads the history (this run included), writes the run folder and ``<report_dir>/index.html``
   with ``findings-history.csv``, and uploads both when an S3 URI is set.

Writing is idempotent (files are replaced whole), so a retried finish step rewrites the same pages.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from reconcile.control import ident
from reconcile.report import evidence, history
from reconcile.report.attribution import Attribution, Roles, attribute

__all__ = ["HISTORY_FILES", "RunReport"]

log = logging.getLogger(__name__)

HISTORY_FILES = ("index.html", "findings-history.csv")
"""Written beside the run folders (``<report_dir>/``)."""


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a reader (or a concurrent run) never sees half a page


def _all_findings(conn: Any, run_id: str, loaded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from reconcile.diff.store import load_findings

    (stored,) = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE run_id = %s").format(ident("diff_findings")),
                             (run_id,)).fetchone()
    return loaded if stored <= len(loaded) else load_findings(conn, run_id)


class RunReport:
    """The report of one diff run (see the module docstring)."""

    def __init__(self, config: Any, conn: Any, folder: str | Path, context: dict[str, Any], *,
                 s3_uri: str | None = None) -> None:
        from reconcile.report.html import every_finding_stored

        self.config, self.conn, self.folder, self.context = config, conn, Path(folder), context
        self.s3_root = s3_uri.rstrip("/") if s3_uri else None
        summary = context["summary"]
        self.run_id = summary["run_id"]
        self.roles = Roles.of(config)
        # Every stored finding takes part (the context's list may be cut at [diff] max_findings for the pages).
        findings = _all_findings(conn, self.run_id, context.get("findings") or [])
        self.attribution: Attribution = attribute(
            findings, self.roles, complete=every_finding_stored(summary, findings, context.get("balances")))
        gates = getattr(config, "gates", None)
        window = float(getattr(gates, "replay_window_hours", 24.0) or 24.0)
        slot = ((context.get("run") or {}).get("settings") or {}).get("slot_name")
        self.evidence: dict[str, Any] = {
            "expectations": evidence.expectations(conn, self.run_id, self.folder),
            "replay": evidence.replay(conn, window_hours=window, slot=slot),
            "history_href": "../index.html",
        }
        context.update(roles=self.roles, attribution=self.attribution, evidence=self.evidence,
                       lag_limit=getattr(gates, "max_lag_p99_seconds", None))

    @property
    def run_uri(self) -> str | None:
        """Where the run folder is uploaded (None: no S3)."""
        return f"{self.s3_root}/{self.run_id}" if self.s3_root else None

    def summary_fields(self) -> dict[str, Any]:
        """What the run's summary gains (JSON-able; see the module docstring)."""
        here = self.folder.resolve()
        rep = self.evidence.get("replay") or {}
        exp = self.evidence.get("expectations") or {}
        out: dict[str, Any] = {
            "attribution": self.attribution.counts(),
            "report_page": f"{self.run_uri}/report.html" if self.run_uri else str(here / "report.html"),
            "history_page": f"{self.s3_root}/index.html" if self.s3_root else str(here.parent / "index.html"),
            "replay": {"lag_seconds_p99": rep.get("lag_seconds_p99"), "max_p99": rep.get("max_p99"),
                       "dead_letters_open": rep.get("dead_letters_open")},
            "expectations": {k: exp.get(k) for k in ("run_id", "status", "evaluated", "failed", "linked")},
        }
        if self.run_uri:
            out["s3_uri"] = self.run_uri
        return out

    def write(self) -> list[Path]:
        """Evaluate the gate, read the history, write the run folder and the history page, upload them."""
        from reconcile.report.files import write_all
        from reconcile.report.historypage import history_csv, render_history

        conn = self.conn
        self.evidence["gate"] = evidence.gate(self.config, conn)
        try:
            runs = history.recent_runs(conn)
            seen = history.findings_seen(conn, runs, self.run_id)
        except psycopg.Error as exc:  # the history is an extra: the run page must still be written
            log.warning("report: the run history could not be read (%s); writing the run page without it",
                        type(exc).__name__)
            runs, seen = [], {"open": {}, "resolved": [], "resolved_total": 0}
        self.evidence["seen"] = seen["open"]
        paths = write_all(self.folder, self.context)
        parent = self.folder.parent
        if runs and runs[-1]["run_id"] == self.run_id:   # the newest run writes the index (an older retry does not)
            _write(parent / "index.html", render_history(runs, seen, self.evidence["gate"], self.context))
            _write(parent / "findings-history.csv", history_csv(seen))
            paths += [parent / name for name in HISTORY_FILES]
        if self.s3_root:
            from reconcile.report.s3 import upload_files, upload_folder

            upload_folder(self.folder, self.run_uri)
            if runs and runs[-1]["run_id"] == self.run_id:
                upload_files([parent / name for name in HISTORY_FILES], self.s3_root)
        return paths
