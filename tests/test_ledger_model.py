"""A ledger unlike the demo goes through the balance diff and the ledger expectations (issue 13).

The general ledger ``gl`` has other schema, table and column names, uuid and composite keys, no
currency column (a single-currency ledger, reported as EUR), dates instead of timestamps, no
idempotency key and no sign convention for negative balances. It is built the way a user would
build it: the target planned from the source (:mod:`reconcile.schema`), the rows copied by the
backfill, the config written as TOML and loaded by ``load_config``. Then:

* the balance diff and the ledger expectations are green, and what does not apply is reported
  "not applicable" with the reason (stored, in the summaries, on the console), never run;
* a fault planted on the target is found by both, with the user's column names;
* ``[diff] balances = false`` is stated in the CLI line, summary.json, summary.md and report.html,
  and the run is recorded as not a full reconciliation;
* with the replay stopped behind the source, a diff with several red tables waits for the
  watermark once in all (one timed-out wait recorded; the later ones skipped), saying why.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from reconcile.backfill import BackfillSettings, run_backfill
from reconcile.checks import run_checks
from reconcile.cli.check_cmd import app as check_app
from reconcile.cli.diff_cmd import app as diff_app
from reconcile.config import Config, load_config
from reconcile.diff import run_diff
from reconcile.replay import init_replay, run_replay
from reconcile.schema import apply_plan, plan_from_source

GL_DDL = (
    "CREATE SCHEMA gl",
    "CREATE TABLE gl.chart (acct uuid PRIMARY KEY, label text NOT NULL, bal numeric(20,4) NOT NULL)",
    "CREATE TABLE gl.vouchers (voucher uuid PRIMARY KEY, ref text NOT NULL, booked timestamp NOT NULL)",
    "CREATE TABLE gl.lines (voucher uuid NOT NULL REFERENCES gl.vouchers, line_no integer NOT NULL, "
    "acct uuid NOT NULL REFERENCES gl.chart, amt numeric(20,4) NOT NULL, value_date date NOT NULL, "
    "PRIMARY KEY (voucher, line_no))",
)
ACCOUNTS, VOUCHERS = 12, 60

TABLES_TOML = """
[[tables]]
name = "gl.chart"
key = ["acct"]
role = "accounts"
account_column = "acct"
balance_column = "{balance}"
currency_column = ""

[[tables]]
name = "gl.vouchers"
key = ["voucher"]
role = "transactions"
transaction_column = "voucher"

[[tables]]
name = "gl.lines"
key = ["voucher", "line_no"]
role = "entries"
account_column = "acct"
amount_column = "amt"
currency_column = ""
transaction_column = "{txn}"
"""


def seed_gl(conn: psycopg.Connection) -> None:
    """Balanced vouchers of 2-3 lines over a few accounts; each account's bal is the sum of its lines."""
    rng = random.Random(13)
    for stmt in GL_DDL:
        conn.execute(stmt)
    accts = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(ACCOUNTS)]
    bal = dict.fromkeys(accts, Decimal(0))
    lines = []
    vouchers = []
    for v in range(VOUCHERS):
        voucher = uuid.UUID(int=rng.getrandbits(128), version=4)
        day = f"2025-03-{1 + v % 5:02d}"
        vouchers.append((voucher, f"V-{v:04d}", f"{day} 10:{v % 60:02d}:00"))
        amounts = [Decimal(rng.randint(1, 99999)) / 100 for _ in range(rng.choice((1, 2)))]
        amounts.append(-sum(amounts))
        for n, amount in enumerate(amounts, start=1):
            acct = rng.choice(accts)
            bal[acct] += amount
            lines.append((voucher, n, acct, amount, day))
    with conn.transaction():
        conn.cursor().executemany("INSERT INTO gl.chart VALUES (%s, %s, %s)",
                                  [(a, f"account {i}", bal[a]) for i, a in enumerate(accts)])
        conn.cursor().executemany("INSERT INTO gl.vouchers VALUES (%s, %s, %s)", vouchers)
        conn.cursor().executemany("INSERT INTO gl.lines VALUES (%s, %s, %s, %s, %s)", lines)


def write_config(folder: Path, source: str, target: str, *, balance: str = "bal", txn: str = "voucher",
                 diff: str = 'currency = "EUR"\ndate_column = "value_date"\n', extra: str = "") -> Path:
    path = folder / f"gl-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source}"\n\n'
                    f'[target]\nkind = "postgres"\nconninfo = "{target}"\n\n'
                    f'[diff]\nsegment_rows = 200\nbucket_rows = 20\nfetch_threshold = 20\nlag_wait_seconds = 5\n'
                    f'poll_seconds = 0.05\nreport_dir = "{folder / "reports"}"\n{diff}\n{extra}\n'
                    + TABLES_TOML.format(balance=balance, txn=txn))
    return path


def build(source: str, target: str, cfg: Config, *, replay: str | None = None) -> None:
    """The source seeded, the target planned from it and applied around the backfill (post-load after it)."""
    with psycopg.connect(source, autocommit=True) as conn:
        seed_gl(conn)
        plan = plan_from_source(conn, tables=list(cfg.tables), dialect="postgres")
    with psycopg.connect(target, autocommit=True) as conn:
        apply_plan(conn, plan, phase="pre-load")
    if replay:
        init_replay(cfg)
    summary = run_backfill(cfg, BackfillSettings(replay=bool(replay), slot_name=replay or "reconcile"))
    assert summary.status == "done", summary
    with psycopg.connect(target, autocommit=True) as conn:
        apply_plan(conn, plan, phase="post-load")


@pytest.fixture(scope="module")
def gl(local_stack, tmp_path_factory):
    """The gl ledger on a source database and copied to a target database (read-only for the tests, or restored)."""
    names = {}
    for role, prefix in (("source", "gls"), ("target", "glt")):
        names[role] = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(local_stack[role], autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{names[role]}" TEMPLATE template1')
    source = psycopg.conninfo.make_conninfo(local_stack["source"], dbname=names["source"])
    target = psycopg.conninfo.make_conninfo(local_stack["target"], dbname=names["target"])
    folder = tmp_path_factory.mktemp("gl")
    build(source, target, load_config(write_config(folder, source, target), environ={}))
    yield source, target, folder
    for role in ("source", "target"):
        with psycopg.connect(local_stack[role], autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{names[role]}" WITH (FORCE)')


# --- pure (no database) ------------------------------------------------------------------------------


def test_every_ledger_invariant_is_listed_and_what_has_no_role_is_not_applicable():
    from reconcile.checks.ledger import NAMES, ledger_checks
    from reconcile.config import PostgresEndpoint, TableSpec

    plain = Config(source=PostgresEndpoint("source", "host=s"), target=PostgresEndpoint("target", "host=t"),
                   tables=(TableSpec("app.items", ("id",)),))
    checks = ledger_checks(plain)
    assert [c.name for c in checks] == list(NAMES)
    assert all(c.not_applicable and not c.kwargs for c in checks)
    assert {c.not_applicable for c in checks} == {"no [[tables]] entry has role entries",
                                                  "no [[tables]] entry has role accounts",
                                                  "no [[tables]] entry has role transactions"}
    # a single-currency ledger: zero-sum groups by transaction alone, no currency anywhere in the SQL
    gl = Config(
        source=plain.source, target=plain.target,
        tables=(TableSpec("gl.chart", ("acct",), "accounts", account_column="acct", balance_column="bal",
                          currency_column=""),
                TableSpec("gl.lines", ("voucher", "line_no"), "entries", account_column="acct", amount_column="amt",
                          currency_column="", transaction_column="voucher")))
    by_name = {c.name: c for c in ledger_checks(gl)}
    query = by_name["entries_sum_to_zero"].kwargs["unexpected_rows_query"]
    assert query.startswith('SELECT e."voucher", sum(e."amt") AS total') and 'GROUP BY e."voucher" HAVING' in query
    assert by_name["entries_have_transaction"].not_applicable == "no [[tables]] entry has role transactions"


def test_a_wait_counts_down_and_ends_at_its_deadline():
    from reconcile.diff.lag import Waiter

    now = [0.0]
    ticks: list[float] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds

    waiter = Waiter(lambda: 5, deadline=12.0, poll=0.5, sleep=sleep, clock=lambda: now[0], tick=ticks.append, every=4)
    assert waiter.wait(10) is False and waiter.passed is False and waiter.mark == 5
    assert ticks == [8.0, 4.0] and now[0] == 12.0
    assert Waiter(lambda: 10, deadline=0.0, clock=lambda: 1.0).wait(10) is True   # answered at once, past deadline


def test_what_a_run_did_is_said_next_to_its_verdict():
    from reconcile.report.notes import balance_phrase, headline, notes

    summary = {"verdict": "green", "balance_differences": 0, "full_reconciliation": False,
               "partial_reasons": ["balances skipped ([diff] balances = false)"],
               "balances": {"status": "skipped", "reason": "[diff] balances = false", "not_applicable": {}},
               "lag_waits": {"waits": 3, "timed_out": 1, "skipped": 2, "waited_seconds": 5.02, "timed_out_at": "a.b",
                             "reason": "no replay is reading slot 'r'"}}
    assert headline(summary) == "GREEN (not a full reconciliation)"
    assert balance_phrase(summary) == "balances skipped"
    assert notes(summary) == [
        "Not a full reconciliation: balances skipped ([diff] balances = false).",
        "Balances skipped: [diff] balances = false.",
        "Replay not advancing: waited 5.0 s for the watermark in all (the lag wait ended at a.b: no replay is "
        "reading slot 'r'), then compared statically; 2 later wait(s) skipped.",
    ]
    full = {"verdict": "red", "balance_differences": 2, "full_reconciliation": True,
            "balances": {"status": "red", "not_applicable": {"daily_total": "[diff] date_column is not set"}}}
    assert (headline(full), balance_phrase(full)) == ("RED", "2 balance differences")
    assert notes(full) == ["Balance check daily_total not applicable: [diff] date_column is not set."]


# --- real servers ---------------------------------------------------------------------------------------


def _balances(summary: dict) -> dict:
    return next(r for r in summary["details"]["results"] if r["table"] == "__balances__")


def _findings(target: str, run_id: str) -> set[tuple]:
    with psycopg.connect(target) as conn:
        return {(t, k, json.dumps(json.loads(key))) for t, k, key in conn.execute(
            "SELECT table_name, kind, row_key FROM reconcile.diff_findings WHERE run_id = %s", (run_id,))}


NOT_APPLICABLE_HERE = {"entry_currency_matches_account", "no_forbidden_negative_balance", "idempotency_key_unique",
                       "idempotency_key_not_null"}


def test_a_ledger_unlike_the_demo_is_green_and_a_planted_fault_is_found(gl, tmp_path):
    source, target, folder = gl
    cfg = load_config(write_config(folder, source, target), environ={})
    result = run_diff(cfg, report_dir=tmp_path)
    s = result.to_dict()
    assert result.verdict == "green" and s["status"] == "green", s
    assert s["full_reconciliation"] is True and s["partial_reasons"] == []
    assert s["balances"] == {"status": "green", "reason": None, "not_applicable": {}}
    doc = json.loads((tmp_path / result.run_id / "summary.json").read_text())
    figures = _balances(doc)["details"]
    assert [c["currency"] for c in figures["currencies"]] == ["EUR"]   # one group, shown as [diff] currency
    (eur,) = figures["currencies"]
    assert (eur["trial_source"], eur["entries_source"], eur["balances_source"]) == (
        "0.0000", eur["entries_target"], eur["balances_target"])
    assert figures["accounts_source"] == ACCOUNTS and figures["days"] == 5

    checks = run_checks(cfg, suites=("ledger",))
    assert checks.success, [o.to_dict() for o in checks.failed]
    ran = {o.check.name for o in checks.evaluated}
    assert ran == {"entries_sum_to_zero", "entries_have_transaction", "entries_have_account",
                   "balance_equals_sum_of_entries"}
    na = {o.check.name: o.not_applicable for o in checks.not_applicable}
    assert set(na) == NOT_APPLICABLE_HERE
    assert 'gl.lines has no currency column (currency_column = "")' in na["entry_currency_matches_account"]
    assert "idempotency_column is not set" in na["idempotency_key_unique"]
    assert "negative_balance_exempt_column" in na["no_forbidden_negative_balance"]
    summary = checks.to_dict()
    assert (summary["evaluated"], summary["failed"], summary["not_applicable"]) == (8, 0, 8)   # 4 each, two sides
    with psycopg.connect(target) as conn:
        stored = conn.execute("SELECT side, name, status, reason, success FROM reconcile.check_results "
                              "WHERE run_id = %s", (checks.run_id,)).fetchall()
    assert {(side, name) for side, name, status, *_ in stored if status == "not_applicable"} == {
        (side, n) for side in ("source", "target") for n in NOT_APPLICABLE_HERE}
    assert all(reason for _, _, status, reason, _ in stored if status == "not_applicable")
    assert {r[2] for r in stored} == {"passed", "not_applicable"}

    # The fault: one line's amount on the target.
    with psycopg.connect(target, autocommit=True) as conn:
        voucher, acct, day = conn.execute("SELECT voucher, acct, value_date::text FROM gl.lines "
                                          "ORDER BY voucher, line_no LIMIT 1").fetchone()
        conn.execute("UPDATE gl.lines SET amt = amt + 1 WHERE voucher = %s AND line_no = 1", (voucher,))
    try:
        red = run_diff(cfg, report_dir=tmp_path)
        assert red.verdict == "red"
        assert (red.summary["tables"]["gl.lines"]["changed"], red.summary["persistent_mismatches"]) == (1, 1)
        assert red.summary["attribution"] == {"faults": 1, "unexplained": 0, "explained_balance_differences": 4,
                                              "balance_differences": 4, "complete": True}   # no currency column
        found = _findings(target, red.run_id)
        v, a = str(voucher), str(acct)
        assert found == {
            ("gl.lines", "changed", json.dumps([v, 1])),
            ("balances", "balance_vs_entries", json.dumps(["target", a])),
            ("balances", "trial_balance", json.dumps(["target", "EUR"])),
            ("balances", "unbalanced_txn", json.dumps(["target", v, "EUR"])),
            ("balances", "daily_total", json.dumps([day, "EUR"])),
        }
        with psycopg.connect(target) as conn:
            (columns,) = conn.execute("SELECT columns FROM reconcile.diff_findings WHERE run_id = %s AND "
                                      "table_name = 'gl.lines'", (red.run_id,)).fetchone()
        assert json.loads(columns) == ["amt"]
        bad = run_checks(cfg, sides=("target",), suites=("ledger",))
        assert {o.check.name for o in bad.failed} == {"entries_sum_to_zero", "balance_equals_sum_of_entries"}
    finally:
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("UPDATE gl.lines SET amt = amt - 1 WHERE voucher = %s AND line_no = 1", (voucher,))


def test_parts_without_a_column_are_not_applicable_never_failed(gl, tmp_path):
    """No stored balance, no transaction column on the entries, no date column: those parts are not run,
    and every output names them with the reason."""
    source, target, folder = gl
    path = write_config(folder, source, target, balance="", txn="", diff="")
    cfg = load_config(path, environ={})
    result = run_diff(cfg, report_dir=tmp_path)
    s = result.to_dict()
    assert result.verdict == "green" and s["full_reconciliation"] is True, s
    na = s["balances"]["not_applicable"]
    assert set(na) == {"balance_mismatch", "balance_vs_entries", "currency_total", "unbalanced_txn", "daily_total"}
    assert 'gl.chart keeps no stored balance (balance_column = "")' in na["balance_vs_entries"]
    assert "[diff] date_column is not set" in na["daily_total"]
    folder_out = tmp_path / result.run_id
    assert "balance check daily_total not applicable" in (folder_out / "summary.md").read_text().lower()
    assert "daily_total: not applicable" in (folder_out / "report.html").read_text()
    (cur,) = _balances(json.loads((folder_out / "summary.json").read_text()))["details"]["currencies"]
    assert cur["currency"] is None and "balances_source" not in cur and cur["trial_source"] == "0.0000"

    checks = run_checks(cfg, sides=("target",), suites=("ledger",))
    assert checks.success
    na_checks = {o.check.name: o.not_applicable for o in checks.not_applicable}
    assert set(na_checks) == NOT_APPLICABLE_HERE | {"entries_sum_to_zero", "entries_have_transaction",
                                                    "balance_equals_sum_of_entries"}
    assert {o.check.name for o in checks.evaluated} == {"entries_have_account"}

    out = CliRunner().invoke(check_app, ["--config", str(path), "--side", "target", "--suite", "ledger"])
    assert out.exit_code == 0, out.output
    assert "not applicable ledger balance_equals_sum_of_entries: gl.chart keeps no stored balance" in out.stdout
    assert "green: 1 expectations, 0 failed, 7 not applicable" in out.stdout


def test_balances_off_is_stated_everywhere_and_is_not_a_full_reconciliation(gl, tmp_path):
    source, target, folder = gl
    path = write_config(folder, source, target)
    out = CliRunner().invoke(diff_app, ["--config", str(path), "--report-dir", str(tmp_path)],
                             env={"RECONCILE__DIFF__BALANCES": "false"})
    assert out.exit_code == 0, out.output
    first = out.stdout.splitlines()[0]
    assert first.startswith("diff GREEN (not a full reconciliation): 0 persistent mismatches, balances skipped")
    assert "Not a full reconciliation: balances skipped ([diff] balances = false)." in out.stdout
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    doc = json.loads((run_dir / "summary.json").read_text())
    assert doc["full_reconciliation"] is False
    assert doc["partial_reasons"] == ["balances skipped ([diff] balances = false)"]
    assert doc["balances"]["status"] == "skipped" and doc["balances"]["reason"] == "[diff] balances = false"
    md = (run_dir / "summary.md").read_text()
    assert "# Diff GREEN (not a full reconciliation)" in md and "balances skipped" in md
    assert "0 balance differences" not in md
    html = (run_dir / "report.html").read_text()
    assert "(not a full reconciliation)" in html and "Balances skipped</b>: [diff] balances = false" in html
    with psycopg.connect(target) as conn:
        (stored,) = conn.execute("SELECT summary FROM reconcile.runs WHERE run_id = %s", (run_dir.name,)).fetchone()
    assert json.loads(stored)["full_reconciliation"] is False


def test_with_the_replay_stopped_the_diff_waits_once_in_all_and_says_why(source_db, target_db, tmp_path, caplog):
    """The replay ran, caught up and stopped; then the source moved on and the target was damaged in two tables.
    The diff waits for the watermark once (one timed-out wait recorded), not once per red table."""
    slot = "gl_" + psycopg.conninfo.conninfo_to_dict(source_db)["dbname"].lower()
    path = write_config(tmp_path, source_db, target_db, extra=f'[replay]\nslot_name = "{slot}"\npoll_interval = 0.1\n')
    cfg = load_config(path, environ={})
    try:
        build(source_db, target_db, cfg, replay=slot)
        run_replay(cfg, until_caught_up=True)    # a watermark exists; no replay runs from here on
        with psycopg.connect(source_db, autocommit=True) as conn:   # the source moves past the watermark
            conn.execute("UPDATE gl.vouchers SET ref = ref || '-moved' WHERE voucher = "
                         "(SELECT voucher FROM gl.vouchers ORDER BY 1 LIMIT 1)")
        with psycopg.connect(target_db, autocommit=True) as conn:   # two more red tables, and the balances
            conn.execute("UPDATE gl.chart SET bal = bal + 5 WHERE acct = (SELECT acct FROM gl.chart ORDER BY 1 LIMIT 1)")
            conn.execute("UPDATE gl.lines SET amt = amt + 5 WHERE (voucher, line_no) = "
                         "(SELECT voucher, line_no FROM gl.lines ORDER BY 1, 2 LIMIT 1)")
        caplog.set_level(logging.INFO, logger="reconcile.diff")
        result = run_diff(cfg, report_dir=tmp_path)
    finally:
        with psycopg.connect(source_db, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE database = current_database() AND NOT active")
    s = result.summary
    assert result.verdict == "red"
    assert {t for t, v in s["tables"].items() if v["status"] == "red"} == {"gl.chart", "gl.vouchers", "gl.lines"}
    with psycopg.connect(target_db) as conn:
        waits = conn.execute("SELECT table_name, outcome, waited_seconds, reason FROM reconcile.diff_lag_waits "
                             "WHERE run_id = %s ORDER BY started_at", (result.run_id,)).fetchall()
    outcomes = [w[1] for w in waits]
    assert outcomes.count("timed_out") == 1 and outcomes.count("passed") == 0, waits
    assert outcomes.count("skipped") == len(waits) - 1 >= 3, waits   # two more tables and the balances
    assert all(w[2] == 0 for w in waits if w[1] == "skipped")
    timed_out = next(w for w in waits if w[1] == "timed_out")
    assert f"no replay is reading slot '{slot}'" in timed_out[3]
    assert s["lag_waits"]["timed_out"] == 1 and s["lag_waits"]["skipped"] == len(waits) - 1
    assert s["lag_waits"]["waited_seconds"] == float(timed_out[2])
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("waiting up to 5 s for it (once for this diff run)" in m and "no replay is reading slot" in m
               for m in said), said
    assert sum("not waiting for the replay" in m for m in said) == len(waits) - 1, said
    md = (tmp_path / result.run_id / "summary.md").read_text()
    assert "Replay not advancing" in md and "then compared statically" in md


def test_a_balance_sql_rule_works_on_a_single_currency_ledger(gl, tmp_path):
    """The user's rule replaces the stored-balance column; the trial balance and unbalanced vouchers need no
    currency column either (they used to read entries.currency whatever the rule)."""
    source, target, folder = gl
    rule = ("SELECT a.acct, NULL, a.bal, coalesce((SELECT sum(e.amt) FROM {entries} e WHERE e.acct = a.acct), 0) "
            "FROM {accounts} a")
    cfg = load_config(write_config(folder, source, target, balance="",
                                   diff=f'currency = "EUR"\nbalance_sql = {json.dumps(rule)}\n'), environ={})
    result = run_diff(cfg, report_dir=tmp_path)
    s = result.to_dict()
    assert result.verdict == "green" and s["balances"]["not_applicable"] == {
        "daily_total": "[diff] date_column is not set (name the entries' posting timestamp to compare daily totals)"}
    (eur,) = _balances(json.loads((tmp_path / result.run_id / "summary.json").read_text()))["details"]["currencies"]
    assert eur["currency"] == "EUR" and eur["balances_source"] == eur["balances_target"]
    assert _balances(json.loads((tmp_path / result.run_id / "summary.json").read_text()))["details"][
        "accounts_target"] == ACCOUNTS
