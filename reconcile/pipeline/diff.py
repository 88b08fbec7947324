"""Reconciliation as orchestrated steps: start -> one step per table -> balances -> checks -> finish.

- :func:`diff_start` opens a diff run (``reconcile.runs`` kind 'diff', its start LSN fixed) and lists
  the tables to map over;
- :func:`diff_one_table` diffs one table inside that run (idempotent per (run, table): a retry
  diffs it again and replaces its findings);
- :func:`diff_balances_step` compares balances (per account and currency, trial balance, zero-sum);
- :func:`checks_step` runs the expectation suites on both sides (a 'check' run);
- :func:`diff_finish` closes the run with its verdict and writes the report (folder, or an S3 link);
- :func:`reconcile_verdict` says whether the whole reconciliation is green, for the final task that
  fails a red run visibly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from reconcile.config import Config
from reconcile.errors import TerminalError

__all__ = ["ReconcileRed", "checks_step", "diff_balances_step", "diff_finish", "diff_one_table", "diff_start",
           "reconcile_verdict"]

log = logging.getLogger("reconcile.pipeline.diff")


class ReconcileRed(TerminalError):
    """The reconciliation found differences (or failed expectations): the run is red."""


def _as_dict(result: Any) -> dict[str, Any]:
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


def diff_start(config: Config, *, tables: Sequence[str] | None = None,
               lag_wait_seconds: float | None = None) -> dict[str, Any]:
    """Open a diff run; returns ``{"run_id", "tables": [names to map over]}``."""
    from reconcile.diff import start_diff

    names = list(tables) if tables else [t.name for t in config.tables]
    for name in names:
        config.table(name)
    run_id = start_diff(config, tables=names, lag_wait_seconds=lag_wait_seconds)
    log.info("diff run %s over %s", run_id, ", ".join(names))
    return {"run_id": str(run_id), "tables": names}


def diff_one_table(config: Config, run_id: str, table: str) -> dict[str, Any]:
    """Diff one table in run ``run_id``; returns its result (status, missing, extra, changed, in_flight, rows)."""
    from reconcile.diff import diff_table

    result = _as_dict(diff_table(config, run_id, table))
    log.info("%s: %s", table, {k: result.get(k) for k in ("status", "missing", "extra", "changed", "in_flight",
                                                           "rows_source", "rows_target")})
    return result


def diff_balances_step(config: Config, run_id: str) -> dict[str, Any]:
    """Balance diff of run ``run_id``."""
    from reconcile.diff import diff_balances

    result = _as_dict(diff_balances(config, run_id))
    log.info("balances: %s", {k: v for k, v in result.items() if not isinstance(v, (list, dict))})
    return result


def checks_step(config: Config, *, sides: Sequence[str] = ("source", "target"), report_dir: str | None = None,
                diff_run_id: str | None = None) -> dict[str, Any]:
    """Run the expectation suites (a 'check' run); returns its summary (success, evaluated, failed, suites).

    Args:
        report_dir: where GX writes its Data Docs; by default, with ``diff_run_id``, the ``checks``
            folder inside that diff run's report folder (``<[diff] report_dir>/<run_id>/checks``).
    """
    from pathlib import Path

    from reconcile.checks import run_checks

    if report_dir is None and diff_run_id:
        report_dir = str(Path(config.diff.report_dir) / diff_run_id / "checks")

    result = _as_dict(run_checks(config, sides=tuple(sides), report_dir=report_dir))
    log.info("checks: success=%s evaluated=%s failed=%s data docs=%s", result.get("success"),
             result.get("evaluated"), result.get("failed"), result.get("data_docs"))
    return result


def diff_finish(config: Config, run_id: str, *, report_dir: str | None = None) -> dict[str, Any]:
    """Close run ``run_id``: verdict, summary and report; returns the run summary (verdict, report_dir...)."""
    from reconcile.diff import finish_diff

    result = _as_dict(finish_diff(config, run_id, report_dir=report_dir))
    where = result.get("report_dir")
    s3 = result.get("report_s3") or result.get("s3_uri")
    log.info("diff run %s: verdict %s; report: %s%s", run_id, result.get("verdict"), where,
             f" (uploaded to {s3})" if s3 else "")
    return result


def reconcile_verdict(diff: Mapping[str, Any], checks: Mapping[str, Any] | None = None,
                      evidence: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run's outcome; raises :class:`ReconcileRed` when the diff is red or an expectation failed."""
    out = {"verdict": diff.get("verdict"), "report_dir": diff.get("report_dir"),
           "persistent_mismatches": diff.get("persistent_mismatches"),
           "balance_differences": diff.get("balance_differences"),
           "checks_success": None if checks is None else checks.get("success"),
           "gate": None if evidence is None else {k: evidence.get(k) for k in ("gate", "passed", "failing")}}
    problems = []
    if diff.get("verdict") != "green":
        problems.append(f"the diff is {diff.get('verdict')} ({diff.get('persistent_mismatches')} persistent "
                        f"mismatches, {diff.get('balance_differences')} balance differences)")
    if checks is not None and not checks.get("success"):
        problems.append(f"{checks.get('failed')} expectation(s) failed")
    if problems:
        raise ReconcileRed(f"Reconciliation is red: {'; '.join(problems)}; read the report at "
                           f"{diff.get('report_dir')} and fix the target (a forced backfill of the key range) "
                           "before the next run.")
    log.info("reconciliation green; report at %s", diff.get("report_dir"))
    return out
