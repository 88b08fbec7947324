"""Table names with a space, a dot, a double quote, a semicolon or a reserved mixed-case word, end to end.

`[[tables]] name` takes SQL's double quotes for a part that needs them (``ledger2."Select"``,
``"my schema"."we""ird tab.le"``); reconcile keeps one canonical form (bare where it can be) and only
ever hands the parts to SQL through ``psycopg.sql.Identifier``. Before: such names could not be
configured (and the error said to qualify the name with its schema), Great Expectations lower-cased
``Select`` and spliced ``tab;le`` into its SQL, and the backfill's suggested index DDL was unquoted.
"""

from __future__ import annotations

import logging
import os

import psycopg
import pytest

from reconcile.config import InvalidSetting, TableSpec, load_config
from reconcile.db.names import NameError_, canonical, qualify, split_name

NAMES = {
    'ledger2."Select"': ("ledger2", "Select", "ledger2.Select"),
    "ledger2.Select": ("ledger2", "Select", "ledger2.Select"),
    'ledger2."tab;le"': ("ledger2", "tab;le", "ledger2.tab;le"),
    '"my schema"."we""ird tab.le"': ("my schema", 'we"ird tab.le', '"my schema"."we""ird tab.le"'),
    '"a.b"."c"': ("a.b", "c", '"a.b".c'),
    "ledger.accounts": ("ledger", "accounts", "ledger.accounts"),
}


@pytest.mark.parametrize("name", NAMES)
def test_names_parse_to_their_parts_and_one_canonical_form(name):
    schema, table, written = NAMES[name]
    assert split_name(name) == (schema, table)
    assert canonical(name) == written == qualify(schema, table)
    assert split_name(written) == (schema, table)  # the canonical form reads back the same
    spec = TableSpec(name, ("id",))
    assert (spec.name, spec.schema, spec.table) == (written, schema, table)


@pytest.mark.parametrize(("name", "problem", "fix"), [
    ("accounts", "is not schema.table", "qualify it with its schema"),
    ("ledger.my table", "has white space or a quote outside double quotes", "in double quotes"),
    ('ledger."open', "has an unclosed double quote", "in double quotes"),
    ("a.b.c", "has more than two parts", "in double quotes"),
    ("ledger.", "has an empty part", "in double quotes"),
])
def test_a_name_that_cannot_be_read_says_how_to_write_it(tmp_path, name, problem, fix):
    with pytest.raises(NameError_, match=problem):
        split_name(name)
    path = tmp_path / "reconcile.toml"
    path.write_text(f"[[tables]]\nname = '{name}'\nkey = [\"id\"]\n")
    with pytest.raises(InvalidSetting) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(f"tables[0].name in {path} must be schema.table") and problem in message
    assert fix in message
    if problem != "is not schema.table":
        assert "qualify it with its schema" not in message


def test_config_table_finds_a_table_by_any_form(tmp_path):
    path = tmp_path / "reconcile.toml"
    path.write_text("[[tables]]\nname = 'ledger2.\"Select\"'\nkey = [\"Id\"]\n"
                    "[[tables]]\nname = '\"my schema\".\"t\"'\nkey = [\"id\"]\n")
    cfg = load_config(path, environ={})
    assert [t.name for t in cfg.tables] == ["ledger2.Select", '"my schema".t']
    assert cfg.table('ledger2."Select"') is cfg.table("ledger2.Select") is cfg.tables[0]
    assert cfg.table('"my schema"."t"') is cfg.tables[1]
    path.write_text(path.read_text() + "[[tables]]\nname = 'ledger2.Select'\nkey = [\"Id\"]\n")
    with pytest.raises(InvalidSetting, match=r"tables\[2\]\.name .* repeats tables\[0\]"):
        load_config(path, environ={})


SOURCE_DDL = [
    "CREATE SCHEMA ledger2",
    'CREATE SCHEMA "my schema"',
    'CREATE TABLE ledger2."Select" ("Id" bigint PRIMARY KEY, "Val" text NOT NULL)',
    'CREATE TABLE ledger2."tab;le" (id bigint PRIMARY KEY, v text)',
    'CREATE TABLE "my schema"."we""ird tab.le" ("Id" text PRIMARY KEY, "v v" numeric(12,2) NOT NULL CHECK ("v v" >= 0))',
]
SOURCE_ROWS = [
    'INSERT INTO ledger2."Select" SELECT g, \'v\' || g FROM generate_series(1, 40) g',
    'INSERT INTO ledger2."tab;le" SELECT g, \'v\' || g FROM generate_series(1, 40) g',
    'INSERT INTO "my schema"."we""ird tab.le" SELECT \'k\' || g, g FROM generate_series(1, 40) g',
]
CONFIG = """
[[tables]]
name = 'ledger2."Select"'
key = ["Id"]

[[tables]]
name = 'ledger2."tab;le"'
key = ["id"]

[[tables]]
name = '"my schema"."we""ird tab.le"'
key = ["Id"]

[replay]
require_backfill = false
"""


@pytest.fixture
def hostile_names(source_db, target_db, tmp_path):
    with psycopg.connect(source_db, autocommit=True) as conn:
        for stmt in SOURCE_DDL + SOURCE_ROWS:
            conn.execute(stmt)
    path = tmp_path / "reconcile.toml"
    path.write_text(CONFIG)
    env = {"RECONCILE__SOURCE__KIND": "postgres", "RECONCILE__SOURCE__CONNINFO": source_db,
           "RECONCILE__TARGET__KIND": "postgres", "RECONCILE__TARGET__CONNINFO": target_db}
    return load_config(path, environ=env), path, env


def test_schema_backfill_diff_and_checks_over_hostile_names(hostile_names, source_db, target_db, tmp_path, caplog):
    from reconcile.backfill import run_backfill
    from reconcile.checks import run_checks
    from reconcile.diff import run_diff
    from reconcile.schema import apply_plan, plan_from_source

    cfg, _, _ = hostile_names
    weird = '"my schema"."we""ird tab.le"'
    with psycopg.connect(source_db, autocommit=True) as conn:
        plan = plan_from_source(conn, tables=list(cfg.tables), dialect="postgres")
    assert {t.name for t in plan.tables} == {"ledger2.Select", "ledger2.tab;le", weird}
    with psycopg.connect(target_db, autocommit=True) as conn:
        apply_plan(conn, plan, phase="pre-load")

    with caplog.at_level(logging.WARNING, logger="reconcile.backfill"):
        summary = run_backfill(cfg)
    assert summary.status == "done" and summary.rows == 120
    # the text key is not C-ordered on the en_US source: the suggested index names the table and column quoted
    assert f'CREATE UNIQUE INDEX CONCURRENTLY ON "my schema"."we""ird tab.le" ("Id" COLLATE "C")' in caplog.text

    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute('UPDATE "my schema"."we""ird tab.le" SET "v v" = 999 WHERE "Id" = \'k7\'')
        conn.execute('DELETE FROM ledger2."tab;le" WHERE id = 3')
    result = run_diff(cfg, report_dir=tmp_path / "reports")
    tables = result.to_dict()["tables"]
    assert set(tables) == {"ledger2.Select", "ledger2.tab;le", weird}
    assert (tables[weird]["status"], tables[weird]["changed"]) == ("red", 1)
    assert (tables["ledger2.tab;le"]["status"], tables["ledger2.tab;le"]["missing"]) == ("red", 1)
    assert tables["ledger2.Select"]["status"] == "green"

    checks = run_checks(cfg, suites=("generated",), report_dir=tmp_path / "gx")
    assert [o for o in checks.outcomes if o.exception] == []  # every expectation ran on the right table
    names = {(o.side, o.check.suite, o.check.name) for o in checks.evaluated}
    assert ("target", "ledger2.Select", "unique:Id") in names and ("source", "ledger2.tab;le", "not_null:id") in names
    assert checks.success  # the diff's two differences break no constraint

    with psycopg.connect(source_db, autocommit=True) as conn:  # a real violation is found on the right table
        conn.execute('INSERT INTO ledger2."tab;le" VALUES (41, NULL)')
        conn.execute('ALTER TABLE ledger2."tab;le" ADD CONSTRAINT "v;set" CHECK (v IS NOT NULL) NOT VALID')
    checks = run_checks(cfg, suites=("generated",), sides=("source",))
    failed = {(o.check.suite, o.check.name) for o in checks.failed}
    assert failed == {("ledger2.tab;le", "check:v;set")} and not any(o.exception for o in checks.outcomes)


def test_cli_takes_any_form_of_a_hostile_name(hostile_names, target_db):
    from typer.testing import CliRunner

    from reconcile.cli import app
    from reconcile.schema import apply_plan, plan_from_source

    cfg, path, env = hostile_names
    with psycopg.connect(cfg.source.conninfo, autocommit=True) as conn:
        plan = plan_from_source(conn, tables=list(cfg.tables), dialect="postgres")
    with psycopg.connect(target_db, autocommit=True) as conn:
        apply_plan(conn, plan, phase="pre-load")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RECONCILE")}, **env}
    result = CliRunner().invoke(app, ["backfill", "--config", str(path), "--table", '"my schema"."we""ird tab.le"',
                                      "--from-key", "k20", "--json"], env=env)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["backfill", "status", "--config", str(path), "--table", "ledger2.Select"], env=env)
    assert result.exit_code == 0 and "ledger2.Select:" in result.output, result.output
    result = CliRunner().invoke(app, ["diff", "--config", str(path), "--table", 'ledger2."Select"',
                                      "--table", 'ledger2."tab;le"'], env=env)
    assert result.exit_code == 1, result.output  # nothing copied yet for these two: red, and no traceback
    assert "ledger2.Select" in result.output and "missing 40" in result.output
