"""The retry helper: classification and backoff without a server, real conflicts on the stand-in."""

from __future__ import annotations

import contextlib
import pickle
import random
import threading
import time

import psycopg
import pytest
from psycopg import errors, pq

from reconcile.errors import ConnectionFailed, LimitExceeded, RetriesExhausted, TransientError
from reconcile.occ import (
    Kind,
    Reconnector,
    RetryCounters,
    RetryPolicy,
    classify,
    retrying,
    run_with_retry,
)


def err(sqlstate: str, message: str = "boom") -> psycopg.Error:
    return errors.lookup(sqlstate)(message)


# --- classification --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc, kind, marker, retryable",
    [
        (err("40001", "change conflicts with another transaction, please retry: (OC000)"), Kind.CONFLICT, "OC000", True),
        (err("40001", "schema has been updated by another transaction, please retry: (OC001)"), Kind.CONFLICT, "OC001", True),
        (err("40001", "could not serialize access due to concurrent update"), Kind.CONFLICT, None, True),
        (err("40001", "unrelated OC0001 text"), Kind.CONFLICT, None, True),
        (err("53300", "too many connections"), Kind.THROTTLED, None, True),
        (err("53400", "rate exceeded"), Kind.THROTTLED, None, True),
        (err("08006"), Kind.CONNECTION, None, True),
        (err("57P01", "terminating connection due to administrator command"), Kind.CONNECTION, None, True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), Kind.CONNECTION, None, True),
        (psycopg.OperationalError("FATAL: unable to accept connection, waking up cluster"), Kind.CONNECTION, None, True),
        (psycopg.OperationalError("FATAL: password authentication failed for user"), Kind.FATAL, None, False),
        (psycopg.OperationalError("FATAL: Signature expired: 20250101T000000Z"), Kind.AUTH_EXPIRED, None, True),
        (err("28P01", "Signature expired"), Kind.AUTH_EXPIRED, None, True),
        (err("28P01", "bad password"), Kind.FATAL, None, False),
        (err("XX000", "server unavailable"), Kind.UNAVAILABLE, None, True),
        (err("XX000", "internal error"), Kind.FATAL, None, False),
        (err("54000", "transaction row limit exceeded"), Kind.LIMIT, None, False),
        (err("25P04", "transaction timeout"), Kind.LIMIT, None, False),
        (err("23505", "duplicate key value"), Kind.FATAL, None, False),
        (ValueError("not a database error"), Kind.FATAL, None, False),
    ],
)
def test_classify(exc, kind, marker, retryable):
    failure = classify(exc)
    assert (failure.kind, failure.marker, failure.retryable) == (kind, marker, retryable)


def test_server_unavailable_is_retried_only_when_idempotent():
    assert classify(err("XX000", "server unavailable"), idempotent=False).retryable is False


# --- backoff ---------------------------------------------------------------------------------


def test_policy_caps_and_full_jitter():
    policy = RetryPolicy(max_attempts=8, base_delay=0.05, max_delay=1.0)
    assert [policy.cap(n) for n in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.cap(10_000) == 1.0  # no overflow
    rng = random.Random(1)
    delays = [policy.delay(n, rng) for n in range(200)]
    assert all(0 <= d <= policy.cap(n) for n, d in enumerate(delays))
    rng2 = random.Random(1)
    assert delays == [policy.delay(n, rng2) for n in range(200)]  # deterministic with a seeded rng
    assert min(delays[10:]) < 0.25 < max(delays[10:])              # full jitter: spread over [0, cap]
    for bad in (dict(max_attempts=0), dict(base_delay=-1), dict(base_delay=2, max_delay=1)):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


# --- the loop, with a fake connection --------------------------------------------------------


class FakeConn:
    """Enough of psycopg.Connection for run_with_retry: a transaction block and a state."""

    def __init__(self) -> None:
        self.autocommit = True
        self.closed = False
        self.transactions = 0
        self.info = type("Info", (), {"transaction_status": pq.TransactionStatus.IDLE})()

    @contextlib.contextmanager
    def transaction(self):
        self.transactions += 1
        yield

    def close(self) -> None:
        self.closed = True


def scripted(*outcomes):
    """fn failing with each exception in turn, then returning the last non-exception outcome."""
    calls = []

    def fn(conn):
        calls.append(conn)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    fn.calls = calls
    return fn


def test_retries_the_whole_transaction_with_jittered_backoff():
    conn, slept, counters = FakeConn(), [], RetryCounters()
    fn = scripted(err("40001", "(OC000)"), err("40001", "(OC001)"), err("53400"), "done")
    policy = RetryPolicy(base_delay=0.05, max_delay=5.0)
    result = run_with_retry(conn, fn, policy=policy, counters=counters, sleep=slept.append, rng=random.Random(7))
    assert result == "done"
    assert conn.transactions == 4  # a new transaction block per attempt
    expected_rng = random.Random(7)
    assert slept == [expected_rng.uniform(0, 0.05), expected_rng.uniform(0, 0.1), expected_rng.uniform(0, 0.2)]
    c = counters.as_dict()
    assert (c["attempts"], c["retries"], c["conflicts"], c["oc000"], c["oc001"], c["throttled"]) == (4, 3, 2, 1, 1, 1)
    assert c["total_sleep"] == pytest.approx(sum(slept))
    assert counters.conflict_rate == pytest.approx(0.5)


def test_gives_up_after_max_attempts_naming_the_sqlstate():
    counters, slept = RetryCounters(), []
    fn = scripted(*[err("40001", "(OC000)")] * 3)
    with pytest.raises(RetriesExhausted) as info:
        run_with_retry(FakeConn(), fn, policy=RetryPolicy(max_attempts=3), counters=counters,
                       sleep=slept.append, rng=random.Random(0))
    exc = info.value
    assert isinstance(exc, TransientError)
    assert (exc.sqlstate, exc.attempts, exc.marker) == ("40001", 3, "OC000")
    assert "3 attempts" in str(exc) and "SQLSTATE 40001 (OC000)" in str(exc)
    assert isinstance(exc.__cause__, errors.SerializationFailure)
    assert (counters.attempts, counters.retries, counters.gave_up, len(slept)) == (3, 2, 1, 2)
    assert str(pickle.loads(pickle.dumps(exc))) == str(exc)


def test_limit_errors_are_never_retried():
    counters, slept = RetryCounters(), []
    with pytest.raises(LimitExceeded, match=r"split the work into smaller transactions\.$") as info:
        run_with_retry(FakeConn(), scripted(err("54000", "transaction row limit exceeded")),
                       counters=counters, sleep=slept.append)
    assert "transaction row limit exceeded" in str(info.value)
    assert (counters.attempts, counters.retries, slept) == (1, 0, [])


@pytest.mark.parametrize("exc", [err("23505"), err("XX000", "internal error"), ValueError("bug")])
def test_other_errors_are_re_raised_at_once(exc):
    counters = RetryCounters()
    with pytest.raises(type(exc)):
        run_with_retry(FakeConn(), scripted(exc), counters=counters, sleep=pytest.fail)
    assert counters.attempts == 1


def test_unknown_commit_outcome_retried_only_for_idempotent_work():
    unavailable = err("XX000", "server unavailable")
    with pytest.raises(errors.InternalError_):
        run_with_retry(FakeConn(), scripted(unavailable), idempotent=False, sleep=pytest.fail)
    counters = RetryCounters()
    assert run_with_retry(FakeConn(), scripted(unavailable, 1), counters=counters, sleep=lambda s: None) == 1
    assert counters.unavailable == 1


def test_a_dropped_connection_is_reopened_through_the_factory():
    opened: list[FakeConn] = []

    def factory():
        opened.append(FakeConn())
        return opened[-1]

    def fn(conn):
        if len(opened) == 1:
            conn.closed = True
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return "ok"

    counters = RetryCounters()
    assert run_with_retry(factory, fn, counters=counters, sleep=lambda s: None) == "ok"
    assert len(opened) == 2 and all(c.closed for c in opened)  # the factory's connections are closed after
    assert (counters.connection_errors, counters.retries) == (1, 1)


def test_a_failing_connect_counts_as_an_attempt():
    calls = []

    def factory():
        calls.append(1)
        if len(calls) < 3:
            raise psycopg.OperationalError("connection refused")
        return FakeConn()

    counters = RetryCounters()
    assert run_with_retry(factory, lambda c: 5, counters=counters, sleep=lambda s: None) == 5
    assert (counters.attempts, counters.connection_errors) == (3, 2)


def test_an_expired_token_is_renewed_once():
    conns = []

    def factory():
        conns.append(FakeConn())
        raise psycopg.OperationalError("FATAL: Signature expired")

    with pytest.raises(psycopg.OperationalError):
        run_with_retry(factory, lambda c: 1, sleep=lambda s: None)
    assert len(conns) == 2


def test_a_caller_owned_connection_cannot_be_reopened():
    conn = FakeConn()

    def fn(c):
        c.closed = True
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    with pytest.raises(ConnectionFailed, match="pass a connection factory"):
        run_with_retry(conn, fn, sleep=lambda s: None)


def test_needs_an_autocommit_connection_outside_a_transaction():
    conn = FakeConn()
    conn.autocommit = False
    with pytest.raises(ValueError, match="autocommit"):
        run_with_retry(conn, lambda c: 1)
    conn = FakeConn()
    conn.info.transaction_status = pq.TransactionStatus.INTRANS
    with pytest.raises(ValueError, match="SAVEPOINT"):
        run_with_retry(conn, lambda c: 1)


def test_decorator_form():
    counters = RetryCounters()

    @retrying(counters=counters, sleep=lambda s: None)
    def add(conn, a, b=0):
        add.calls += 1
        if add.calls == 1:
            raise err("40001")
        return a + b

    add.calls = 0
    assert add(FakeConn(), 2, b=3) == 5
    assert counters.retries == 1 and add.__name__ == "add"


def test_counters_are_thread_safe_picklable_and_mergeable():
    counters = RetryCounters()

    def bump():
        for _ in range(2000):
            counters.add(attempts=1, conflicts=1, total_sleep=0.5)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (counters.attempts, counters.conflicts, counters.total_sleep) == (16_000, 16_000, 8000.0)
    copy = pickle.loads(pickle.dumps(counters))
    assert copy == counters and copy.conflict_rate == 1.0
    copy.merge(counters)
    assert copy.attempts == 32_000
    assert set(counters.as_dict()) >= {"attempts", "retries", "conflicts", "oc000", "oc001",
                                       "connection_errors", "gave_up", "total_sleep", "conflict_rate"}
    with pytest.raises(AttributeError, match="valid"):
        counters.add(nope=1)
    assert RetryCounters().conflict_rate == 0.0


# --- real conflicts on the DSQL stand-in -----------------------------------------------------


def _connect(url: str):
    return lambda: psycopg.connect(url, autocommit=True)


@pytest.fixture
def counter_db(target_db):
    with psycopg.connect(target_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL)")
        conn.execute("INSERT INTO counter VALUES (1, 0)")
        conn.execute("CREATE TABLE wide (id int PRIMARY KEY, v text)")
    return target_db


@pytest.mark.parametrize("pipeline", [False, True])
def test_concurrent_read_modify_write_ends_exact(counter_db, pipeline):
    threads_n, increments = 4, 50
    counters = RetryCounters()
    policy = RetryPolicy(max_attempts=200, base_delay=0.001, max_delay=0.05)
    failures: list[BaseException] = []

    def increment(conn):
        (n,) = conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()
        time.sleep(0.001)  # widen the window between read and write
        conn.execute("UPDATE counter SET n = %s WHERE id = 1", (n + 1,))

    def worker(seed: int):
        try:
            with Reconnector(_connect(counter_db)) as conns:
                rng = random.Random(seed)
                for _ in range(increments):
                    run_with_retry(conns, increment, policy=policy, counters=counters, rng=rng, pipeline=pipeline)
        except BaseException as exc:  # surfaced in the main thread
            failures.append(exc)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    assert not failures
    with psycopg.connect(counter_db) as conn:
        assert conn.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0] == threads_n * increments
    assert counters.conflicts > 0
    assert counters.attempts == threads_n * increments + counters.retries
    assert counters.gave_up == 0


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_killed_session_is_retried_on_a_new_connection(counter_db, pipeline):
    counters = RetryCounters()
    killed = []

    def increment(conn):
        if not killed:
            killed.append(conn.info.backend_pid)
            with psycopg.connect(counter_db, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        conn.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
        return conn.info.backend_pid

    pid = run_with_retry(_connect(counter_db), increment, counters=counters, sleep=lambda s: None, pipeline=pipeline)
    assert pid != killed[0]
    assert counters.connection_errors == 1 and counters.attempts == 2
    with psycopg.connect(counter_db) as conn:
        assert conn.execute("SELECT n FROM counter").fetchone()[0] == 1


@pytest.mark.parametrize("pipeline", [False, True])
def test_3001_rows_raise_limit_exceeded_after_one_attempt(counter_db, pipeline):
    counters = RetryCounters()
    with psycopg.connect(counter_db, autocommit=True) as conn:
        with pytest.raises(LimitExceeded, match="split the work into smaller transactions"):
            run_with_retry(
                conn,
                lambda c: c.execute("INSERT INTO wide SELECT g, 'x' FROM generate_series(1, 3001) g"),
                counters=counters, pipeline=pipeline,
            )
        assert counters.attempts == 1 and counters.retries == 0
        assert conn.execute("SELECT count(*) FROM wide").fetchone()[0] == 0
        # the connection is still usable, and 3,000 rows fit
        run_with_retry(conn, lambda c: c.execute("INSERT INTO wide SELECT g, 'x' FROM generate_series(1, 3000) g"),
                       pipeline=pipeline)
        assert conn.execute("SELECT count(*) FROM wide").fetchone()[0] == 3000


def test_a_pipelined_transaction_is_all_or_nothing_and_leaves_the_connection_idle(counter_db):
    """Pipelined, the writes travel with the COMMIT: a failing statement, or an exception raised in the
    work after its read, commits none of them, and the connection is ready for the next transaction."""
    from psycopg import errors, pq

    class Moved(Exception):
        pass

    with psycopg.connect(counter_db, autocommit=True) as conn:
        def dup(c):
            c.execute("INSERT INTO wide VALUES (1, 'a')")
            c.execute("INSERT INTO wide VALUES (1, 'again')")  # 23505: the rest, COMMIT included, is skipped
            c.execute("UPDATE counter SET n = n + 1 WHERE id = 1")

        def moved(c):
            c.execute("INSERT INTO wide VALUES (2, 'b')")
            (n,) = c.execute("SELECT n FROM counter WHERE id = 1").fetchone()
            raise Moved(n)

        with pytest.raises(errors.UniqueViolation):
            run_with_retry(conn, dup, pipeline=True)
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        with pytest.raises(Moved):
            run_with_retry(conn, moved, pipeline=True)
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM wide").fetchone()[0] == 0
        assert conn.execute("SELECT n FROM counter").fetchone()[0] == 0

        def ok(c):
            (n,) = c.execute("SELECT n FROM counter WHERE id = 1").fetchone()
            c.execute("INSERT INTO wide VALUES (3, 'c')")
            c.execute("UPDATE counter SET n = %s WHERE id = 1", (n + 5,))
            return n

        assert run_with_retry(conn, ok, pipeline=True) == 0
        assert conn.execute("SELECT n, (SELECT count(*) FROM wide) FROM counter").fetchone() == (5, 1)


def test_refuses_to_nest_inside_an_open_transaction(counter_db):
    with psycopg.connect(counter_db, autocommit=True) as conn:
        with conn.transaction():
            with pytest.raises(ValueError, match="SAVEPOINT"):
                run_with_retry(conn, lambda c: None)
