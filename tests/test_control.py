"""Control-schema migrations: one DDL per transaction, idempotent, DSQL-valid, converging after a crash."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import pq, sql

from reconcile import control
from reconcile.control import MIGRATIONS, Migration, create_index, current_version, migrate, register, render
from reconcile.errors import MigrationFailed
from reconcile.occ import run_with_retry

ALL = [m.version for m in MIGRATIONS]
TABLES = {"schema_migrations", "runs", "chunks", "replay_state", "dead_letters", "rejects", "audit_events",
          "audit_runs", "audit_findings", "invariants", "source_sequences"}  # the last four: audit_tables
STAGE_FIRST_VERSION = 500  # replay, diff, check and gate steps: each stage's own tests check their tables


def _stage_tables() -> set[str]:
    """Tables created by the later stages' steps (their names, read from the DDL they register)."""
    import re

    out = set()
    for m in MIGRATIONS:
        if m.version >= STAGE_FIRST_VERSION:
            found = re.match(r'CREATE TABLE IF NOT EXISTS "reconcile"\."([^"]+)"', m.statement().as_string())
            if found:
                out.add(found.group(1))
    return out


def _stage_indexes() -> set[str]:
    import re

    out = set()
    for m in MIGRATIONS:
        if m.version >= STAGE_FIRST_VERSION:
            found = re.match(r'CREATE (?:UNIQUE )?INDEX IF NOT EXISTS "([^"]+)"', m.statement().as_string())
            if found:
                out.add(found.group(1))
    return out


# --- pure ------------------------------------------------------------------------------------


def test_steps_are_ordered_single_idempotent_statements():
    assert ALL == sorted(set(ALL)) and ALL[0] == 1
    for m in MIGRATIONS:
        for dialect in control.DIALECTS:
            text = m.statement(dialect).as_string()
            assert ";" not in text, f"migration {m.version} holds more than one statement"
            assert "IF NOT EXISTS" in text, f"migration {m.version} is not idempotent"
            assert not re.search(r"\b(serial|bigserial|jsonb|trigger)\b", text, re.I)


def test_index_steps_switch_dialect():
    dsql, pg = render("dsql"), render("postgres")
    assert "INDEX ASYNC" in dsql and not re.search(r"CREATE (UNIQUE )?INDEX IF", dsql)
    assert "ASYNC" not in pg
    m = create_index(99, "x", table="chunks", index="c_idx", columns=["a"], unique=True, include=["b"])
    assert m.statement("dsql").as_string() == (
        'CREATE UNIQUE INDEX ASYNC IF NOT EXISTS "c_idx" ON "reconcile"."chunks" ("a") INCLUDE ("b")')
    assert m.waits_for_job("dsql") and not m.waits_for_job("postgres")
    with pytest.raises(ValueError, match="valid: postgres, dsql"):
        m.statement("mysql")


def test_register_refuses_a_reused_version_and_keeps_version_order():
    before = list(MIGRATIONS)
    with pytest.raises(ValueError, match="reuses the version"):
        register(Migration(MIGRATIONS[-1].version, "late", sql.SQL("CREATE SCHEMA IF NOT EXISTS x")))
    assert MIGRATIONS == before
    step = Migration(99, "in between", sql.SQL("CREATE SCHEMA IF NOT EXISTS x"))
    assert step.version not in {m.version for m in before}
    try:
        register(step)
        assert [m.version for m in MIGRATIONS] == sorted(m.version for m in [*before, step])
    finally:
        MIGRATIONS.remove(step)
    assert MIGRATIONS == before


def test_every_stage_registers_its_steps_in_the_one_list():
    versions = {m.version for m in MIGRATIONS}
    assert {300, 301, 302, 303} <= versions      # audit_tables
    assert {401, 402, 403, 404} <= versions      # backfill_tables


def _dsql_lint() -> str:
    found = shutil.which("dsql-lint") or str(Path(sys.executable).with_name("dsql-lint"))
    assert Path(found).exists(), "dsql-lint is a project dependency; run `uv sync`"
    return found


def _lint(path: Path) -> dict:
    proc = subprocess.run([_dsql_lint(), str(path), "--format", "json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def test_every_migration_passes_dsql_lint(tmp_path):
    script = tmp_path / "control_dsql.sql"
    script.write_text(render("dsql"))
    report = _lint(script)
    assert report["summary"]["errors"] == 0
    assert report["files"][0]["diagnostics"] == [], report["files"][0]["diagnostics"]
    # the linter is live: the stand-in's synchronous form is what it flags
    pg = tmp_path / "control_pg.sql"
    pg.write_text(render("postgres"))
    assert {d["rule"] for d in _lint(pg)["files"][0]["diagnostics"]} == {"index_async"}


class FakeDsql:
    """Records what migrate() sends to a DSQL endpoint: statements, transaction blocks, job waits."""

    def __init__(self, job_ok: bool = True) -> None:
        self.autocommit = True
        self.closed = False
        self.info = type("Info", (), {"transaction_status": pq.TransactionStatus.IDLE})()
        self.log: list[tuple[int | None, str, object]] = []
        self.txn: int | None = None
        self.txns = 0
        self.job_ok = job_ok
        self.bookkeeping = False
        self.recorded: set[int] = set()

    @contextlib.contextmanager
    def transaction(self):
        assert self.txn is None, "nested transaction (would be a SAVEPOINT)"
        self.txns += 1
        self.txn = self.txns
        try:
            yield
        finally:
            self.txn = None

    def execute(self, query, params=None):
        text = query if isinstance(query, str) else query.as_string()
        self.log.append((self.txn, text, params))
        rows: list[tuple] = []
        if "pg_catalog.pg_class" in text:
            rows = [(self.bookkeeping,)]
        elif text.startswith("SELECT version FROM"):
            rows = [(v,) for v in sorted(self.recorded)]
        elif "INDEX ASYNC" in text:
            rows = [(f"job-{len(self.log)}",)]
        elif "sys.wait_for_job" in text:
            rows = [(self.job_ok,)]
        elif text.startswith("CREATE TABLE") and "schema_migrations" in text:
            self.bookkeeping = True
        elif text.startswith("INSERT INTO"):
            self.recorded.add(params[0])
        return _FakeCursor(rows)


class _FakeCursor:
    def __init__(self, rows):
        self.rows = rows
        self.description = [("x",)] if rows else None

    def fetchone(self):
        return self.rows[0] if self.rows else None

    def fetchall(self):
        return self.rows


def test_dsql_dialect_waits_for_each_index_job_and_keeps_ddl_alone():
    conn = FakeDsql()
    assert migrate(conn, dialect="dsql") == ALL
    by_txn: dict[int, list[str]] = {}
    for txn, text, _ in conn.log:
        if txn is not None:
            by_txn.setdefault(txn, []).append(text)
    for stmts in by_txn.values():
        ddl = [s for s in stmts if s.startswith("CREATE")]
        assert len(ddl) <= 1 and (not ddl or len(stmts) == 1), stmts  # one DDL, alone
    waits = [(i, params) for i, (txn, text, params) in enumerate(conn.log) if "wait_for_job" in text]
    asyncs = [i for i, (_, text, _) in enumerate(conn.log) if "INDEX ASYNC" in text]
    assert len(waits) == len(asyncs) == sum(m.async_job for m in MIGRATIONS)
    for i, (w, params) in zip(asyncs, waits):
        assert w > i and params == (f"job-{i + 1}",) and conn.log[w][0] is None  # waited outside a txn
    assert conn.recorded == set(ALL)
    assert migrate(conn, dialect="dsql") == []


def test_a_failed_index_job_stops_the_migration():
    conn = FakeDsql(job_ok=False)
    with pytest.raises(MigrationFailed, match="background job"):
        migrate(conn, dialect="dsql")
    first_index = next(m.version for m in MIGRATIONS if m.async_job)
    assert max(conn.recorded) == first_index - 1  # the failed step is not recorded


# --- on the DSQL stand-in --------------------------------------------------------------------


def _conn(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def _tables(conn) -> set[str]:
    return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'reconcile'")}


def _indexes(conn) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'reconcile' AND indexname NOT LIKE '%pkey'")}


def test_migrate_twice_applies_nothing_the_second_time(target_db):
    with _conn(target_db) as conn:
        assert current_version(conn) == 0
        assert migrate(conn) == ALL          # the guards would raise 0A000 on a shared transaction
        assert _tables(conn) == TABLES | _stage_tables()
        assert _indexes(conn) == {"runs_kind_started_idx", "chunks_status_idx", "audit_events_gate_idx",
                                  "dead_letters_slot_idx"} | _stage_indexes()
        assert migrate(conn) == []
        assert current_version(conn) == ALL[-1]
        names = dict(conn.execute("SELECT version, name FROM reconcile.schema_migrations").fetchall())
        assert names == {m.version: m.name for m in MIGRATIONS}


def test_a_crash_between_ddl_and_bookkeeping_converges(target_db):
    with _conn(target_db) as conn:
        assert migrate(conn, migrations=MIGRATIONS[:5]) == ALL[:5]
        # the DDL of the next step ran, then the process died before recording it
        with conn.transaction():
            conn.execute(MIGRATIONS[5].statement("postgres"))
        assert current_version(conn) == ALL[4]
        assert migrate(conn) == ALL[5:]
        assert control.applied_versions(conn) == set(ALL)

        # the same for an index step, after the fact
        conn.execute("DELETE FROM reconcile.schema_migrations WHERE version = %s", (ALL[-2],))
        assert [m.version for m in control.pending(conn)] == [ALL[-2]]
        assert migrate(conn) == [ALL[-2]]
        assert migrate(conn) == []


def test_the_guards_refuse_steps_sharing_a_transaction(target_db):
    # What migrate() avoids: two DDL, or DDL with DML, in one transaction.
    with _conn(target_db) as conn:
        migrate(conn, migrations=MIGRATIONS[:2])
        for second in (MIGRATIONS[2].statement("postgres"),
                       sql.SQL("INSERT INTO reconcile.schema_migrations VALUES (3, 'x', now())")):
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                with conn.transaction():
                    conn.execute(MIGRATIONS[3].statement("postgres"))
                    conn.execute(second)


def test_control_tables_take_writes_within_the_rules(target_db):
    with _conn(target_db) as conn:
        migrate(conn)

        def write(c):
            run_id = c.execute("INSERT INTO reconcile.runs (kind, status, settings) "
                               "VALUES ('backfill', 'running', %s) RETURNING run_id", ('{"fraction": 0.5}',)).fetchone()[0]
            c.execute("INSERT INTO reconcile.chunks (table_name, chunk_id, run_id, lo, hi, status) "
                      "VALUES ('ledger.entries', 1, %s, NULL, '1000', 'done')", (run_id,))
            c.execute("INSERT INTO reconcile.replay_state (slot_name, last_commit_lsn, last_xid) "
                      "VALUES ('reconcile_slot', '0/16B3748', 750)")
            c.execute("INSERT INTO reconcile.audit_events (gate, event, actor, run_id) "
                      "VALUES ('write-cutover', 'approved', 'owner@example.com', %s)", (run_id,))
            return run_id

        run_id = run_with_retry(conn, write)
        assert conn.execute("SELECT status, rows, attempts FROM reconcile.chunks WHERE run_id = %s",
                            (run_id,)).fetchone() == ("done", 0, 0)


def test_migrate_needs_an_autocommit_connection(target_db):
    with psycopg.connect(target_db) as conn:
        with pytest.raises(ValueError, match="autocommit"):
            migrate(conn)
