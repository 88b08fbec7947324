"""The demo's steps, in order, with a progress line each; see :mod:`reconcile.demo`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconcile.config import DEMO_STAGE_SETTINGS
from reconcile.demo.progress import Progress
from reconcile.demo.workspace import Workspace, reset



def demo_stages(ws: Workspace) -> dict[str, dict[str, object]]:
    """Settings the demo writes into its reconcile.toml: the demo ledger's optional roles (its idempotency
    key, equity accounts, posting timestamp), reports in the workspace, and read-gate criteria a laptop can
    meet in minutes (one green run instead of days of them)."""
    return {
        "diff": {**DEMO_STAGE_SETTINGS["diff"], "report_dir": str(ws.reports), "lag_wait_seconds": 30.0},
        "checks": dict(DEMO_STAGE_SETTINGS["checks"]),
        "gates": {"min_green_runs": 1, "min_green_hours": 0.0},
    }


@dataclass
class DemoResult:
    """What a demo run did: the verdict, where the report is, and each step's numbers."""

    verdict: str = "unknown"
    report_dir: str | None = None
    gate: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    injected: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "report_dir": self.report_dir, "gate": self.gate,
                "steps": self.steps, "timings": self.timings, "injected": self.injected}


class _Background:
    """``work(stop_event)`` in a daemon thread until :meth:`stop`, which returns its result or raises its error."""

    def __init__(self, name: str, work: Callable[[threading.Event], Any]) -> None:
        self._stop = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = work(self._stop)
            except BaseException as exc:  # reported by stop()
                self.error = exc

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> Any:
        self._stop.set()
        return self.wait()

    def wait(self) -> Any:
        """Wait for the work to end on its own (e.g. a workload with a duration); its result or its error."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.result


def _workload(endpoint: Any, tps: float, seed: int) -> _Background:
    """The live write workload on the source, until stopped; ``stop()`` returns its report."""
    from reconcile import connections
    from reconcile.workload import run_workload

    return _Background("demo-workload", lambda stop: run_workload(
        lambda: connections.connect(endpoint), tps=tps, duration=None, seed=seed, stop_event=stop))


def _replay_follower(config: Any) -> _Background:
    """The shadow replay keeps following the slot while the reconciliation runs (as the scheduled
    replay DAG does in production), so the lag-aware diff sees its watermark pass the diff's start."""
    from reconcile.replay import run_replay

    return _Background("demo-replay", lambda stop: run_replay(config, follow=True, stop_event=stop))


def run_demo(*, data_dir: Path | None, transactions: int = 100_000, accounts: int = 10_000,
             tps: float = 100, seed: int = 42, inject: bool = False, airflow: bool = True,
             echo: Callable[[str], None] = print, live: bool | None = None,
             extra_stages: dict[str, dict[str, Any]] | None = None) -> DemoResult:
    """Run the whole pipeline on the local stack; see the module docstring.

    Args:
        data_dir: the local servers' folder (default ``.reconcile/local``); the demo's own files go
            next to it (``<data_dir>/../demo``).
        transactions, accounts, seed: size and seed of the deterministic demo ledger.
        tps: business transactions per second of the live workload (0: none).
        inject: plant discrepancies on the target before reconciling (the verdict turns red).
        airflow: run backfill, replay and reconciliation as the Airflow DAGs (``dag.test()``).
        echo: where the progress lines and the summary go.
        live: update the running step's line on stderr (default: when stderr is a terminal).
        extra_stages: settings sections merged over the demo's own (e.g. the journey's gate settings).
    """
    from reconcile import connections
    from reconcile.config import load_config
    from reconcile.local import stack

    data = stack.resolve_data_dir(data_dir)
    # .reconcile/local (the default) -> .reconcile/demo; any other folder keeps the demo inside it
    ws = Workspace(data_dir=data, root=data.parent / "demo" if data.name == "local" else data / "demo")
    total = 14 + (1 if inject else 0)
    progress = Progress(total=total, echo=echo, **({} if live is None else {"live": live}))
    result = DemoResult()
    t_start = time.monotonic()

    with progress.step("start the local stack") as s:
        statuses = stack.up(data)
        s.detail = f"source {statuses['source'].url.rsplit('@', 1)[-1]}, target {statuses['target'].url.rsplit('@', 1)[-1]}"
    stages = demo_stages(ws)
    for section, values in (extra_stages or {}).items():
        stages[section] = {**stages.get(section, {}), **values}
    config_path = ws.write_config(stages)
    config = load_config(config_path, environ={})
    runner = _runner(airflow, ws, config_path)

    with progress.step("clean slate (drop the last demo's state)") as s:
        dropped = reset(stack.url("source", data), stack.url("target", data),
                        slot_name=config.replay.slot_name, publication=config.replay.publication,
                        target_schemas=tuple(sorted({t.schema for t in config.tables} | {"reconcile"})))
        s.detail = ", ".join(dropped) or "nothing to drop"

    with progress.step("seed the ledger on the source") as s:
        from reconcile.workload import seed as seed_ledger

        with connections.connect(config.source) as conn:
            seeded = seed_ledger(conn, accounts=accounts, transactions=transactions, seed=seed, reset=True)
            # What a DBA enables on Aurora for the audit's workload check (the audit itself never creates it).
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        result.steps["seed"] = seeded.to_dict()
        s.detail = f"{accounts:,} accounts, {transactions:,} journal transactions"

    with progress.step("control schema on the target") as s:
        from reconcile.control import migrate

        with connections.connect(config.target) as conn:
            applied = migrate(conn)
        s.detail = f"{len(applied)} migrations"

    with progress.step("audit the source for DSQL") as s:
        from reconcile.audit import run_audit, store_report
        from reconcile.identity import run_scope

        with connections.connect(config.source) as conn:
            audit = run_audit(conn, tables=config.tables)
        with connections.connect(config.target) as conn:
            store_report(conn, audit, scope=run_scope(config))
        counts = {k: n for k, n in audit.counts.items() if n}
        result.steps["audit"] = counts
        s.detail = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no findings"

    with progress.step("target schema (pre-load)") as s:
        from reconcile.budget import budget_from
        from reconcile.occ import policy_from
        from reconcile.schema import apply_plan, plan_from_source, record_plan
        from reconcile.schema.dialect import dialect_for

        with connections.connect(config.source) as src:
            plan = plan_from_source(src, tables=config.tables, dialect=dialect_for(config.target).name)
        with connections.connect(config.target) as tgt:
            applied_ddl = apply_plan(tgt, plan, phase="pre-load")
            record_plan(tgt, plan, budget=budget_from(config), policy=policy_from(config))  # invariants, for checks
        s.detail = _count_phrase(applied_ddl, "statements")

    with progress.step("replay: publication and slot (slot first)") as s:
        from reconcile.replay import init_replay

        init = init_replay(config)
        result.steps["replay_init"] = init
        s.detail = f"slot {config.replay.slot_name}"

    workload = _workload(config.source, tps, seed) if tps > 0 else None
    with progress.step(f"live workload on the source ({tps:g} tps)") as s:
        s.detail = "running in the background" if workload else "off (--tps 0)"

    with progress.step(f"backfill{runner.suffix}") as s:
        backfill = runner.backfill()
        result.steps["backfill"] = backfill
        s.detail = f"{backfill.get('rows', 0):,} rows copied, {backfill.get('rejected', 0)} rejected"

    with progress.step(f"replay catches up under live writes{runner.suffix}") as s:
        replay = runner.replay_catch_up()
        result.steps["replay_live"] = replay
        s.detail = _replay_phrase(replay)

    with progress.step(f"stop the workload, final catch-up{runner.suffix}") as s:
        load = workload.stop() if workload else None
        replay = runner.replay_catch_up()
        result.steps["workload"] = load.to_dict() if load is not None else None
        result.steps["replay_final"] = replay
        s.detail = (f"{load.committed_total:,} live txns committed; " if load is not None else "") + _replay_phrase(replay)

    with progress.step("target schema (post-load: foreign keys)") as s:
        with connections.connect(config.target) as tgt:
            applied_ddl = apply_plan(tgt, plan, phase="post-load")
        s.detail = _count_phrase(applied_ddl, "statements")

    if inject:
        with progress.step("inject discrepancies on the target") as s:
            from reconcile.diff.inject import plant_discrepancies

            with connections.connect(config.target) as tgt:
                result.injected = plant_discrepancies(tgt, config, seed=seed)
            s.detail = ", ".join(p.get("kind", "?") for p in result.injected)

    with progress.step(f"reconcile: diffs, balances, expectations{runner.suffix}") as s:
        follower = _replay_follower(config)
        try:
            rec = runner.reconcile(ws.reports)
        finally:
            follower.stop()
        result.steps["reconcile"] = rec
        result.verdict = rec.get("verdict", "unknown")
        result.report_dir = rec.get("report_dir")
        s.detail = f"verdict {result.verdict.upper()}"

    with progress.step("read gate: the evidence recorded") as s:
        result.gate = rec.get("gate") or {}
        failing = [c.get("name") for c in result.gate.get("criteria", []) if not c.get("passed")]
        s.detail = "all criteria pass" if result.gate.get("passed") else "failing: " + ", ".join(failing)

    result.timings = {st.label: round(st.seconds, 2) for st in progress.steps}
    result.timings["total"] = round(time.monotonic() - t_start, 2)
    _summary(result, config_path, echo)
    return result


def _count_phrase(report: Any, what: str) -> str:
    return f"{len(report.applied)} {what} applied, {len(report.results) - len(report.applied)} already there"


def _replay_phrase(summary: dict[str, Any]) -> str:
    p99 = summary.get("lag_seconds_p99")
    lag = f", lag p99 {p99:.2f}s" if isinstance(p99, (int, float)) else ""
    return f"{summary.get('txns_applied', 0):,} txns / {summary.get('changes_applied', 0):,} changes applied{lag}"


def _runner(airflow: bool, ws: Workspace, config_path: Path):
    if airflow:
        from reconcile.demo.airflow_runner import AirflowRunner

        return AirflowRunner(ws, config_path)
    from reconcile.demo.library_runner import LibraryRunner

    return LibraryRunner(config_path)


def _summary(result: DemoResult, config_path: Path, echo: Callable[[str], None]) -> None:
    rec = result.steps.get("reconcile", {})
    echo("")
    echo(f"Verdict: {result.verdict.upper()}   (total {result.timings.get('total', 0):.0f}s)")
    for key in ("persistent_mismatches", "balance_differences", "in_flight"):
        if key in rec:
            echo(f"  {key.replace('_', ' '):<24}{rec[key]}")
    att = rec.get("attribution") or {}
    if att.get("balance_differences") or att.get("faults"):
        echo(f"  {'faults':<24}{att['faults']} (row findings, each with the balance differences it explains)")
        echo(f"  {'unexplained':<24}{att['unexplained']} (balance differences no row finding explains: look first)")
    checks = rec.get("checks") or {}
    if checks:
        na = f" ({checks['not_applicable']} not applicable)" if checks.get("not_applicable") else ""
        echo(f"  {'expectations':<24}{checks.get('evaluated', 0) - checks.get('failed', 0)}/{checks.get('evaluated', 0)} green{na}")
    if result.gate:
        ready = result.gate.get("passed")
        echo(f"  {'read gate':<24}{'all criteria pass: ready for approval' if ready else 'not ready'}")
        failing = [c for c in result.gate.get("criteria", []) if not c.get("passed")]
        for c in failing:
            echo(f"    - {c.get('name')}: {c.get('message')}")
        if [c.get("name") for c in failing] == ["audit_blockers"]:
            echo("    (a blocker with a replacement invariant is retired on evidence: `reconcile gate retire FINDING`;"
                 " `reconcile demo --journey` walks every gate)")
    if result.injected:
        echo("  planted: " + "; ".join(p.get("description", p.get("kind", "?")) for p in result.injected))
    if result.report_dir:
        echo(f"Report: {rec.get('report_page') or Path(result.report_dir) / 'report.html'}")
    if rec.get("history_page"):
        echo(f"History: {rec['history_page']}")
    echo(f"Settings: {config_path}  (e.g. `reconcile gate status --config {config_path}`)")
    echo("The stack stays up: `reconcile local status`, `reconcile local down`.")
