"""The rollback gate (write_cutover -> read_cutover) and the direction of a reconciliation, against real
PostgreSQL: the reverse replay's state on the source, reverse reconciliations and reverse dead letters on
the target, planted as the stages write them (tests/test_gates.py's helpers), and real diff runs.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from reconcile.config import Config
from reconcile.gates import GateRefused, acknowledge, approve, current_state, evaluate, gate_status, rollback
from reconcile.gates.rollback_gate import ROLLBACK_CRITERIA
from reconcile.reverse import source_state
from reconcile.reverse.settings import ReverseSettings
from tests.test_diff import ITEMS, config as diff_config, items_pair, run_sql
from tests.test_gates import GREEN_DIFF, MUST_CHANGE, add_run, events, green_history
from tests.test_gates import cfg as gates_cfg, conn  # noqa: F401  (pytest fixtures)


@pytest.fixture
def cfg(gates_cfg: Config) -> Config:  # noqa: F811
    """The gates config with a reverse stream of its own (the source database is shared by the tests)."""
    stream = "cdc-" + uuid.uuid4().hex[:10]
    return dataclasses.replace(gates_cfg, stages={**gates_cfg.stages,
                                                  "reverse": ReverseSettings(stream_name=stream, lag_limit_seconds=60)})


def reverse_state(cfg: Config, *, caught_up_seconds_ago: float | None) -> None:
    """The reverse replay's stream row on the source, caught up that many seconds ago (None: never)."""
    stream = cfg.stage("reverse").stream_name
    with psycopg.connect(cfg.source.conninfo, autocommit=True) as src:
        for stmt in source_state.DDL:
            src.execute(stmt)
        caught = None if caught_up_seconds_ago is None else time.time_ns() - int(caught_up_seconds_ago * 1e9)
        src.execute("INSERT INTO reconcile_reverse.streams (stream, start_ts_ns, applied_txns, caught_up_ns) "
                    "VALUES (%s, 0, 7, %s) ON CONFLICT (stream) DO UPDATE SET caught_up_ns = excluded.caught_up_ns",
                    (stream, caught))


def reverse_run(conn, status: str = "green", *, checks: str | None = "green", balances: str | None = "green") -> str:
    """A reverse reconciliation started now (after the write cutover): diff, balances and expectations."""
    run_id = add_run(conn, "diff", status, 0, {**GREEN_DIFF, "verdict": status}, minutes=0, checks=checks,
                     balances=balances)
    conn.execute("UPDATE reconcile.runs SET direction = 'reverse' WHERE run_id = %s OR part_of = %s",
                 (run_id, run_id))
    return run_id


def dead_letter(conn, cfg: Config) -> None:
    conn.execute("INSERT INTO reconcile.reverse_dead_letters (dead_letter_id, stream, tx_id, ts_ns, tables, reason) "
                 "VALUES (%s, %s, 'tx1', 1, 'ledger.entries', 'constraint violated on the source')",
                 (str(uuid.uuid4()), cfg.stage("reverse").stream_name))


def to_write_cutover(cfg: Config, conn) -> None:  # noqa: F811
    green_history(conn)
    acknowledge(cfg, MUST_CHANGE, by="ana", reason="ok", conn=conn)
    approve(cfg, "read", by="ana", reason="green", conn=conn)
    approve(cfg, "write", by="ana", reason="held", conn=conn)
    assert current_state(cfg, conn=conn) == "write_cutover"


def test_rollback_from_write_cutover_is_refused_without_evidence_and_passes_with_it(cfg, conn):  # noqa: F811
    to_write_cutover(cfg, conn)
    with pytest.raises(GateRefused, match=r"reverse_replay_lag, reverse_reconciliation_green\).*reconcile reverse run"
                       ) as refused:
        rollback(cfg, by="bo", reason="bad numbers", conn=conn)
    assert refused.value.failing == ("reverse_replay_lag", "reverse_reconciliation_green")
    assert current_state(cfg, conn=conn) == "write_cutover"
    # forward reconciliations after the write cutover are not reverse evidence
    add_run(conn, "diff", "green", 0, GREEN_DIFF, minutes=0)
    reverse_state(cfg, caught_up_seconds_ago=5)
    assert evaluate(cfg, "rollback", record=False, conn=conn).failing == ("reverse_reconciliation_green",)
    reverse_run(conn)
    shown = evaluate(cfg, "rollback", conn=conn)
    assert shown.passed and [c.name for c in shown.criteria] == list(ROLLBACK_CRITERIA)
    status = gate_status(cfg, conn=conn)
    assert status["next_gates"] == ["rollback"] and status["gates"]["rollback"]["passed"]
    result = rollback(cfg, by="bo", reason="bad numbers", evaluation=shown, conn=conn)
    assert (result["from"], result["to"], result["override"], result["failing"]) == \
        ("write_cutover", "read_cutover", False, [])
    assert result["seen_evidence_hash"] == shown.evidence_hash and current_state(cfg, conn=conn) == "read_cutover"
    kinds = [e[1] for e in events(conn)]
    assert kinds[-3:] == ["evaluation", "rollback", "publish"] and "override" not in kinds
    (evidence_hash,) = conn.execute("SELECT evidence_hash FROM reconcile.audit_events WHERE event = 'rollback'"
                                    ).fetchone()
    assert evidence_hash == result["evidence_hash"]
    assert gate_status(cfg, conn=conn)["chain"]["ok"]


def test_the_two_person_rule_holds_for_the_rollback_from_write_cutover(cfg, conn):  # noqa: F811
    """The system of record moves back: two authenticated people, as for the approvals; one person with two
    names, or no authenticated identity, is refused; the rollback from read_cutover stays one person's call."""
    from reconcile.gates.approver import airflow_responder
    from tests.test_gates import make_config

    to_write_cutover(cfg, conn)
    reverse_state(cfg, caught_up_seconds_ago=1)
    reverse_run(conn)
    two = dataclasses.replace(cfg, stages={**cfg.stages, "gates": dataclasses.replace(cfg.gates, two_person=True)})
    ana, bo = airflow_responder({"id": "u-ana", "name": "ana"}), airflow_responder({"id": "u-bo", "name": "bo"})
    with pytest.raises(GateRefused, match="no authenticated identity") as unauthenticated:
        rollback(two, by="ana", reason="bad numbers", conn=conn)
    assert unauthenticated.value.failing == ("two_person",)
    first = rollback(two, by="ana", reason="bad numbers", identity=ana, conn=conn)
    assert first["status"] == "pending" and current_state(two, conn=conn) == "write_cutover"
    assert gate_status(two, conn=conn)["pending"]["gate"] == "rollback"
    with pytest.raises(GateRefused, match=r"ana and bo are one authenticated identity"):
        rollback(two, by="bo", reason="agree", identity=ana, conn=conn)
    with pytest.raises(GateRefused, match="second, different approver"):
        rollback(two, by="ANA", reason="me again", identity=bo, conn=conn)
    assert current_state(two, conn=conn) == "write_cutover"
    second = rollback(two, by="bo", reason="agree", identity=bo, conn=conn)
    assert second["status"] == "rolled_back" and second["approvers"] == ["ana", "bo"]
    assert second["identities"] == ["airflow:u-ana", "airflow:u-bo"] and current_state(two, conn=conn) == "read_cutover"
    (details,) = conn.execute("SELECT details FROM reconcile.audit_events WHERE event = 'rollback' ORDER BY seq DESC "
                              "LIMIT 1").fetchone()
    details = json.loads(details) if isinstance(details, str) else details
    assert details["approver_identities"] == ["airflow:u-ana", "airflow:u-bo"] and details["first_approval"]
    assert gate_status(two, conn=conn)["pending"] is None and gate_status(two, conn=conn)["chain"]["ok"]
    # from read_cutover one authenticated person may roll back
    one = rollback(two, by="bo", reason="back to shadow", identity=bo, conn=conn)
    assert one["status"] == "rolled_back" and current_state(two, conn=conn) == "shadow"


def _lagging(cfg, conn):
    reverse_state(cfg, caught_up_seconds_ago=3600)


def _red(cfg, conn):
    reverse_run(conn, "red")


def _red_checks(cfg, conn):
    reverse_run(conn, checks="red")


def _red_balances(cfg, conn):
    reverse_run(conn, balances="red")


def _letter(cfg, conn):
    dead_letter(conn, cfg)


@pytest.mark.parametrize("plant,criterion", [
    (_lagging, "reverse_replay_lag"), (_red, "reverse_reconciliation_green"),
    (_red_checks, "reverse_reconciliation_green"), (_red_balances, "reverse_reconciliation_green"),
    (_letter, "reverse_dead_letters")])
def test_each_rollback_criterion_fails_alone_and_refuses_the_rollback(cfg, conn, plant, criterion):  # noqa: F811
    to_write_cutover(cfg, conn)
    reverse_state(cfg, caught_up_seconds_ago=1)
    reverse_run(conn)
    assert evaluate(cfg, "rollback", record=False, conn=conn).passed
    plant(cfg, conn)
    ev = evaluate(cfg, "rollback", record=False, conn=conn)
    assert ev.failing == (criterion,), ev.to_dict()
    with pytest.raises(GateRefused, match=criterion) as refused:
        rollback(cfg, by="bo", reason="go back", conn=conn)
    assert refused.value.failing == (criterion,)
    # the break-glass stays, recorded with the failing criterion
    result = rollback(cfg, by="bo", reason="go back", override_reason="incident 42: writes checked by hand", conn=conn)
    assert result["override"] is True and result["failing"] == [criterion]
    override = [json.loads(e[5]) for e in events(conn) if e[1] == "override"]
    assert override[-1]["failing"] == [criterion] and override[-1]["action"] == "rollback"


def test_reverse_runs_do_not_count_for_the_forward_gates(cfg, conn):  # noqa: F811
    green_history(conn)
    before = evaluate(cfg, "read", record=False, conn=conn)
    assert before.passed
    reverse_run(conn, "red", checks="red")  # the latest diff and check, but reverse
    after = evaluate(cfg, "read", record=False, conn=conn)
    assert after.passed and after.substance_hash == before.substance_hash


def test_the_rollback_gate_is_not_approved_but_rolled_back(cfg, conn):  # noqa: F811
    from reconcile.gates import GateError

    with pytest.raises(GateError, match="gate rollback"):
        approve(cfg, "rollback", by="ana", reason="go", conn=conn)
    ev = evaluate(cfg, "rollback", record=False, conn=conn)
    assert not ev.passed and "not write_cutover" in ev.criterion("reverse_reconciliation_green").message


# --- direction of real diff runs ---------------------------------------------------------------


def _write_cutover_state(target: str, cfg: Config) -> None:
    """Put ``cfg``'s migration in write cutover (its own cutover state row)."""
    from reconcile import control
    from reconcile.connections import connect
    from reconcile.config import PostgresEndpoint
    from reconcile.identity import cutover_key

    with connect(PostgresEndpoint("target", target)) as conn:
        control.migrate(conn)
        conn.execute("INSERT INTO reconcile.gate_state (gate_key, state, version, entered_at) VALUES (%s, 'write_cutover', "
                     "1, now()) ON CONFLICT (gate_key) DO UPDATE SET state = 'write_cutover'", (cutover_key(cfg),))


def test_a_diff_after_write_cutover_is_reverse_and_counts_from_the_target(source_db, target_db, tmp_path: Path):
    from typer.testing import CliRunner

    from reconcile.cli.diff_cmd import app as diff_app
    from reconcile.diff import run_diff

    items_pair(source_db, target_db, rows=50)
    run_sql(target_db, "DELETE FROM app.items WHERE id = 10",                              # on the source only
            "INSERT INTO app.items VALUES (5001, 'new on dsql', 1, now(), 'x', NULL)",     # on the target only
            "INSERT INTO app.items VALUES (5002, 'new on dsql', 1, now(), 'x', NULL)")
    cfg = diff_config(source_db, target_db, ITEMS)
    forward = run_diff(cfg, report_dir=tmp_path)
    assert forward.summary["direction"] == "forward"
    assert (forward.summary["tables"]["app.items"]["missing"], forward.summary["tables"]["app.items"]["extra"]) == (1, 2)
    _write_cutover_state(target_db, cfg)
    reverse = run_diff(cfg, report_dir=tmp_path)
    table = reverse.summary["tables"]["app.items"]
    assert reverse.summary["direction"] == "reverse" and (table["missing"], table["extra"]) == (2, 1)
    forced = run_diff(cfg, report_dir=tmp_path, direction="forward")
    with psycopg.connect(target_db) as conn:
        stored = dict(conn.execute("SELECT run_id::text, direction FROM reconcile.runs WHERE kind = 'diff'").fetchall())
    assert stored == {forward.run_id: "forward", reverse.run_id: "reverse", forced.run_id: "forward"}
    md = (tmp_path / reverse.run_id / "summary.md").read_text()
    assert "(reverse: the target is the system of record)" in md and "missing = on the target but not on the source" in md
    page = (tmp_path / reverse.run_id / "report.html").read_text()
    assert "reverse (the target is the system of record" in page and "missing on the source" in page
    # the CLI line names it; --direction forces it and refuses anything else
    (tmp_path / "reconcile.toml").write_text(
        f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n[target]\nkind = "postgres"\nconninfo = "{target_db}"\n'
        '[[tables]]\nname = "app.items"\nkey = ["id"]\n[diff]\nbalances = false\n')
    out = CliRunner().invoke(diff_app, ["--config", str(tmp_path / "reconcile.toml"), "--report-dir", str(tmp_path)])
    assert out.exit_code == 1 and ", reverse, start LSN" in out.stdout.splitlines()[0], out.stdout
    bad = CliRunner().invoke(diff_app, ["--direction", "sideways", "--config", str(tmp_path / "reconcile.toml")])
    assert bad.exit_code != 0 and "not one of forward, reverse" in (bad.stdout + str(bad.exception))



def test_a_reverse_diff_rechecks_after_the_reverse_replay_catches_up(source_db, target_db, tmp_path: Path):
    """In reverse the re-checks wait for the reverse replay's caught-up point (on the source), not the forward
    replay's watermark: a caught-up reverse replay answers at once, a stale one times out (recorded)."""
    from reconcile.diff import run_diff
    from tests.test_diff import SMALL

    items_pair(source_db, target_db, rows=20)
    run_sql(target_db, "UPDATE app.items SET name = 'renamed on dsql' WHERE id = 3")
    cfg = diff_config(source_db, target_db, ITEMS, settings=dataclasses.replace(SMALL, lag_wait_seconds=1))
    _write_cutover_state(target_db, cfg)
    stream = cfg.stage("reverse").stream_name
    with psycopg.connect(source_db, autocommit=True) as src:
        for stmt in source_state.DDL:
            src.execute(stmt)
        src.execute("INSERT INTO reconcile_reverse.streams (stream, start_ts_ns, caught_up_ns) VALUES (%s, 0, %s)",
                    (stream, time.time_ns() + 3600 * 10**9))
    caught_up = run_diff(cfg, report_dir=tmp_path)
    with psycopg.connect(target_db) as conn:
        (details,) = conn.execute("SELECT details FROM reconcile.diff_results WHERE run_id = %s AND table_name = "
                                  "'app.items'", (caught_up.run_id,)).fetchone()
    assert json.loads(details)["lag_aware"] and json.loads(details)["watermark_passed"]
    assert caught_up.summary["tables"]["app.items"]["changed"] == 1 and caught_up.summary["lag_waits"]["waits"] == 0
    run_sql(source_db, f"UPDATE reconcile_reverse.streams SET caught_up_ns = {time.time_ns() - 3600 * 10**9} "
                       f"WHERE stream = '{stream}'")
    stale = run_diff(cfg, report_dir=tmp_path)
    waits = stale.summary["lag_waits"]
    assert waits["timed_out"] == 1 and "reverse replay of stream" in waits["reason"], waits
    assert stale.summary["tables"]["app.items"]["changed"] == 1


# --- a blocker retired by evidence ------------------------------------------------------------------

BALANCE_TRIGGER = "trigger_balance:ledger.entries.post_balance"


def balance_blocker(conn, cfg: Config) -> str:  # noqa: F811
    """The latest audit: the demo's balance trigger (a blocker whose replacement is the balance invariant)
    and a plain trigger (a blocker without one)."""
    from tests.test_gates import add_audit

    accounts, entries = cfg.tables_with_role("accounts")[0], cfg.tables_with_role("entries")[0]
    invariant = {"name": f"balance_equals_sum_of_entries:{accounts.name}.{accounts.balance_column}",
                 "kind": "balance_equals_sum_of_entries", "accounts": accounts.name,
                 "balance_column": accounts.balance_column, "account_key": accounts.account_column,
                 "entries": entries.name, "amount_column": entries.amount_column,
                 "entry_account_column": entries.account_column, "replaces_trigger": "ledger.entries.post_balance"}
    run_id = add_audit(conn, blockers=1)  # trigger:ledger.t0, no replacement
    conn.execute("INSERT INTO reconcile.audit_findings (run_id, finding_no, finding_id, code, severity, level, "
                 "object_type, object, message, why, fix, details) VALUES (%s, 99, %s, 'trigger_balance', 'blocker', "
                 "'catalog', 'trigger', 'ledger.entries.post_balance', 'm', 'w', 'f', %s)",
                 (run_id, BALANCE_TRIGGER, json.dumps({"invariant": invariant})))
    return run_id


def expectation_results(conn, cfg: Config, result: str = "passed", *, only_missing: bool = True) -> list[str]:  # noqa: F811
    """Record the replacement expectation's result on the target in every check run (lacking one)."""
    from reconcile.checks.generate import ledger_balance, replacement_of

    accounts = cfg.tables_with_role("accounts")[0]
    inv = {"kind": "balance_equals_sum_of_entries", "name": "x", "accounts": accounts.name,
           "balance_column": accounts.balance_column, "account_key": accounts.account_column,
           "entries": cfg.tables_with_role("entries")[0].name,
           "amount_column": cfg.tables_with_role("entries")[0].amount_column,
           "entry_account_column": cfg.tables_with_role("entries")[0].account_column}
    suite, name = replacement_of(inv, ledger_balance(cfg), {t.name for t in cfg.tables})
    runs = [r[0] for r in conn.execute(
        "SELECT run_id::text FROM reconcile.runs r WHERE kind = 'check' AND (NOT %s OR NOT EXISTS "
        "(SELECT 1 FROM reconcile.check_results c WHERE c.run_id = r.run_id))", (only_missing,)).fetchall()]
    for run_id in runs:
        conn.execute("INSERT INTO reconcile.check_results (run_id, result_no, side, suite, name, expectation, success, "
                     "status) VALUES (%s, 1000, 'target', %s, %s, 'UnexpectedRowsExpectation', %s, %s) "
                     "ON CONFLICT (run_id, result_no) DO UPDATE SET status = excluded.status, success = excluded.success",
                     (run_id, suite, name, result == "passed", result))
    return runs


def test_a_blocker_is_retired_only_with_a_replacement_green_over_the_streak(cfg, conn):  # noqa: F811
    from reconcile.gates import GateError, retire

    green_history(conn)
    balance_blocker(conn, cfg)
    ev = evaluate(cfg, "read", record=False, conn=conn)
    assert ev.failing == ("audit_blockers",) and ev.criterion("audit_blockers").evidence["blockers"] == 2
    with pytest.raises(GateError, match="retire it on evidence"):
        acknowledge(cfg, BALANCE_TRIGGER, by="ana", reason="app posts balances", conn=conn)
    # a blocker without a replacement can never be retired
    with pytest.raises(GateRefused, match="no replacement") as refused:
        retire(cfg, "trigger:ledger.t0", by="ana", reason="we will live without it", conn=conn)
    assert refused.value.failing == ("replacement",)
    # with a replacement, but one check run of the window did not pass it
    expectation_results(conn, cfg)
    latest = add_run(conn, "check", "green", 0.5, {"success": True})
    expectation_results(conn, cfg, "failed")
    with pytest.raises(GateRefused, match=rf"has not been green \(.*failed on the target in check run {latest}"):
        retire(cfg, BALANCE_TRIGGER, by="ana", reason="app posts balances", conn=conn)
    assert [json.loads(e[5])["action"] for e in events(conn) if e[1] == "refusal"] == \
        ["retire trigger:ledger.t0", f"retire {BALANCE_TRIGGER}"]
    # every check run of the streak window passed it: retired, shown in the evidence
    vouching = expectation_results(conn, cfg, "passed", only_missing=False)
    result = retire(cfg, BALANCE_TRIGGER, by="ana", reason="app posts balances in the same transaction", conn=conn)
    assert result["status"] == "retired" and set(result["vouching_check_runs"]) <= set(vouching)
    assert result["replacement"]["name"] in ("balance_equals_sum_of_entries",) or \
        result["replacement"]["name"].startswith("invariant:")
    assert retire(cfg, BALANCE_TRIGGER, by="bo", reason="again", conn=conn)["status"] == "already"
    ev = evaluate(cfg, "read", record=False, conn=conn)
    crit = ev.criterion("audit_blockers")
    assert crit.evidence["blocker_ids"] == ["trigger:ledger.t0"]  # the one without a replacement still blocks
    (retired,) = crit.evidence["retired"]
    assert (retired["finding_id"], retired["retired_by"], retired["reason"]) == \
        (BALANCE_TRIGGER, "ana", "app posts balances in the same transaction")
    assert retired["vouching_check_runs"] and latest in retired["vouching_check_runs"]
    (event,) = [json.loads(e[5]) for e in events(conn) if e[1] == "retirement"]
    assert event["finding_id"] == BALANCE_TRIGGER and event["vouching_check_runs"] == result["vouching_check_runs"]


def test_a_retired_blocker_clears_the_gate_until_its_replacement_turns_red(cfg, conn):  # noqa: F811
    from reconcile.gates import retire

    green_history(conn, audit=False)
    run_id = balance_blocker(conn, cfg)
    conn.execute("DELETE FROM reconcile.audit_findings WHERE run_id = %s AND finding_id = 'trigger:ledger.t0'",
                 (run_id,))
    expectation_results(conn, cfg)
    retire(cfg, BALANCE_TRIGGER, by="ana", reason="app posts balances", conn=conn)
    ev = evaluate(cfg, "read", record=False, conn=conn)
    assert ev.passed, ev.to_dict()
    assert "retired by evidence" in ev.criterion("audit_blockers").message
    add_run(conn, "check", "red", 0.1, {"success": False})
    expectation_results(conn, cfg, "failed")
    crit = evaluate(cfg, "read", record=False, conn=conn).criterion("audit_blockers")
    assert not crit.passed and "retired by ana, but" in crit.message
    assert crit.evidence["not_retired"][0]["finding_id"] == BALANCE_TRIGGER
