"""Balance diff and planted discrepancies on the demo ledger (seeded on the source, copied to the target)."""

from __future__ import annotations

import json

import psycopg
import pytest

from reconcile.config import DEMO_TABLES, Config, PostgresEndpoint
from reconcile.diff import run_diff
from reconcile.diff.inject import EXTRA_TXN_ID, plant_discrepancies
from reconcile.diff.settings import DiffSettings
from reconcile.workload import seed

TARGET_DDL = (
    "CREATE SCHEMA ledger",
    "CREATE TABLE ledger.accounts (account_id bigint PRIMARY KEY, account_no text NOT NULL, owner_name text NOT NULL, "
    "currency char(3) NOT NULL, kind text NOT NULL, balance numeric(18,2) NOT NULL, opened_at timestamptz NOT NULL, "
    "updated_at timestamptz NOT NULL)",
    "CREATE TABLE ledger.journal (txn_id bigint PRIMARY KEY, idempotency_key text NOT NULL, kind text NOT NULL, "
    "reverses_txn_id bigint, posted_at timestamptz NOT NULL, memo text, fx_rate numeric(28,10))",
    "CREATE TABLE ledger.entries (entry_id bigint PRIMARY KEY, txn_id bigint NOT NULL, account_id bigint NOT NULL, "
    "currency char(3) NOT NULL, amount numeric(18,2) NOT NULL, posted_at timestamptz NOT NULL)",
)
SETTINGS = DiffSettings(segment_rows=2000, bucket_rows=200, fetch_threshold=50, lag_wait_seconds=5, poll_seconds=0.05,
                        date_column="posted_at")


def ledger_pair(source: str, target: str) -> Config:
    with psycopg.connect(source, autocommit=True) as conn:
        seed(conn, accounts=30, transactions=500, seed=7, currencies=("USD", "EUR", "JPY"))
    with psycopg.connect(target, autocommit=True) as conn:
        for stmt in TARGET_DDL:
            conn.execute(stmt)
    with psycopg.connect(source) as src, psycopg.connect(target, autocommit=True) as tgt:
        for spec in DEMO_TABLES:
            rows = src.execute(f"SELECT * FROM {spec.name} ORDER BY 1").fetchall()  # noqa: S608 (fixed names)
            for i in range(0, len(rows), 1000):        # within the guards' 3,000-row transaction limit
                with tgt.transaction(), tgt.cursor().copy(f"COPY {spec.name} FROM STDIN") as copy:
                    for row in rows[i:i + 1000]:
                        copy.write_row(row)
    return Config(source=PostgresEndpoint("source", source), target=PostgresEndpoint("target", target),
                  stages={"diff": SETTINGS})


def stored(target: str, run_id: str) -> list[tuple[str, str, list]]:
    with psycopg.connect(target) as conn:
        return [(t, k, json.loads(key)) for t, k, key in conn.execute(
            "SELECT table_name, kind, row_key FROM reconcile.diff_findings WHERE run_id = %s", (run_id,)).fetchall()]


@pytest.fixture
def ledger(source_db, target_db):
    return ledger_pair(source_db, target_db)


def test_identical_ledger_is_green_with_balance_tables(ledger, target_db, tmp_path):
    result = run_diff(ledger, report_dir=tmp_path)
    s = result.to_dict()
    assert result.verdict == "green", s
    assert s["balance_differences"] == 0 and s["persistent_mismatches"] == 0
    assert set(s["tables"]) == {"ledger.accounts", "ledger.journal", "ledger.entries"}
    doc = json.loads((tmp_path / result.run_id / "summary.json").read_text())
    balances = next(r for r in doc["details"]["results"] if r["table"] == "__balances__")
    currencies = {c["currency"]: c for c in balances["details"]["currencies"]}
    assert set(currencies) == {"USD", "EUR", "JPY"}
    assert all(c["trial_source"] == "0" or float(c["trial_source"]) == 0 for c in currencies.values())
    assert currencies["USD"]["balances_source"] == currencies["USD"]["balances_target"]


def test_planted_discrepancies_are_found_exactly(ledger, source_db, target_db, tmp_path):
    with psycopg.connect(target_db, autocommit=True) as conn:
        planted = plant_discrepancies(conn, ledger, seed=3)
        again = plant_discrepancies(conn, ledger, seed=3)       # idempotent: same rows, same values
    assert planted == again
    missing = planted[0]["key"][0]
    changed = planted[2]["key"][0]
    account = planted[3]["key"][0]
    with psycopg.connect(source_db) as conn:
        info = {e: conn.execute("SELECT txn_id, account_id, currency FROM ledger.entries WHERE entry_id = %s",
                                (e,)).fetchone() for e in (missing, changed)}
        (acc_currency,) = conn.execute("SELECT currency FROM ledger.accounts WHERE account_id = %s", (account,)).fetchone()
    result = run_diff(ledger, report_dir=tmp_path)
    s = result.to_dict()
    assert result.verdict == "red"
    entries = s["tables"]["ledger.entries"]
    assert (entries["missing"], entries["extra"], entries["changed"]) == (1, 0, 1)
    assert (s["tables"]["ledger.journal"]["extra"], s["tables"]["ledger.journal"]["missing"]) == (1, 0)
    assert s["tables"]["ledger.accounts"]["changed"] == 1
    found = stored(target_db, result.run_id)
    rows = {(t, k, tuple(key)) for t, k, key in found if t != "balances"}
    assert rows == {("ledger.entries", "missing_in_target", (missing,)), ("ledger.entries", "changed", (changed,)),
                    ("ledger.journal", "extra_in_target", (EXTRA_TXN_ID,)), ("ledger.accounts", "changed", (account,))}
    bal = {}
    for t, k, key in found:
        if t == "balances":
            bal.setdefault(k, set()).add(tuple(key))
    assert bal["balance_mismatch"] == {(account,)}
    assert bal["balance_vs_entries"] == {("target", info[missing][1]), ("target", info[changed][1]), ("target", account)}
    assert bal["unbalanced_txn"] == {("target", info[missing][0], info[missing][2].strip()),
                                     ("target", info[changed][0], info[changed][2].strip())}
    assert bal["currency_total"] == {(acc_currency.strip(),)}
    assert {k[0] for k in bal["trial_balance"]} == {"target"}
    assert all(k[0] != "source" for kind in bal.values() for k in kind)   # the source is consistent
    assert "daily_total" in bal
    assert s["balance_differences"] == sum(len(v) for v in bal.values())


def test_chunked_snapshot_equals_whole_ledger_read(ledger, source_db, target_db):
    """Tiny key ranges (7 entries) give exactly the figures of one whole-ledger read, imbalances included."""
    from dataclasses import replace

    from reconcile.diff.balances import key_ranges, layout_of, read_snapshot

    whole = replace(layout_of(ledger), chunk_rows=10**9, slot=None)
    tiny = replace(whole, chunk_rows=7)
    with psycopg.connect(target_db, autocommit=True) as conn:
        planted = plant_discrepancies(conn, ledger, seed=3)
    with psycopg.connect(source_db, autocommit=True) as conn:   # more unbalanced txns than UNBALANCED_LIMIT
        conn.execute("UPDATE ledger.entries SET amount = amount + 0.01 WHERE entry_id IN (SELECT min(entry_id) "
                     "FROM ledger.entries GROUP BY txn_id ORDER BY txn_id DESC LIMIT 130)")
    for url, set_isolation in ((source_db, True), (target_db, False)):
        with psycopg.connect(url, autocommit=True) as conn:
            assert len(key_ranges(conn, "ledger.entries", "txn_id", 7)) > 100
            assert len(key_ranges(conn, "ledger.entries", "account_id", 7)) > 10
            a = read_snapshot(conn, whole, set_isolation=set_isolation)
            b = read_snapshot(conn, tiny, set_isolation=set_isolation)
        assert (b.accounts, b.entry_totals, b.unbalanced, b.daily) == (a.accounts, a.entry_totals, a.unbalanced, a.daily)
        assert len(b.accounts) == 30 + 2 * 3 and b.daily
    assert len(b.unbalanced) == 2 and all(s != 0 for _, _, s in b.unbalanced)   # the target's planted imbalance
    assert {k for k, (_, stored, computed) in b.accounts.items() if stored != computed} >= {planted[3]["key"][0]}
    with psycopg.connect(source_db, autocommit=True) as conn:
        src = read_snapshot(conn, tiny, set_isolation=True)
    assert len(src.unbalanced) == 100 and src.unbalanced == sorted(src.unbalanced)


def test_balance_chunk_rows_is_validated():
    from reconcile.config import InvalidSetting

    assert DiffSettings(balance_chunk_rows=7).balance_chunk_rows == 7
    with pytest.raises(InvalidSetting):
        DiffSettings(balance_chunk_rows=0)
