"""Safe defaults: `schema apply` with no --phase adds no foreign key before the backfill and the replay
catch-up are done, and every stage reads the slot and publication from the config."""

from __future__ import annotations

import psycopg
import pytest
from typer.testing import CliRunner

from reconcile.cli import app
from reconcile.workload import seed


@pytest.fixture
def drop_slots(source_db):
    yield
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE database = current_database()")


def foreign_keys(target: str) -> int:
    with psycopg.connect(target) as conn:
        return conn.execute("SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
                            "WHERE n.nspname = 'ledger' AND c.contype = 'f'").fetchone()[0]


def test_bare_schema_apply_waits_for_backfill_and_catch_up_and_the_slot_comes_from_the_config(
        source_db, target_db, tmp_path, drop_slots):
    with psycopg.connect(source_db, autocommit=True) as conn:
        seed(conn, accounts=30, transactions=120)
    slot = "own_" + psycopg.conninfo.conninfo_to_dict(source_db)["dbname"].lower()
    path = tmp_path / "reconcile.toml"
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n[target]\nkind = "postgres"\n'
                    f'conninfo = "{target_db}"\n[replay]\nslot_name = "{slot}"\npublication = "{slot}_pub"\n')
    cfg = ["--config", str(path)]
    runner = CliRunner()

    first = runner.invoke(app, ["schema", "apply", *cfg])
    assert first.exit_code == 0, (first.output, first.exception)
    assert ("--phase not given: applying the pre-load phase only (no foreign keys), because no backfill has run yet; "
            "run `reconcile schema apply --phase post-load` once the backfill is complete and the replay has caught "
            "up") in first.stderr
    assert foreign_keys(target_db) == 0

    init = runner.invoke(app, ["replay", "init", *cfg])
    assert init.exit_code == 0, (init.output, init.exception)
    # the backfill records the slot replay will read, [replay] slot_name, not a built-in name (with --replay it
    # also refuses to start without it: tests/test_keyrule.py)
    backfill = runner.invoke(app, ["backfill", *cfg, "--no-progress", "--chunk-rows", "100"])
    assert backfill.exit_code == 0, (backfill.output, backfill.exception)
    with psycopg.connect(target_db) as conn:
        assert conn.execute("SELECT DISTINCT replay_slot FROM reconcile.chunks").fetchall() == [(slot,)]

    second = runner.invoke(app, ["schema", "apply", *cfg])
    assert second.exit_code == 0, (second.output, second.exception)
    assert "applying the pre-load phase only (no foreign keys), because no replay of slot " \
           f"{slot} has caught up" in second.stderr
    assert foreign_keys(target_db) == 0

    replay = runner.invoke(app, ["replay", "run", *cfg, "--until-caught-up"])
    assert replay.exit_code == 0, (replay.output, replay.exception)
    third = runner.invoke(app, ["schema", "apply", *cfg])
    assert third.exit_code == 0, (third.output, third.exception)
    assert ("--phase not given: applying both phases, foreign keys included, because the backfill is complete and "
            f"the replay of slot {slot} caught up") in third.stderr
    assert foreign_keys(target_db) == 3


def test_replay_says_truly_why_chunks_copied_without_its_slot_do_not_count(source_db, target_db, tmp_path,
                                                                            drop_slots):
    with psycopg.connect(source_db, autocommit=True) as conn:
        seed(conn, accounts=10, transactions=20)
    slot = "own_" + psycopg.conninfo.conninfo_to_dict(source_db)["dbname"].lower()
    path = tmp_path / "reconcile.toml"
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n[target]\nkind = "postgres"\n'
                    f'conninfo = "{target_db}"\n[replay]\nslot_name = "{slot}"\npublication = "{slot}_pub"\n')
    cfg = ["--config", str(path)]
    runner = CliRunner()
    assert runner.invoke(app, ["schema", "apply", *cfg, "--phase", "pre-load"]).exit_code == 0
    assert runner.invoke(app, ["replay", "init", *cfg]).exit_code == 0
    other = "other_" + slot[4:]
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (other,))
    # copied under an explicitly named other slot
    backfill = runner.invoke(app, ["backfill", *cfg, "--replay", "--slot-name", other, "--no-progress"])
    assert backfill.exit_code == 0, (backfill.output, backfill.exception)
    replay = runner.invoke(app, ["replay", "run", *cfg, "--until-caught-up"])
    assert replay.exit_code != 0
    assert f"were copied under replication slot {other}, not {slot} ([replay] slot_name)" in str(replay.exception)
    assert "before" not in str(replay.exception)
