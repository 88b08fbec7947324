"""The road there and back: forward replay under live writes, write cutover (the application writes DSQL and
keeps balances itself), reverse replay from DSQL's CDC under live writes, rollback (the application writes
the source again), forward replay again. The end: target == source, and no change was applied twice in
either direction, counted by an append-only log of row writes on each side (not by our own counters)."""

from __future__ import annotations

import threading
import time

import psycopg

from reconcile.backfill import BackfillSettings, run_backfill
from reconcile.config import DEMO_TABLES, BudgetSettings, Config, PostgresEndpoint
from reconcile.local.cdc import CdcPublisher, Chaos
from reconcile.replay import ReplaySettings, init_replay, run_replay
from reconcile.reverse import ReverseReplayer, ReverseSettings, init_reverse
from reconcile.workload import run_workload
from tests.reverse_support import install_markers, new_stream, written_twice
from tests.test_replay import ledger_fingerprints, ledger_pair, slot_for

LEDGER = [t.name for t in DEMO_TABLES]


def journal_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM ledger.journal").fetchone()[0]


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    """Wait on a condition (polled), never on a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def balances_match_entries(url: str) -> bool:
    with psycopg.connect(url) as conn:
        (bad,) = conn.execute("""
SELECT count(*) FROM ledger.accounts a
 WHERE a.balance <> (SELECT coalesce(sum(e.amount), 0) FROM ledger.entries e WHERE e.account_id = a.account_id)""").fetchone()
    return bad == 0


class Background:
    """Run ``fn(stop=event)`` in a thread; ``stop()`` sets the event and returns what ``fn`` returned."""

    def __init__(self, fn, **kwargs) -> None:
        self.event = threading.Event()
        self.out: list = []
        self.thread = threading.Thread(target=lambda: self.out.append(fn(stop=self.event, **kwargs)), daemon=True)
        self.thread.start()

    def stop(self):
        self.event.set()
        self.thread.join(120)
        assert not self.thread.is_alive()
        assert self.out, "the background task failed (see the log)"
        return self.out[0]


def test_there_and_back_again(source_db, target_db, kinesis_url):
    ledger_pair(source_db, target_db, accounts=40, transactions=100)
    kc, stream = new_stream(kinesis_url, shards=2)
    cfg = Config(source=PostgresEndpoint("source", source_db), target=PostgresEndpoint("target", target_db),
                 tables=DEMO_TABLES, budget=BudgetSettings(),
                 stages={"replay": ReplaySettings(slot_name=slot_for(source_db)),
                         "reverse": ReverseSettings(stream_name=stream, endpoint_url=kinesis_url,
                                                    settle_ms=300, poll_interval=0.05)})
    init_replay(cfg)
    try:
        assert run_backfill(cfg, BackfillSettings(replay=True, chunk_rows=100, workers=1,
                                                  slot_name=cfg.replay.slot_name)).status == "done"
        install_markers(source_db, LEDGER)
        install_markers(target_db, LEDGER, target=True)

        # 1. shadow: the application writes the source, the forward replay follows live.
        start = journal_count(source_db)
        load = Background(lambda stop: run_workload(source_db, tps=120, duration=None, workers=2, seed=1,
                                                    hot_fraction=0.5, stop_event=stop))
        forward = Background(lambda stop: run_replay(cfg, follow=True, stop_event=stop))
        wait_for(lambda: journal_count(source_db) >= start + 40, "source writes")
        assert load.stop().errors == 0
        forward.stop()
        assert run_replay(cfg, until_caught_up=True).caught_up
        assert ledger_fingerprints(source_db) == ledger_fingerprints(target_db)

        # 2. write cutover: DSQL's CDC on, reverse state on the source, the application writes DSQL.
        pub = CdcPublisher(target_db, kc, stream, chaos=Chaos(duplicate_rate=0.3, shuffle=True, defer_rate=0.2,
                                                             fragment_bytes=350, seed=7))
        pub.enable()
        init_reverse(cfg)
        publishing = Background(pub.run)
        rev = ReverseReplayer.from_config(cfg, kinesis=kc)
        reverse = Background(lambda stop: rev.run(until_caught_up=False, stop=stop))
        start = journal_count(target_db)
        load = Background(lambda stop: run_workload(target_db, tps=120, duration=None, workers=2, seed=2,
                                                    hot_fraction=0.5, stop_event=stop, write_to="target"))
        wait_for(lambda: journal_count(target_db) >= start + 40, "target writes")
        on_target = load.stop()
        assert on_target.errors == 0 and on_target.committed_total >= 40
        publishing.stop()  # drains the capture log into the stream
        live = reverse.stop()
        assert live.status == "done" and live.txns_applied > 0
        final = rev.run()
        rev.close()
        pub.disable()
        pub.close()
        assert final.status == "done" and final.caught_up
        assert ledger_fingerprints(source_db) == ledger_fingerprints(target_db)
        assert balances_match_entries(source_db), "the source's balance trigger fired on replayed rows"
        with psycopg.connect(source_db) as conn:  # the application can write the source again: keys are free
            assert conn.execute("SELECT (SELECT last_value FROM ledger.journal_txn_id_seq) >= max(txn_id) "
                                "FROM ledger.journal").fetchone() == (True,)
            assert conn.execute("SELECT (SELECT last_value FROM ledger.entry_id_seq) >= max(entry_id) "
                                "FROM ledger.entries").fetchone() == (True,)

        # 3. rollback: the application writes the source again, the forward replay resumes from where it was.
        start = journal_count(source_db)
        load = Background(lambda stop: run_workload(source_db, tps=120, duration=None, workers=2, seed=3,
                                                    hot_fraction=0.5, stop_event=stop))
        forward = Background(lambda stop: run_replay(cfg, follow=True, stop_event=stop))
        wait_for(lambda: journal_count(source_db) >= start + 40, "source writes after rollback")
        assert load.stop().errors == 0  # the source's sequences stand past every key made on DSQL
        forward.stop()
        assert run_replay(cfg, until_caught_up=True).caught_up

        assert ledger_fingerprints(source_db) == ledger_fingerprints(target_db)
        assert balances_match_entries(source_db) and balances_match_entries(target_db)
        assert written_twice(source_db) == [], "a DSQL change was applied twice on the source"
        assert written_twice(target_db) == [], "a change came back to DSQL (a loop) or was applied twice"
    finally:
        with psycopg.connect(source_db, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE database = current_database()")
