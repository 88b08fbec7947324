"""The diff is lag-aware against the real replay (issue 6): during live replay of a live workload a
diff reports zero persistent mismatches, and still catches a row corrupted on the target on purpose.

No simulated watermark here: the demo ledger is seeded on the source, the target schema planned
from it, the slot created first, the backfill run, then a paced workload and ``run_replay(follow=True)``
run in background threads while ``run_diff`` compares the two sides.
"""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from typing import Self

import psycopg
import pytest

from reconcile.backfill import BackfillSettings, run_backfill
from reconcile.config import DEMO_TABLES, Config, PostgresEndpoint
from reconcile.diff import run_diff
from reconcile.diff.balances import Snapshot, cross_findings, diff_snapshots
from reconcile.diff.compare import Finding
from reconcile.diff.lag import Waiter, lsn_int, settle
from reconcile.diff.settings import DiffSettings
from reconcile.replay import ReplaySettings, init_replay, run_replay
from reconcile.schema import apply_plan, plan_from_source
from reconcile.workload import run_workload, seed

LAG_WAIT = 20.0
TPS = 80
# The default three re-check rounds: a settlement account that changes faster than the replay lag is
# settled by the bracket rule (lag.settle), not by extra rounds.
DIFF = DiffSettings(segment_rows=4000, bucket_rows=250, fetch_threshold=60, workers=2, lag_wait_seconds=LAG_WAIT,
                    poll_seconds=0.05, recheck_rounds=3, date_column="posted_at")


def slot_for(source: str) -> str:
    """A slot of this test database's own: slot names are server-wide, databases are not."""
    return "dl_" + psycopg.conninfo.conninfo_to_dict(source)["dbname"].lower()


def poll(check, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def scalar(url: str, query: str, params: tuple | None = None):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchone()[0]


@pytest.fixture
def drop_slots(source_db):
    """Drop this database's replication slots at the end (else the database cannot be dropped)."""
    yield
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE database = current_database()")


def findings_of(target: str, run_id: str) -> dict[tuple, dict]:
    """The stored findings of a run: (table, kind, key) -> {columns, source, target}."""
    with psycopg.connect(target) as conn:
        rows = conn.execute("SELECT table_name, kind, row_key, columns, source_values, target_values "
                            "FROM reconcile.diff_findings WHERE run_id = %s", (run_id,)).fetchall()
    return {(t, k, tuple(json.loads(key))): {"columns": json.loads(cols) if cols else None, "source": sv,
                                             "target": tv} for t, k, key, cols, sv, tv in rows}


class Background:
    """The live workload and the replay following it, each in its own thread, stopped by events."""

    def __init__(self, cfg: Config, source: str, tps: float) -> None:
        self.stop_load, self.stop_replay = threading.Event(), threading.Event()
        self.results: dict[str, object] = {}
        self.threads = [
            threading.Thread(target=self._run, args=("workload", lambda: run_workload(
                source, tps=tps, duration=None, workers=2, seed=11, stop_event=self.stop_load)), daemon=True),
            threading.Thread(target=self._run, args=("replay", lambda: run_replay(
                cfg, follow=True, stop_event=self.stop_replay)), daemon=True),
        ]

    def _run(self, name: str, fn) -> None:
        try:
            self.results[name] = fn()
        except BaseException as exc:  # noqa: BLE001  reported by the test, not swallowed
            self.results[name] = exc

    def __enter__(self) -> Self:
        for t in self.threads:
            t.start()
        return self

    def alive(self) -> None:
        """Fail fast when a background thread died (its exception is the cause)."""
        for t, name in zip(self.threads, ("workload", "replay")):
            if not t.is_alive():
                pytest.fail(f"{name} thread ended early: {self.results.get(name)!r}")

    def __exit__(self, *exc) -> None:
        self.stop_load.set()
        self.threads[0].join(30)
        self.stop_replay.set()
        self.threads[1].join(30)


def results_of(target: str, run_id: str) -> dict[str, dict]:
    """Per table of a run: in_flight and whether the lag-aware re-check ran and saw the watermark pass."""
    with psycopg.connect(target) as conn:
        rows = conn.execute("SELECT table_name, in_flight, details FROM reconcile.diff_results WHERE run_id = %s",
                            (run_id,)).fetchall()
    return {t: {"in_flight": n, **{k: v for k, v in json.loads(d or "{}").items() if k in ("lag_aware", "watermark_passed")}}
            for t, n, d in rows}


def test_live_replay_diff_is_green_and_a_corrupted_target_row_is_the_only_finding(
        source_db, target_db, drop_slots, tmp_path):
    t0 = time.monotonic()
    with psycopg.connect(source_db, autocommit=True) as conn:
        seed(conn, accounts=300, transactions=3000, seed=5)
        plan = plan_from_source(conn, tables=DEMO_TABLES, dialect="postgres")
    with psycopg.connect(target_db, autocommit=True) as conn:
        apply_plan(conn, plan)
    slot = slot_for(source_db)
    cfg = Config(source=PostgresEndpoint("source", source_db), target=PostgresEndpoint("target", target_db),
                 tables=DEMO_TABLES, stages={"replay": ReplaySettings(slot_name=slot, poll_interval=0.1), "diff": DIFF})
    init_replay(cfg)  # the slot first, then the backfill: every write racing the copy is retained
    assert run_backfill(cfg, BackfillSettings(replay=True, slot_name=slot)).status == "done"
    seeded_txns = scalar(source_db, "SELECT max(txn_id) FROM ledger.journal")

    with Background(cfg, source_db, tps=TPS) as bg:
        # Live: the replay applies workload transactions as they commit.
        poll(lambda: bg.alive() or scalar(target_db, "SELECT max(txn_id) FROM ledger.journal") > seeded_txns + 20,
             timeout=120, what="the replay to apply live workload transactions")  # a hang bound
        live = run_diff(cfg, report_dir=tmp_path, lag_wait_seconds=LAG_WAIT)
        bg.alive()
        s, live_results = live.summary, results_of(target_db, live.run_id)
        print("live diff:", {k: s[k] for k in ("verdict", "persistent_mismatches", "balance_differences", "in_flight",
                                              "duration_seconds")}, live_results)
        assert s["status"] == "green", (s, findings_of(target_db, live.run_id))
        assert live.verdict == "green" and s["persistent_mismatches"] == 0 and s["balance_differences"] == 0, s
        assert s["in_flight"] >= 0 and all(t["in_flight"] >= 0 for t in s["tables"].values())
        assert {t: v["status"] for t, v in s["tables"].items()} == dict.fromkeys(
            ("ledger.accounts", "ledger.journal", "ledger.entries"), "green")
        assert all(r.get("watermark_passed", True) for r in live_results.values()), live_results
        # Both sides really moved while the diff ran: the source past its start LSN, the replay after it.
        assert s["tables"]["ledger.entries"]["rows_source"] > 2 * (seeded_txns + 20)
        assert lsn_int(scalar(target_db, "SELECT last_commit_lsn FROM reconcile.replay_state WHERE slot_name = %s",
                              (slot,))) > lsn_int(s["start_lsn"])

        # Corrupt one seeded entry on the target, bypassing the replay, while the workload runs.
        with psycopg.connect(source_db) as conn:  # a seeded entry: its day (in the past) gets no live writes
            entry_id, txn_id, account, currency, day, amount = conn.execute(
                "SELECT entry_id, txn_id, account_id, currency, (posted_at AT TIME ZONE 'UTC')::date::text, amount "
                "FROM ledger.entries WHERE amount > 0 AND txn_id <= %s AND posted_at < current_date - 1 "
                "ORDER BY entry_id LIMIT 1 OFFSET 100", (seeded_txns,)).fetchone()
        with psycopg.connect(target_db, autocommit=True) as conn:
            conn.execute("UPDATE ledger.entries SET amount = amount + 1.00 WHERE entry_id = %s", (entry_id,))
        red = run_diff(cfg, report_dir=tmp_path, lag_wait_seconds=LAG_WAIT)
        bg.alive()
    workload, replayed = bg.results["workload"], bg.results["replay"]
    assert workload.errors == 0 and sum(workload.committed.values()) > 50, workload.summary()
    assert replayed.status == "done" and replayed.dead_letters_open == 0 and replayed.txns_applied > 50, replayed

    r, found = red.summary, findings_of(target_db, red.run_id)
    print("corrupted diff:", {k: r[k] for k in ("verdict", "persistent_mismatches", "balance_differences", "in_flight",
                                               "duration_seconds")}, results_of(target_db, red.run_id))
    cur = currency.strip()
    assert set(found) == {
        ("ledger.entries", "changed", (entry_id,)),
        ("balances", "balance_vs_entries", ("target", account)),   # stored balance vs its entries
        ("balances", "trial_balance", ("target", cur)),            # the currency's entries no longer sum to 0
        ("balances", "unbalanced_txn", ("target", txn_id, cur)),   # nor do the transaction's
        ("balances", "daily_total", (day, cur)),                   # the day's volume moved by 1.00
    }, found
    changed = found[("ledger.entries", "changed", (entry_id,))]
    assert changed["columns"] == ["amount"]
    assert Decimal(json.loads(changed["target"])["amount"]) - Decimal(json.loads(changed["source"])["amount"]) == 1
    assert Decimal(json.loads(changed["source"])["amount"]) == amount
    assert red.verdict == "red" and r["persistent_mismatches"] == 1 and r["balance_differences"] == 4, r
    assert r["tables"]["ledger.entries"]["changed"] == 1 and r["in_flight"] >= 0
    assert [t for t, v in r["tables"].items() if v["status"] != "green"] == ["ledger.entries"]
    print(f"live diff test: {time.monotonic() - t0:.1f} s")  # its speed is bench/diff.py's business


# --- the balance re-check's rules, on hand-made snapshots (no database) ----------------------------------------


def snap(lsn: int | None, accounts: dict, daily: dict | None = None) -> Snapshot:
    return Snapshot(accounts={a: ("USD", Decimal(v), Decimal(v)) for a, v in accounts.items()},
                    daily={(d, "USD"): (n, Decimal(v)) for d, (n, v) in (daily or {}).items()}, lsn=lsn)


def kinds_keys(found: list) -> set[tuple]:
    return {(f.kind, tuple(f.key)) for f in found}


def test_balance_rounds_keep_only_repeated_differences_and_judge_within_the_bracket():
    # Round 0 (no bracket): the target (watermark 100) lags the source (read at 200): exact comparison.
    t0 = snap(100, {1: "10", 2: "5", 3: "7"}, {"d1": (3, "30"), "d0": (9, "90")})
    s0 = snap(200, {1: "12", 2: "5", 3: "8"}, {"d1": (4, "40"), "d0": (9, "90")})
    reads = iter([t0, s0])

    def read(side: str) -> Snapshot:  # one read function: the rounds of one re-check
        return next(reads)

    src, tgt = diff_snapshots(read)
    assert (src.before, src.suspects, tgt) == (None, None, t0)
    assert kinds_keys(cross_findings(s0, t0)) == {("balance_mismatch", (1,)), ("balance_mismatch", (3,)),
                                                  ("daily_total", ("d1", "USD")), ("currency_total", ("USD",))}
    # Round 1: the target stands past the previous source read (300 >= 200): a valid bracket.
    # Account 1 moved on the source (12 -> 15): in flight. Account 3 held still (8) and the target
    # has 9: a difference. Account 2 now differs but did not in round 0: not a repeat, not kept.
    # Day d1's target figures and the USD total (27) lie between the two source reads: in flight.
    t1 = snap(300, {1: "12", 2: "6", 3: "9"}, {"d1": (5, "50"), "d0": (9, "90")})
    s1 = snap(400, {1: "15", 2: "5", 3: "8"}, {"d1": (6, "60"), "d0": (9, "90")})
    reads = iter([t1, s1])
    src, tgt = diff_snapshots(read)
    assert src.before is not None and src.before.lsn == 200 and src.suspects is not None
    assert kinds_keys(cross_findings(src, tgt)) == {("balance_mismatch", (3,))}
    # The same figures with a target behind the previous source read (150 < 200): no bracket, exact,
    # still only the repeats of round 0.
    late = snap(150, {1: "12", 2: "6", 3: "9"}, {"d1": (5, "50"), "d0": (9, "90")})
    assert kinds_keys(cross_findings(src, late)) == {("balance_mismatch", (1,)), ("balance_mismatch", (3,)),
                                                    ("daily_total", ("d1", "USD")), ("currency_total", ("USD",))}
    # A day nobody writes to must match exactly, bracket or not; a total outside the bracket differs.
    fresh = snap(400, {}, {"d0": (9, "90"), "d1": (6, "60")})
    fresh.before = snap(200, {}, {"d0": (9, "90"), "d1": (4, "40")})
    assert kinds_keys(cross_findings(fresh, snap(300, {}, {"d0": (9, "91"), "d1": (7, "70")}))) == {
        ("daily_total", ("d0", "USD")), ("daily_total", ("d1", "USD"))}
    # Another read function starts a new re-check: no history, every difference counts.
    reads = iter([t1, s1])
    src2, _ = diff_snapshots(lambda side: next(reads))
    assert src2.before is None and src2.suspects is None


def test_row_rounds_settle_rows_that_moved_on_the_source_within_the_bracket():
    def row(key: int, source: dict | None, target: dict | None) -> Finding:
        return Finding("t", "changed", [key], ["v"], source, target)

    previous = [row(1, {"v": "1"}, {"v": "0"}), row(2, {"v": "5"}, {"v": "4"}), row(3, {"v": "7"}, {"v": "6"}),
                row(4, None, {"v": "9"})]
    current = [row(1, {"v": "2"}, {"v": "1"}),    # the source moved 1 -> 2: in flight
               row(2, {"v": "5"}, {"v": "4"}),    # the source held still at 5, the target has 4: a finding
               row(3, {"v": "8"}, {"v": "7"}),    # moved as well (and the target caught up with the earlier 7)
               row(4, None, {"v": "9"}),          # extra on the target in both rounds: a finding
               row(5, {"v": "1"}, None)]          # new in this round: kept (the caller only re-reads suspects)
    assert [f.key for f in settle(previous, current, bracket=True)] == [[2], [4], [5]]
    assert settle(previous, current, bracket=False) == current  # the watermark never passed: exact
    marks = iter([None, 5, 10])
    waiter = Waiter(lambda: next(marks), deadline=float("inf"), sleep=lambda _: None)
    assert waiter.passed is None and waiter.wait(10) and waiter.passed is True
    late = Waiter(lambda: 3, deadline=0.0, clock=lambda: 1.0)
    assert not late.wait(10) and late.passed is False
