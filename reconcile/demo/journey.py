"""`reconcile demo --journey`: the whole cutover journey on the local stack, there and back again.

After the demo's shadow phase (:func:`reconcile.demo.run.run_demo`: seed, live writes on the source,
audit, schema, backfill, replay, a green reconciliation), the journey walks every gate the way a
person would, each step on the evidence stored so far:

1. **retire blockers**: each audit blocker with a replacement invariant (the balance trigger: the
   application keeps balances, checked by the expectation the audit derived) is retired with a reason,
   on the replacement's green expectation runs; acknowledge the must-change findings.
2. **read gate**: evaluate, approve (shadow -> read_cutover).
3. **write gate**: evaluate, approve (read_cutover -> write_cutover). The forward replay drains first.
4. **write cutover**: DSQL's CDC on (the local stand-in publishing into a Kinesis stream served by
   moto), the reverse replay's state on the source, the application writes the *target* (it keeps
   balances itself, under OCC retries) while the reverse replay follows the stream.
5. **reverse reconciliation**: diff, balances and expectations with the target as the system of record.
6. **rollback gate**: evaluate, approve the rollback (write_cutover -> read_cutover).
7. **back on the source**: the application writes the source again, the forward replay resumes where
   the reverse replay left the source (nothing applied twice: its writes carry a replication origin the
   forward decoding skips), and a final forward reconciliation is green.

It prints a timeline: each step with the gate state and the evidence it rested on. The approvals are
recorded under demo names (``by``) with reasons, in the audit trail like any other.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconcile.demo.progress import Progress
from reconcile.demo.run import DemoResult, _Background, demo_stages, run_demo

APPROVERS = {"read": "Ana Ribeiro (finance)", "write": "Ben Okafor (risk)", "rollback": "Chen Wu (SRE)",
             "retire": "Ana Ribeiro (finance)"}
"""Who approves each step in the demo (names only: the demo runs without an authenticated identity)."""


@dataclass
class JourneyResult:
    """The journey's outcome: green when every gate passed on its evidence and both ends agree."""

    verdict: str = "unknown"
    shadow: DemoResult | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)
    steps: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "shadow": self.shadow.to_dict() if self.shadow else None,
                "timeline": self.timeline, "steps": self.steps, "timings": self.timings}


class JourneyStopped(Exception):
    """A step's evidence did not hold: the journey stops there (the message says which and why)."""


def run_journey(*, data_dir: Path | None, transactions: int = 20_000, accounts: int = 2_000, tps: float = 50,
                seed: int = 42, airflow: bool = False, write_seconds: float = 15.0,
                echo: Callable[[str], None] = print, live: bool | None = None) -> JourneyResult:
    """Run the shadow demo, then the cutover journey; see the module docstring.

    ``write_seconds``: how long the live workload writes in each of the two later phases (on the target
    after write cutover, on the source after the rollback); at ``tps`` 0 the phases write nothing.
    """
    from reconcile import connections
    from reconcile.config import load_config
    from reconcile.demo.library_runner import LibraryRunner
    from reconcile.demo.workspace import Workspace
    from reconcile.local import stack
    from reconcile.local.kinesis import LocalKinesis, client, ensure_stream

    result = JourneyResult()
    t0 = time.monotonic()
    shadow = run_demo(data_dir=data_dir, transactions=transactions, accounts=accounts, tps=tps, seed=seed,
                      inject=False, airflow=airflow, echo=echo, live=live, extra_stages=journey_stages())
    result.shadow = shadow
    result.timeline.append(_event(t0, "shadow: backfill, live replay, reconciliation", "shadow",
                                  f"verdict {shadow.verdict}"))
    if shadow.verdict != "green":
        result.verdict = "red"
        echo("The shadow reconciliation is not green: the journey stops before the first gate.")
        return result

    data = stack.resolve_data_dir(data_dir)
    ws = Workspace(data_dir=data, root=data.parent / "demo" if data.name == "local" else data / "demo")
    echo("")
    echo("The cutover journey")
    progress = Progress(total=9, echo=echo, **({} if live is None else {"live": live}))
    kinesis = LocalKinesis().start()
    stream = "reconcile-cdc-" + uuid.uuid4().hex[:8]
    try:
        config_path = ws.write_config({**demo_stages(ws), **journey_stages(),
                                       "reverse": {"stream_name": stream, "endpoint_url": kinesis.url,
                                                   "settle_ms": 500, "poll_interval": 0.05}})
        config = load_config(config_path, environ={})
        runner = LibraryRunner(config_path)
        _walk(result, progress, config, runner, kinesis, client, ensure_stream, stream, tps, seed,
              write_seconds, t0, echo, connections)
    except JourneyStopped as stop:
        result.verdict = "red"
        echo(f"The journey stopped: {stop}")
    finally:
        kinesis.stop()
    result.timings = {st.label: round(st.seconds, 2) for st in progress.steps}
    result.timings["total"] = round(time.monotonic() - t0, 2)
    _print_timeline(result, echo)
    return result


def journey_stages() -> dict[str, dict[str, object]]:
    """Gate settings a laptop can meet in minutes: one green run, no minimum hours at either gate."""
    return {"gates": {"min_green_runs": 1, "min_green_hours": 0.0, "min_read_hours": 0.0}}


def _event(t0: float, step: str, state: str, evidence: str) -> dict[str, Any]:
    return {"at_seconds": round(time.monotonic() - t0, 1), "step": step, "state": state, "evidence": evidence}


def _criteria_line(evaluation: Any) -> str:
    crit = evaluation.criteria
    passed = sum(1 for c in crit if c.passed)
    return f"{passed}/{len(crit)} criteria pass" + ("" if evaluation.passed else
                                                   " (failing: " + ", ".join(evaluation.failing) + ")")


def _walk(result: JourneyResult, progress: Progress, config: Any, runner: Any, kinesis: Any, client: Any,
          ensure_stream: Any, stream: str, tps: float, seed: int, write_seconds: float, t0: float,
          echo: Callable[[str], None], connections: Any) -> None:
    from reconcile import gates
    from reconcile.local import stack
    from reconcile.local.cdc import CdcPublisher
    from reconcile.replay import run_replay
    from reconcile.reverse import ReverseReplayer, init_reverse, reverse_status
    from reconcile.workload import run_workload

    timeline = result.timeline

    with progress.step("retire blockers by evidence, acknowledge must-change findings") as s:
        blockers, must_change = _audit_findings(config, connections)
        retired = [gates.retire(config, f, by=APPROVERS["retire"],
                                reason="the application keeps this in its own transaction on DSQL; the replacement "
                                       "invariant has been green on the target") for f in blockers]
        acked = [gates.acknowledge(config, f, by=APPROVERS["write"],
                                   reason="reviewed for the DSQL cutover; the target schema carries the change")
                 for f in must_change]
        result.steps["retired"], result.steps["acknowledged"] = retired, acked
        s.detail = f"{len(retired)} blocker(s) retired, {len(acked)} finding(s) acknowledged"
        timeline.append(_event(t0, "retire blockers", "shadow", s.detail))

    for gate, to in (("read", "read_cutover"), ("write", "write_cutover")):
        with progress.step(f"{gate} gate: evaluate and approve") as s:
            if gate == "write":  # the source stays the system of record until the forward replay has drained
                summary = run_replay(config, until_caught_up=True)
                result.steps["replay_drained"] = {"caught_up": summary.caught_up, "txns": summary.txns_applied}
            evaluation = gates.evaluate(config, gate)
            line = _criteria_line(evaluation)
            if not evaluation.passed:
                raise JourneyStopped(f"the {gate} gate does not pass: {line}")
            approved = gates.approve(config, gate, by=APPROVERS[gate], reason=f"journey: {gate} gate evidence green",
                                     evaluation=evaluation)
            result.steps[f"{gate}_gate"] = {"evaluation": evaluation.to_dict(), "approval": approved}
            s.detail = f"{line}; approved by {APPROVERS[gate]} -> {to}"
            timeline.append(_event(t0, f"{gate} gate approved", to, line))

    kc = client(kinesis.url)
    with progress.step("write cutover: DSQL CDC on, reverse replay state on the source") as s:
        ensure_stream(kc, stream, shards=2)
        publisher = CdcPublisher(stack.url("target", config.target.data_dir), kc, stream)
        publisher.enable()
        init = init_reverse(config)
        s.detail = f"stream {stream} (2 shards), origin {config.stage('reverse').origin_name}"
        result.steps["reverse_init"] = init

    with progress.step(f"application writes the target ({tps:g} tps), reverse replay follows") as s:
        reverse = ReverseReplayer.from_config(config, kinesis=kc)
        publishing = _Background("journey-cdc", publisher.run)
        following = _Background("journey-reverse", lambda stop: reverse.run(until_caught_up=False, stop=stop))
        load = _Background("journey-load", lambda stop: run_workload(
            lambda: connections.connect(config.target), tps=tps, duration=write_seconds, seed=seed + 1,
            write_to="target", stop_event=stop)) if tps > 0 else None
        written = load.wait() if load is not None else None
        publishing.stop()
        publisher.drain()
        live = following.stop()
        final = reverse.run()
        reverse.close()
        publisher.disable()
        publisher.close()
        if not final.caught_up:
            raise JourneyStopped(f"the reverse replay did not catch up ({final.status}: {final.message})")
        result.steps["target_writes"] = written.to_dict() if written is not None else None
        result.steps["reverse_replay"] = {"live": live.to_dict(), "final": final.to_dict()}
        s.detail = ((f"{written.committed_total:,} txns on the target; " if written is not None else "")
                    + f"{live.txns_applied + final.txns_applied:,} DSQL txns applied to the source")
        timeline.append(_event(t0, "application on the target, reverse replay", "write_cutover", s.detail))

    with progress.step("reverse reconciliation (the target is the system of record)") as s:
        rec = runner.reconcile(Path(config.stage("diff").report_dir))
        result.steps["reverse_reconcile"] = _brief(rec)
        s.detail = f"verdict {rec.get('verdict', 'unknown').upper()}, direction {rec.get('direction', '?')}"
        timeline.append(_event(t0, "reverse reconciliation", "write_cutover", s.detail))
        if rec.get("verdict") != "green":
            raise JourneyStopped(f"the reverse reconciliation is {rec.get('verdict')}: see {rec.get('report_page')}")

    with progress.step("rollback gate: evaluate and approve") as s:
        status = reverse_status(config)
        evaluation = gates.evaluate(config, "rollback")
        line = _criteria_line(evaluation)
        if not evaluation.passed:
            raise JourneyStopped(f"the rollback gate does not pass: {line}")
        rolled = gates.rollback(config, by=APPROVERS["rollback"], reason="journey: the way back is proven")
        result.steps["rollback_gate"] = {"evaluation": evaluation.to_dict(), "rollback": rolled,
                                         "reverse_lag_seconds": status.get("caught_up_lag_seconds")}
        s.detail = f"{line}; approved by {APPROVERS['rollback']} -> {rolled['to']}"
        timeline.append(_event(t0, "rollback approved", rolled["to"], line))

    with progress.step(f"application writes the source again ({tps:g} tps), forward replay resumes") as s:
        follower = _Background("journey-replay", lambda stop: run_replay(config, follow=True, stop_event=stop))
        load = _Background("journey-load", lambda stop: run_workload(
            lambda: connections.connect(config.source), tps=tps, duration=write_seconds, seed=seed + 2,
            stop_event=stop)) if tps > 0 else None
        written = load.wait() if load is not None else None
        follower.stop()
        caught = run_replay(config, until_caught_up=True)
        if not caught.caught_up:
            raise JourneyStopped(f"the forward replay did not catch up after the rollback ({caught.status})")
        result.steps["source_writes"] = written.to_dict() if written is not None else None
        s.detail = (f"{written.committed_total:,} txns on the source; " if written is not None else "") + \
            "forward replay caught up"
        timeline.append(_event(t0, "application back on the source, forward replay", rolled["to"], s.detail))

    with progress.step("forward reconciliation after the round trip") as s:
        rec = runner.reconcile(Path(config.stage("diff").report_dir))
        result.steps["final_reconcile"] = _brief(rec)
        result.verdict = rec.get("verdict", "unknown")
        s.detail = f"verdict {result.verdict.upper()}, direction {rec.get('direction', '?')}"
        timeline.append(_event(t0, "final reconciliation", rolled["to"], s.detail))
        if result.verdict != "green":
            raise JourneyStopped(f"the final reconciliation is {result.verdict}: see {rec.get('report_page')}")


def _audit_findings(config: Any, connections: Any) -> tuple[list[str], list[str]]:
    """(blocker ids, must-change ids) of this migration's latest audit run."""
    from psycopg import sql

    from reconcile.control.migrations import ident
    from reconcile.gates.criteria import EvidenceScope, latest_audit_run

    with connections.connect(config.target) as conn:
        latest = latest_audit_run(conn, EvidenceScope.of(config))
        if latest is None:
            raise JourneyStopped("no audit run of this migration is stored")
        rows = conn.execute(sql.SQL("SELECT finding_id, severity FROM {} WHERE run_id = %s AND severity IN "
                                    "('blocker', 'must-change') ORDER BY finding_no").format(ident("audit_findings")),
                            (latest[0],)).fetchall()
    return [f for f, sev in rows if sev == "blocker"], [f for f, sev in rows if sev == "must-change"]


def _brief(rec: dict[str, Any]) -> dict[str, Any]:
    keys = ("verdict", "direction", "run_id", "persistent_mismatches", "balance_differences", "report_page")
    return {k: rec.get(k) for k in keys if k in rec}


def _print_timeline(result: JourneyResult, echo: Callable[[str], None]) -> None:
    echo("")
    echo(f"Journey: {result.verdict.upper()}   (total {result.timings.get('total', 0):.0f}s)")
    for e in result.timeline:
        echo(f"  {e['at_seconds']:>7.1f}s  {e['state']:<14} {e['step']}: {e['evidence']}")
