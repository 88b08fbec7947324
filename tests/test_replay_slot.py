"""The slot's position: a replayer that is caught up releases the WAL it no longer needs, even when
nothing of its own tables was written (a quiet ledger on a busy cluster), and never past a change of
its own that is not applied yet."""

from __future__ import annotations

import psycopg

from reconcile.replay import run_replay
from reconcile.replay import pgoutput as po
from tests.test_replay import (  # noqa: F401 (drop_slots is a fixture)
    ITEMS,
    drop_slots,
    fingerprint,
    init_replay,
    items_pair,
    log_running_xacts,
    make_config,
    run_sql,
)


def slot_position(source_db: str, slot: str) -> tuple[int, int]:
    with psycopg.connect(source_db) as conn:
        confirmed, restart = conn.execute("SELECT confirmed_flush_lsn::text, restart_lsn::text FROM "
                                          "pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return po.lsn_to_int(confirmed), po.lsn_to_int(restart)


def wal_now(source_db: str) -> int:
    with psycopg.connect(source_db) as conn:
        return po.lsn_to_int(conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0])


def test_a_caught_up_replay_advances_the_slot_past_other_tables_wal_and_keeps_an_open_transaction(
        source_db, target_db, drop_slots):
    """Before: the slot only moved to the end of the last applied transaction of our own tables, so WAL
    written by other tables (or databases) stayed retained without bound while the ledger was quiet."""
    items_pair(source_db, target_db)
    run_sql(source_db, "CREATE TABLE app.noise (id int PRIMARY KEY, pad text)")  # not replicated
    cfg = make_config(source_db, target_db, [ITEMS], require_backfill=False)
    slot = cfg.replay.slot_name
    init_replay(cfg)
    run_sql(source_db, "INSERT INTO app.items VALUES (1, 1.00, 'ours')")
    assert run_replay(cfg).txns_applied == 1
    applied_to, _ = slot_position(source_db, slot)

    with psycopg.connect(source_db) as open_txn:
        # One of ours begins before the busy period and commits after the replayer moved the slot past it.
        open_txn.execute("INSERT INTO app.items VALUES (2, 2.00, 'begun before the advance')")
        run_sql(source_db, "INSERT INTO app.noise SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
        busy_until = wal_now(source_db)
        log_running_xacts(source_db)
        quiet = run_replay(cfg)
        assert quiet.status == "done" and quiet.caught_up and quiet.txns_applied == 0
        confirmed, _ = slot_position(source_db, slot)
        assert confirmed >= busy_until > applied_to  # released: the other table's WAL is not retained for us
        open_txn.execute("UPDATE app.items SET note = 'changed in the open transaction' WHERE id = 1")
        open_txn.commit()

    after = run_replay(cfg)
    assert after.status == "done" and after.txns_applied == 1  # the open transaction was not skipped
    assert fingerprint(source_db, "app.items", "id") == fingerprint(target_db, "app.items", "id")
