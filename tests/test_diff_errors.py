"""A diff that cannot compare everything never says green: a column the target lost is an error
(exit 2 from the CLI), and a driver error is stored redacted."""

from __future__ import annotations

import json

import psycopg
from typer.testing import CliRunner

from reconcile.cli.diff_cmd import app as diff_app
from reconcile.config import Config, PostgresEndpoint, TableSpec
from reconcile.diff import run_diff
from reconcile.diff.settings import DiffSettings

SETTINGS = DiffSettings(segment_rows=1000, bucket_rows=100, workers=1, lag_wait_seconds=1, balances=False)
ITEMS = TableSpec("app.items", ("id",))


def _sql(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt)


def test_a_column_missing_on_the_target_is_an_error_never_green(source_db, target_db, tmp_path):
    _sql(source_db, "CREATE SCHEMA app", "CREATE TABLE app.items (id bigint PRIMARY KEY, amount numeric(12,2), memo text)",
         "INSERT INTO app.items SELECT g, g, 'm' || g FROM generate_series(1, 200) g")
    _sql(target_db, "CREATE SCHEMA app", "CREATE TABLE app.items (id bigint PRIMARY KEY, amount numeric(12,2))",
         "INSERT INTO app.items SELECT g, g FROM generate_series(1, 200) g")
    cfg = Config(source=PostgresEndpoint("source", source_db), target=PostgresEndpoint("target", target_db),
                 tables=(ITEMS,), stages={"diff": SETTINGS})
    result = run_diff(cfg, report_dir=tmp_path)
    summary = result.to_dict()
    assert result.verdict == "red" and summary["status"] == "error"
    assert "memo" in summary["errors"]["app.items"] and "not on the target" in summary["errors"]["app.items"]
    assert summary["tables"]["app.items"]["status"] == "error"

    path = tmp_path / "reconcile.toml"
    path.write_text(f'[source]\nkind = "postgres"\nconninfo = "{source_db}"\n[target]\nkind = "postgres"\n'
                    f'conninfo = "{target_db}"\n[[tables]]\nname = "app.items"\nkey = ["id"]\n'
                    f'[diff]\nbalances = false\nreport_dir = "{tmp_path / "reports"}"\nlag_wait_seconds = 1.0\n')
    out = CliRunner().invoke(diff_app, ["--config", str(path), "--json"])
    assert out.exit_code == 2, out.output
    assert json.loads(out.output)["status"] == "error"


def test_config_safe_message_removes_the_password(monkeypatch):
    monkeypatch.setenv("LEDGER_PW", "s3cr3t-Pa55")
    cfg = Config(source=PostgresEndpoint("source", "host=db dbname=x user=u", password_env="LEDGER_PW"),
                 target=PostgresEndpoint("target", "host=t dbname=y user=u"), tables=(ITEMS,))
    msg = cfg.safe_message(RuntimeError("failed for postgresql://u:s3cr3t-Pa55@db/x: password s3cr3t-Pa55 wrong"))
    assert "s3cr3t-Pa55" not in msg and msg.startswith("RuntimeError: ")
