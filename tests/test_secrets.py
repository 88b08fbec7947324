"""No secret in any output: a planted source password and a token-like target password, the demo pipeline
run end to end, then every output scanned for them.

The source password is real: the source server gets a role that may only log in with it (SCRAM, pg_hba),
so the demo could not have run without using it. The target "password" is shaped like an AWS session token
(the local target trusts every login, so it is never asked for, but it is in the config and in every
connection's parameters). Outputs scanned: every log record (DEBUG and up, formatted with its traceback),
everything written to stdout and stderr, every file the demo wrote (config, reports, check results), and
every row of every control table on the target, as text.
"""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from reconcile.local import stack
from tests.airflow_support import airflow_env, dagbag  # noqa: F401 (fixtures)
from tests.test_dags_pipeline import pipeline_config  # noqa: F401 (a fixture)
from tests.waiting import wait_for


def forms(secret: str) -> set[str]:
    """The ways a secret could be written out: as is, URL-encoded, libpq-quoted."""
    return {secret, quote(secret, safe=""), quote(secret), secret.replace("\\", "\\\\").replace("'", "\\'")}


def leaks(text: str, secrets: list[str]) -> list[str]:
    return sorted({s for secret in secrets for s in forms(secret) if s in text})


class Everything(logging.Handler):
    """Every record, formatted with its exception and stack, in memory."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def password_role(local_stack):
    """A superuser of the source server that must log in with its password (pg_hba: scram-sha-256)."""
    name, password = f"rc_pw_{uuid.uuid4().hex[:8]}", f"Sr{uuid.uuid4().hex}/+=Pw"
    admin = local_stack["source"]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(sql.Identifier(name),
                                                                                 sql.Literal(password)))
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
    original = hba.read_text()
    rules = "".join(f"{kind} all {name} {addr} scram-sha-256\n"
                    for kind, addr in (("local", ""), ("host", "127.0.0.1/32"), ("host", "::1/128")))
    hba.write_text(rules + original)
    url = psycopg.conninfo.make_conninfo(admin, user=name)

    def refused_without_password() -> bool:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        try:
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.OperationalError as exc:
            return "password" in str(exc)
        return False

    try:
        wait_for(refused_without_password, "the server to require the role's password")
        yield url, password
    finally:
        hba.write_text(original)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
            databases = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datallowconn")]
        for db in databases:  # what it made (the demo's ledger, a publication) stays, owned by the admin
            with psycopg.connect(psycopg.conninfo.make_conninfo(admin, dbname=db), autocommit=True) as conn:
                conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def control_tables_as_text(target_url: str) -> str:
    with psycopg.connect(target_url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'reconcile' ORDER BY 1")]
        assert {"runs", "chunks", "replay_state", "diff_results", "audit_events"} <= set(tables), tables
        return "\n".join(f"{t}: {row[0]}" for t in tables for row in conn.execute(
            sql.SQL("SELECT t::text FROM reconcile.{} AS t").format(sql.Identifier(t))))


def test_the_demo_pipeline_writes_no_secret_anywhere(local_stack, password_role, monkeypatch, capfd):
    from reconcile.demo import run as demo

    source_url, password = password_role
    token = f"IQoJb3JpZ2luX2VjE{uuid.uuid4().hex}/AAAA+BBBB=="
    monkeypatch.setenv("RC_TEST_SOURCE_PASSWORD", password)
    monkeypatch.setenv("RC_TEST_TARGET_TOKEN", token)
    data_dir = Path(local_stack["data_dir"])
    target_url = stack.url("target", data_dir)
    plain = demo.demo_stages

    def stages(ws):  # the demo's own settings, with the planted credentials as the endpoints
        return {"source": {"kind": "postgres", "conninfo": source_url, "password_env": "RC_TEST_SOURCE_PASSWORD"},
                "target": {"kind": "postgres", "conninfo": target_url, "password_env": "RC_TEST_TARGET_TOKEN"},
                **plain(ws)}

    monkeypatch.setattr(demo, "demo_stages", stages)
    everything = Everything()
    # Every logger at DEBUG while the demo runs (a CLI run earlier in the session may have raised some levels).
    loggers = [logging.getLogger(), logging.getLogger("reconcile"), logging.getLogger("psycopg"),
               *(lg for name, lg in logging.root.manager.loggerDict.items()
                 if isinstance(lg, logging.Logger) and name.startswith(("reconcile.", "psycopg.")))]
    levels = [lg.level for lg in loggers]
    loggers[0].addHandler(everything)
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    echoed: list[str] = []
    try:
        result = demo.run_demo(data_dir=data_dir, transactions=300, accounts=40, tps=20, airflow=False,
                               echo=echoed.append, live=False)
    finally:
        loggers[0].removeHandler(everything)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    assert result.verdict == "green", echoed
    out = capfd.readouterr()

    secrets = [password, token]
    assert leaks(f"x{password}x {quote(token, safe='')}", secrets)  # the scanner finds what it looks for
    demo_root = data_dir / "demo"
    files = [p for p in demo_root.rglob("*") if p.is_file()]
    assert any(p.name == "summary.json" for p in files) and (demo_root / "reconcile.toml").is_file()
    outputs = {
        "log records": "\n".join(everything.lines),
        "stdout": out.out + "\n".join(echoed),
        "stderr": out.err,
        "control tables": control_tables_as_text(target_url),
        **{f"file {p.relative_to(demo_root)}": p.read_bytes().decode("utf-8", "replace") for p in files},
    }
    logged = outputs["log records"]  # the logs were captured, DEBUG included
    assert "DEBUG reconcile.replay" in logged and "INFO reconcile.backfill" in logged, logged[-2000:]
    found = {where: leaks(text, secrets) for where, text in outputs.items() if leaks(text, secrets)}
    assert found == {}, f"secrets written to: {sorted(found)}"
    # What a reader of the settings sees instead: where the secret comes from, never its value.
    assert re.search(r"password_env\W+RC_TEST_SOURCE_PASSWORD", outputs["control tables"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Airflow's own
def test_a_dag_run_with_a_password_in_its_connection_stores_and_logs_no_secret(
        password_role, dagbag, pipeline_config, source_db, target_db, monkeypatch, capfd):
    """The shadow replay DAG (the cheapest DAG that connects to both sides) with the source password in
    the Airflow Connection: its XComs, its task logs, the whole metadata database and the control tables
    are scanned for it."""
    import json

    from reconcile.backfill import BackfillSettings, run_backfill
    from reconcile.pipeline.config import PASSWORD_ENV
    from reconcile.pipeline.replay import replay_init
    from tests.airflow_support import run_dag, xcom
    from tests.test_dags import _ledger_pair

    role_url, password = password_role
    role = psycopg.conninfo.conninfo_to_dict(role_url)["user"]
    _ledger_pair(source_db, target_db)
    replay_init(pipeline_config)
    run_backfill(pipeline_config, BackfillSettings(replay=True, workers=1, slot_name=pipeline_config.replay.slot_name))
    with psycopg.connect(source_db, autocommit=True) as conn:  # something for the tick to apply
        conn.execute("UPDATE ledger.accounts SET owner_name = owner_name || ' (renamed)' WHERE account_id = "
                     "(SELECT min(account_id) FROM ledger.accounts)")
    src = psycopg.conninfo.conninfo_to_dict(source_db)
    monkeypatch.setenv("AIRFLOW_CONN_RECONCILE_SOURCE", json.dumps({
        "conn_type": "postgres", "host": src["host"], "port": int(src["port"]), "login": role,
        "password": password, "schema": src["dbname"]}))
    monkeypatch.setenv("RECONCILE_REPLAY_TICK_SECONDS", "1")
    for name in PASSWORD_ENV.values():  # where the task hands the password over: removed again afterwards
        monkeypatch.setenv(name, "")
    everything = Everything()
    root = logging.getLogger()
    root.addHandler(everything)
    try:
        dr = run_dag(dagbag, "reconcile_shadow_replay", timeout=300)
    finally:
        root.removeHandler(everything)
    assert dr.state == "success"
    assert xcom(dr, "replay_tick")["txns_applied"] > 0  # it did connect, with the password
    out = capfd.readouterr()
    from airflow import settings
    from airflow.configuration import conf

    # The metadata database (XComs, rendered fields, run conf, events) and the task logs, wherever this
    # session's Airflow keeps them.
    metadata = Path(settings.engine.url.database)
    database = sorted(metadata.parent.glob(metadata.name + "*"))  # the SQLite file and its -wal / -journal
    files = [*database, *(p for p in Path(conf.get("logging", "base_log_folder")).rglob("*") if p.is_file())]
    outputs = {
        "log records": "\n".join(everything.lines), "stdout": out.out, "stderr": out.err,
        "xcom": json.dumps(xcom(dr, "replay_tick")),
        "control tables": control_tables_as_text(target_db),
        **{f"file {p}": p.read_bytes().decode("utf-8", "replace") for p in files},
    }
    run_id = xcom(dr, "replay_tick")["run_id"].encode()
    assert any(run_id in p.read_bytes() for p in database)  # the run's XCom is in what was scanned
    assert f"user={role}" in outputs["log records"]  # the task connected as the role that needs the password
    found = {where: leaks(text, [password]) for where, text in outputs.items() if leaks(text, [password])}
    assert found == {}, f"the password was written to: {sorted(found)}"
