"""reconcile.config: loading, validation, precedence, masking; and `reconcile config check`."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from reconcile.config import (
    DEMO_TABLES,
    SECRET_FIX,
    BudgetSettings,
    DsqlEndpoint,
    InvalidSetting,
    LocalEndpoint,
    PostgresEndpoint,
    TableSpec,
    load_config,
    mask_conninfo,
    redact,
)
from reconcile.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

VALID = """
[source]
kind = "postgres"
conninfo = "host=${LEDGER_HOST} dbname=ledger user=reader"
password_env = "LEDGER_PW"

[target]
kind = "dsql"
endpoint = "abc123.dsql.eu-west-1.on.aws"
profile = "migration"
token_expires_in = 600

[local]
data_dir = "state/local"

[budget]
fraction = 0.25
max_rows = 2000
count_index_tuples = true

[retry]
max_attempts = 3
base_delay = 0.1
max_delay = 2

[[tables]]
name = "bank.accounts"
key = ["id"]
role = "accounts"
balance_column = "bal"
currency_column = ""
account_column = "id"

[[tables]]
name = "bank.audit"
key = ["day", "seq"]
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No RECONCILE__* variables leak in, and ./reconcile.toml is looked up in an empty folder."""
    for var in list(os.environ):
        if var.startswith("RECONCILE__") or var in ("RECONCILE_CONFIG", "RECONCILE_LOCAL_DIR"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "reconcile.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path | None, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=env)
    return str(info.value)


# -- defaults and files ------------------------------------------------------------------------


def test_defaults_without_file(tmp_path):
    cfg = load_config(None, environ={})
    assert cfg.path is None
    assert isinstance(cfg.source, LocalEndpoint) and cfg.source.side == "source"
    assert isinstance(cfg.target, LocalEndpoint) and cfg.target.side == "target"
    assert cfg.local.data_dir == tmp_path / ".reconcile/local"
    assert cfg.source.data_dir == cfg.local.data_dir
    assert cfg.tables == DEMO_TABLES
    assert cfg.budget == BudgetSettings()
    assert (cfg.retry.max_attempts, cfg.retry.base_delay, cfg.retry.max_delay) == (8, 0.05, 5.0)


def test_demo_ledger_tables():
    accounts, journal, entries = load_config(None, environ={}).tables
    assert (accounts.name, accounts.key, accounts.role) == ("ledger.accounts", ("account_id",), "accounts")
    assert (accounts.balance_column, accounts.currency_column, accounts.account_column) == (
        "balance", "currency", "account_id")
    assert accounts.amount_column is None and accounts.transaction_column is None
    assert (journal.name, journal.key, journal.role, journal.transaction_column) == (
        "ledger.journal", ("txn_id",), "transactions", "txn_id")
    assert (entries.name, entries.key, entries.role) == ("ledger.entries", ("entry_id",), "entries")
    assert (entries.amount_column, entries.currency_column, entries.account_column,
            entries.transaction_column) == ("amount", "currency", "account_id", "txn_id")


def test_optional_roles_are_unset_by_default():
    """No [checks]/[diff] default names a column of the demo ledger: a stranger's ledger never breaks silently."""
    cfg = load_config(None, environ={})
    assert (cfg.checks.idempotency_column, cfg.checks.negative_balance_exempt_column) == ("", "")
    assert cfg.checks.negative_balance_exempt_values == () and cfg.checks.allow_negative_balances is None
    assert (cfg.diff.date_column, cfg.diff.currency) == (None, None)


def test_single_currency_ledger_switches_currency_off(tmp_path):
    body = ('[diff]\ncurrency = "EUR"\ndate_column = ""\n[checks]\nallow_negative_balances = false\n'
            '[[tables]]\nname = "gl.acct"\nkey = ["code"]\nrole = "accounts"\naccount_column = "code"\n'
            'balance_column = ""\ncurrency_column = ""\n'
            '[[tables]]\nname = "gl.lines"\nkey = ["doc", "line"]\nrole = "entries"\naccount_column = "acct"\n'
            'amount_column = "amt"\ncurrency_column = ""\ntransaction_column = "doc"\n')
    cfg = load_config(write(tmp_path, body), environ={})
    acct, lines = cfg.tables
    assert [acct.column(c) for c in ("balance_column", "currency_column", "account_column")] == [None, None, "code"]
    assert lines.column("currency_column") is None and lines.column("transaction_column") == "doc"
    assert (cfg.diff.currency, cfg.diff.date_column, cfg.checks.allow_negative_balances) == ("EUR", None, False)
    assert cfg.describe()["tables"][0]["currency_column"] == ""


def test_finds_reconcile_toml_in_cwd(tmp_path):
    write(tmp_path, '[budget]\nmax_rows = 100\n')
    cfg = load_config(None, environ={})
    assert cfg.budget.max_rows == 100
    assert cfg.path == (tmp_path / "reconcile.toml").resolve()


def test_valid_file_round_trip(tmp_path):
    sub = tmp_path / "conf"
    sub.mkdir()
    path = write(sub, VALID)
    cfg = load_config(path, environ={"LEDGER_HOST": "db.internal"})

    assert isinstance(cfg.source, PostgresEndpoint)
    assert cfg.source.conninfo == "host=db.internal dbname=ledger user=reader"
    assert cfg.source.password_env == "LEDGER_PW"
    assert isinstance(cfg.target, DsqlEndpoint)
    assert (cfg.target.endpoint, cfg.target.region, cfg.target.user, cfg.target.profile) == (
        "abc123.dsql.eu-west-1.on.aws", "eu-west-1", "admin", "migration")
    assert cfg.target.token_expires_in == 600 and cfg.target.sslrootcert is None
    assert cfg.target.cluster_id == "abc123"
    assert cfg.local.data_dir == sub.resolve() / "state/local"  # relative to the file's folder
    assert (cfg.budget.fraction, cfg.budget.max_rows, cfg.budget.max_bytes) == (0.25, 2000, 10 * 1024 * 1024)
    assert cfg.budget.count_index_tuples is True and cfg.budget.txn_seconds == 300
    assert cfg.budget.rows_per_txn == 500
    assert (cfg.retry.max_attempts, cfg.retry.base_delay, cfg.retry.max_delay) == (3, 0.1, 2.0)
    accounts, audit = cfg.tables
    assert (accounts.balance_column, accounts.currency_column, accounts.account_column) == ("bal", "", "id")
    assert accounts.column("currency_column") is None and accounts.column("balance_column") == "bal"
    assert audit.key == ("day", "seq") and audit.role is None and (audit.schema, audit.table) == ("bank", "audit")
    assert cfg.table("bank.audit") is audit
    assert cfg.tables_with_role("accounts") == (accounts,)

    described = cfg.describe()
    assert json.loads(json.dumps(described)) == described  # plain data
    assert described["target"]["sslmode"] == "verify-full"
    assert described["target"]["sslrootcert"] == "system"
    assert described["tables"][1] == {"name": "bank.audit", "key": ["day", "seq"], "role": None}


def test_example_file_is_valid():
    cfg = load_config(REPO / "reconcile.example.toml", environ={"LEDGER_PGHOST": "db.example.com"})
    assert cfg.source.kind == "postgres" and cfg.target.kind == "dsql"
    assert cfg.target.region == "us-east-1"
    assert [t.name for t in cfg.tables] == [t.name for t in DEMO_TABLES]


def test_missing_explicit_file(tmp_path):
    message = error_of(tmp_path / "nope.toml")
    assert "nope.toml does not exist" in message and "--config" in message


def test_invalid_toml(tmp_path):
    message = error_of(write(tmp_path, "[budget\nmax_rows = 1\n"))
    assert "is not valid TOML" in message and "line 1" in message


# -- unknown keys, types, values ---------------------------------------------------------------


def test_unknown_key_names_key_and_valid_keys(tmp_path):
    path = write(tmp_path, '[target]\nkind = "dsql"\nendpoint = "abc.dsql.us-east-1.on.aws"\nhots = "x"\n')
    message = error_of(path)
    assert message.startswith(f"unknown key 'target.hots' in {path}; valid keys for kind 'dsql': kind, endpoint,")
    assert message.endswith("fix the spelling or remove it")


def test_unknown_section_and_table_key(tmp_path):
    message = error_of(write(tmp_path, "[budgett]\nmax_rows = 1\n"))
    assert "unknown key 'budgett'" in message and "did you mean 'budget'?" in message
    message = error_of(write(tmp_path, '[[tables]]\nname = "a.b"\nkeys = ["id"]\n'))
    assert "unknown key 'tables[0].keys'" in message and "name, key, role" in message


def test_key_of_another_kind_is_unknown(tmp_path):
    message = error_of(write(tmp_path, '[source]\nkind = "local"\nconninfo = "host=x"\n'))
    assert "unknown key 'source.conninfo'" in message and "valid keys for kind 'local': kind" in message


@pytest.mark.parametrize(("body", "expected"), [
    ('[budget]\nmax_rows = "many"\n', "budget.max_rows in {path} must be an integer, got 'many' (a string); "
                                      "write a whole number without quotes, e.g. max_rows = 3000"),
    ("[budget]\nmax_rows = true\n", "budget.max_rows in {path} must be an integer, got True (a boolean)"),
    ("[budget]\nfraction = 1.5\n", "budget.fraction in {path} must be greater than 0 and at most 1, got 1.5"),
    ('[budget]\ncount_index_tuples = "yes"\n', "budget.count_index_tuples in {path} must be true or false"),
    ("[retry]\nbase_delay = 1\nmax_delay = 0.5\n", "retry.max_delay in {path} (0.5) is smaller than base_delay"),
    ("[retry]\nmax_attempts = 0\n", "retry.max_attempts in {path} must be at least 1"),
    ('[source]\nkind = "mysql"\n', "source.kind in {path} must be one of local, postgres, dsql, got 'mysql'"),
    ('[source]\nkind = "postgres"\n', "source.conninfo is missing for kind 'postgres'; looked for environment "
                                      "variable RECONCILE__SOURCE__CONNINFO and conninfo under [source] in {path}"),
    ('[target]\nkind = "dsql"\nendpoint = "db.example.com"\n',
     "target.endpoint in {path} must look like <cluster-id>.dsql.<region>.on.aws, got 'db.example.com'"),
    ('[target]\nkind = "dsql"\nendpoint = "abc.dsql.us-east-1.on.aws"\ntoken_expires_in = "900"\n',
     "target.token_expires_in in {path} must be an integer"),
    ('[[tables]]\nname = "accounts"\nkey = ["id"]\n', "tables[0].name in {path} must be schema.table"),
    ('[[tables]]\nname = "a.b"\nkey = "id"\n', "tables[0].key in {path} must be a list of strings, got 'id'"),
    ('[[tables]]\nname = "a.b"\nkey = []\n', "tables[0].key in {path} must list at least one column"),
    ('[[tables]]\nname = "a.b"\nkey = ["id"]\nrole = "ledger"\n',
     "tables[0].role in {path} must be one of accounts, transactions, entries"),
    ('[[tables]]\nname = "a.b"\nkey = ["id"]\nrole = "transactions"\ntransaction_column = "t"\namount_column = "amt"\n',
     "tables[0].amount_column in {path} only applies to role entries"),
    ('[[tables]]\nname = "a.b"\nkey = ["id"]\nrole = "transactions"\n',
     "tables[0].transaction_column in {path} is missing (role transactions needs the journal transaction id column"),
    ('[[tables]]\nname = "a.b"\nkey = ["id"]\nrole = "entries"\naccount_column = "a"\namount_column = "x"\n',
     "tables[0] in {path} lacks currency_column, transaction_column (role entries needs each; no column name is "
     'assumed); name them, e.g. currency_column = "currency", transaction_column = "txn_id" (or currency_column = ""'),
    ('[[tables]]\nname = "a.b"\nkey = ["id"]\nrole = "entries"\naccount_column = "a"\namount_column = ""\n'
     'currency_column = ""\ntransaction_column = ""\n', "tables[0].amount_column in {path} is ''; name the column"),
    ('[diff]\ncurrency = " EUR"\n', "diff.currency in {path} must be a currency code"),
    ('[checks]\nnegative_balance_exempt_values = ["equity"]\n',
     "checks.negative_balance_exempt_values in {path} is set but negative_balance_exempt_column is not"),
    ('[[tables]]\nname = "a.b"\n', "tables[0].key is missing in {path}"),
    ("tables = []\n", "tables in {path} is empty"),
    ('budget = 3\n', "budget in {path} must be a table"),
])
def test_bad_values_name_the_key_and_the_fix(tmp_path, body, expected):
    path = write(tmp_path, body)
    message = error_of(path)
    assert expected.format(path=path) in message
    assert "\n" not in message and ";" in message  # one sentence with the fix after the semicolon


def test_duplicate_tables(tmp_path):
    body = '[[tables]]\nname = "a.b"\nkey = ["id"]\n[[tables]]\nname = "a.b"\nkey = ["id"]\n'
    assert "tables[1].name in" in error_of(write(tmp_path, body))
    assert "repeats tables[0]" in error_of(write(tmp_path, body))


def test_source_cannot_be_dsql(tmp_path):
    message = error_of(write(tmp_path, '[source]\nkind = "dsql"\nendpoint = "abc.dsql.us-east-1.on.aws"\n'))
    assert message.startswith("source.kind in") and "cannot be 'dsql'" in message
    with pytest.raises(ConfigError, match="cannot be 'dsql'"):
        DsqlEndpoint("source", "abc.dsql.us-east-1.on.aws")


def test_validated_at_construction():
    with pytest.raises(InvalidSetting, match=r"^budget\.fraction must be greater than 0"):
        BudgetSettings(fraction=0)
    with pytest.raises(InvalidSetting, match=r"^tables\.key must list at least one column"):
        TableSpec("a.b", ())
    err = InvalidSetting("budget", "max_rows", "must be positive, got 0", "use 3000", "in x.toml")
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


# -- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "key"), [
    ('[source]\nkind = "postgres"\nconninfo = "host=db"\npassword = "hunter2"\n', "source.password"),
    ('[target]\nkind = "dsql"\nendpoint = "abc.dsql.us-east-1.on.aws"\ntoken = "hunter2"\n', "target.token"),
    ('[target]\naws_secret_access_key = "hunter2"\n', "target.aws_secret_access_key"),
    ('[[tables]]\nname = "a.b"\nkey = ["id"]\napi_key = "hunter2"\n', "tables[0].api_key"),
])
def test_secret_keys_in_file(tmp_path, body, key):
    message = error_of(write(tmp_path, body))
    assert message.startswith(f"'{key}' in ") and message.endswith(SECRET_FIX)
    assert "hunter2" not in message


@pytest.mark.parametrize("conninfo", ["postgresql://app:hunter2@db/ledger", "host=db password=hunter2",
                                      "postgresql://app@db/ledger?password=hunter2"])
def test_password_in_file_conninfo(tmp_path, conninfo):
    message = error_of(write(tmp_path, f'[source]\nkind = "postgres"\nconninfo = "{conninfo}"\n'))
    assert "source.conninfo in" in message and "contains a password" in message
    assert SECRET_FIX in message and "hunter2" not in message


def test_invalid_conninfo_error_hides_password():
    # libpq quotes the whole URI in this error, password included
    with pytest.raises(InvalidSetting) as info:
        PostgresEndpoint("source", "postgresql://app:hunter2@[::1/ledger")
    assert "is not a valid libpq" in str(info.value) and "hunter2" not in str(info.value)


def test_describe_masks_secrets(tmp_path):
    for conninfo in ("postgresql://app:hunter2@db/ledger", "host=db password='hunter2' dbname=ledger"):
        cfg = load_config(None, environ={"RECONCILE__SOURCE__KIND": "postgres",
                                         "RECONCILE__SOURCE__CONNINFO": conninfo})
        assert cfg.source.conninfo == conninfo  # the real value stays usable
        text = json.dumps(cfg.describe())
        assert "hunter2" not in text and "***" in text
    assert load_config(None, environ={"RECONCILE__SOURCE__KIND": "postgres",
                                      "RECONCILE__SOURCE__CONNINFO": "postgresql://app:hunter2@db/x"}
                       ).describe()["source"]["conninfo"] == "postgresql://app:***@db/x"


def test_describe_password_env(monkeypatch):
    monkeypatch.setenv("LEDGER_PW", "hunter2")
    cfg = load_config(None, environ={"RECONCILE__SOURCE__KIND": "postgres",
                                     "RECONCILE__SOURCE__CONNINFO": "host=db",
                                     "RECONCILE__SOURCE__PASSWORD_ENV": "LEDGER_PW"})
    assert cfg.describe()["source"]["password"] == "*** (from $LEDGER_PW)"
    assert "hunter2" not in json.dumps(cfg.describe())
    assert cfg.source.password() == "hunter2"
    monkeypatch.delenv("LEDGER_PW")
    with pytest.raises(ConfigError, match="source.password_env names LEDGER_PW, which is not set; export LEDGER_PW"):
        cfg.source.password()


def test_redact_and_mask():
    assert mask_conninfo("postgresql://u:p%40ss@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert mask_conninfo("host=h password = 'a \\' b' user=u") == "host=h password = *** user=u"
    assert mask_conninfo("postgresql://u@h:5432/d?sslmode=require") == "postgresql://u@h:5432/d?sslmode=require"
    token = "h/?Action=DbConnectAdmin&X-Amz-Credential=AKIA%2Fx&X-Amz-Signature=abc123"
    assert "abc123" not in redact(f"failed: {token}") and "AKIA" not in redact(f"failed: {token}")
    assert redact("bad p@ss and p%40ss", ["p@ss"]) == "bad *** and ***"


# -- ${VAR} and environment overrides ----------------------------------------------------------


def test_missing_var_reference_is_an_error(tmp_path):
    path = write(tmp_path, '[source]\nkind = "postgres"\nconninfo = "host=${LEDGER_HOST}"\n')
    message = error_of(path)
    assert message == (f"source.conninfo in {path} references ${{LEDGER_HOST}}, which is not set; "
                       "export LEDGER_HOST or edit the value")


def test_var_reference_expanded(tmp_path):
    path = write(tmp_path, '[local]\ndata_dir = "${BASE}/local-$${x}"\n[[tables]]\nname = "${S}.t"\nkey = ["${K}"]\n')
    cfg = load_config(path, environ={"BASE": "/srv", "S": "ledger", "K": "id"})
    assert cfg.local.data_dir == Path("/srv/local-${x}")
    assert cfg.tables[0].name == "ledger.t" and cfg.tables[0].key == ("id",)


def test_env_overrides_file_over_defaults(tmp_path):
    path = write(tmp_path, '[target]\nkind = "dsql"\nendpoint = "abc.dsql.us-east-1.on.aws"\n'
                           '[budget]\nmax_rows = 1000\nfraction = 0.4\n')
    cfg = load_config(path, environ={"RECONCILE__TARGET__ENDPOINT": "xyz.dsql.eu-central-1.on.aws",
                                     "RECONCILE__BUDGET__MAX_ROWS": "2500",
                                     "RECONCILE__BUDGET__COUNT_INDEX_TUPLES": "true",
                                     "RECONCILE__RETRY__BASE_DELAY": "0.2"})
    assert cfg.target.endpoint == "xyz.dsql.eu-central-1.on.aws" and cfg.target.region == "eu-central-1"
    assert cfg.budget.max_rows == 2500          # env beats file
    assert cfg.budget.fraction == 0.4           # file beats default
    assert cfg.budget.max_bytes == 10 * 1024 * 1024  # default
    assert cfg.budget.count_index_tuples is True and cfg.retry.base_delay == 0.2
    assert cfg.env_overrides == ("RECONCILE__BUDGET__COUNT_INDEX_TUPLES", "RECONCILE__BUDGET__MAX_ROWS",
                                 "RECONCILE__RETRY__BASE_DELAY", "RECONCILE__TARGET__ENDPOINT")


def test_local_dir_shared_with_local_command(tmp_path):
    path = write(tmp_path, '[local]\ndata_dir = "from-file"\n')
    cfg = load_config(path, environ={"RECONCILE_LOCAL_DIR": "/srv/stack"})
    assert cfg.local.data_dir == cfg.target.data_dir == Path("/srv/stack")
    assert cfg.env_overrides == ("RECONCILE_LOCAL_DIR",)
    cfg = load_config(path, environ={"RECONCILE_LOCAL_DIR": "/srv/stack",
                                     "RECONCILE__LOCAL__DATA_DIR": "/srv/other"})
    assert cfg.local.data_dir == Path("/srv/other")


def test_env_alone_switches_kind():
    cfg = load_config(None, environ={"RECONCILE__TARGET__KIND": "dsql",
                                     "RECONCILE__TARGET__ENDPOINT": "abc.dsql.ap-south-1.on.aws",
                                     "RECONCILE__TARGET__USER": "migrator"})
    assert isinstance(cfg.target, DsqlEndpoint) and cfg.target.user == "migrator"


def test_env_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("RECONCILE__BUDGET__MAX_ROWS", "42")
    assert load_config(None).budget.max_rows == 42


@pytest.mark.parametrize(("env", "expected"), [
    ({"RECONCILE__BUDGET__MAX_ROWS": "lots"},
     "budget.max_rows from RECONCILE__BUDGET__MAX_ROWS must be an integer, got 'lots'; "
     "export it as e.g. RECONCILE__BUDGET__MAX_ROWS=3000"),
    ({"RECONCILE__BUDGET__FRACTION": "2"}, "budget.fraction from RECONCILE__BUDGET__FRACTION must be greater"),
    ({"RECONCILE__TARGET__HOTS": "x"}, "unknown key 'target.hots' from environment variable RECONCILE__TARGET__HOTS"),
    ({"RECONCILE__BUDGETT__MAX_ROWS": "1"}, "names unknown section 'budgett'"),
    ({"RECONCILE__TARGET": "x"}, "RECONCILE__TARGET is not a valid setting name"),
    ({"RECONCILE__TABLES__NAME": "a.b"}, "cannot set tables"),
    ({"RECONCILE__SOURCE__PASSWORD": "hunter2"}, "looks like a secret"),
    ({"RECONCILE__SOURCE__KIND": "dsql"}, "source.kind from RECONCILE__SOURCE__KIND cannot be 'dsql'"),
])
def test_bad_env_overrides(env, expected):
    message = error_of(None, **env)
    assert expected in message and "hunter2" not in message


# -- DSQL endpoint -----------------------------------------------------------------------------


def test_dsql_region_derived_from_endpoint():
    ep = DsqlEndpoint("target", "Abc123.DSQL.us-west-2.on.aws")
    assert (ep.endpoint, ep.region, ep.user, ep.token_expires_in, ep.port) == (
        "abc123.dsql.us-west-2.on.aws", "us-west-2", "admin", 900, 5432)
    assert DsqlEndpoint("target", "abc.dsql-gamma.us-east-1.on.aws").region == "us-east-1"
    assert DsqlEndpoint("target", "abc.dsql.us-east-1.on.aws", region="us-east-1").region == "us-east-1"


def test_dsql_region_mismatch(tmp_path):
    path = write(tmp_path, '[target]\nkind = "dsql"\nendpoint = "abc.dsql.us-east-1.on.aws"\nregion = "eu-west-1"\n')
    assert "target.region in" in error_of(path) and "the endpoint is in us-east-1" in error_of(path)


def test_dsql_sslrootcert_relative_to_file(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("x")
    path = write(tmp_path, '[target]\nkind = "dsql"\nendpoint = "abc.dsql.us-east-1.on.aws"\n'
                           'sslrootcert = "certs/ca.pem"\n')
    assert load_config(path, environ={}).target.sslrootcert == str(tmp_path.resolve() / "certs/ca.pem")
    (tmp_path / "certs" / "ca.pem").unlink()
    assert "which does not exist" in error_of(path)


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_check_ok(tmp_path):
    from typer.testing import CliRunner

    from reconcile.cli import app

    path = write(tmp_path, VALID)
    env = {"LEDGER_HOST": "db.internal", "LEDGER_PW": "hunter2"}
    # --offline: the settings alone (this source and target do not exist; test_preflight checks the databases)
    result = CliRunner().invoke(app, ["config", "check", "--config", str(path), "--offline"], env=env)
    assert result.exit_code == 0, result.output
    assert "target.endpoint = abc123.dsql.eu-west-1.on.aws" in result.stdout
    assert "source.password = *** (from $LEDGER_PW)" in result.stdout
    assert "hunter2" not in result.output

    result = CliRunner().invoke(app, ["config", "check", "--config", str(path), "--json", "--offline"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["budget"]["rows_per_txn"] == 500


def test_cli_check_raises_config_error(tmp_path):
    from typer.testing import CliRunner

    from reconcile.cli import app

    path = write(tmp_path, "[budget]\nmax_rows = 0\n")
    result = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception).startswith(f"budget.max_rows in {path} must be at least 1, got 0")


def test_cli_main_exit_code_and_message(tmp_path):
    write(tmp_path, "[target]\nhots = \"x\"\n", name="bad.toml")
    command = [str(Path(sys.executable).with_name("reconcile"))]  # the venv's console script
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILE")}
    proc = subprocess.run([*command, "config", "check", "--config", "bad.toml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: unknown key 'target.hots' in bad.toml; valid keys for kind 'local': kind — "
        "fix the spelling or remove it"]
