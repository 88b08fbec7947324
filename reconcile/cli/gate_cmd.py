"""`reconcile gate ...`: Cutover gates: evaluate criteria, approve, roll back, publish the state.

Results go to stdout (text, or ``--json``). Exit codes: 0 success (a gate passes, an approval or
rollback is recorded, the trail is intact), 1 the gate refuses (criteria failing, wrong state, a
second approver needed, a broken audit trail), 2 an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ._common import CONFIG_OPTION, Number, load, run_app

app = typer.Typer(help="Cutover gates: evaluate criteria, approve, roll back, publish the state.", no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
BY_OPTION = typer.Option(..., "--by", envvar="RECONCILE_GATE_BY", help="Who acts (recorded in the audit trail, one line). "
                               "The command also records who it is authenticated as: the AWS identity of its "
                               "credentials (STS GetCallerIdentity). The two-person rule compares those identities "
                               "(and refuses two names of one identity); without AWS credentials it refuses.")
REASON_OPTION = typer.Option(..., "--reason", envvar="RECONCILE_GATE_REASON", help="Why (recorded in the audit trail).")
# No environment twin on purpose: an exported override would silently override every later approval.
OVERRIDE_OPTION = typer.Option(None, "--override",
                               help="Act although the gate refuses; the text is the override's own reason (recorded).")
GATE_ARG = typer.Argument(..., help="read (shadow -> read_cutover), write (read_cutover -> write_cutover) or rollback "
                                    "(write_cutover -> read_cutover: passed by `gate rollback`).")


def _caller(cfg: Any, **texts: str | None) -> dict[str, Any] | None:
    """Who this command runs as (AWS STS); without it, a warning, or an error under the two-person rule.

    ``texts`` (option name -> value) are checked first, so a name or reason that will be refused is
    refused before anyone is asked who is calling.
    """
    from reconcile.gates.approver import IdentityUnavailable, aws_caller
    from reconcile.gates.cutover import clean_text

    for what, value in texts.items():
        if value is not None and value.strip():
            clean_text(value, what)

    try:
        return aws_caller(cfg)
    except IdentityUnavailable as exc:
        if cfg.gates.two_person:
            raise
        typer.echo(f"warning: not authenticated, the name given is recorded as asserted only: {exc}", err=True)
        return None


def _shown(text: Any) -> str:
    """Text from the trail on one line: control characters shown as escapes (rows may predate the checks)."""
    import unicodedata

    return "".join(ch if unicodedata.category(ch)[0] != "C" or ch == " " else f"\\u{ord(ch):04x}"
                   for ch in str(text))


def _emit(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str) if as_json else text)


def _refused(exc: Exception, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"refused": str(exc), "failing": list(getattr(exc, "failing", ()))}, indent=2))
    typer.echo(f"refused: {exc}", err=True)
    raise typer.Exit(1)


def _criteria_lines(ev: dict[str, Any]) -> list[str]:
    lines = [f"  {ev['gate']} gate: {'PASS' if ev['passed'] else 'FAIL'}  (evidence {ev['evidence_hash'][:12]})"]
    for c in ev["criteria"]:
        lines.append(f"    [{'pass' if c['passed'] else 'FAIL'}] {c['name']}: {c['message']}")
    return lines


def _pinned_line(chain: dict[str, Any]) -> str:
    pinned = chain.get("pinned")
    if pinned is None:
        return ("chain head: not published outside the database ([gates] chain_parameter unset), so a consistent "
                "rewrite of every row would go unnoticed")
    if pinned.get("error"):
        return f"chain head: could not be read from {pinned['parameter']}"
    text = f"chain head: checked against {pinned['pins']} head(s) published to {pinned['parameter']}"
    if pinned["unpinned_events"]:
        text += (f"; {pinned['unpinned_events']} event(s) after event {pinned['pinned_seq']} are not pinned yet "
                 "(`reconcile gate publish` pins them)")
    return text


def _chain_lines(chain: dict[str, Any]) -> list[str]:
    if chain["ok"]:
        return [f"audit trail: intact ({chain['events']} events, head {chain['head_seq']})", _pinned_line(chain)]
    lines = [f"audit trail: BROKEN ({len(chain['breaks'])} problem(s))"]
    lines += [f"  event {b['seq'] if b['seq'] is not None else '-'}: {b['problem']}" for b in chain["breaks"]]
    return lines + [_pinned_line(chain)]


@app.command("status")
def status_cmd(config: Optional[Path] = CONFIG_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Current state, the audit-trail check, and each criterion of the next gate(s) with its evidence.

    Exit 1 when the audit trail is broken.
    """
    from reconcile.gates import gate_status

    st = gate_status(load(config))
    lines = [f"migration: {st['migration']['name'] or '(unnamed)'} {st['migration']['id']}",
             f"state: {st['state']} (since {st['entered_at']}, by {_shown(st['changed_by'] or '-')})",
             f"published: {st['published']['state'] or '-'}"
             + (f" (SSM {st['published']['ssm_parameter']})" if st["published"]["ssm_parameter"] else "")]
    if st["pending"]:
        p = st["pending"]
        lines.append(f"pending: {p['gate']} gate approved by {_shown(p['by'])} at {p['at']}; needs a second approver")
    lines += _chain_lines(st["chain"])
    for ev in st["gates"].values():
        lines += _criteria_lines(ev)
    if not st["gates"]:
        lines.append("no gate to evaluate")
    _emit(st, as_json, "\n".join(lines))
    raise typer.Exit(0 if st["chain"]["ok"] else 1)


@app.command("evaluate")
def evaluate_cmd(
    gate: str = GATE_ARG,
    by: Optional[str] = typer.Option(None, "--by", envvar="RECONCILE_GATE_BY", help="Who asks (recorded)."),
    record: bool = typer.Option(True, "--record/--no-record", help="Record the evaluation (runs row and event)."),
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Evaluate a gate's criteria from the stored history (exit 0 all pass, 1 some fail)."""
    from reconcile.gates import evaluate

    ev = evaluate(load(config), gate, record=record, actor=by).to_dict()
    _emit(ev, as_json, "\n".join(_criteria_lines(ev)))
    raise typer.Exit(0 if ev["passed"] else 1)


@app.command("approve")
def approve_cmd(
    gate: str = GATE_ARG,
    by: str = BY_OPTION,
    reason: str = REASON_OPTION,
    override: Optional[str] = OVERRIDE_OPTION,
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Approve a gate: records the approval only when every criterion passes (or --override), then transitions."""
    from reconcile.gates import GateRefused, approve

    cfg = load(config)
    try:
        result = approve(cfg, gate, by=by, reason=reason, override_reason=override, identity=_caller(cfg, **{"--by": by, "--reason": reason, "--override": override}))
    except GateRefused as exc:
        _refused(exc, as_json)
    if result["status"] == "pending":
        text = f"{gate} gate approved by {by}; waiting for a second, different approver (two-person rule)"
    else:
        text = (f"{gate} gate {'OVERRIDDEN' if result['override'] else 'approved'} by {', '.join(result['approvers'])}: "
                f"{result['from']} -> {result['to']}; published: {result['published']['state']}")
    _emit(result, as_json, text)


@app.command("rollback")
def rollback_cmd(
    by: str = BY_OPTION,
    reason: str = REASON_OPTION,
    override: Optional[str] = OVERRIDE_OPTION,
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Move the state one step back. From write_cutover the rollback gate must pass (reverse replay caught up,
    a green reverse reconciliation, no open reverse dead letter: `gate evaluate rollback`), or --override."""
    from reconcile.gates import GateRefused, rollback

    cfg = load(config)
    try:
        result = rollback(cfg, by=by, reason=reason, override_reason=override,
                          identity=_caller(cfg, **{"--by": by, "--reason": reason, "--override": override}))
    except GateRefused as exc:
        _refused(exc, as_json)
    if result["status"] == "pending":
        _emit(result, as_json, f"rollback approved by {by}; waiting for a second, different approver (two-person rule)")
        return
    _emit(result, as_json, f"rolled back {result['from']} -> {result['to']}"
                           + (" (override recorded)" if result["override"] else "")
                           + (f" on evidence {result['evidence_hash'][:12]}" if result.get("evidence_hash") else ""))


@app.command("acknowledge")
def acknowledge_cmd(
    finding: str = typer.Argument(..., help="The audit finding id (code:object), e.g. plain_numeric:ledger.x.y."),
    by: str = BY_OPTION,
    reason: str = REASON_OPTION,
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Acknowledge an audit finding (the write gate needs every must-change finding acknowledged; blockers are
    retired with `gate retire`)."""
    from reconcile.gates import acknowledge

    cfg = load(config)
    result = acknowledge(cfg, finding, by=by, reason=reason,
                         identity=_caller(cfg, **{"FINDING": finding, "--by": by, "--reason": reason}))
    text = (f"{finding} acknowledged by {by}" if result["status"] == "acknowledged"
            else f"{finding} was acknowledged already by {result['acknowledged_by']} at {result['acknowledged_at']}")
    _emit(result, as_json, text)


@app.command("retire")
def retire_cmd(
    finding: str = typer.Argument(..., help="The audit blocker's id (code:object), e.g. trigger_balance:ledger.entries.t."),
    by: str = BY_OPTION,
    reason: str = REASON_OPTION,
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Retire an audit blocker on evidence: it has a replacement the audit derived, and that expectation passed on
    the target in every check run of the streak window (exit 1 when refused)."""
    from reconcile.gates import GateRefused, retire

    cfg = load(config)
    try:
        result = retire(cfg, finding, by=by, reason=reason,
                        identity=_caller(cfg, **{"FINDING": finding, "--by": by, "--reason": reason}))
    except GateRefused as exc:
        _refused(exc, as_json)
    if result["status"] == "retired":
        r = result["replacement"]
        text = (f"{finding} retired by {by}: replaced by {r['suite']}/{r['name']}, green in "
                f"{len(result['vouching_check_runs'])} check run(s)")
    else:
        text = f"{finding} was retired already by {result['retired_by']} at {result['retired_at']}"
    _emit(result, as_json, text)


@app.command("history")
def history_cmd(
    limit: int = typer.Option(50, "--limit", parser=Number(int), help="Show the last N events (0: all); the check covers all."),
    config: Optional[Path] = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """The audit trail (who, when, why, evidence hash) and its hash-chain check (exit 1 when broken)."""
    from reconcile.gates import history

    h = history(load(config), limit=limit or None)
    lines = []
    for e in h["events"]:
        ev_hash = f" evidence {e['evidence_hash'][:12]}" if e.get("evidence_hash") else ""
        who = ((e.get("details") or {}) if isinstance(e.get("details"), dict) else {}).get("authenticated")
        as_who = f" [{who.get('kind')}:{_shown(who.get('principal'))}]" if isinstance(who, dict) else ""
        lines.append(f"{e['seq'] if e['seq'] is not None else '-':>4} {e['occurred_at']} {_shown(e['event']):<15} "
                     f"{_shown(e['gate'] or '-'):<5} {_shown(e['actor'] or '-')}{as_who}: {_shown(e['reason'] or '')}"
                     f"{ev_hash}")
    lines += _chain_lines(h["chain"])
    _emit(h, as_json, "\n".join(lines))
    raise typer.Exit(0 if h["chain"]["ok"] else 1)


@app.command("publish")
def publish_cmd(config: Optional[Path] = CONFIG_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Publish the current state (control table, and the SSM parameter when gates.ssm_parameter is set)."""
    from reconcile.gates import publish

    result = publish(load(config))
    ssm = result.get("ssm")
    text = (f"published {result['state']}: control table {'updated' if result['control_changed'] else 'unchanged'}"
            + (f", SSM {ssm['name']} {'updated' if ssm['changed'] else 'unchanged'}" if ssm else ""))
    _emit(result, as_json, text)


def main() -> None:
    """Run this group alone (``python -m reconcile.cli.gate_cmd``), as the console script would."""
    run_app(app)


if __name__ == "__main__":
    main()
