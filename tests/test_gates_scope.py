"""Whose evidence a gate counts: only its own migration's runs that covered its whole table set, and
only reconciliations whose diff, balances and expectations all completed green.

The first tests plant ``reconcile.runs`` rows (as tests/test_gates.py does); the last ones run real
audits, replays and reconciliations under two configs that share one control schema.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import psycopg
import pytest

from reconcile.config import PostgresEndpoint, TableSpec, load_config
from reconcile.connections import connect
from reconcile.gates import evaluate
from reconcile.identity import RunScope, migration_of, run_scope
from tests.test_gates import (GREEN_DIFF, LEGACY, REPLAY, _dead_letter, add_audit, add_run, bind, green_history,
                              make_config)
from tests.test_gates import cfg, conn  # noqa: F401  (pytest fixtures)


# --- the identity -----------------------------------------------------------------------------


def test_the_identity_is_stable_and_changes_with_name_endpoints_tables_and_slot(tmp_path):
    def config(text: str):
        path = tmp_path / "reconcile.toml"
        path.write_text('[source]\nkind = "postgres"\nconninfo = "host=Db.Example.com dbname=ledger user=a"\n'
                        '[target]\nkind = "dsql"\nendpoint = "abc123.dsql.us-east-1.on.aws"\n' + text)
        return load_config(path, environ={})

    plain = config("")
    base = migration_of(plain)
    assert base.id == migration_of(config("")).id and len(base.id) == 32
    # who logs in (user, password variable), and the order of the same tables, are not the migration
    other_user = dataclasses.replace(plain, source=PostgresEndpoint(
        "source", "postgresql://b@db.example.com:5432/ledger", password_env="PGPW"))
    assert migration_of(other_user).id == base.id
    assert migration_of(dataclasses.replace(plain, tables=tuple(reversed(plain.tables)))).id == base.id
    differs = {
        "name": config('[migration]\nname = "eu-ledger"\n'),
        "slot": config('[replay]\nslot_name = "other"\n'),
        "tables": config('[[tables]]\nname = "ledger.accounts"\nkey = ["account_id"]\n'),
        "database": dataclasses.replace(plain, source=PostgresEndpoint("source", "host=db.example.com dbname=ledger2")),
    }
    ids = {k: migration_of(c).id for k, c in differs.items()}
    assert base.id not in ids.values() and len(set(ids.values())) == len(ids)
    described = json.dumps(migration_of(other_user).describe())
    assert "PGPW" not in described and '"user"' not in described and "db.example.com" in described


def test_a_migration_name_with_a_control_character_is_refused(tmp_path):
    from reconcile.errors import ConfigError

    path = tmp_path / "reconcile.toml"
    path.write_text('[migration]\nname = "eu\\nledger"\n')
    with pytest.raises(ConfigError, match=r"migration.name .*control character \(U\+000A\)"):
        load_config(path, environ={})


# --- scoping, planted ------------------------------------------------------------------------


def test_runs_of_another_migration_or_of_none_or_partial_leave_the_gate_as_it_was(cfg, conn):
    """Another config's audit (no blocker) and replay (bad lag), red diffs and checks of another
    migration, rows written before runs recorded their migration and an audit of part of the tables:
    none of them moves this migration's evidence."""
    green_history(conn)
    add_audit(conn, blockers=1, hours_ago=3)  # this migration's audit has a blocker
    before = evaluate(cfg, "read", record=False, conn=conn)
    assert before.failing == ("audit_blockers",)

    other = RunScope("f" * 32, ("other.items",))
    for scope in (other, LEGACY):
        add_audit(conn, blockers=0, must_change=(), hours_ago=1, scope=scope)
        add_run(conn, "replay", "stopped", 0.1, {**REPLAY, "lag_seconds_p99": 99.0}, scope=scope)
        add_run(conn, "diff", "red", 0.1, {**GREEN_DIFF, "verdict": "red", "persistent_mismatches": 7}, scope=scope)
        add_run(conn, "check", "red", 0.1, {"success": False, "failed": 3}, scope=scope)
    conn.execute("INSERT INTO reconcile.dead_letters (slot_name, xid, reason) VALUES ('other_slot', 9, 'too big')")
    # this migration, but an audit of one table only (e.g. an older config): not the whole table set
    add_audit(conn, blockers=0, must_change=(), hours_ago=0, scope=run_scope(cfg, ["ledger.accounts"]))

    after = evaluate(cfg, "read", record=False, conn=conn)
    assert after.failing == ("audit_blockers",)
    def without_legacy(ev):
        return [{**c, "evidence": {k: v for k, v in c["evidence"].items() if k != "ignored_without_migration_id"}}
                for c in ev.substance["criteria"]]

    assert without_legacy(after) == without_legacy(before)  # verdicts and values, timestamps aside
    ignored = {c.name: c.evidence.get("ignored_without_migration_id") for c in after.criteria}
    assert ignored == {"green_diff_streak": 1, "latest_diff_clean": None, "expectations_green": 2,
                       "replay_lag": 1, "dead_letters": None, "audit_blockers": 1, "full_pass_recent": None}
    # this migration's own dead letter still counts
    _dead_letter(conn)
    assert "dead_letters" in evaluate(cfg, "read", record=False, conn=conn).failing


def test_no_evidence_of_this_migration_says_so_and_counts_the_rows_left_out(cfg, conn):
    for _ in range(2):
        add_audit(conn, blockers=0, must_change=(), scope=LEGACY)
        add_run(conn, "diff", "green", 1, GREEN_DIFF, scope=LEGACY)
    ev = evaluate(cfg, "read", record=False, conn=conn)
    assert {"audit_blockers", "green_diff_streak", "latest_diff_clean"} <= set(ev.failing)
    audit = ev.criterion("audit_blockers")
    assert audit.evidence == {"audit_run": None, "ignored_without_migration_id": 2}
    assert "no audit run of this migration" in audit.message and "2 older row(s) record no migration" in audit.message


# --- the cutover state -----------------------------------------------------------------------


def test_two_migrations_sharing_a_control_schema_each_have_their_own_cutover_state(cfg, conn):
    """Approving the second migration's read gate (and later its write gate) never moves the first
    migration's state, its direction, or what its repair refuses; adding a table keeps a state."""
    from reconcile.direction import direction_of
    from reconcile.gates import approve, current_state
    from reconcile.identity import MigrationSettings, cutover_key

    second = dataclasses.replace(cfg, stages={**cfg.stages, "migration": MigrationSettings(name="second ledger")})
    assert cutover_key(second) != cutover_key(cfg)
    assert current_state(cfg, conn=conn) == current_state(second, conn=conn) == "shadow"
    for gate in ("read", "write"):
        approve(second, gate, by="ana", reason="second ledger", override_reason="staging only", conn=conn)
    assert current_state(second, conn=conn) == "write_cutover"
    assert current_state(cfg, conn=conn) == "shadow"
    assert conn.execute("SELECT count(*) FROM reconcile.gate_state").fetchone()[0] == 2
    assert direction_of(conn, key=cutover_key(cfg)) == "forward"
    assert direction_of(conn, key=cutover_key(second)) == "reverse"
    assert direction_of(conn) == "reverse"  # a caller that does not know its migration refuses more, not less
    # one more table is new evidence, not a new cutover state
    grown = dataclasses.replace(second, tables=(*second.tables, TableSpec("ledger.extra", ("id",))))
    assert migration_of(grown).id != migration_of(second).id and cutover_key(grown) == cutover_key(second)
    assert current_state(grown, conn=conn) == "write_cutover"


def test_the_unscoped_state_of_an_older_control_schema_is_adopted_once(cfg, conn):
    from reconcile.gates import current_state
    from reconcile.identity import MigrationSettings, cutover_key

    conn.execute("INSERT INTO reconcile.gate_state (gate_key, state, version, entered_at) "
                 "VALUES ('cutover', 'read_cutover', 3, now())")
    assert current_state(cfg, conn=conn) == "read_cutover"  # its applications already read the target
    rows = dict(conn.execute("SELECT gate_key, state FROM reconcile.gate_state").fetchall())
    assert rows == {cutover_key(cfg): "read_cutover", "cutover": "adopted"}
    assert conn.execute("SELECT changed_by FROM reconcile.gate_state WHERE gate_key = 'cutover'").fetchone()[0] \
        == cutover_key(cfg)
    second = dataclasses.replace(cfg, stages={**cfg.stages, "migration": MigrationSettings(name="second ledger")})
    assert current_state(second, conn=conn) == "shadow" and current_state(cfg, conn=conn) == "read_cutover"


# --- red reconciliations ----------------------------------------------------------------------


def test_green_diffs_without_green_balances_and_expectations_do_not_count(cfg, conn):
    one = make_config(cfg, min_green_runs=1, min_green_hours=0.0)
    green_history(conn)
    assert evaluate(one, "read", record=False, conn=conn).passed
    # newer green diffs whose reconciliation did not complete green: none counts, none breaks the streak
    crashed = add_run(conn, "diff", "green", 0.3, GREEN_DIFF, checks=None)  # the checks task crashed
    skipped = add_run(conn, "diff", "green", 0.2, GREEN_DIFF, balances="skipped")  # [diff] balances = false
    ev = evaluate(one, "read", record=False, conn=conn)
    streak = ev.criterion("green_diff_streak").evidence
    assert streak["unverified_green_runs"] == 1 and streak["unverified_green_run_ids"] == [crashed]
    assert streak["partial_green_run_ids"] == [skipped]
    assert streak["recent_green_run_ids"][0] not in (crashed, skipped)
    # a reconciliation whose expectations crashed (their run is 'error') is red: it breaks the streak
    add_run(conn, "diff", "green", 0.1, GREEN_DIFF, checks="error")
    ev = evaluate(one, "read", record=False, conn=conn)
    assert "green_diff_streak" in ev.failing
    crit = ev.criterion("green_diff_streak")
    assert crit.evidence["consecutive_green"] == 0 and crit.evidence["streak_broken_by"]["checks"] == "error"
    assert "expectations run is error" in crit.message
    # only whole green reconciliations rebuild it
    add_run(conn, "diff", "green", 0.05, GREEN_DIFF, checks=None)
    assert evaluate(one, "read", record=False, conn=conn).criterion("green_diff_streak").evidence[
        "consecutive_green"] == 0
    add_run(conn, "diff", "green", 0.01, GREEN_DIFF)
    assert evaluate(one, "read", record=False, conn=conn).criterion("green_diff_streak").passed


# --- the verdict of a reconciliation ---------------------------------------------------------------


def test_the_verdict_names_the_step_that_failed_and_the_action_that_fits():
    from reconcile.pipeline.diff import ReconcileRed, reconcile_verdict

    green = {"verdict": "green", "persistent_mismatches": 0, "balance_differences": 0, "errors": {},
             "report_dir": "/r/1"}
    with pytest.raises(ReconcileRed) as only_checks:
        reconcile_verdict(green, None, {"gate": "read"}, expected=("checks", "evidence"))
    text = str(only_checks.value)
    assert "the checks step failed" in text and "the diff itself is green" in text and "checks task's log" in text
    assert "backfill" not in text and "re-copy" not in text and "key range" not in text
    with pytest.raises(ReconcileRed) as failed_expectations:
        reconcile_verdict(green, {"success": False, "failed": 2, "data_docs": "/r/1/checks"}, {"gate": "read"},
                          expected=("checks", "evidence"))
    assert "2 expectation(s) failed" in str(failed_expectations.value)
    assert "Data Docs at /r/1/checks" in str(failed_expectations.value)
    assert "re-copy" not in str(failed_expectations.value)
    red = {**green, "verdict": "red", "persistent_mismatches": 3}
    with pytest.raises(ReconcileRed, match="re-copy the key ranges it names"):
        reconcile_verdict(red, {"success": True}, {"gate": "read"}, expected=("checks", "evidence"))
    errored = {**green, "verdict": "red", "errors": {"ledger.accounts": "boom"}}
    with pytest.raises(ReconcileRed) as not_compared:
        reconcile_verdict(errored, {"success": True}, {"gate": "read"}, expected=("checks", "evidence"))
    assert "ledger.accounts not compared" in str(not_compared.value) and "re-copy" not in str(not_compared.value)
    assert reconcile_verdict(green, {"success": True}, {"gate": "read"},
                             expected=("checks", "evidence"))["failed_steps"] == []


# --- real runs under two configs sharing one control schema -------------------------------------


def _write(path, source_db: str, target_db: str, body: str):
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n\n'
                    f'[target]\nkind = "postgres"\nconninfo = "{target_db}"\n\n' + body)
    return path


def _cli(monkeypatch, *args: str) -> int:
    from reconcile.cli import app
    from reconcile.cli._common import run_app

    monkeypatch.setattr(sys, "argv", ["reconcile", *args])
    try:
        run_app(app)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def two_configs(source_db, target_db, tmp_path):
    """The first migration (the ledger, slot first_slot) and a second one sharing its control schema: one
    other table, its own slot. Both slots are dropped afterwards."""
    from tests.test_dags import _ledger_pair

    _ledger_pair(source_db, target_db, transactions=20)
    for url in (source_db, target_db):
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("CREATE SCHEMA other")
            c.execute("CREATE TABLE other.items (id bigint PRIMARY KEY, label text)")
    first = _write(tmp_path / "first.toml", source_db, target_db,
                   '[replay]\nslot_name = "first_slot"\npublication = "first_pub"\n\n'
                   "[gates]\nmin_green_runs = 1\nmin_green_hours = 0\n")
    second = _write(tmp_path / "second.toml", source_db, target_db,
                    '[replay]\nslot_name = "second_slot"\npublication = "second_pub"\nrequire_backfill = false\n\n'
                    '[[tables]]\nname = "other.items"\nkey = ["id"]\n')
    yield load_config(first, environ={}), load_config(second, environ={}), first, second
    with psycopg.connect(source_db, autocommit=True) as c:
        c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                  "WHERE database = current_database()")


def test_an_audit_and_a_replay_under_a_second_config_leave_the_first_migrations_evidence_unchanged(
        two_configs, source_db, monkeypatch):
    from reconcile.replay import init_replay, run_replay

    first, second, first_path, second_path = two_configs
    assert migration_of(first).id != migration_of(second).id
    assert _cli(monkeypatch, "audit", "--no-workload", "--config", str(first_path)) == 1  # the balance trigger
    with bind(connect(first.target), first) as c:
        green_history(c, audit=False)
    seen = evaluate(first, "read", record=False)
    assert seen.failing == ("audit_blockers",)
    must_change = len(seen.criterion("audit_blockers").evidence["blocker_ids"])

    # the second migration: an audit of its one table (no blocker, exit 0) and a replay on its own slot
    assert _cli(monkeypatch, "audit", "--no-workload", "--config", str(second_path)) == 0
    init_replay(second)
    with psycopg.connect(source_db, autocommit=True) as c:
        c.execute("INSERT INTO other.items SELECT g, 'x' || g FROM generate_series(1, 5) g")
    replayed = run_replay(second, until_caught_up=True)
    assert replayed.status == "done" and replayed.txns_applied >= 1

    after = evaluate(first, "read", record=False)
    assert after.substance == seen.substance  # every criterion's verdict and values, timestamps aside
    assert after.failing == ("audit_blockers",)
    assert len(after.criterion("audit_blockers").evidence["blocker_ids"]) == must_change
    # ... while the second migration sees its own runs, and only those
    own = evaluate(second, "read", record=False)
    assert own.criterion("audit_blockers").passed
    assert own.criterion("replay_lag").evidence["runs"] == 1
    assert own.criterion("replay_lag").evidence["latest_run_id"] == replayed.run_id
    with connect(first.target) as c:
        rows = dict(c.execute("SELECT kind || ':' || coalesce(migration_id, '-'), count(*) FROM reconcile.runs "
                              "WHERE kind IN ('replay') GROUP BY 1").fetchall())
        tables = c.execute("SELECT tables FROM reconcile.audit_runs WHERE migration_id = %s",
                           (migration_of(second).id,)).fetchone()[0]
    assert rows == {f"replay:{migration_of(first).id}": 2, f"replay:{migration_of(second).id}": 1}
    assert json.loads(tables) == ["other.items"]
