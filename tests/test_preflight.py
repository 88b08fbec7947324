"""`reconcile config check` against the databases, and every stage refusing a config that does not fit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from reconcile.cli import app
from reconcile.config import DEMO_TABLES, Config, PostgresEndpoint, TableSpec
from reconcile.schema import apply_plan, plan_from_source
from reconcile.workload import seed


def write_config(path: Path, source: str, target: str, body: str) -> Path:
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source}"\n'
                    f'[target]\nkind = "postgres"\nconninfo = "{target}"\n' + body)
    return path


@pytest.fixture
def ledger(source_db, target_db):
    with psycopg.connect(source_db, autocommit=True) as conn:
        seed(conn, accounts=20, transactions=40)
    return source_db, target_db


# The demo ledger under a config with one mistake of each kind (every role column named: none is assumed).
MISTAKES = """
[[tables]]
name = "ledger.accounts"
key = ["account_id"]
role = "accounts"
account_column = "account_id"
balance_column = "balanse"
currency_column = "currency"

[[tables]]
name = "ledger.journl"
key = ["txn_id"]

[[tables]]
name = "ledger.entries"
key = ["entry_no"]
role = "entries"
account_column = "account_id"
amount_column = "currency"
currency_column = "currency"
transaction_column = "txn_id"

[checks]
negative_balance_exempt_column = "category"
"""


def test_config_check_names_each_mismatch_with_its_fix(ledger, tmp_path):
    source, target = ledger
    path = write_config(tmp_path / "reconcile.toml", source, target, MISTAKES)
    result = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
    assert result.exit_code == 2, result.output
    out = result.stdout
    assert ('error: ledger.accounts has no column balanse on the source (tables[0].balance_column, the accounts '
            'table\'s stored balance); name the column holding the stored balance (did you mean "balance"?)') in out
    assert ('error: table ledger.journl does not exist on the source (did you mean "ledger.journal"?); fix '
            'tables[1].name') in out
    assert "error: key column(s) entry_no of ledger.entries do not exist on this side; fix tables.key for " \
           "ledger.entries" in out
    assert ("error: ledger.entries.currency (tables[2].amount_column) is character(3) on the source, but the signed "
            "amount must be a number (numeric or integer)") in out
    assert ("error: ledger.accounts has no column category on the source (checks.negative_balance_exempt_column); "
            "set negative_balance_exempt_column to the accounts table's column") in out
    assert "4 error(s)" not in result.stderr and "5 error(s)" in result.stderr
    # --offline only validates the settings, as before
    offline = CliRunner().invoke(app, ["config", "check", "--config", str(path), "--offline"])
    assert offline.exit_code == 0 and "configuration is valid" in offline.stderr


def test_a_fitting_config_is_valid_and_unset_role_columns_are_not_errors(ledger, tmp_path):
    source, target = ledger
    path = write_config(tmp_path / "reconcile.toml", source, target, "")
    result = CliRunner().invoke(app, ["config", "check", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    import json

    checked = json.loads(result.stdout)["databases"]
    assert checked["ok"] and checked["errors"] == [] and not checked["target_checked"]

    from reconcile.preflight import run_preflight

    # A ledger without a currency column, configured as such (None or ""), is not a mismatch; the [diff] and
    # [checks] role columns are unset by default, so nothing is assumed of a ledger that lacks posted_at; once
    # set, a column the ledger lacks is an error naming the setting.
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("ALTER TABLE ledger.entries RENAME COLUMN posted_at TO booked_at")
    cfg = Config(source=PostgresEndpoint("source", source), target=PostgresEndpoint("target", target))
    for unset in (None, ""):
        tables = []
        for spec in DEMO_TABLES:
            spec = dataclasses.replace(spec)
            if spec.currency_column:
                object.__setattr__(spec, "currency_column", unset)  # what "currency is optional" will allow
            tables.append(spec)
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute("ALTER TABLE ledger.entries DROP COLUMN IF EXISTS currency CASCADE")
            conn.execute("ALTER TABLE ledger.accounts DROP COLUMN IF EXISTS currency CASCADE")
        found = run_preflight(dataclasses.replace(cfg, tables=tuple(tables)), "config")
        assert found.ok and found.warnings == [], (found.errors, found.warnings)
        dated = dataclasses.replace(cfg, tables=tuple(tables), stages={
            **cfg.stages, "diff": dataclasses.replace(cfg.stage("diff"), date_column="posted_at")})
        found = run_preflight(dated, "config")
        assert [(m.setting, m.severity) for m in found.mismatches] == [("diff.date_column", "error")]
        assert found.errors[0].text.startswith("ledger.entries has no column posted_at on the source "
                                               "(diff.date_column); set date_column to the entries table's column")


def test_the_target_is_checked_once_the_schema_is_applied(ledger, tmp_path):
    source, target = ledger
    with psycopg.connect(source, autocommit=True) as conn:
        plan = plan_from_source(conn, tables=DEMO_TABLES, dialect="postgres")
    with psycopg.connect(target, autocommit=True) as conn:
        apply_plan(conn, plan, phase="pre-load")
        conn.execute("DROP TABLE ledger.journal")
        conn.execute("ALTER TABLE ledger.accounts DROP COLUMN balance")
    path = write_config(tmp_path / "reconcile.toml", source, target, "")
    result = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert "error: table ledger.journal does not exist on the target; create the target schema first" in result.stdout
    assert "error: ledger.accounts has no column balance on the target (tables[0].balance_column" in result.stdout


STAGES = [
    (["audit", "--no-store", "--no-workload"], "reconcile audit cannot start"),
    (["schema", "plan"], "reconcile schema cannot start"),
    (["schema", "apply", "--phase", "pre-load"], "reconcile schema cannot start"),
    (["replay", "init"], "reconcile replay init cannot start"),
    (["replay", "run", "--until-caught-up"], "the replay cannot start"),
    (["backfill"], "the backfill cannot start"),
    (["diff"], "the diff cannot start"),
    (["check"], "the checks cannot start"),
]


def test_every_stage_refuses_a_mismatch_with_one_sentence(ledger, tmp_path):
    from reconcile.preflight import ConfigMismatch

    source, target = ledger
    body = ('[[tables]]\nname = "ledger.entries"\nkey = ["entry_id"]\nrole = "entries"\namount_column = "amt"\n'
            'account_column = "account_id"\ncurrency_column = "currency"\ntransaction_column = "txn_id"\n')
    path = write_config(tmp_path / "reconcile.toml", source, target, body)
    sentence = ("ledger.entries has no column amt on the source (tables[0].amount_column, the entries table's signed "
                "amount); name the column holding the signed amount")
    for command, label in STAGES:
        result = CliRunner().invoke(app, [*command, "--config", str(path)])
        assert result.exit_code != 0, (command, result.output)
        assert isinstance(result.exception, ConfigMismatch), (command, result.output, result.exception)
        assert str(result.exception).startswith(f"{label}: {sentence}"), (command, str(result.exception))
        assert "\n" not in str(result.exception)
    with psycopg.connect(target) as conn:  # nothing was written anywhere
        assert conn.execute("SELECT to_regclass('reconcile.runs') IS NULL AND to_regclass('ledger.entries') IS NULL"
                            ).fetchone()[0]

    # the orchestrated steps (what the DAG tasks call) refuse the same way
    from reconcile.config import load_config
    from reconcile.pipeline.backfill import backfill_plan
    from reconcile.pipeline.diff import checks_step, diff_start
    from reconcile.pipeline.replay import replay_init, replay_tick

    cfg = load_config(path, environ={})
    for step in (lambda: backfill_plan(cfg), lambda: replay_init(cfg), lambda: replay_tick(cfg, duration=1),
                 lambda: diff_start(cfg), lambda: checks_step(cfg)):
        with pytest.raises(ConfigMismatch, match="cannot start: ledger.entries has no column amt"):
            step()


def test_more_than_one_mismatch_is_counted_in_the_refusal(ledger):
    from reconcile.preflight import ConfigMismatch, run_preflight

    source, target = ledger
    cfg = Config(source=PostgresEndpoint("source", source), target=PostgresEndpoint("target", target),
                 tables=(TableSpec("ledger.nope", ("id",)), TableSpec("ledger.entries", ("nope",))))
    with pytest.raises(ConfigMismatch) as refused:
        run_preflight(cfg, "audit").raise_if_errors()
    text = str(refused.value)
    assert text.startswith("reconcile audit cannot start: table ledger.nope does not exist on the source")
    assert text.endswith("(and 1 more mismatch(es): `reconcile config check` lists them all)")
    # picklable: it crosses Airflow worker processes
    import pickle

    assert str(pickle.loads(pickle.dumps(refused.value))) == text
