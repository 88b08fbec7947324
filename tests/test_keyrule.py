"""One rule for tables without a primary key: the audit, the plan, replay init, the backfill and config check
require the same (the configured key unique and not null on the source, proven by a data check) and say it in
the same words."""

from __future__ import annotations

import psycopg
import pytest
from typer.testing import CliRunner

from reconcile.audit import AuditOptions, run_audit
from reconcile.backfill import Backfill, BackfillSettings
from reconcile.cli import app
from reconcile.config import Config, PostgresEndpoint, TableSpec
from reconcile.schema import apply_plan, plan_from_source

POSTINGS = TableSpec("legacy.postings", ("ref", "line"))

# Expected everywhere: the rule, the counts, the fix.
VIOLATION = ("legacy.postings has no primary key, so reconcile identifies its rows by the configured key (ref, line), "
             "which must be unique and not null on the source: 2 key value(s) appear more than once (5 rows) and "
             "1 row(s) have a NULL in the key (of 9 rows); remove the duplicates and NULLs on the source, or set "
             "tables.key for legacy.postings to columns that are unique and not null")


def run_sql(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt)


def postings(source: str) -> None:
    """A keyless legacy table: (ref, line) repeats twice (A/1 three times, B/2 twice) and one line is NULL."""
    run_sql(source, "CREATE SCHEMA legacy",
            "CREATE TABLE legacy.postings (ref text, line int, amount numeric(12,2) NOT NULL, memo text)",
            "INSERT INTO legacy.postings VALUES ('A', 1, 1.00, 'x'), ('A', 1, 2.00, 'y'), ('A', 1, 3.00, 'z'), "
            "('B', 2, 4.00, NULL), ('B', 2, 5.00, NULL), ('C', 1, 6.00, NULL), ('C', 2, 7.00, NULL), "
            "('D', NULL, 8.00, NULL), ('E', 1, 9.00, NULL)")


def config_file(path, source: str, target: str, slot: str) -> str:
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source}"\n[target]\nkind = "postgres"\n'
                    f'conninfo = "{target}"\n[replay]\nslot_name = "{slot}"\npublication = "{slot}_pub"\n'
                    '[[tables]]\nname = "legacy.postings"\nkey = ["ref", "line"]\n')
    return str(path)


@pytest.fixture
def drop_slots(source_db):
    yield
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE database = current_database()")


def test_every_stage_requires_the_same_of_a_keyless_table_and_says_it_the_same_way(source_db, target_db, tmp_path,
                                                                                   drop_slots):
    postings(source_db)
    slot = "k_" + psycopg.conninfo.conninfo_to_dict(source_db)["dbname"].lower()
    cfg_path = config_file(tmp_path / "reconcile.toml", source_db, target_db, slot)
    runner = CliRunner()

    # audit: a blocker with the counts
    with psycopg.connect(source_db, autocommit=True) as conn:
        report = run_audit(conn, tables=[POSTINGS], options=AuditOptions(lint=False, workload=False))
    finding = report.find("key_not_unique", "legacy.postings")
    assert finding is not None and finding.severity.value == "blocker"
    assert finding.message == VIOLATION
    counts = (finding.details["duplicate_values"], finding.details["duplicate_rows"], finding.details["null_rows"])
    assert counts == (2, 5, 1)
    assert report.exit_code == 1

    # config check, schema plan, replay init: the same sentence, nothing created on the source
    check = runner.invoke(app, ["config", "check", "--config", cfg_path])
    assert check.exit_code == 2 and f"error: {VIOLATION}" in check.stdout
    for command, label in ((["schema", "plan"], "reconcile schema"),
                           (["replay", "init", "--replica-identity-full"], "reconcile replay init")):
        result = runner.invoke(app, [*command, "--config", cfg_path])
        assert result.exit_code != 0
        assert str(result.exception) == f"{label} cannot start: {VIOLATION}"
    # the replay library itself (no CLI in front of it) checks the same rule before it sets anything
    from reconcile.replay import PrerequisiteFailed, ReplaySettings, init_replay

    lib_cfg = Config(source=PostgresEndpoint("source", source_db), target=PostgresEndpoint("target", target_db),
                     tables=(POSTINGS,), stages={"replay": ReplaySettings(slot_name=slot, publication=f"{slot}_pub")})
    with pytest.raises(PrerequisiteFailed) as refused:
        init_replay(lib_cfg, replica_identity_full=True)
    assert str(refused.value) == VIOLATION + "."
    with psycopg.connect(source_db) as conn:
        assert conn.execute("SELECT relreplident::text FROM pg_class WHERE oid = 'legacy.postings'::regclass"
                            ).fetchone() == ("d",)
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
                            ).fetchone() == (0,)

    # the backfill library (no CLI in front of it) refuses the same way when it plans the table
    run_sql(target_db, "CREATE SCHEMA legacy", "CREATE TABLE legacy.postings (ref text, line int, "
            "amount numeric(12,2) NOT NULL, memo text, PRIMARY KEY (ref, line))")
    cfg = Config(source=PostgresEndpoint("source", source_db), target=PostgresEndpoint("target", target_db),
                 tables=(POSTINGS,))
    from reconcile.keyrule import KeyNotUsable

    with Backfill.from_config(cfg) as bf, pytest.raises(KeyNotUsable) as refused:
        bf.run()
    assert str(refused.value) == VIOLATION
    with psycopg.connect(target_db) as conn:
        assert conn.execute("SELECT count(*) FROM legacy.postings").fetchone() == (0,)


def test_a_keyless_table_whose_key_holds_moves_without_any_source_index(source_db, target_db, tmp_path, drop_slots):
    """Once the data keeps the rule, no stage demands an index the plan did not create: the plan makes the key
    the target's primary key (pre-load), replay init sets replica identity when told, and the backfill copies
    from a source that has no unique index at all."""
    postings(source_db)
    run_sql(source_db, "DELETE FROM legacy.postings WHERE line IS NULL OR (ref, line) IN (('A', 1), ('B', 2))",
            "INSERT INTO legacy.postings SELECT 'R' || g, g, g, NULL FROM generate_series(1, 2000) g")
    slot = "k_" + psycopg.conninfo.conninfo_to_dict(source_db)["dbname"].lower()
    cfg_path = config_file(tmp_path / "reconcile.toml", source_db, target_db, slot)
    runner = CliRunner()

    plan = runner.invoke(app, ["schema", "plan", "--config", cfg_path])
    assert plan.exit_code == 0, plan.output
    assert "PRIMARY KEY (\"ref\", \"line\")" in plan.stdout
    assert "primary key (ref, line) from the configuration: legacy.postings has no primary key, so reconcile " \
           "identifies its rows by the configured key (ref, line), which must be unique and not null" in plan.stdout
    applied = runner.invoke(app, ["schema", "apply", "--config", cfg_path, "--phase", "pre-load"])
    assert applied.exit_code == 0, applied.output

    init = runner.invoke(app, ["replay", "init", "--config", cfg_path])
    assert init.exit_code != 0 and "--replica-identity-full" in str(init.exception)
    assert str(init.exception).startswith("legacy.postings has no primary key, so reconcile identifies its rows by the "
                                          "configured key (ref, line), which must be unique and not null on the source")
    init = runner.invoke(app, ["replay", "init", "--config", cfg_path, "--replica-identity-full"])
    assert init.exit_code == 0, init.output

    backfill = runner.invoke(app, ["backfill", "--config", cfg_path, "--replay", "--no-progress",
                                   "--chunk-rows", "500"])
    assert backfill.exit_code == 0, (backfill.output, backfill.exception)
    with psycopg.connect(source_db) as s, psycopg.connect(target_db) as t:
        q = "SELECT ref, line, amount, memo FROM legacy.postings ORDER BY ref COLLATE \"C\", line"
        assert s.execute(q).fetchall() == t.execute(q).fetchall()
        assert len(t.execute(q).fetchall()) == 2003

    # a write after the copy arrives through the replay, keyed by (ref, line)
    run_sql(source_db, "UPDATE legacy.postings SET memo = 'late' WHERE ref = 'C' AND line = 2",
            "DELETE FROM legacy.postings WHERE ref = 'E'")
    replay = runner.invoke(app, ["replay", "run", "--config", cfg_path, "--until-caught-up"])
    assert replay.exit_code == 0, (replay.output, replay.exception)
    with psycopg.connect(target_db) as t:
        assert t.execute("SELECT memo FROM legacy.postings WHERE ref = 'C' AND line = 2").fetchone() == ("late",)
        assert t.execute("SELECT count(*) FROM legacy.postings WHERE ref = 'E'").fetchone() == (0,)

    check = runner.invoke(app, ["config", "check", "--config", cfg_path])
    assert check.exit_code == 0, check.output
    assert "checked: legacy.postings: key (ref, line) is unique and not null on the source (data check, 2,002 rows)" \
        in check.stdout


def test_a_unique_index_on_nullable_columns_does_not_prove_the_key(source_db, target_db):
    run_sql(source_db, "CREATE SCHEMA legacy", "CREATE TABLE legacy.refs (code text UNIQUE, v int)",
            "INSERT INTO legacy.refs VALUES ('a', 1), (NULL, 2), (NULL, 3), ('b', 4)")
    run_sql(target_db, "CREATE SCHEMA legacy", "CREATE TABLE legacy.refs (code text PRIMARY KEY, v int)")
    cfg = Config(source=PostgresEndpoint("source", source_db), target=PostgresEndpoint("target", target_db),
                 tables=(TableSpec("legacy.refs", ("code",)),))
    from reconcile.keyrule import KeyNotUsable

    with Backfill.from_config(cfg, BackfillSettings()) as bf, pytest.raises(KeyNotUsable) as refused:
        bf.run()
    assert str(refused.value).endswith(": 0 key value(s) appear more than once (0 rows) and 2 row(s) have a NULL in "
                                       "the key (of 4 rows); remove the duplicates and NULLs on the source, or set "
                                       "tables.key for legacy.refs to columns that are unique and not null")


def test_a_post_load_apply_reports_what_the_pre_load_phase_still_lacks(source_db, target_db):
    run_sql(source_db, "CREATE SCHEMA app", "CREATE TABLE app.parent (id int PRIMARY KEY)",
            "CREATE TABLE app.child (id int PRIMARY KEY, parent_id int REFERENCES app.parent, ref text NOT NULL)")
    tables = [TableSpec("app.parent", ("id",)), TableSpec("app.child", ("id",))]
    with psycopg.connect(source_db, autocommit=True) as conn:
        first = plan_from_source(conn, tables=tables, dialect="postgres")
    with psycopg.connect(target_db, autocommit=True) as conn:
        apply_plan(conn, first, phase="pre-load")
    run_sql(source_db, "CREATE UNIQUE INDEX child_ref_key ON app.child (ref)")  # the plan gains a pre-load index
    with psycopg.connect(source_db, autocommit=True) as conn:
        second = plan_from_source(conn, tables=tables, dialect="postgres")
    with psycopg.connect(target_db, autocommit=True) as conn:
        report = apply_plan(conn, second, phase="post-load")
    assert [(d.object, d.kind) for d in report.drift] == [("app.child_ref_key", "pending_pre_load")]
    assert str(report.drift[0]) == ("app.child_ref_key: index is planned in the pre-load phase but missing on the "
                                    "target; run `reconcile schema apply --phase pre-load`")
    assert report.exit_code == 1
