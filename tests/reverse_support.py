"""Helpers for the reverse-replay tests: streams, CDC publishers, an independent oracle."""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql

from reconcile.local.cdc import CdcPublisher, Chaos
from reconcile.local.kinesis import client, ensure_stream
from reconcile.reverse import source_state
from reconcile.reverse.settings import ReverseSettings


def new_stream(kinesis_url: str, shards: int = 2):
    """A fresh Kinesis stream on the local server: (client, name)."""
    kc = client(kinesis_url)
    name = "cdc-" + uuid.uuid4().hex[:10]
    ensure_stream(kc, name, shards=shards)
    return kc, name


def publisher(target_db: str, kc, stream: str, **chaos) -> CdcPublisher:
    pub = CdcPublisher(target_db, kc, stream, chaos=Chaos(**chaos))
    pub.enable()
    return pub


def init_source(source_db: str, stream: str, *, start_ts_ns: int = 0) -> ReverseSettings:
    """Reverse state on the source; the settings a test replayer uses (settle 0: the stream is complete)."""
    origin = ReverseSettings().origin_name  # origins are server-wide and hold a state slot each: share one
    with psycopg.connect(source_db, autocommit=True) as conn:
        source_state.init(conn, stream=stream, origin=origin, start_ts_ns=start_ts_ns)
    return ReverseSettings(stream_name=stream, origin_name=origin, settle_ms=0, poll_interval=0.01)


def rows(url: str, table: str, key: str) -> list[tuple]:
    """Every row as text, in key order (the oracle compares these through psycopg, not our counters)."""
    schema, name = table.split(".")
    with psycopg.connect(url) as conn:
        conn.execute("SET timezone = 'UTC'")
        return conn.execute(sql.SQL("SELECT t::text FROM {} AS t ORDER BY {}").format(
            sql.Identifier(schema, name), sql.Identifier(key))).fetchall()


MARKER_FN = """
CREATE FUNCTION oracle.mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO oracle.writes (tbl, op, image) VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP,
        CASE WHEN TG_OP = 'DELETE' THEN row_to_json(OLD)::text ELSE row_to_json(NEW)::text END);
    RETURN NULL;
END $$"""


def install_markers(url: str, tables: list[str], *, target: bool = False) -> None:
    """An append-only log of every row written (``oracle.writes``): a test-only trigger, ``ENABLE ALWAYS`` so it
    fires under ``session_replication_role = replica`` too. On the DSQL stand-in it is installed past the guards
    (``dsql_guard.internal``): an oracle, never product code."""
    with psycopg.connect(url, autocommit=True) as conn:
        if target:
            conn.execute("SET dsql_guard.internal = on")
        conn.execute("CREATE SCHEMA oracle")
        conn.execute("CREATE TABLE oracle.writes (n bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tbl text, "
                     "op text, image text, at timestamptz DEFAULT clock_timestamp())")
        conn.execute(MARKER_FN)
        for t in tables:
            schema, name = t.split(".")
            tid = sql.Identifier(schema, name)
            conn.execute(sql.SQL("CREATE TRIGGER oracle_mark AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW "
                                 "EXECUTE FUNCTION oracle.mark()").format(tid))
            conn.execute(sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER oracle_mark").format(tid))


def written_twice(url: str) -> list[tuple]:
    """Row images written more than once (each write of the tests' workloads is unique, so: none)."""
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT tbl, image, count(*) FROM oracle.writes WHERE op <> 'DELETE' "
                            "GROUP BY tbl, image HAVING count(*) > 1 LIMIT 5").fetchall()
