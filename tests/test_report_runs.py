"""The reviewer's pages from real diff runs (issue 16).

Four faults are planted on a copy of the demo ledger (an entry deleted, a journal row only on the target,
an amount changed, a stored balance changed without any entry change). The reconciliation runs as the
DAG runs it (start, tables, balances, expectations into the run's folder, finish): the first three are
faults with their balance differences attached, the last is the one unexplained difference; the run page
shows them above the fold in headless Chromium, with the failed expectations' sample rows and Data Docs,
and the gate; finish_diff's log line and the approval body link to the page with the counts. Then the
target is repaired in two steps: the history page tracks each finding's first and last run and draws the
gate's streak over the green run it counts.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from reconcile.checks.settings import CheckSettings
from reconcile.config import Config
from reconcile.diff import run_diff
from reconcile.diff.inject import plant_discrepancies
from reconcile.gates.settings import GateSettings
from reconcile.pipeline.diff import checks_step, diff_balances_step, diff_finish, diff_one_table, diff_start
from reconcile.pipeline.gates import gate_evaluate
from tests.chromium import CHROMIUM, boxes, screenshot
from tests.test_balances import SETTINGS, ledger_pair
from tests.test_report import assert_lists_above_the_fold, assert_screen

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium) is not installed")


def restore(cfg: Config, source: str, target: str, planted: list[dict], kinds: set[str]) -> None:
    """Put the target's planted rows back as the source has them (a repair, as a forced backfill would)."""
    with psycopg.connect(source) as src, psycopg.connect(target, autocommit=True) as tgt:
        with tgt.transaction():
            for p in planted:
                if p["table"] + ":" + p["kind"] not in kinds:
                    continue
                spec = cfg.table(p["table"])
                schema, name = spec.name.split(".", 1)
                table, key = sql.Identifier(schema, name), sql.Identifier(spec.key[0])
                tgt.execute(sql.SQL("DELETE FROM {} WHERE {} = %s").format(table, key), p["key"])
                cur = src.execute(sql.SQL("SELECT * FROM {} WHERE {} = %s").format(table, key), p["key"])
                row = cur.fetchone()
                if row is not None:
                    cols = [d.name for d in cur.description]
                    tgt.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                        table, sql.SQL(", ").join(map(sql.Identifier, cols)),
                        sql.SQL(", ").join(sql.Placeholder() * len(cols))), row)


def reconcile(cfg: Config) -> dict:
    """One reconciliation as the Airflow DAG runs it (expectations into the run's report folder)."""
    started = diff_start(cfg)
    for table in started["tables"]:
        diff_one_table(cfg, started["run_id"], table)
    diff_balances_step(cfg, started["run_id"])
    checks_step(cfg, sides=("target",), diff_run_id=started["run_id"])
    return diff_finish(cfg, started["run_id"])


@pytest.fixture
def ledger_cfg(source_db, target_db, tmp_path) -> Config:
    base = ledger_pair(source_db, target_db)
    return Config(source=base.source, target=base.target, stages={
        "diff": dataclasses.replace(SETTINGS, report_dir=str(tmp_path / "reports")),
        "checks": CheckSettings(suites=("ledger",)),
        "gates": GateSettings(min_green_runs=1, min_green_hours=0.0, require_audit_run=False)})


def test_planted_faults_attributed_on_the_run_page_the_history_and_the_approval(ledger_cfg, source_db, target_db,
                                                                                tmp_path, caplog):
    cfg = ledger_cfg
    with psycopg.connect(target_db, autocommit=True) as conn:
        planted = plant_discrepancies(conn, cfg, seed=3)
    missing, journal, changed, account = (p["key"][0] for p in planted)
    with psycopg.connect(source_db) as conn:
        info = {e: conn.execute("SELECT txn_id, account_id, trim(currency) FROM ledger.entries WHERE entry_id = %s",
                                (e,)).fetchone() for e in (missing, changed)}

    caplog.set_level(logging.INFO, logger="reconcile.pipeline.diff")
    first = reconcile(cfg)
    run1 = first["run_id"]
    total = first["balance_differences"]
    assert first["attribution"] == {"faults": 3, "unexplained": 1, "explained_balance_differences": total - 3,
                                    "balance_differences": total, "complete": True}
    folder = Path(first["report_dir"])
    page = folder / "report.html"
    assert first["report_page"] == str(page.resolve()) and first["history_page"] == str(folder.parent.resolve() / "index.html")
    logged = [r.getMessage() for r in caplog.records if "unexplained" in r.getMessage()]
    assert any(f"3 fault(s), 1 unexplained difference(s)" in m and str(page.resolve()) in m for m in logged), logged

    # The attribution, exactly: each fault with the balance differences it explains.
    att = json.loads((folder / "summary.json").read_text())["details"]["attribution"]
    faults = {(f["table"], f["kind"], f["key"][0]): f for f in att["faults_detail"]}
    assert set(faults) == {("ledger.entries", "missing_in_target", missing), ("ledger.journal", "extra_in_target", journal),
                           ("ledger.entries", "changed", changed)}

    def explained(fault: dict) -> set:
        return {(e["kind"], tuple(e["key"])) for e in fault["explains"]}
    for entry_id in (missing, changed):
        txn, acct, cur = info[entry_id]
        kind = "missing_in_target" if entry_id == missing else "changed"
        assert {("balance_vs_entries", ("target", acct)), ("unbalanced_txn", ("target", txn, cur)),
                ("trial_balance", ("target", cur))} <= explained(faults[("ledger.entries", kind, entry_id)])
    assert faults[("ledger.entries", "missing_in_target", missing)]["amount"].startswith("-")
    assert explained(faults[("ledger.journal", "extra_in_target", journal)]) == set()
    (u,) = att["unexplained_detail"]
    assert (u["subject"], u["key"], u["side"], Decimal(u["amount"])) == ("account", [account], "target", Decimal(100))
    assert {f["kind"] for f in u["findings"]} == {"balance_mismatch", "balance_vs_entries", "currency_total"}
    assert [(r["table"], r["key"]) for r in u["rows"]] == [("ledger.accounts", [account])]

    # The run page: the lists, the failed expectations with their sample rows and Data Docs, the gate.
    html = page.read_text()
    assert "RED: 3 faults, 1 unexplained difference" in html
    exp = html[html.index('id="expectations"'):html.index('id="replay"')]
    assert "balance_equals_sum_of_entries" in exp and "From the expectations run of this reconciliation" in exp
    assert f"account_id={account}, balance=" in exp                     # a sample row names the planted account
    docs = [a.split('"')[1] for a in exp.split('<a href=')[1:]]
    assert docs and all((folder / d).is_file() for d in docs)          # relative links that resolve
    assert "The read gate (shadow → read_cutover) after this run" in html
    shot = screenshot(page, tmp_path / "run.png")
    assert_screen(shot, "red")
    found = assert_lists_above_the_fold(page, shot)
    assert "3 faults, 1 unexplained difference" in found["verdict"]["text"]
    assert f"account_id={account}" in found["unexplained"]["text"] and f"entry_id={missing}" in found["faults"]["text"]

    # The approval body links to the run page, with the counts.
    evaluation = gate_evaluate(cfg, "read", override_reason="the test approves anyway")
    assert f"Reconciliation run `{run1}` is **RED**: **3 fault(s)**, **1 unexplained difference(s)**" in evaluation["body"]
    assert f"Run page: `{page.resolve()}`" in evaluation["body"] and evaluation["report"]["faults"] == 3

    # Repaired in two steps: the history follows each finding and the gate's streak.
    restore(cfg, source_db, target_db, planted, {"ledger.journal:extra_in_target", "ledger.entries:changed"})
    second = run_diff(cfg)
    assert second.summary["attribution"]["faults"] == 1 and second.summary["attribution"]["unexplained"] == 1
    restore(cfg, source_db, target_db, planted, {"ledger.entries:missing_in_target", "ledger.accounts:changed"})
    third = reconcile(cfg)  # a whole reconciliation (diff, balances and expectations): the gate counts it
    assert third["verdict"] == "green" and third["attribution"]["faults"] == 0

    rows = list(csv.DictReader((folder.parent / "findings-history.csv").open()))
    seen = {(r["table"], r["kind"], tuple(json.loads(r["key"]))): r for r in rows}
    assert all(r["status"] == "resolved" for r in rows) and len(rows) == total + 4
    gone_late = seen[("ledger.entries", "missing_in_target", (missing,))]
    assert (gone_late["first_run"], gone_late["last_run"], gone_late["runs"]) == (run1, second.run_id, "2")
    gone_early = seen[("ledger.entries", "changed", (changed,))]
    assert (gone_early["first_run"], gone_early["last_run"], gone_early["runs"]) == (run1, run1, "1")

    index = folder.parent / "index.html"
    text = index.read_text()
    assert all(f"{r}/report.html" in text for r in (run1, second.run_id, third["run_id"]))
    assert "read gate streak: 1 of 1 runs" in text                     # drawn over the green run it counts
    assert "<script" not in text and "http" not in text.replace("http://www.w3.org/2000/svg", "")
    shot = screenshot(index, tmp_path / "history.png")
    assert_screen(shot, "green")
    found = assert_lists_above_the_fold(index, shot)
    assert "Latest run GREEN" in found["verdict"]["text"]
    timeline = boxes(index, ("timeline", "streak-card"))
    assert timeline["timeline"]["top"] < 900 and timeline["streak-card"]["top"] < 300
