"""Versioned migrations of the ``reconcile`` control schema on the target.

DSQL runs one DDL statement per transaction and never mixes DDL with DML, so a migration step is
exactly one DDL statement, run alone in its own transaction; the version bookkeeping row
(``reconcile.schema_migrations``) is written afterwards in a separate DML transaction. A crash
between the two leaves the DDL applied and unrecorded: every step is idempotent
(``IF NOT EXISTS``), so the next :func:`migrate` runs it again harmlessly and records it.

Dialects differ in one place, index creation: DSQL refuses a plain ``CREATE INDEX`` and builds
indexes in the background (``CREATE INDEX ASYNC`` returns a job id; the runner blocks on
``sys.wait_for_job``), while PostgreSQL and the local stand-in build them synchronously.

Adding a step: a ``register(...)`` (or ``register_index(...)``) call with a version of its own. Core
steps live in the "Steps" section below (1-99); each stage keeps its steps in a module of this
package with its own version range (``audit_tables`` 300-399, ``backfill_tables`` 400-499,
``replay_tables`` 500-599, ``diff_tables`` 600-699, ``check_tables`` 700-749, ``gate_tables`` 750-799,
``column_tables`` 800-829, ``migration_tables`` 900-949, ``reverse_tables`` 1000-1049), and
``reconcile.control`` imports every such module, so :data:`MIGRATIONS` is always the whole schema. Never edit, renumber or remove a step that has
shipped; change a table with a new step instead (mind DSQL's ALTER rules: no ``ADD COLUMN`` with
an inline DEFAULT or NOT NULL, no ``ALTER COLUMN TYPE``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, LiteralString

import psycopg
from psycopg import sql

from reconcile.errors import MigrationFailed
from reconcile.occ import DEFAULT_POLICY, RetryCounters, RetryPolicy, run_with_retry

log = logging.getLogger(__name__)

SCHEMA = "reconcile"
BOOKKEEPING_TABLE = "schema_migrations"
DIALECTS = ("postgres", "dsql")
Dialect = Literal["postgres", "dsql"]


def ident(table: str) -> sql.Identifier:
    """A control table's qualified name: ``ident("chunks")`` → ``"reconcile"."chunks"``."""
    return sql.Identifier(SCHEMA, table)


@dataclass(frozen=True)
class Migration:
    """One step: a single idempotent DDL statement.

    ``sql`` is the PostgreSQL form (also run on the local stand-in); ``dsql_sql``, when set, is the
    form for Aurora DSQL. ``async_job`` marks a DSQL statement that returns a job id to wait for.
    """

    version: int
    name: str
    sql: sql.Composable
    dsql_sql: sql.Composable | None = None
    async_job: bool = False

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError(f"migration versions start at 1, got {self.version!r} ({self.name})")
        if not self.name:
            raise ValueError(f"migration {self.version} needs a name")

    def statement(self, dialect: Dialect = "postgres") -> sql.Composable:
        """The DDL statement to run on ``dialect``."""
        _check_dialect(dialect)
        if dialect == "dsql" and self.dsql_sql is not None:
            return self.dsql_sql
        return self.sql

    def waits_for_job(self, dialect: Dialect) -> bool:
        """Whether the statement returns a background job id to wait for on ``dialect``."""
        return dialect == "dsql" and self.async_job


def _check_dialect(dialect: str) -> None:
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; valid: {', '.join(DIALECTS)}")


def create_index(
    version: int,
    name: str,
    *,
    table: str,
    index: str,
    columns: Sequence[str],
    unique: bool = False,
    include: Sequence[str] = (),
) -> Migration:
    """A migration creating an index on a control table, in the right form for each dialect.

    >>> m = create_index(9, "x", table="runs", index="runs_kind_idx", columns=["kind"])
    >>> m.statement("dsql").as_string()
    'CREATE INDEX ASYNC IF NOT EXISTS "runs_kind_idx" ON "reconcile"."runs" ("kind")'
    """

    def build(mode: str) -> sql.Composed:
        template = "CREATE {unique}INDEX {mode}IF NOT EXISTS {index} ON {table} ({columns}){include}"
        return sql.SQL(template).format(
            unique=sql.SQL("UNIQUE " if unique else ""),
            mode=sql.SQL(mode),
            index=sql.Identifier(index),  # DSQL puts the index in its table's schema; no schema here
            table=ident(table),
            columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
            include=sql.SQL(" INCLUDE ({})").format(sql.SQL(", ").join(map(sql.Identifier, include)))
            if include else sql.SQL(""),
        )

    return Migration(version, name, build(""), dsql_sql=build("ASYNC "), async_job=True)


MIGRATIONS: list[Migration] = []
"""Every step, in version order. Add through :func:`register`; never renumber."""


def register(migration: Migration) -> Migration:
    """Add a step to :data:`MIGRATIONS` in version order; a version may be registered only once."""
    clash = next((m for m in MIGRATIONS if m.version == migration.version), None)
    if clash is not None:
        raise ValueError(
            f"migration {migration.version} ({migration.name}) reuses the version of "
            f"{clash.name!r}; give each step its own version"
        )
    MIGRATIONS.append(migration)
    MIGRATIONS.sort(key=lambda m: m.version)
    return migration


def register_index(version: int, name: str, **kwargs: object) -> Migration:
    """Shorthand: ``register(create_index(version, name, ...))``."""
    return register(create_index(version, name, **kwargs))  # type: ignore[arg-type]


def table_step(version: int, name: str, table: str, body: LiteralString) -> Migration:
    """A ``CREATE TABLE IF NOT EXISTS reconcile.<table> (<body>)`` step."""
    return Migration(version, name, sql.SQL("CREATE TABLE IF NOT EXISTS {} (" + body + "\n)").format(ident(table)))


# --- Steps ------------------------------------------------------------------------------------
# Conventions (DSQL rules): no SERIAL (uuid or natural keys), no triggers, explicit numeric
# precision, timestamptz, JSON documents stored as text (json/jsonb column support on DSQL has
# varied; text always works and is at most 1 MiB outside an index). Status columns are text
# without CHECK: DSQL cannot alter a constraint later, and the values are owned by Python code.

register(Migration(1, "create schema", sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA))))

register(table_step(2, "schema_migrations", BOOKKEEPING_TABLE, """
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()"""))

# One row per pipeline run (backfill, replay session, diff, check, gate evaluation).
register(table_step(3, "runs", "runs", """
    run_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind text NOT NULL,
    status text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    settings text,
    summary text"""))

# Backfill checkpoints: one row per key range [lo, hi) of a table; lo/hi are encoded keys.
register(table_step(4, "chunks", "chunks", """
    table_name text NOT NULL,
    chunk_id bigint NOT NULL,
    run_id uuid,
    lo text,
    hi text,
    status text NOT NULL,
    rows bigint NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    duration_ms bigint,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, chunk_id)"""))

# Replay watermark, written in the same target transaction as the changes it covers. LSNs are
# stored in PostgreSQL's text form ('16/B374D848'); DSQL has no pg_lsn column type.
register(table_step(5, "replay_state", "replay_state", """
    slot_name text PRIMARY KEY,
    last_commit_lsn text NOT NULL,
    last_xid bigint,
    applied_txns bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()"""))

# Source transactions the replay could not apply (too big for one DSQL transaction, refused).
register(table_step(6, "dead_letters", "dead_letters", """
    dead_letter_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slot_name text NOT NULL,
    xid bigint,
    commit_lsn text,
    table_name text,
    reason text NOT NULL,
    sqlstate text,
    change_count bigint,
    payload text,
    created_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz"""))

# Single rows the target refused during backfill or replay (e.g. a value out of range).
register(table_step(7, "rejects", "rejects", """
    reject_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    run_id uuid,
    stage text NOT NULL,
    table_name text NOT NULL,
    row_key text,
    sqlstate text,
    reason text NOT NULL,
    row_data text,
    created_at timestamptz NOT NULL DEFAULT now()"""))

# Gate trail: append-only by convention (DSQL has no triggers to enforce it); never UPDATE/DELETE.
register(table_step(8, "audit_events", "audit_events", """
    event_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    occurred_at timestamptz NOT NULL DEFAULT now(),
    gate text,
    event text NOT NULL,
    actor text,
    run_id uuid,
    details text"""))

register_index(9, "runs by kind", table="runs", index="runs_kind_started_idx", columns=["kind", "started_at"])
register_index(10, "chunks by status", table="chunks", index="chunks_status_idx", columns=["table_name", "status"])
register_index(11, "audit events by gate", table="audit_events", index="audit_events_gate_idx",
               columns=["gate", "occurred_at"])
register_index(12, "dead letters by slot", table="dead_letters", index="dead_letters_slot_idx",
               columns=["slot_name", "created_at"])

# --- Runner -----------------------------------------------------------------------------------


def _ordered(migrations: Iterable[Migration]) -> list[Migration]:
    steps = sorted(migrations, key=lambda m: m.version)
    seen: set[int] = set()
    for m in steps:
        if m.version in seen:
            raise ValueError(f"two migrations share version {m.version}; give each step its own version")
        seen.add(m.version)
    return steps


def _bookkeeping_exists(conn: psycopg.Connection) -> bool:
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s)",
        (SCHEMA, BOOKKEEPING_TABLE),
    ).fetchone()[0]


def applied_versions(conn: psycopg.Connection) -> set[int]:
    """Versions recorded in ``reconcile.schema_migrations`` (empty before the first migration)."""
    if not _bookkeeping_exists(conn):
        return set()
    rows = conn.execute(sql.SQL("SELECT version FROM {}").format(ident(BOOKKEEPING_TABLE))).fetchall()
    return {v for (v,) in rows}


def current_version(conn: psycopg.Connection) -> int:
    """Highest recorded version; 0 on a target never migrated."""
    return max(applied_versions(conn), default=0)


def pending(conn: psycopg.Connection, migrations: Iterable[Migration] | None = None) -> list[Migration]:
    """Steps not yet recorded on the target, in order."""
    done = applied_versions(conn)
    return [m for m in _ordered(MIGRATIONS if migrations is None else migrations) if m.version not in done]


def _run_step(conn: psycopg.Connection, m: Migration, dialect: Dialect, policy: RetryPolicy,
              counters: RetryCounters | None) -> None:
    stmt = m.statement(dialect)

    def ddl(c: psycopg.Connection) -> object:
        cur = c.execute(stmt)
        row = cur.fetchone() if cur.description else None
        return row[0] if row else None

    # DDL retried on conflicts is safe: every step is IF NOT EXISTS.
    job_id = run_with_retry(conn, ddl, policy=policy, counters=counters, label=f"migration {m.version} DDL")
    if m.waits_for_job(dialect) and job_id is not None:
        # Outside any transaction block: the wait can outlast a short transaction.
        (ok,) = conn.execute("SELECT sys.wait_for_job(%s)", (job_id,)).fetchone()
        if not ok:
            raise MigrationFailed(
                f"Migration {m.version} ({m.name}): background job {job_id} failed; "
                "see sys.jobs on the target, fix the cause, then rerun the migration."
            )


def _record(conn: psycopg.Connection, steps: list[Migration], policy: RetryPolicy,
            counters: RetryCounters | None) -> None:
    insert = sql.SQL("INSERT INTO {} (version, name, applied_at) VALUES (%s, %s, now()) "
                     "ON CONFLICT (version) DO NOTHING").format(ident(BOOKKEEPING_TABLE))

    def write(c: psycopg.Connection) -> None:
        for m in steps:
            c.execute(insert, (m.version, m.name))

    run_with_retry(conn, write, policy=policy, counters=counters, label="migration bookkeeping")


def migrate(
    conn: psycopg.Connection,
    *,
    dialect: Dialect = "postgres",
    migrations: Iterable[Migration] | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    counters: RetryCounters | None = None,
) -> list[int]:
    """Apply every unrecorded step, one DDL per transaction, then record it in a DML transaction.

    Args:
        conn: an autocommit connection to the target.
        dialect: ``"dsql"`` for Aurora DSQL (asynchronous indexes), ``"postgres"`` for PostgreSQL
            and the local stand-in.
        migrations: the steps (default :data:`MIGRATIONS`).
        policy: retry policy for each transaction (OCC conflicts on DDL are retried: steps are
            idempotent).
        counters: retry counters to add to.

    Returns:
        The versions whose DDL ran in this call, in order (empty when the schema was current).

    Raises:
        MigrationFailed: a DSQL index build job failed.
    """
    _check_dialect(dialect)
    steps = pending(conn, migrations)
    ran: list[int] = []
    unrecorded: list[Migration] = []
    can_record = False
    for m in steps:
        log.info("migration %d (%s): applying", m.version, m.name)
        _run_step(conn, m, dialect, policy, counters)
        ran.append(m.version)
        unrecorded.append(m)
        # The first steps create the bookkeeping table itself: record them once it exists.
        can_record = can_record or _bookkeeping_exists(conn)
        if can_record:
            _record(conn, unrecorded, policy, counters)
            unrecorded = []
    if unrecorded:
        raise MigrationFailed(
            f"Migrations {[m.version for m in unrecorded]} ran but {SCHEMA}.{BOOKKEEPING_TABLE} does not exist "
            "to record them; the step creating it must come first."
        )
    return ran


def render(dialect: Dialect = "dsql", migrations: Iterable[Migration] | None = None) -> str:
    """Every step as one SQL script (for review, or for ``dsql-lint``); bookkeeping left out."""
    steps = _ordered(MIGRATIONS if migrations is None else migrations)
    return "".join(
        f"-- {m.version}: {m.name}\n{m.statement(dialect).as_string()};\n\n" for m in steps
    )
