"""The local stack: real servers that start fast, stay up, and stop only when told."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from reconcile.errors import LocalStackError
from reconcile.local import stack


def test_up_is_idempotent_when_running(local_stack):
    before = stack.status(local_stack["data_dir"])
    statuses = stack.up(local_stack["data_dir"])
    assert all(s.running for s in statuses.values())
    # nothing was started again: the same server processes on the same ports
    assert {r: (s.pid, s.port) for r, s in statuses.items()} == {r: (s.pid, s.port) for r, s in before.items()}
    assert statuses["source"].port != statuses["target"].port


def test_source_is_aurora_like_and_target_dsql_like(local_stack):
    with psycopg.connect(local_stack["source"]) as conn:
        show = lambda n: conn.execute(f"SHOW {n}").fetchone()[0]  # noqa: E731
        assert show("wal_level") == "logical"
        assert int(show("max_replication_slots")) >= 10
        assert int(show("max_wal_senders")) >= 10
        assert show("track_commit_timestamp") == "on"
        assert conn.execute("SELECT datcollate FROM pg_database WHERE datname = current_database()"
                            ).fetchone()[0].lower().replace("-", "") == "en_us.utf8"
        # collation differences are real: en_US sorts case-insensitively first, C by byte
        en = [r[0] for r in conn.execute("SELECT x FROM unnest(ARRAY['a','B','ä','Z']) x ORDER BY x")]
        c = [r[0] for r in conn.execute("SELECT x FROM unnest(ARRAY['a','B','ä','Z']) x ORDER BY x COLLATE \"C\"")]
        assert en == ["a", "ä", "B", "Z"] and c == ["B", "Z", "a", "ä"]
    with psycopg.connect(local_stack["target"]) as conn:
        show = lambda n: conn.execute(f"SHOW {n}").fetchone()[0]  # noqa: E731
        assert show("default_transaction_isolation") == "repeatable read"
        assert show("timezone") == "UTC"
        assert show("server_encoding") == "UTF8"
        assert conn.execute("SELECT datcollate FROM pg_database WHERE datname = current_database()").fetchone()[0] == "C"


def test_servers_outlive_the_command_and_down_stops_only_ours(tmp_path):
    data_dir = tmp_path / "own"
    # start from a separate process that exits
    subprocess.run([sys.executable, "-c", f"from reconcile.local import stack; stack.up({str(data_dir)!r})"],
                   check=True, timeout=120)
    st = stack.status(data_dir)
    assert all(s.running for s in st.values())
    with psycopg.connect(stack.url("target", data_dir)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    other = stack.status(tmp_path / "elsewhere")
    assert not any(s.running for s in other.values())
    assert stack.down(data_dir) == {"source": True, "target": True}
    assert not any(s.running for s in stack.status(data_dir).values())
    assert stack.down(data_dir) == {"source": False, "target": False}
    # restart keeps the data and the ports
    ports = {r: s.port for r, s in st.items()}
    again = stack.up(data_dir)
    assert {r: s.port for r, s in again.items()} == ports
    stack.down(data_dir)


def test_url_of_missing_stack_says_what_to_do(tmp_path):
    with pytest.raises(LocalStackError, match="reconcile local up"):
        stack.url("target", tmp_path / "nothing")
    with pytest.raises(LocalStackError, match="source, target"):
        stack.url("middle", tmp_path)


def test_cli_local_commands(local_stack):
    from typer.testing import CliRunner

    from reconcile.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["local", "url", "target", "--data-dir", local_stack["data_dir"]])
    assert res.exit_code == 0 and res.stdout.strip() == local_stack["target"]
    res = runner.invoke(app, ["local", "status", "--data-dir", local_stack["data_dir"]])
    assert res.exit_code == 0 and "running" in res.stdout
    res = runner.invoke(app, ["local", "up", "--help"])
    assert res.exit_code == 0 and "--data-dir" in res.stdout
