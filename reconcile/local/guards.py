"""DSQL guards on the local target: install, switch on/off, tune.

The SQL lives in ``guards.sql`` beside this file (see its header for what is refused and how).
What the stand-in cannot reproduce without a server extension, and how we cover it instead:

* ``SAVEPOINT``, ``LOCK``, ``LISTEN/NOTIFY``: no server hook reaches them from SQL. Our own code
  reaches the target only through :func:`reconcile.connections.connect`, whose target
  connections refuse nested transaction blocks (psycopg turns those into SAVEPOINT).
* The 10 MiB size limit is reported at the statement that crosses it, not at COMMIT; both end
  the transaction with ``54000``.
* An OCC conflict surfaces from PostgreSQL's REPEATABLE READ as ``40001`` "could not serialize
  access" (DSQL says ``change conflicts with another transaction (OC000)``); the second writer
  waits for the first to finish instead of failing at commit. Code matches on SQLSTATE only.
* The 5-minute transaction age limit is ``transaction_timeout`` (PostgreSQL closes the session
  with ``25P04``; DSQL answers ``54000``).
* ``CREATE INDEX`` runs synchronously here: the plan uses ``CREATE INDEX ASYNC`` on DSQL and the
  synchronous equivalent on the stand-in (a dialect switch).
"""

from __future__ import annotations

from importlib import resources

import psycopg
from psycopg import sql

from reconcile.errors import InvalidArgument

GUARD_VERSION = "5"
SETTINGS = ("enabled", "max_rows", "max_bytes", "count_index_tuples", "cdc")


def guard_sql() -> str:
    return resources.files("reconcile.local").joinpath("guards.sql").read_text()


def _with_db(url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


def installed_version(conn: psycopg.Connection) -> str | None:
    row = conn.execute(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = 'dsql_guard'"
    ).fetchone()
    return row[0] if row else None


def install(conn: psycopg.Connection, *, force: bool = False) -> bool:
    """Install (or upgrade) the guards in the connected database; True when SQL ran."""
    if not force and installed_version(conn) == f"version {GUARD_VERSION}":
        return False
    conn.execute("SET dsql_guard.internal = on")  # our own DDL passes the guards
    try:
        conn.execute(guard_sql())
        conn.execute(sql.SQL("COMMENT ON SCHEMA dsql_guard IS {}").format(
            sql.Literal(f"version {GUARD_VERSION}")))
    finally:
        conn.execute("RESET dsql_guard.internal")
    return True


def install_server(url: str, *, force: bool = False) -> None:
    """Install the guards in template1 (inherited by new databases) and in the main database."""
    for db in ("template1", psycopg.conninfo.conninfo_to_dict(url).get("dbname", "postgres")):
        with psycopg.connect(_with_db(url, db), autocommit=True) as conn:
            install(conn, force=force)


def configure(url: str, **settings: object) -> None:
    """Persist guard settings for the database in `url` (new sessions pick them up).

    >>> configure(target_url, enabled=False)          # doctest: +SKIP
    >>> configure(target_url, count_index_tuples=True) # doctest: +SKIP
    """
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise InvalidArgument(f"unknown guard setting(s) {sorted(unknown)}; use {', '.join(SETTINGS)}")
    dbname = psycopg.conninfo.conninfo_to_dict(url).get("dbname", "postgres")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET dsql_guard.internal = on")
        for key, value in settings.items():
            text = ("on" if value else "off") if isinstance(value, bool) else str(value)
            conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                sql.Identifier(dbname), sql.Identifier("dsql_guard", key), sql.Literal(text)))
