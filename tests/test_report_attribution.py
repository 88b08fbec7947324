"""Root-cause attribution (pure, no database): exact links from balance differences to row findings.

Findings are written the way :mod:`reconcile.diff` stores them (JSON-able values, exact decimal
strings). Ledgers: the demo's (multi-currency) and a general ledger with other names, composite keys,
dates and no currency column (``[diff] currency``), so nothing depends on the demo's names.
"""

from __future__ import annotations

import doctest
from decimal import Decimal

import pytest

from reconcile.diff.balances import Layout
from reconcile.report import attribution, cells
from reconcile.report.attribution import Roles, attribute

DEMO = Roles(Layout("ledger.accounts", "ledger.entries", "account_id", "balance", "currency", "account_id", "amount",
                    "currency", "txn_id", "posted_at"), "ledger.journal", "txn_id")
GL = Roles(Layout("gl.chart", "gl.lines", "acct", "bal", None, "acct", "amt", None, "voucher", "value_date",
                  currency="EUR"), "gl.vouchers", "voucher")


def entry(eid, txn, acct, cur, amount, posted="2024-02-01T04:31:03+00:00"):
    return {"entry_id": eid, "txn_id": txn, "account_id": acct, "currency": cur, "amount": amount, "posted_at": posted}


def row(table, kind, key, source=None, target=None, columns=(), delta=None, currency=None):
    return {"table": table, "kind": kind, "key": key, "columns": list(columns), "source": source, "target": target,
            "money_delta": delta, "currency": currency}


def bal(kind, key, delta, currency, source=None, target=None):
    return {"table": "balances", "kind": kind, "key": key, "columns": [], "source": source, "target": target,
            "money_delta": delta, "currency": currency}


def planted() -> list[dict]:
    """What `reconcile demo --inject` finds (a real run's findings, abridged)."""
    missing = entry(1310, 655, 2551, "EUR", "3625.61")
    changed_s, changed_t = entry(229, 115, 1, "USD", "-3492.07"), entry(229, 115, 1, "USD", "-3492.06")
    acc_s = {"account_id": 53, "currency": "GBP", "balance": "412.78", "owner_name": "Zoë"}
    return [
        bal("balance_vs_entries", ["target", 2551], "-3625.61", "EUR",
            target={"side": "target", "stored": "3902.56", "computed": "276.95", "currency": "EUR"}),
        bal("daily_total", ["2024-02-01", "EUR"], "-3625.61", "EUR",
            {"entries": 1930, "volume": "1898865.30"}, {"entries": 1929, "volume": "1895239.69"}),
        bal("trial_balance", ["target", "EUR"], "-3625.61", "EUR", target={"side": "target", "sum_of_entries": "-3625.61"}),
        bal("unbalanced_txn", ["target", 655, "EUR"], "-3625.61", "EUR", target={"sum_of_entries": "-3625.61"}),
        row("ledger.entries", "missing_in_target", [1310], source=missing, delta="-3625.61", currency="EUR"),
        bal("balance_mismatch", [53], "100", "GBP", {"currency": "GBP", "balance": "412.78"},
            {"currency": "GBP", "balance": "512.78"}),
        bal("balance_vs_entries", ["target", 53], "-100", "GBP", target={"stored": "512.78", "computed": "412.78"}),
        bal("currency_total", ["GBP"], "100", "GBP", {"sum_of_balances": "0.00"}, {"sum_of_balances": "100.00"}),
        row("ledger.accounts", "changed", [53], acc_s, {**acc_s, "balance": "512.78"}, ["balance"], "100", "GBP"),
        bal("balance_vs_entries", ["target", 1], "0.01", "USD", target={"stored": "99978489431.85", "computed": "99978489431.86"}),
        bal("trial_balance", ["target", "USD"], "0.01", "USD", target={"sum_of_entries": "0.01"}),
        bal("unbalanced_txn", ["target", 115, "USD"], "0.01", "USD", target={"sum_of_entries": "0.01"}),
        row("ledger.entries", "changed", [229], changed_s, changed_t, ["amount"], "0.01", "USD"),
        row("ledger.journal", "extra_in_target", [9000000000000], target={"txn_id": 9000000000000, "memo": "planted"}),
    ]


def kinds(links) -> set[tuple]:  # noqa: D103
    return {(link.finding["kind"], tuple(link.finding["key"])) for link in links}


def test_the_four_planted_faults_three_faults_and_one_unexplained_difference():
    att = attribute(planted(), DEMO)
    assert att.counts() == {"faults": 3, "unexplained": 1, "explained_balance_differences": 7,
                            "balance_differences": 10, "complete": True}
    missing, changed, journal = att.faults                                   # largest money impact first
    assert (missing.id, missing.finding["kind"], missing.amount, missing.currency) == ("F1", "missing_in_target",
                                                                                      Decimal("-3625.61"), "EUR")
    assert kinds(missing.explains) == {("balance_vs_entries", ("target", 2551)), ("trial_balance", ("target", "EUR")),
                                       ("unbalanced_txn", ("target", 655, "EUR")), ("daily_total", ("2024-02-01", "EUR"))}
    assert kinds(changed.explains) == {("balance_vs_entries", ("target", 1)), ("trial_balance", ("target", "USD")),
                                       ("unbalanced_txn", ("target", 115, "USD"))}   # a negative amount: no volume change
    assert (journal.finding["table"], journal.amount, journal.explains) == ("ledger.journal", None, [])
    (u,) = att.unexplained
    assert (u.id, u.subject, u.key, u.side, u.amount, u.currency) == ("U1", "account", [53], "target", Decimal(100), "GBP")
    assert {(f["kind"], tuple(f["key"])) for f in u.findings} == {("balance_mismatch", (53,)),
                                                                   ("balance_vs_entries", ("target", 53)),
                                                                   ("currency_total", ("GBP",))}
    assert [r["table"] for r in u.rows] == ["ledger.accounts"]   # the accounts row is the same fact, not a fault
    assert all(not f.partly for f in att.faults)


def test_exact_means_exact_a_cent_off_is_unexplained_and_the_entry_accounts_for_part():
    findings = planted()
    findings[0] = {**findings[0], "money_delta": "-3625.60"}                 # stored vs entries off by one more cent
    att = attribute(findings, DEMO)
    f1 = att.faults[0]
    assert ("balance_vs_entries", ("target", 2551)) not in kinds(f1.explains)
    u = next(u for u in att.unexplained if u.key == [2551])
    assert u.amount == Decimal("0.01") and u.partly == ["F1"] and f1.partly == [u.id]


def test_a_lost_transaction_moves_the_stored_balance_with_its_entries():
    """The replay lost a whole transaction: two entries and both balance updates. Each side is consistent,
    so there is no stored-vs-entries finding; the balance mismatches are explained by the missing entries."""
    e1, e2 = entry(7, 70, 1, "EUR", "25.50"), entry(8, 70, 2, "EUR", "-25.50")
    a1 = {"account_id": 1, "currency": "EUR", "balance": "125.50"}
    a2 = {"account_id": 2, "currency": "EUR", "balance": "-25.50"}
    findings = [
        row("ledger.entries", "missing_in_target", [7], source=e1, delta="-25.50", currency="EUR"),
        row("ledger.entries", "missing_in_target", [8], source=e2, delta="25.50", currency="EUR"),
        row("ledger.journal", "missing_in_target", [70], source={"txn_id": 70}),
        row("ledger.accounts", "changed", [1], a1, {**a1, "balance": "100.00"}, ["balance"], "-25.50", "EUR"),
        row("ledger.accounts", "changed", [2], a2, {**a2, "balance": "0.00"}, ["balance"], "25.50", "EUR"),
        bal("balance_mismatch", [1], "-25.5", "EUR", {"balance": "125.50"}, {"balance": "100.00"}),
        bal("balance_mismatch", [2], "25.5", "EUR", {"balance": "-25.50"}, {"balance": "0.00"}),
        bal("daily_total", ["2024-02-01", "EUR"], "-25.50", "EUR", {"entries": 10, "volume": "100.00"},
            {"entries": 8, "volume": "74.50"}),
    ]
    att = attribute(findings, DEMO)
    assert att.unexplained == [] and att.explained == 3 and len(att.faults) == 3
    by_key = {f.finding["key"][0]: f for f in att.faults}
    assert kinds(by_key[7].explains) >= {("balance_mismatch", (1,)), ("daily_total", ("2024-02-01", "EUR"))}
    assert any(link.finding["table"] == "ledger.accounts" for link in by_key[7].explains)   # the row view rides along
    daily = next(link for link in by_key[8].explains if link.finding["kind"] == "daily_total")
    assert daily.jointly(by_key[8].id) == [by_key[7].id]                # both entries make the day's figures
    assert sorted(by_key[70].related) == sorted([by_key[7].id, by_key[8].id])   # one journal transaction


def test_faults_jointly_explain_a_currency_figure_and_the_source_is_never_a_target_fault():
    a = row("ledger.entries", "changed", [1], entry(1, 10, 5, "USD", "1.00"), entry(1, 10, 5, "USD", "1.10"), ["amount"],
            "0.10", "USD")
    b = row("ledger.entries", "extra_in_target", [2], target=entry(2, 11, 6, "USD", "0.25"), delta="0.25", currency="USD")
    findings = [a, b,
                bal("balance_vs_entries", ["target", 5], "0.10", "USD"), bal("balance_vs_entries", ["target", 6], "0.25", "USD"),
                bal("trial_balance", ["target", "USD"], "0.70", "USD"),   # 0.35 from the faults + 0.35 on the source
                bal("trial_balance", ["source", "USD"], "0.35", "USD"),
                bal("unbalanced_txn", ["source", 99, "USD"], "0.35", "USD"),
                bal("unbalanced_txn", ["target", 99, "USD"], "0.35", "USD")]   # the source's own, replicated
    att = attribute(findings, DEMO)
    trial = [link for f in att.faults for link in f.explains if link.finding["kind"] == "trial_balance"]
    assert len(trial) == 2 and trial[0] is trial[1] and sorted(trial[0].by) == ["F1", "F2"]
    sides = {(u.subject, u.side) for u in att.unexplained}
    assert sides == {("trial_balance", "source"), ("unbalanced_txn", "source")}
    txn = next(u for u in att.unexplained if u.subject == "unbalanced_txn")
    assert len(txn.findings) == 2 and txn.amount == Decimal("0.35")   # the target's copy is shown with the source's


def test_a_ledger_unlike_the_demo_without_a_currency_column():
    """gl: other names, a composite key, dates, one currency shown as [diff] currency."""
    line = {"voucher": "a1f0", "line_no": 1, "acct": "c-9", "amt": "12.3400", "value_date": "2025-03-02"}
    findings = [
        row("gl.lines", "missing_in_target", ["a1f0", 1], source=line, delta="-12.3400"),
        row("gl.vouchers", "extra_in_target", ["ffff"], target={"voucher": "ffff", "ref": "V-9"}),
        bal("balance_vs_entries", ["target", "c-9"], "-12.34", "EUR"),
        bal("trial_balance", ["target", "EUR"], "-12.3400", "EUR"),
        bal("unbalanced_txn", ["target", "a1f0", "EUR"], "-12.34", "EUR"),
        bal("daily_total", ["2025-03-02", "EUR"], "-12.34", "EUR", {"entries": 3, "volume": "50"}, {"entries": 2, "volume": "37.66"}),
        bal("balance_mismatch", ["c-1"], "-0.0001", "EUR", {"balance": "1.0001"}, {"balance": "1.0000"}),
    ]
    att = attribute(findings, GL)
    f1 = att.faults[0]
    assert f1.finding["table"] == "gl.lines" and len(f1.explains) == 4
    (u,) = att.unexplained
    assert (u.key, u.amount, u.currency) == (["c-1"], Decimal("-0.0001"), "EUR")
    assert cells.key_pairs(["voucher", "line_no"], f1.finding["key"]) == "voucher=a1f0, line_no=1"


def test_without_a_ledger_every_row_finding_is_a_fault():
    findings = [row("app.users", "changed", [3], {"id": 3, "name": "a"}, {"id": 3, "name": "b"}, ["name"])]
    att = attribute(findings, Roles(None))
    assert [f.id for f in att.faults] == ["F1"] and att.unexplained == [] and att.to_dict()["faults"] == 1


@pytest.mark.parametrize("module", [attribution, cells])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0
