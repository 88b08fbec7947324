"""Hostile but realistic input (issue 14): secrets in odd places, garbage on the command line.

Each case was reproduced against the code before its fix: an ``sslpassword`` printed by ``config check``
and stored in ``reconcile.runs.settings``, a password typed into ``password_env`` echoed back, a
``${VAR}`` bringing a URL with a password taken for a password in the file, and raw tracebacks (exit 1)
for bad command-line input.
"""

from __future__ import annotations

import json
import os

import psycopg
import pytest
from typer.testing import CliRunner

from reconcile.cli import app
from reconcile.config import Config, PostgresEndpoint, TableSpec, load_config
from reconcile.errors import ConfigError, ReconcileError

SECRET = "Pl4nted-Key_9"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in list(os.environ):
        if var.startswith("RECONCILE"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


def _outcome(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Exit code and output of the console script for ``args`` (a ReconcileError becomes exit 2, as in main)."""
    result = CliRunner().invoke(app, args, env=env)
    if isinstance(result.exception, ReconcileError):
        return result.exception.exit_code, result.output + f"error: {result.exception}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        return 1, result.output + "Traceback:\n" + "".join(traceback.format_exception(result.exception))
    return result.exit_code, result.output


# -- secrets ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conninfo", [
    f"host=db dbname=ledger sslkey=/k.pem sslpassword={SECRET}",
    f"postgresql://app@db/ledger?sslkey=/k.pem&sslpassword={SECRET}&sslmode=require",
    f"host=db dbname=ledger password={SECRET} sslpassword={SECRET}x",
    f"postgresql://app:{SECRET}@db/ledger",
])
def test_config_check_never_prints_a_secret_of_the_conninfo(conninfo):
    env = {"RECONCILE__SOURCE__KIND": "postgres", "RECONCILE__SOURCE__CONNINFO": conninfo}
    for args in (["config", "check", "--offline"], ["config", "check", "--offline", "--json"]):
        code, output = _outcome(args, env)
        assert code == 0, output
        assert SECRET not in output and "***" in output
    cfg = load_config(None, environ=env)
    assert cfg.source.conninfo == conninfo  # the real value stays usable
    assert SECRET not in json.dumps(cfg.describe())
    assert SECRET in cfg.secrets()[0]
    assert SECRET not in cfg.safe_message(RuntimeError(f"connection to {conninfo} failed: bad key {SECRET}"))


def test_sslpassword_in_the_file_is_refused(tmp_path):
    path = tmp_path / "reconcile.toml"
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "host=db sslpassword={SECRET}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "source.conninfo in" in str(info.value) and "contains a password" in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("value", ["Sup3rSecretPW", "hunter2", "pass word!", "a-b-c"])
def test_a_password_typed_into_password_env_is_never_echoed(tmp_path, value):
    path = tmp_path / "reconcile.toml"
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "host=db"\npassword_env = "{value}"\n')
    for where, env in ((path, {}), (None, {"RECONCILE__SOURCE__KIND": "postgres", "RECONCILE__SOURCE__CONNINFO": "host=db",
                                            "RECONCILE__SOURCE__PASSWORD_ENV": value})):
        with pytest.raises(ConfigError) as info:
            load_config(where, environ=env)
        message = str(info.value)
        assert message.startswith("source.password_env ") and "must be the name of an environment variable" in message
        assert value not in message
        code, output = _outcome(["config", "check", "--offline"] + (["--config", str(where)] if where else []), env)
        assert code == 2 and value not in output


def test_password_env_takes_a_variable_name(tmp_path, monkeypatch):
    monkeypatch.setenv("ledger_pw_lower", "x")  # an existing lower-case variable is a name too
    for name in ("LEDGER_PGPASSWORD", "_PW2", "ledger_pw_lower"):
        cfg = load_config(None, environ={"RECONCILE__SOURCE__KIND": "postgres", "RECONCILE__SOURCE__CONNINFO": "host=db",
                                         "RECONCILE__SOURCE__PASSWORD_ENV": name})
        assert cfg.source.password_env == name


@pytest.mark.parametrize("conninfo", ["${DB_URL}", "postgresql://app:${DB_PW}@db/ledger", "host=db password=${DB_PW}"])
def test_a_password_brought_by_a_var_reference_is_not_in_the_file(tmp_path, conninfo):
    path = tmp_path / "reconcile.toml"
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "{conninfo}"\n')
    env = {"DB_URL": f"postgresql://app:{SECRET}@db/ledger", "DB_PW": SECRET}
    cfg = load_config(path, environ=env)
    assert SECRET in cfg.source.conninfo
    assert SECRET not in json.dumps(cfg.describe())
    code, output = _outcome(["config", "check", "--offline", "--config", str(path)], env)
    assert code == 0 and SECRET not in output
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "postgresql://app:{SECRET}@db/ledger"\n')
    with pytest.raises(ConfigError, match="contains a password; secrets never go in the file"):
        load_config(path, environ=env)


def test_run_settings_never_hold_a_conninfo_secret(source_db, target_db):
    """What a diff run stores (reconcile.runs.settings, later summary.json) masks every conninfo secret."""
    from reconcile.diff.run import start_diff

    source = psycopg.conninfo.make_conninfo(source_db, sslpassword=SECRET)
    cfg = Config(source=PostgresEndpoint("source", source), target=PostgresEndpoint("target", target_db),
                 tables=(TableSpec("app.t", ("id",)),))
    run_id = start_diff(cfg)
    with psycopg.connect(target_db) as conn:
        stored = conn.execute("SELECT settings::text FROM reconcile.runs WHERE run_id = %s", (run_id,)).fetchone()[0]
    assert "sslpassword=***" in stored and SECRET not in stored


# -- garbage on the command line: exit 2, one sentence, never a traceback ---------------------------------------


@pytest.fixture(scope="module")
def ledger_env(local_stack):
    """A small demo ledger on the source, its schema and rows on the target; the CLI's environment for it."""
    import uuid

    from reconcile.backfill import run_backfill
    from reconcile.config import DEMO_TABLES
    from reconcile.schema import apply_plan, plan_from_source
    from reconcile.workload import seed

    urls = {}
    for side in ("source", "target"):
        name = f"h{side[0]}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(local_stack[side], autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template1')
        urls[side] = psycopg.conninfo.make_conninfo(local_stack[side], dbname=name)
    with psycopg.connect(urls["source"], autocommit=True) as conn:
        seed(conn, accounts=10, transactions=30)
        plan = plan_from_source(conn, tables=list(DEMO_TABLES), dialect="postgres")
    with psycopg.connect(urls["target"], autocommit=True) as conn:
        apply_plan(conn, plan, phase="pre-load")
    cfg = Config(source=PostgresEndpoint("source", urls["source"]), target=PostgresEndpoint("target", urls["target"]))
    run_backfill(cfg)
    yield {"RECONCILE__SOURCE__KIND": "postgres", "RECONCILE__SOURCE__CONNINFO": urls["source"],
           "RECONCILE__TARGET__KIND": "postgres", "RECONCILE__TARGET__CONNINFO": urls["target"]}
    for side, url in urls.items():
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        with psycopg.connect(local_stack[side], autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


GARBAGE = [
    ["backfill", "--table", "ledger.entries", "--from-key", "1; drop table ledger.entries"],
    ["backfill", "--table", "ledger.entries", "--to-key", "'); select pg_sleep(1000); --"],
    ["backfill", "--table", "ledger.entries", "--from-key", "[1, 2]"],
    ["backfill", "--table", "ledger.entries", "--from-key", '["x",'],
    ["backfill", "--table", "ledger.entries", "--from-key", "99999999999999999999999"],
    ["backfill", "--table", "nope.nope"],
    ["backfill", "--table", "ledger.my table"],
    ["backfill", "--write-method", "fast"],
    ["backfill", "--slot-name", " "],
    ["backfill", "rejects", "--table", "nope.nope"],
    ["backfill", "status", "--table", "'; drop"],
    ["diff", "show", "nope"],
    ["diff", "show", "00000000-0000-0000-0000-000000000000"],
    ["diff", "--table", "nope.nope"],
    ["check", "--side", "sideways"],
    ["check", "--suite", "bogus"],
    ["check", "ack", "bogus", "x", "--by", "me", "--reason", "r"],
    ["check", "ack", "reject", "nope", "--by", "me", "--reason", "r"],
    ["replay", "dead-letters", "show", "nope"],
    ["replay", "dead-letters", "retry", "nope"],
    ["replay", "dead-letters", "skip", "nope", "--reason", "r"],
    ["gate", "approve", "sideways", "--by", "me", "--reason", "r"],
    ["gate", "evaluate", "sideways"],
    ["gate", "acknowledge", "no-such-finding", "--by", "me", "--reason", "r"],
    ["schema", "plan", "--dialect", "oracle"],
    ["schema", "apply", "--phase", "someday"],
    ["audit", "--format", "xml"],
    ["workload", "run", "--write-to", "mars", "--duration", "1"],
    ["reverse", "dead-letters", "skip", "nope", "--reason", "r"],
    ["check", "--report-dir", "/proc/no-such-folder", "--suite", "freshness"],
    ["check", "--report-dir", "/dev/null", "--suite", "freshness"],
    ["diff", "--report-dir", "/dev/null/x"],
    ["config", "check", "--config", "/nonexistent/reconcile.toml"],
    ["config", "check", "--config", "/"],
    ["local", "url", "sideways"],
    ["local", "guards", "maybe"],
]


@pytest.mark.parametrize("args", GARBAGE, ids=[" ".join(a) for a in GARBAGE])
def test_garbage_arguments_exit_2_without_a_traceback(ledger_env, args):
    code, output = _outcome(args, ledger_env)
    assert "Traceback" not in output, output
    assert code == 2, output


def test_check_report_dir_relative_to_the_working_directory(ledger_env, tmp_path):
    """`check --report-dir relative/path` writes the Data Docs under the working directory (GX wants it absolute)."""
    code, output = _outcome(["check", "--report-dir", "relative/path", "--suite", "freshness", "--side", "target"],
                            ledger_env)
    assert code in (0, 1) and "Traceback" not in output, output
    index = tmp_path / "relative/path/data_docs/index.html"
    assert index.is_file() and f"data docs: {index}" in output


def test_a_report_dir_that_is_a_file_is_one_sentence(ledger_env, tmp_path):
    (tmp_path / "afile").write_text("x")
    config = tmp_path / "reconcile.toml"
    config.write_text('[diff]\nreport_dir = "afile"\n')
    code, output = _outcome(["diff", "--config", str(config)], ledger_env)
    assert code == 2 and "Traceback" not in output
    assert "cannot be created (Not a directory)" in output
