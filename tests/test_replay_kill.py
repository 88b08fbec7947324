"""Property: random multi-table workloads, the replayer killed at random points and restarted, end
with target == source exactly, every source transaction applied exactly once.

Kill points (the replayer's ``fault`` hook raises there, as a dying process would stop):
``decode`` (mid-decode, any message), ``apply`` (mid-batch, after a statement inside the target
transaction), ``committed`` (between the target commit and the slot advance), ``advanced`` (right
after the advance).
"""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reconcile.budget import Budget
from reconcile.config import PostgresEndpoint, TableSpec
from reconcile.connections import connect
from reconcile.errors import TerminalFailure
from reconcile.occ import RetryPolicy
from reconcile.replay import Replayer, ReplaySettings, init_capture, read_watermark

TABLES = (TableSpec("app.a", ("id",)), TableSpec("app.b", ("k", "j")))
POINTS = ("decode", "apply", "committed", "advanced")
BIG = "B" * 3000  # stored out of line (STORAGE EXTERNAL): an update of another column sends 'u' for it


class Killed(Exception):
    """The replayer 'died' at a kill point."""


ids = st.integers(1, 6)
op = st.one_of(
    st.tuples(st.just("a"), ids, st.sampled_from(["0.01", "12.50", "-3.10", "99999.99"]),
              st.sampled_from(["x", "ü ß", None, "tab\t'q\"\\"]), st.booleans()),
    st.tuples(st.just("del_a"), ids),
    st.tuples(st.just("key_a"), ids, ids),
    st.tuples(st.just("touch_a"), ids),
    st.tuples(st.just("b"), st.sampled_from(["k1", "K2", "ä"]), st.integers(1, 2),
              st.sampled_from(["2024-01-01 00:00:00+00", "1999-12-31 23:59:59.999999-08"]),
              st.sampled_from(['{"a": 1}', '[1, 2.50, "x"]', None])),
    st.tuples(st.just("del_b"), st.sampled_from(["k1", "K2", "ä"]), st.integers(1, 2)),
)
txns = st.lists(st.lists(op, min_size=1, max_size=4), min_size=1, max_size=6)
kill = st.one_of(st.tuples(st.just("decode"), st.integers(1, 30)), st.tuples(st.just("apply"), st.integers(1, 5)),
                 st.tuples(st.sampled_from(["committed", "advanced"]), st.integers(1, 3)))
# Phases: some source transactions commit, then a replayer runs and is killed at its kill point.
phases = st.lists(st.tuples(txns, kill), min_size=1, max_size=4)


def execute(conn: psycopg.Connection, txn: list[tuple]) -> int:
    """Run one source transaction; returns the rows it changed."""
    changed = 0
    with conn.transaction():
        for o in txn:
            if o[0] == "a":
                cur = conn.execute("INSERT INTO app.a VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE "
                                   "SET n = EXCLUDED.n, v = EXCLUDED.v, big = EXCLUDED.big",
                                   (o[1], o[2], o[3], BIG + str(o[1]) if o[4] else "small"))
            elif o[0] == "del_a":
                cur = conn.execute("DELETE FROM app.a WHERE id = %s", (o[1],))
            elif o[0] == "key_a":
                cur = conn.execute("UPDATE app.a SET id = %s WHERE id = %s AND NOT EXISTS "
                                   "(SELECT 1 FROM app.a WHERE id = %s)", (o[2], o[1], o[2]))
            elif o[0] == "touch_a":
                cur = conn.execute("UPDATE app.a SET n = n + 1 WHERE id = %s", (o[1],))
            elif o[0] == "b":
                cur = conn.execute("INSERT INTO app.b VALUES (%s, %s, %s, %s) ON CONFLICT (k, j) DO UPDATE "
                                   "SET ts = EXCLUDED.ts, doc = EXCLUDED.doc", o[1:])
            else:
                cur = conn.execute("DELETE FROM app.b WHERE k = %s AND j = %s", o[1:])
            changed += max(cur.rowcount, 0)
    return changed


def fingerprint(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        conn.execute("SET timezone = 'UTC'")
        return [conn.execute(f"SELECT count(*), string_agg(t::text, E'\\n' ORDER BY {k}) FROM {t} AS t").fetchone()
                for t, k in (("app.a", "id"), ("app.b", "k COLLATE \"C\", j"))]


@pytest.fixture
def pair(source_db, target_db):
    ddl_a = "CREATE TABLE app.a (id int PRIMARY KEY, n numeric(12,2), v text, big text)"
    ddl_b = "CREATE TABLE app.b (k text, j int, ts timestamptz, doc json, PRIMARY KEY (k, j))"
    slot = "k_" + psycopg.conninfo.conninfo_to_dict(source_db)["dbname"].lower()
    with psycopg.connect(source_db, autocommit=True) as conn:
        for stmt in ("CREATE SCHEMA app", ddl_a, "ALTER TABLE app.a ALTER COLUMN big SET STORAGE EXTERNAL", ddl_b):
            conn.execute(stmt)
        init_capture(conn, TABLES, slot_name=slot, publication="kill_pub")
    with psycopg.connect(target_db, autocommit=True) as conn:
        for stmt in ("CREATE SCHEMA app", ddl_a, ddl_b):
            conn.execute(stmt)
    yield source_db, target_db, slot
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                     (slot,))


def reset(source_db: str, target_db: str, slot: str) -> None:
    """A fresh start for one example: empty tables on both sides, a new slot, no watermark."""
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                     (slot,))
        conn.execute("TRUNCATE app.a, app.b")  # no slot exists now: nothing decodes this
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("DELETE FROM app.a")
        conn.execute("DELETE FROM app.b")
        if conn.execute("SELECT to_regclass('reconcile.replay_state')").fetchone()[0]:
            conn.execute("DELETE FROM reconcile.replay_state")


def replayer(source_db: str, target_db: str, slot: str, peek: int, fault=None) -> Replayer:
    return Replayer(source=lambda: psycopg.connect(source_db, autocommit=True),
                    target=lambda: connect(PostgresEndpoint("target", target_db)), tables=TABLES,
                    settings=ReplaySettings(slot_name=slot, publication="kill_pub", peek_changes=peek,
                                            require_backfill=False),
                    budget=Budget(max_rows=12, fraction=0.5),  # about 5 rows per target transaction
                    policy=RetryPolicy(max_attempts=5, base_delay=0.001, max_delay=0.01), fault=fault)


def killer(point: str, after: int):
    seen = {"n": 0, "fired": False}

    def fault(where: str) -> None:
        if where == point and not seen["fired"]:
            seen["n"] += 1
            if seen["n"] >= after:
                seen["fired"] = True
                raise Killed(f"killed at {where} #{seen['n']}")

    return fault, seen


_TWO_TXNS = [[("a", 1, "12.50", "x", True), ("b", "k1", 1, "2024-01-01 00:00:00+00", '{"a": 1}')],
             [("touch_a", 1), ("del_b", "k1", 1)]]


def _every_point(f):
    """Explicit examples that kill at every point (twice each), whatever the generated ones draw."""
    for point in POINTS:
        for peek in (3, 40):
            f = example(plan=[(_TWO_TXNS, (point, 1))], peek=peek)(f)
    return f


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@_every_point
@given(plan=phases, peek=st.integers(3, 40))
def killed_and_restarted_replay_ends_equal_to_the_source_exactly_once(pair, kills, plan, peek):
    """The property, for one example (hypothesis calls it once per example)."""
    source_db, target_db, slot = pair
    reset(source_db, target_db, slot)
    expected_txns = 0
    with psycopg.connect(source_db, autocommit=True) as conn:
        for workload, (point, after) in plan:
            for txn in workload:
                expected_txns += execute(conn, txn) > 0
            fault, seen = killer(point, after)
            with replayer(source_db, target_db, slot, peek, fault) as r:
                try:
                    r.run(until_caught_up=True)
                except TerminalFailure as died:  # the run's error boundary classifies what killed it
                    assert isinstance(died.__cause__, Killed), died
            kills[point] += seen["fired"]
    with replayer(source_db, target_db, slot, peek) as r:
        final = r.run(until_caught_up=True)
        with psycopg.connect(target_db) as conn:
            watermark = read_watermark(conn, slot)
    assert final.status == "done" and final.caught_up
    assert fingerprint(source_db) == fingerprint(target_db)
    assert watermark.applied_txns == expected_txns  # no source transaction applied twice or lost


def test_killed_and_restarted_replay_ends_equal_to_the_source_exactly_once(pair):
    kills = dict.fromkeys(POINTS, 0)
    killed_and_restarted_replay_ends_equal_to_the_source_exactly_once(pair, kills)
    # The examples really did kill the replayer at every point (else the property proved little).
    assert all(kills[p] >= 2 for p in POINTS), kills
