"""Each stage has one error boundary that classifies through the SQLSTATE table (reconcile.occ) and keeps
the cause, so Airflow retries only what can succeed and fails at once what cannot."""

from __future__ import annotations

import pickle
import sys
import traceback
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pg_errors

from reconcile.backfill import copy_chunk, plan_chunks
from reconcile.config import Config, PostgresEndpoint, TableSpec
from reconcile.errors import ReconcileError, TerminalFailure, TransientFailure
from reconcile.occ import error_boundary, stage_error
from tests.airflow_support import airflow_env  # noqa: F401 (a fixture)

ITEMS = TableSpec("app.items", ("id",))


def run_sql(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt)


@contextmanager
def role(url: str, *grants: str):
    """A login role of the test's own on ``url``'s server (trust auth), with ``grants`` (``{r}`` is its name)."""
    name = f"rc_{uuid.uuid4().hex[:10]}"
    run_sql(url, f"CREATE ROLE {name} LOGIN", *(g.format(r=name) for g in grants))
    try:
        yield name
    finally:
        run_sql(url, f"DROP OWNED BY {name}", f"DROP ROLE {name}")


# --- the classification itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("exc, retryable, sqlstate", [
    (pg_errors.UndefinedColumn("column x does not exist"), False, "42703"),
    (pg_errors.InsufficientPrivilege("permission denied for table items"), False, "42501"),
    (pg_errors.SerializationFailure("conflict OC000"), True, "40001"),
    (pg_errors.AdminShutdown("terminating connection"), True, "57P01"),
    (pg_errors.TooManyConnections("too many"), True, "53300"),
    (psycopg.OperationalError("server closed the connection unexpectedly"), True, None),
    (ConnectionResetError("reset by peer"), True, None),
    (ValueError("a bug"), False, None),
    (KeyError("a bug"), False, None),
])
def test_stage_error_classifies_by_sqlstate_and_keeps_fields(exc, retryable, sqlstate):
    err = stage_error(exc, "the copy")
    assert isinstance(err, TransientFailure if retryable else TerminalFailure)
    assert err.retryable is retryable and err.sqlstate == sqlstate and err.step == "the copy"
    assert err.message.startswith("the copy failed") and ("retry can succeed" in err.message) is retryable
    again = pickle.loads(pickle.dumps(err))  # crosses processes (Airflow, the backfill's workers)
    assert type(again) is type(err) and again.message == err.message and again.sqlstate == sqlstate


def test_the_boundary_keeps_the_cause_passes_reconcile_errors_and_redacts():
    secret = uuid.uuid4().hex  # made at run time: a traceback also prints the source lines
    cause = pg_errors.InsufficientPrivilege(f"permission denied for user app:{secret}")
    with pytest.raises(TerminalFailure) as caught, error_boundary("replay", redact=lambda t: t.replace(secret, "***")):
        raise cause
    kept = caught.value.__cause__  # the cause's type, SQLSTATE and traceback, its secret removed
    assert type(kept) is type(cause) and kept.sqlstate == "42501" and kept.__traceback__ is not None
    assert secret not in "".join(traceback.format_exception(caught.value)) and "***" in str(caught.value)
    with pytest.raises(TerminalFailure) as caught, error_boundary("replay"):
        raise cause
    assert caught.value.__cause__ is cause  # nothing to remove: the cause itself
    own = TransientFailure("x", "y")
    with pytest.raises(TransientFailure) as caught, error_boundary("replay"):
        raise own
    assert caught.value is own
    with pytest.raises(KeyboardInterrupt), error_boundary("replay"):
        raise KeyboardInterrupt


# --- Airflow: terminal fails at once, transient retries ----------------------------------------------------


@pytest.fixture
def dag_errors(airflow_env, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "dags"))
    import reconcile_common

    yield reconcile_common.reconcile_errors
    sys.modules.pop("reconcile_common", None)


@pytest.mark.parametrize("exc", [pg_errors.UndefinedTable("relation app.items does not exist"),
                                 pg_errors.InsufficientPrivilege("permission denied"), ValueError("a bug"),
                                 TerminalFailure("backfill of t chunk 1", "permission denied", "42501")])
def test_the_dags_fail_a_non_retryable_error_without_retries(dag_errors, exc):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException) as caught, dag_errors():
        raise exc
    assert caught.value.__cause__ is exc


@pytest.mark.parametrize("exc", [psycopg.OperationalError("server closed the connection unexpectedly"),
                                 pg_errors.SerializationFailure("OC000"),
                                 TransientFailure("backfill of t chunk 1", "connection lost")])
def test_the_dags_let_a_transient_error_retry(dag_errors, exc):
    with pytest.raises(type(exc)) as caught, dag_errors():
        raise exc
    assert caught.value is exc


def test_the_dags_pass_airflow_signals_through(dag_errors):
    from airflow.sdk.exceptions import AirflowSkipException

    with pytest.raises(AirflowSkipException), dag_errors():
        raise AirflowSkipException("nothing to do")


# --- backfill ----------------------------------------------------------------------------------------------


def test_a_chunk_failing_on_a_missing_privilege_is_terminal_not_retried(source_db, target_db):
    """Before: copy_chunk raised ChunkFailed, a TransientError built from a string, for a 42501 that no
    retry can get past, and Airflow retried it."""
    run_sql(source_db, "CREATE SCHEMA app", "CREATE TABLE app.items (id bigint PRIMARY KEY, amount numeric(12,2))",
            "INSERT INTO app.items SELECT g, g FROM generate_series(1, 50) g")
    run_sql(target_db, "CREATE SCHEMA app", "CREATE TABLE app.items (id bigint PRIMARY KEY, amount numeric(12,2))")
    dbname = psycopg.conninfo.conninfo_to_dict(target_db)["dbname"]
    with role(target_db, f'GRANT CREATE ON DATABASE "{dbname}" TO {{r}}', "GRANT USAGE ON SCHEMA app TO {r}",
              "GRANT SELECT ON app.items TO {r}", "GRANT USAGE ON SCHEMA dsql_guard TO {r}") as reader:
        limited = psycopg.conninfo.make_conninfo(target_db, user=reader)
        cfg = Config(source=PostgresEndpoint("source", source_db), target=PostgresEndpoint("target", limited),
                     tables=(ITEMS,))
        [ref] = plan_chunks(cfg)
        with pytest.raises(TerminalFailure) as caught:
            copy_chunk(cfg, ref["table"], ref["chunk_id"])
        err = caught.value
        assert err.sqlstate == "42501" and not err.retryable
        assert isinstance(err.__cause__, pg_errors.InsufficientPrivilege)
        assert "backfill of app.items chunk 0 failed with SQLSTATE 42501" in str(err)
        with psycopg.connect(target_db) as conn:
            status, error = conn.execute("SELECT status, last_error FROM reconcile.chunks").fetchone()
        assert status == "failed" and "permission denied" in error  # marked failed: a rerun resumes it


# --- replay ------------------------------------------------------------------------------------------------


@pytest.fixture
def slot_pair(source_db, target_db):
    """app.items on both sides, a slot and a publication on the source (dropped at the end)."""
    from reconcile.replay import init_replay
    from reconcile.replay.settings import ReplaySettings

    ddl = "CREATE TABLE app.items (id int PRIMARY KEY, amount numeric(12,2))"
    run_sql(source_db, "CREATE SCHEMA app", ddl)
    run_sql(target_db, "CREATE SCHEMA app", ddl)
    slot = "e_" + psycopg.conninfo.conninfo_to_dict(source_db)["dbname"].lower()
    cfg = Config(source=PostgresEndpoint("source", source_db), target=PostgresEndpoint("target", target_db),
                 tables=(ITEMS,), stages={"replay": ReplaySettings(slot_name=slot, require_backfill=False)})
    init_replay(cfg)
    yield cfg
    run_sql(source_db, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                       "WHERE database = current_database()")


def test_a_replay_source_error_a_retry_cannot_fix_is_terminal(slot_pair, source_db):
    """Before: every database error of a run became ReplayInterrupted (transient), whatever its SQLSTATE, so
    a source user without the REPLICATION privilege (42501) was retried by Airflow forever."""
    import dataclasses

    from reconcile.replay import run_replay

    run_sql(source_db, "INSERT INTO app.items VALUES (1, 1.00)")
    with role(source_db) as plain:
        cfg = dataclasses.replace(slot_pair, source=PostgresEndpoint(
            "source", psycopg.conninfo.make_conninfo(source_db, user=plain)))
        with pytest.raises(TerminalFailure) as caught:
            run_replay(cfg)
    assert caught.value.sqlstate == "42501" and isinstance(caught.value.__cause__, pg_errors.InsufficientPrivilege)
    assert "a retry would fail the same way" in str(caught.value)


def test_a_message_that_cannot_be_decoded_stops_replay_with_a_terminal_reconcile_error(slot_pair, source_db, target_db):
    """Before: DecodeError was a plain ValueError that escaped the run unclassified (Airflow retried it)."""
    from reconcile.replay import run_replay
    from reconcile.replay.pgoutput import DecodeError

    run_sql(source_db, "ALTER TABLE app.items RENAME COLUMN id TO item_id", "INSERT INTO app.items VALUES (1, 1.00)")
    with pytest.raises(DecodeError) as caught:
        run_replay(slot_pair)
    err = caught.value
    assert isinstance(err, ReconcileError) and not err.retryable and err.exit_code == 2
    assert "app.items has no column(s) id of its configured key" in str(err) and "keep the slot" in str(err)
    with psycopg.connect(target_db) as conn:
        assert conn.execute("SELECT count(*) FROM app.items").fetchone() == (0,)
        (status,) = conn.execute("SELECT status FROM reconcile.runs WHERE kind = 'replay'").fetchone()
    assert status == "error"


# --- diff ----------------------------------------------------------------------------------------------------


def diff_config(source_db: str, target_db: str, *, attempts: int = 3) -> Config:
    from reconcile.config import RetrySettings
    from reconcile.diff.settings import DiffSettings

    ddl = "CREATE TABLE app.items (id int PRIMARY KEY, amount numeric(12,2))"
    for url in (source_db, target_db):
        run_sql(url, "CREATE SCHEMA app", ddl, "INSERT INTO app.items SELECT g, g FROM generate_series(1, 500) g")
    return Config(source=PostgresEndpoint("source", source_db), target=PostgresEndpoint("target", target_db),
                  tables=(ITEMS,), retry=RetrySettings(max_attempts=attempts, base_delay=0.01, max_delay=0.05),
                  stages={"diff": DiffSettings(segment_rows=100, bucket_rows=20, workers=1, balances=False)})


def drops_the_source_connection(monkeypatch, times: int) -> list[int]:
    """The first ``times`` table comparisons lose their source connection (the server ends the session) right
    before they read: a real dropped connection, as a failover or an idle timeout does it."""
    from reconcile.diff import hashdiff

    real, killed = hashdiff.candidates, []

    def candidates(pair, shape, settings):
        if len(killed) < times:
            pid = pair.source.conn().info.backend_pid
            with psycopg.connect(pair.source.factory().info.dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            killed.append(pid)
        return real(pair, shape, settings)

    monkeypatch.setattr(hashdiff, "candidates", candidates)
    return killed


def test_a_dropped_connection_during_a_table_diff_is_retried_not_stored_as_an_error(
        source_db, target_db, tmp_path, monkeypatch):
    """Before: the diff stored the dropped connection as the table's ``status: error`` and returned normally,
    so one blip turned the hourly run red and nothing retried it."""
    from reconcile.diff import run_diff

    cfg = diff_config(source_db, target_db)
    killed = drops_the_source_connection(monkeypatch, times=1)
    result = run_diff(cfg, report_dir=tmp_path)
    assert len(killed) == 1
    assert result.verdict == "green" and result.summary["status"] == "green" and result.summary["errors"] == {}


def test_a_connection_that_keeps_dropping_raises_a_transient_error_for_the_orchestrator(
        source_db, target_db, tmp_path, monkeypatch):
    from reconcile.diff import diff_table, start_diff

    cfg = diff_config(source_db, target_db, attempts=2)
    killed = drops_the_source_connection(monkeypatch, times=10)
    run_id = start_diff(cfg)
    with pytest.raises(TransientFailure) as caught:
        diff_table(cfg, run_id, "app.items")
    assert len(killed) == 2 and "diff of app.items failed" in str(caught.value)
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
    with psycopg.connect(target_db) as conn:  # nothing stored: finish_diff would say "not compared"
        assert conn.execute("SELECT count(*) FROM reconcile.diff_results").fetchone() == (0,)


# --- no built-in exception on a user-reachable path ------------------------------------------------------------

# Built-in exceptions left in reconcile/: each guards an invariant of the code itself (a caller's bug), never a
# value a user typed or a server sent. A new one needs a reason to be here; else raise a ReconcileError.
INTERNAL_INVARIANTS = {
    ("reconcile/audit/checks.py", "_column_finding"),  # finding codes are constants of the audit
    ("reconcile/audit/findings.py", "Finding.__post_init__"),  # levels are constants of the audit
    ("reconcile/backfill/copy.py", "write_rows"),  # the method was validated by BackfillSettings
    ("reconcile/backfill/copy.py", "ChunkCopier._write"),  # unreachable
    ("reconcile/backfill/pacing.py", "BatchSizer.__init__"),  # built from validated settings
    ("reconcile/budget.py", "Batcher.add"),  # costs are computed, never negative
    ("reconcile/checks/spec.py", "Check.__post_init__"),  # checks are defined in code
    ("reconcile/config.py", "Config.stage"),  # section names are constants (config.py: the loader's own task)
    ("reconcile/config.py", "_coerce_env"),  # caught right below, becomes InvalidSetting
    ("reconcile/connections.py", "_plan"),  # endpoints come from the loader
    ("reconcile/control/migrations.py", "Migration.__post_init__"),  # migrations are defined in code
    ("reconcile/control/migrations.py", "_check_dialect"),
    ("reconcile/control/migrations.py", "register"),
    ("reconcile/control/migrations.py", "_ordered"),
    ("reconcile/diff/hashdiff.py", "Segment.__post_init__"),  # segments are planned by the diff
    ("reconcile/diff/sqlgen.py", "hash_layout"),
    ("reconcile/diff/sqlgen.py", "hashes_query"),
    ("reconcile/occ.py", "RetryPolicy.__post_init__"),  # built from validated [retry] settings
    ("reconcile/occ.py", "_source"),  # what the caller passes in code
    ("reconcile/occ.py", "_check_ready"),  # a connection misused by the calling code
    ("reconcile/replay/marks.py", "RepairMarks._close"),  # repair rows are written with their key from the same row
    ("reconcile/schema/apply.py", "_exists"),  # statement kinds are constants of the planner
    ("reconcile/schema/plan.py", "build_plan.cite"),  # the planner cites only what the audit reported
}
BUILTIN_ERRORS = {"ValueError", "KeyError", "RuntimeError", "AssertionError", "TypeError", "Exception", "LookupError",
                  "IndexError"}


def builtin_raises() -> set[tuple[str, str]]:
    import ast

    root = Path(__file__).parents[1]
    found: set[tuple[str, str]] = set()

    def visit(node, path: str, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope + [child.name] if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                else scope
            if isinstance(child, ast.Raise) and child.exc is not None:
                name = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                if isinstance(name, ast.Name) and name.id in BUILTIN_ERRORS:
                    found.add((path, ".".join(scope)))
            visit(child, path, inner)

    for file in sorted((root / "reconcile").rglob("*.py")):
        visit(ast.parse(file.read_text()), str(file.relative_to(root)), [])
    return found


def test_built_in_exceptions_are_raised_only_for_internal_invariants():
    assert builtin_raises() - INTERNAL_INVARIANTS == set()


def test_values_a_user_gives_fail_with_a_reconcile_error_that_still_is_a_value_or_key_error():
    from reconcile.audit.run import AuditOptions
    from reconcile.budget import Budget, split_table_name
    from reconcile.errors import InvalidArgument, NotFound
    from reconcile.schema.dialect import get_dialect
    from reconcile.schema.plan import SchemaPlan

    for make in (lambda: split_table_name("ledger."), lambda: get_dialect("mysql"), lambda: Budget(fraction=2),
                 lambda: AuditOptions(scan="everything")):
        with pytest.raises(InvalidArgument) as caught:
            make()
        assert isinstance(caught.value, ValueError) and caught.value.exit_code == 2 and "; " in str(caught.value)
    with pytest.raises(NotFound, match="the plan has no table app.x; it plans no table") as caught:
        SchemaPlan(dialect="postgres", source_fingerprint="", statements=()).table("app.x")
    assert isinstance(caught.value, KeyError)


def test_the_cli_prints_an_unclassified_database_error_as_one_sentence(monkeypatch, capsys):
    import typer

    from reconcile.cli._common import run_app

    app = typer.Typer()

    @app.command()
    def read() -> None:
        raise pg_errors.UndefinedTable("relation reconcile.runs does not exist")

    @app.command()
    def other() -> None:
        pass

    monkeypatch.setattr(sys, "argv", ["reconcile", "read"])
    with pytest.raises(SystemExit) as caught:
        run_app(app)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "Traceback" not in err
    assert err.strip() == ("error: the command failed with SQLSTATE 42P01: relation reconcile.runs does not exist; "
                           "a retry would fail the same way: fix the cause, then rerun.")
