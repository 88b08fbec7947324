"""Reconciliation as orchestrated steps: start -> one step per table -> balances -> checks -> finish.

- :func:`diff_start` opens a diff run (``reconcile.runs`` kind 'diff', its start LSN fixed) and lists
  the tables to map over; given a ``run_id`` (:func:`diff_run_id_for` the orchestrator's run), a retry
  reuses the run it opened instead of opening another;
- :func:`diff_one_table` diffs one table inside that run (idempotent per (run, table): a retry
  diffs it again and replaces its findings);
- :func:`diff_balances_step` compares balances (per account and currency, trial balance, zero-sum);
- :func:`checks_step` runs the expectation suites on both sides (a 'check' run);
- :func:`diff_finish` closes the run with its verdict and writes the report (folder, or an S3 link);
  it runs after failed steps too: a table or a due balance diff whose step never reported is closed
  as ``error`` (not compared) by :func:`reconcile.diff.finish_diff`;
- :func:`reconcile_verdict` says whether the whole reconciliation is green, for the final task that
  fails a red run (or one whose steps failed) visibly.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from reconcile import metrics
from reconcile.config import Config
from reconcile.errors import TerminalError

__all__ = ["DiffRunClosed", "DiffNotStarted", "ReconcileRed", "checks_step", "diff_balances_step", "diff_finish",
           "diff_one_table", "diff_run_id_for", "diff_start", "opened_run", "reconcile_verdict"]

log = logging.getLogger("reconcile.pipeline.diff")


class ReconcileRed(TerminalError):
    """The reconciliation found differences (or failed expectations, or a step failed): the run is red."""


class DiffRunClosed(TerminalError):
    """The diff run of this orchestrator run finished already; its evidence is not rewritten."""


class DiffNotStarted(TerminalError):
    """The start step opened no diff run (it failed), so there is nothing to diff into or close."""


def _as_dict(result: Any) -> dict[str, Any]:
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


def diff_run_id_for(dag_id: str, run_id: str) -> str:
    """The diff run id of one orchestrator run (Airflow: dag_id and run_id): the same on every retry.

    >>> diff_run_id_for("reconcile_reconcile", "manual__1")
    '6cb33d4c-ba91-5454-aa13-8c11771b6b44'
    """
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"airflow://{dag_id}/{run_id}"))


def _stored_run(config: Config, run_id: str) -> dict[str, Any] | None:
    from reconcile.connections import connect
    from reconcile.diff import store

    with connect(config.target) as conn:
        if conn.execute("SELECT to_regclass('reconcile.runs') IS NULL").fetchone()[0]:
            return None
        return store.get_run(conn, run_id)


def diff_start(config: Config, *, tables: Sequence[str] | None = None, lag_wait_seconds: float | None = None,
               run_id: str | None = None, mode: str | None = None, direction: str | None = None) -> dict[str, Any]:
    """Open a diff run; returns ``{"run_id", "tables": [names to map over], "reused": bool}``.

    Args:
        run_id: the run's id (:func:`diff_run_id_for` the orchestrator run). When a run with this id
            exists and is still running, it is reused (a retry after the first attempt opened it).
        mode: ``full`` or ``incremental`` (default ``[diff] mode``).
        direction: ``forward`` or ``reverse`` (default: from the cutover state, :mod:`reconcile.direction`).

    Raises:
        DiffRunClosed: the run with ``run_id`` finished already (the orchestrator run was cleared and
            re-run): a finished run's verdict is evidence and is not rewritten; trigger a new run.
    """
    from reconcile.diff import start_diff
    from reconcile.preflight import require

    names = list(tables) if tables else [t.name for t in config.tables]
    for name in names:
        config.table(name)
    require(config, "diff")
    if run_id is not None:
        existing = _stored_run(config, run_id)
        if existing is not None:
            if existing["status"] != "running" or existing["kind"] != "diff":
                raise DiffRunClosed(f"Diff run {run_id} of this orchestrator run is {existing['status']} already; "
                                    "trigger a new run of the DAG instead of clearing this one.")
            names = list(existing["settings"].get("tables") or names)
            log.info("diff run %s was opened by an earlier attempt: reusing it (%s)", run_id, ", ".join(names))
            return {"run_id": run_id, "tables": names, "reused": True}
    opened = start_diff(config, tables=names, lag_wait_seconds=lag_wait_seconds, run_id=run_id, mode=mode,
                        direction=direction)
    log.info("diff run %s over %s", opened, ", ".join(names))
    return {"run_id": str(opened), "tables": names, "reused": False}


def opened_run(started: Mapping[str, Any] | None) -> str:
    """The run id :func:`diff_start` returned; raises :class:`DiffNotStarted` when it returned nothing."""
    if not started or not started.get("run_id"):
        raise DiffNotStarted("The start step opened no diff run (it failed); read its log, fix the cause and "
                             "trigger the reconciliation again.")
    return str(started["run_id"])


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
            folder inside that diff run's report folder (``<[diff] report_dir>/<run_id>/checks``),
            also uploaded next to the report (``<[diff] s3_uri>/<run_id>/checks/``, link in
            ``data_docs_uri``) when ``s3_uri`` is set: the finishing step may run on another worker.
        diff_run_id: the diff run of this reconciliation: the check run records it (``part_of``), and a
            gate counts the reconciliation only when these expectations completed green.
    """
    from pathlib import Path

    from reconcile.checks import run_checks
    from reconcile.preflight import require

    require(config, "check")
    if report_dir is None and diff_run_id:
        report_dir = str(Path(config.diff.report_dir) / diff_run_id / "checks")

    result = _as_dict(run_checks(config, sides=tuple(sides), report_dir=report_dir, part_of=diff_run_id))
    if diff_run_id and report_dir and config.diff.s3_uri and result.get("data_docs"):
        from reconcile.report import upload_folder

        uri = upload_folder(report_dir, f"{config.diff.s3_uri.rstrip('/')}/{diff_run_id}/checks", recursive=True)
        result["data_docs_uri"] = f"{uri}/{Path(result['data_docs']).absolute().relative_to(Path(report_dir).absolute())}"
    log.info("checks: success=%s evaluated=%s failed=%s not applicable=%s data docs=%s", result.get("success"),
             result.get("evaluated"), result.get("failed"), result.get("not_applicable"),
             result.get("data_docs_uri") or result.get("data_docs"))
    for item in result.get("not_applicable_checks") or []:
        if item.get("side") == "target" or "target" not in sides:  # once per check, not per side
            log.info("check %s %s not applicable: %s", item.get("suite"), item.get("name"), item.get("reason"))
    metrics.after_checks(config, result)
    return result


def _checks_problem(checks: Mapping[str, Any] | None, expected: bool) -> str | None:
    """What went wrong with the expectations of a reconciliation, or None when they ran green (or are not owed)."""
    if checks is None:
        return "the expectations did not run (the checks step failed)" if expected else None
    if checks.get("success"):
        return None
    if checks.get("error"):
        return f"the expectations step failed ({checks.get('error')})"
    return f"{checks.get('failed')} expectation(s) failed"


def diff_finish(config: Config, run_id: str, *, report_dir: str | None = None,
                checks: Mapping[str, Any] | None = None, checks_expected: bool = False) -> dict[str, Any]:
    """Close run ``run_id``: verdict, summary and report; returns the run summary (verdict, report_dir...).

    Safe after failed steps: tables and a balance diff that never reported are closed as ``error``
    (named in the summary's ``errors`` and the report), never as green.

    Args:
        checks: :func:`checks_step`'s result in this reconciliation (None: it failed or did not run).
        checks_expected: the reconciliation ran a checks step (the DAG): a missing result means that step
            failed, and the log says the reconciliation is red whatever the diff's own verdict.

    Returns:
        The diff's summary plus ``reconciliation``: ``{"verdict": green|red, "failed_steps": [...]}``.
    """
    from reconcile.diff import finish_diff

    result = _as_dict(finish_diff(config, run_id, report_dir=report_dir, expect_checks=checks_expected))
    where = result.get("report_dir")
    s3 = result.get("report_s3") or result.get("s3_uri")
    result["report_uri"] = f"{s3}/report.html" if s3 else f"{where}/report.html"  # the link a reader opens
    report = f"{where}{f' (uploaded to {s3})' if s3 else ''}"
    problem = _checks_problem(checks, checks_expected)
    failed = sorted(result.get("errors") or {}) + (["checks"] if problem else [])
    diff_ok = result.get("verdict") == "green"
    result["reconciliation"] = {"verdict": "green" if diff_ok and not failed else "red", "failed_steps": failed}
    if problem and diff_ok:
        log.error("diff run %s: the diff itself is green, but the reconciliation is red: %s; the diff report is at %s",
                  run_id, problem, report)
    elif problem:
        log.error("diff run %s: verdict %s, and %s; report: %s", run_id, result.get("verdict"), problem, report)
    else:
        log.info("diff run %s: verdict %s; report: %s", run_id, result.get("verdict"), report)
    att = result.get("attribution") or {}
    if att:
        log.info("diff run %s: %s fault(s), %s unexplained difference(s) (%s of %s balance differences explained); "
                 "run page: %s; history: %s", run_id, att.get("faults"), att.get("unexplained"),
                 att.get("explained_balance_differences"), att.get("balance_differences"), result.get("report_page"),
                 result.get("history_page"))
    for name, error in sorted((result.get("errors") or {}).items()):
        log.error("diff run %s: %s: %s", run_id, name, error)
    from reconcile.report.coverage import coverage_note
    from reconcile.report.notes import notes

    covered = coverage_note(result)  # what the run covered is information; every other note is a warning
    for note in notes(result):
        (log.info if note == covered else log.warning)("diff run %s: %s", run_id, note)
    metrics.after_diff(config, result)
    return result


def reconcile_verdict(diff: Mapping[str, Any] | None, checks: Mapping[str, Any] | None = None,
                      evidence: Mapping[str, Any] | None = None, *,
                      expected: Sequence[str] = ()) -> dict[str, Any]:
    """The run's outcome; raises :class:`ReconcileRed` when the diff is red or errored, an expectation
    failed, or a step's result is missing. The message names each step that failed and the action that
    fits it: a key range to re-copy only when the diff found differences.

    Args:
        diff: :func:`diff_finish`'s result (None: the run was not closed).
        checks: :func:`checks_step`'s result.
        evidence: the gate evidence step's result.
        expected: which of ``"checks"`` and ``"evidence"`` must be present (the DAG passes both:
            a step that failed hands over nothing).
    """
    out = {"verdict": None if diff is None else diff.get("verdict"),
           "report_dir": None if diff is None else diff.get("report_dir"),
           "report_uri": None if diff is None else diff.get("report_uri"),
           "persistent_mismatches": None if diff is None else diff.get("persistent_mismatches"),
           "balance_differences": None if diff is None else diff.get("balance_differences"),
           "full_reconciliation": None if diff is None else diff.get("full_reconciliation"),
           "partial_reasons": None if diff is None else diff.get("partial_reasons"),
           "checks_success": None if checks is None else checks.get("success"),
           "gate": None if evidence is None else {k: evidence.get(k) for k in ("gate", "passed", "failing")}}
    problems: list[str] = []
    actions: list[str] = []
    failed: list[str] = []
    where = (diff.get("report_uri") or diff.get("report_dir")) if diff is not None else None
    if diff is None:
        failed.append("finish_diff")
        problems.append("the diff run was not closed (the finish_diff step failed)")
        actions.append("read the finish_diff task's log, fix the cause and trigger the reconciliation again")
    else:
        errors = diff.get("errors") or {}
        if errors:
            failed += sorted(errors)
            problems.append(f"{', '.join(sorted(errors))} not compared")
            actions.append("read the failed diff_table/balances task logs (the report names why), fix the cause and "
                           "trigger the reconciliation again")
        persistent, balances = diff.get("persistent_mismatches") or 0, diff.get("balance_differences") or 0
        if persistent or balances:
            problems.append(f"the diff found {persistent} persistent mismatches and {balances} balance differences")
            actions.append(f"read the report at {where} and re-copy the key ranges it names (a forced backfill) "
                           "before the next run")
        elif diff.get("verdict") != "green" and not errors:
            problems.append(f"the diff is {diff.get('verdict')}")
            actions.append(f"read the report at {where}")
    diff_green = diff is not None and diff.get("verdict") == "green"
    problem = _checks_problem(checks, "checks" in expected)
    if problem:
        failed.append("checks")
        problems.append(problem + ("; the diff itself is green" if diff_green else ""))
        if checks is None or checks.get("error"):
            actions.append("read the checks task's log, fix what stopped it (the data needs no repair for this) and "
                           "trigger the reconciliation again")
        else:
            docs = checks.get("data_docs")
            actions.append(f"read which expectations failed{f' in the Data Docs at {docs}' if docs else ''} and fix "
                           "what they name on the target")
    if evidence is None and "evidence" in expected:
        failed.append("gate_evidence")
        problems.append("no gate evidence was recorded (the gate evidence step failed)")
        actions.append("read the gate_evidence task's log, then run `reconcile gate evaluate`")
    out["failed_steps"] = failed
    if problems:
        raise ReconcileRed(f"Reconciliation is red: {'; '.join(problems)}; to fix it, "
                           f"{'; '.join(dict.fromkeys(actions))}.")
    log.info("reconciliation green; report at %s",
             where)
    return out
