"""``run_checks``: build the suites, run them through Great Expectations, record the run.

The contract (other stages read it): one ``reconcile.runs`` row, kind ``'check'``, status
``'running'`` then ``'green'`` (every expectation passed), ``'red'`` (some failed) or ``'error'``
(the run itself failed: a database unreachable, GX broken); its summary JSON holds

* ``success`` (bool), ``evaluated`` (expectations run), ``failed`` (how many did not pass);
* ``not_applicable`` (how many were not run because they do not fit the configured ledger) and
  ``not_applicable_checks``: ``[{"suite", "name", "side", "reason"}]``; these count neither as passed nor
  as failed, nor in ``evaluated``;
* ``suites``: ``{"<suite>@<side>": {"success": bool, "failed": ["<check name>", ...],
  "not_applicable": ["<check name>", ...]}}``, where a suite is ``ledger``, a table name (generated),
  ``parity`` or ``freshness``, and side ``source`` or ``target``;
* ``data_docs``: the Data Docs index (``<report_dir>/data_docs/index.html``) or null;

plus ``run_id``, ``sides``, ``duration_seconds`` and ``gx_seconds``. Per-expectation results go to
``reconcile.check_results`` (:mod:`reconcile.checks.store`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconcile.checks.settings import SUITE_KINDS
from reconcile.checks.spec import Check, suite_key
from reconcile.config import Config
from reconcile.schema.dialect import dialect_for
from reconcile.errors import ConfigError
from reconcile.identity import run_scope

log = logging.getLogger(__name__)

__all__ = ["CheckResult", "build_checks", "run_checks"]

SIDES = ("source", "target")


@dataclass
class CheckResult:
    """The outcome of :func:`run_checks` (``to_dict()`` is the run summary, JSON-able)."""

    run_id: str | None
    success: bool
    outcomes: list = field(default_factory=list)
    """:class:`reconcile.checks.gxrun.Outcome` per expectation and side, in suite order."""
    data_docs: str | None = None
    sides: tuple[str, ...] = SIDES
    duration_seconds: float = 0.0
    gx_seconds: float = 0.0
    error: str | None = None

    @property
    def status(self) -> str:
        return "error" if self.error else ("green" if self.success else "red")

    @property
    def evaluated(self) -> list:
        """Outcomes of the checks that were run (those that apply to this ledger)."""
        return [o for o in self.outcomes if o.not_applicable is None]

    @property
    def failed(self) -> list:
        return [o for o in self.evaluated if not o.success]

    @property
    def not_applicable(self) -> list:
        """Outcomes of the checks that do not apply to this ledger (not run; neither passed nor failed)."""
        return [o for o in self.outcomes if o.not_applicable is not None]

    def suites(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for o in self.outcomes:
            entry = out.setdefault(suite_key(o.check.suite, o.side),
                                   {"success": True, "failed": [], "not_applicable": []})
            if o.not_applicable is not None:
                entry["not_applicable"].append(o.check.name)
            elif not o.success:
                entry["success"] = False
                entry["failed"].append(o.check.name)
        return out

    def to_dict(self, *, results: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "success": self.success, "evaluated": len(self.evaluated), "failed": len(self.failed),
            "not_applicable": len(self.not_applicable),
            "not_applicable_checks": [{"suite": o.check.suite, "name": o.check.name, "side": o.side,
                                       "reason": o.not_applicable} for o in self.not_applicable],
            "suites": self.suites(), "data_docs": self.data_docs, "run_id": self.run_id,
            "status": self.status, "sides": list(self.sides), "duration_seconds": round(self.duration_seconds, 3),
            "gx_seconds": round(self.gx_seconds, 3),
        }
        if self.error:
            out["error"] = self.error
        if results:
            out["results"] = [o.to_dict() for o in self.outcomes]
        return out


def build_checks(config: Config, *, suites: Sequence[str], sides: Sequence[str], source=None,
                 target=None) -> dict[str, list[Check]]:
    """The checks to run on each side (side -> checks, suite order: ledger, generated, parity, freshness)."""
    from reconcile.checks.generate import generate_suite
    from reconcile.checks.ledger import ledger_checks
    from reconcile.checks.parity import freshness_checks, parity_checks

    checks: list[Check] = []
    if "ledger" in suites:
        checks += ledger_checks(config)
    if "generated" in suites:
        checks += generate_suite(config, source=source, target=target)
    if "parity" in suites and "target" in sides and source is not None:
        checks += parity_checks(config, source, target)
    if "freshness" in suites and "target" in sides:
        checks += freshness_checks(config, target)
    return {side: [c for c in checks if side in c.sides] for side in sides}


def run_checks(config: Config, *, sides: Sequence[str] = SIDES, report_dir: Path | str | None = None,
               suites: Sequence[str] | None = None,
               local_url: Callable[[str], str] | None = None, part_of: str | None = None,
               direction: str | None = None) -> CheckResult:
    """Run the invariant expectations and record the run (see the module docstring for the contract).

    Args:
        config: endpoints, tables and their ledger roles, ``[checks]`` settings.
        sides: ``source``, ``target`` or both. ``parity`` and ``freshness`` run when the target is checked
            (parity counts the source's rows too); the generated suites read the source catalog either way.
        report_dir: folder for the GX Data Docs (``data_docs/``); None builds none.
        suites: suite kinds to run (default ``[checks] suites``).
        local_url: for local endpoints, ``role -> conninfo`` (tests); None asks the local stack.
        part_of: the diff run of the reconciliation these expectations belong to (recorded as ``part_of``).
        direction: ``forward`` or ``reverse`` (recorded in ``runs.direction``); default: the ``part_of`` diff
            run's, else from the cutover state (:mod:`reconcile.direction`).

    Returns:
        The :class:`CheckResult`; ``.success`` is True when every expectation passed.

    Raises:
        ReconcileError: the target (where the run is recorded) cannot be reached, or the settings are
            wrong. Failures after the run row exists are recorded as status ``'error'`` and re-raised.
    """
    from reconcile.checks import store
    from reconcile.checks.gxrun import run_gx
    from reconcile.connections import connect
    from reconcile.control import migrate
    from reconcile.budget import budget_from
    from reconcile.occ import RetryCounters, policy_from

    sides = tuple(dict.fromkeys(sides))
    if not sides or any(s not in SIDES for s in sides):
        raise ConfigError(f"sides must be some of source, target, got {list(sides)}; pass --side source or "
                          "--side target, or neither for both")
    suites = tuple(suites if suites is not None else config.checks.suites)
    unknown = [s for s in suites if s not in SUITE_KINDS]
    if unknown:
        raise ConfigError(f"unknown suite(s) {', '.join(unknown)}; use some of {', '.join(SUITE_KINDS)}")
    report = Path(report_dir) if report_dir is not None else None
    started = time.perf_counter()
    policy, budget, counters = policy_from(config), budget_from(config), RetryCounters()
    secrets = config.secrets()
    dialect = dialect_for(config.target).name
    with connect(config.target, local_url=local_url) as target:
        migrate(target, dialect=dialect, policy=policy, counters=counters)  # type: ignore[arg-type]
        settings = {"sides": list(sides), "suites": list(suites), "report_dir": str(report) if report else None,
                    "checks": config.describe()["checks"]}
        run_id = store.start_run(target, settings, policy=policy, counters=counters, scope=run_scope(config),
                                 part_of=part_of, direction=direction)
        result = CheckResult(run_id, False, sides=sides)
        try:
            source = connect(config.source, local_url=local_url) if "source" in sides or "parity" in suites \
                or "generated" in suites else None
            try:
                checks = build_checks(config, suites=suites, sides=sides, source=source, target=target)
            finally:
                if source is not None:
                    source.close()
            if report is not None:
                try:
                    report.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise ConfigError(f"the checks' report folder {report} cannot be created ({exc.strerror}); "
                                      "give a folder you can write") from None
            t0 = time.perf_counter()
            outcomes, docs = run_gx(config, checks, report_dir=report, result_rows=config.checks.result_rows,
                                    local_url=local_url, secrets=secrets)
            result.gx_seconds = time.perf_counter() - t0
            result.outcomes, result.data_docs = outcomes, docs
            applicable = [o for o in outcomes if o.not_applicable is None]
            result.success = bool(applicable) and all(o.success for o in applicable)
            store.store_results(target, run_id, outcomes, budget=budget, policy=policy, counters=counters)
        except Exception as exc:
            result.error = config.safe_message(exc)
            result.duration_seconds = time.perf_counter() - started
            store.finish_run(target, run_id, "error", result.to_dict(), policy=policy, counters=counters)
            raise
        result.duration_seconds = time.perf_counter() - started
        store.finish_run(target, run_id, result.status, result.to_dict(), policy=policy, counters=counters)
    log.info("check run %s: %s, %d expectations, %d failed, %d not applicable, %.1f s", run_id, result.status,
             len(result.evaluated), len(result.failed), len(result.not_applicable), result.duration_seconds)
    return result
