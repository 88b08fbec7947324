"""The one retry helper: every target transaction runs through :func:`run_with_retry`.

Aurora DSQL uses optimistic concurrency: a conflicting transaction fails (at a statement or at
COMMIT) with SQLSTATE ``40001`` and a marker, ``OC000`` (data conflict) or ``OC001`` (schema
changed). The cure is to run the *whole* transaction again, so the helper owns the transaction
block: ``fn(conn)`` runs inside one ``with conn.transaction():`` on an autocommit connection, and
is called again from the start on a retryable failure. Nothing nests: psycopg would turn a nested
block into a SAVEPOINT, which DSQL rejects.

What is retried (see ../shared/dsql.md), classified by SQLSTATE and marker, never by full text:

======================  =====================================================================
``40001``               OCC conflict (OC000 / OC001), or a REPEATABLE READ serialization
                        failure on the local stand-in
``53300`` / ``53400``   too many connections / connection rate exceeded
``08xxx``, ``57P0x``,   the connection dropped or the server went away: reopened through the
no SQLSTATE             factory when one was given
``XX000``               ``server unavailable``: the commit outcome is unknown, so retried only
                        when the work is idempotent (``idempotent=True``)
======================  =====================================================================

``54000`` (a transaction limit) is never retried: it becomes :class:`LimitExceeded`. Everything
else is re-raised untouched. Backoff is capped exponential with full jitter; retries, conflicts
and connection errors are counted in :class:`RetryCounters` (the conflict rate is a cutover
criterion).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, Union

import psycopg
from psycopg import pq

from reconcile.errors import (
    ConnectionFailed,
    LimitExceeded,
    ReconcileError,
    RetriesExhausted,
    TerminalFailure,
    TransientFailure,
)

__all__ = [
    "DEFAULT_POLICY",
    "Failure",
    "Kind",
    "Reconnector",
    "RetriesExhausted",
    "RetryCounters",
    "RetryPolicy",
    "classify",
    "error_boundary",
    "retry_step",
    "retrying",
    "run_with_retry",
    "scrubbed",
    "stage_error",
]

log = logging.getLogger(__name__)

R = TypeVar("R")
ConnectionFactory = Callable[[], psycopg.Connection]
Target = Union[psycopg.Connection, "Reconnector", ConnectionFactory]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transaction is retried.

    The delay before retry ``n`` (0 for the first) is drawn uniformly from
    ``[0, min(max_delay, base_delay * 2**n)]`` ("full jitter"): concurrent writers that conflicted
    spread out instead of colliding again in lock step.
    """

    max_attempts: int = 8
    """Attempts in all, the first included."""
    base_delay: float = 0.05
    """Seconds: the cap of the first retry's delay, doubled at every retry."""
    max_delay: float = 5.0
    """Seconds: no single delay exceeds this."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts!r}")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError(
                f"delays must satisfy 0 <= base_delay <= max_delay, got {self.base_delay!r}, {self.max_delay!r}"
            )

    def cap(self, retry: int) -> float:
        """Largest delay before retry number ``retry`` (0-based)."""
        return min(self.max_delay, self.base_delay * 2 ** min(retry, 62))

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """A jittered delay before retry number ``retry`` (0-based)."""
        return (rng or random).uniform(0, self.cap(retry))


DEFAULT_POLICY = RetryPolicy()


@dataclass
class RetryCounters:
    """What the retry helper saw; safe to share between threads, picklable, mergeable."""

    attempts: int = 0
    """Transactions started (first tries and retries)."""
    retries: int = 0
    """Attempts that were retried after a retryable failure."""
    conflicts: int = 0
    """Failures with SQLSTATE 40001 (OCC conflicts)."""
    oc000: int = 0
    """Conflicts marked OC000 (data conflict)."""
    oc001: int = 0
    """Conflicts marked OC001 (schema changed)."""
    connection_errors: int = 0
    """Dropped or refused connections (08xxx, 57P0x, lost without SQLSTATE, expired token)."""
    throttled: int = 0
    """53300 too many connections / 53400 connection rate exceeded."""
    unavailable: int = 0
    """XX000 server unavailable."""
    gave_up: int = 0
    """Calls that ran out of attempts (RetriesExhausted)."""
    total_sleep: float = 0.0
    """Seconds spent in backoff."""
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def add(self, **deltas: float) -> None:
        """Add to one or more counters atomically: ``counters.add(retries=1, total_sleep=0.2)``."""
        with self._lock:
            for name, value in deltas.items():
                if name.startswith("_") or name not in self._names():
                    raise AttributeError(f"RetryCounters has no counter {name!r}; valid: {', '.join(self._names())}")
                setattr(self, name, getattr(self, name) + value)

    def merge(self, other: RetryCounters) -> None:
        """Add every counter of ``other`` into this one."""
        self.add(**other.as_dict(include_rate=False))

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if not f.name.startswith("_"))

    def as_dict(self, *, include_rate: bool = True) -> dict[str, float]:
        """A snapshot of the counters (plus ``conflict_rate``) for reports and logs."""
        with self._lock:
            out: dict[str, float] = {name: getattr(self, name) for name in self._names()}
        if include_rate:
            out["conflict_rate"] = self.conflict_rate
        return out

    @property
    def conflict_rate(self) -> float:
        """Conflicts per attempt (0.0 before any attempt)."""
        return self.conflicts / self.attempts if self.attempts else 0.0

    def __getstate__(self) -> dict[str, Any]:
        return self.as_dict(include_rate=False)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)


class Kind(str, enum.Enum):
    """What a failure means for the transaction that hit it."""

    CONFLICT = "conflict"
    THROTTLED = "throttled"
    CONNECTION = "connection"
    AUTH_EXPIRED = "auth_expired"
    UNAVAILABLE = "unavailable"
    LIMIT = "limit"
    FATAL = "fatal"


@dataclass(frozen=True)
class Failure:
    """A classified database failure."""

    kind: Kind
    sqlstate: str | None
    marker: str | None = None
    """``OC000`` / ``OC001`` on a DSQL conflict."""
    retryable: bool = False


_MARKER = re.compile(r"\b(OC00[01])\b")
# SQLSTATEs after which the session is gone: admin shutdown, crash shutdown, cannot connect now.
_SESSION_GONE = frozenset({"57P01", "57P02", "57P03"})
_THROTTLED = frozenset({"53300", "53400"})


def policy_from(config) -> RetryPolicy:
    """The retry policy of a config's ``[retry]`` section (a :class:`reconcile.config.Config`)."""
    r = config.retry
    return RetryPolicy(max_attempts=r.max_attempts, base_delay=r.base_delay, max_delay=r.max_delay)


def _primary_message(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return primary or str(exc)


def classify(exc: BaseException, *, idempotent: bool = True, conn: Any = None) -> Failure:
    """Classify an exception raised by a target transaction.

    Args:
        exc: what the transaction raised.
        idempotent: whether running the work twice is harmless (``XX000 server unavailable``
            leaves the commit outcome unknown, so it is retried only then).
        conn: the connection the work ran on, to tell a dropped connection from a usage error.
    """
    if not isinstance(exc, psycopg.Error):
        return Failure(Kind.FATAL, None)
    state = exc.sqlstate
    if state == "40001":
        match = _MARKER.search(_primary_message(exc))
        return Failure(Kind.CONFLICT, state, match.group(1) if match else None, retryable=True)
    if state in _THROTTLED:
        return Failure(Kind.THROTTLED, state, retryable=True)
    if state == "54000" or state == "25P04":
        # 25P04: the local stand-in's transaction_timeout, its form of DSQL's 5-minute age limit.
        return Failure(Kind.LIMIT, state)
    if state == "XX000":
        if "server unavailable" in _primary_message(exc).lower():
            return Failure(Kind.UNAVAILABLE, state, retryable=idempotent)
        return Failure(Kind.FATAL, state)
    if state is not None and state.startswith("28"):
        if "signature expired" in _primary_message(exc).lower():
            return Failure(Kind.AUTH_EXPIRED, state, retryable=True)
        return Failure(Kind.FATAL, state)
    if state is not None and (state.startswith("08") or state in _SESSION_GONE):
        return Failure(Kind.CONNECTION, state, retryable=True)
    if state is None and isinstance(exc, psycopg.OperationalError):
        # libpq lost the connection or could not open one: no SQLSTATE reaches the client.
        text = str(exc).lower()
        if "signature expired" in text:
            return Failure(Kind.AUTH_EXPIRED, None, retryable=True)
        if "authentication failed" in text:
            return Failure(Kind.FATAL, None)
        return Failure(Kind.CONNECTION, None, retryable=True)
    if state is None and conn is not None and getattr(conn, "closed", False):
        return Failure(Kind.CONNECTION, None, retryable=True)
    return Failure(Kind.FATAL, state)


def stage_error(exc: BaseException, step: str, *, idempotent: bool = True, conn: Any = None,
                redact: Callable[[str], str] | None = None) -> ReconcileError:
    """The :class:`~reconcile.errors.ReconcileError` ``exc`` stands for at a stage's error boundary.

    Raise the result ``from exc``, so the cause stays attached. A reconcile error is returned as it
    is (it was classified where it was raised). A database error is classified by :func:`classify`,
    the one SQLSTATE table: what a retry can get past (a dropped connection, throttling, an OCC
    conflict) becomes :class:`~reconcile.errors.TransientFailure`, the rest (a 42xxx error, a
    missing privilege, a limit) :class:`~reconcile.errors.TerminalFailure`, both carrying the
    SQLSTATE. A network error of the OS is transient; anything else is a bug or input the code did
    not expect, which a retry repeats: terminal.

    Args:
        exc: what the step raised.
        step: names the step in the message ("backfill of ledger.entries chunk 3").
        idempotent: whether the step's work may run twice (see :func:`classify`).
        conn: the connection the step used, to tell a dropped connection from a usage error.
        redact: removes secrets from the driver's text (e.g. :func:`reconcile.config.redact` bound
            to the config's secrets); the driver's primary message is used, never its full text.

    >>> stage_error(psycopg.errors.UndefinedTable("relation x does not exist"), "the copy").__class__.__name__
    'TerminalFailure'
    >>> stage_error(psycopg.OperationalError("server closed the connection unexpectedly"), "the copy").retryable
    True
    """
    if isinstance(exc, ReconcileError):
        return exc
    clean = redact or (lambda text: text)
    if isinstance(exc, psycopg.Error):
        failure = classify(exc, idempotent=idempotent, conn=conn)
        retryable = failure.retryable or failure.kind is Kind.AUTH_EXPIRED
        cls = TransientFailure if retryable else TerminalFailure
        return cls(step, " ".join(clean(_primary_message(exc)).split()), failure.sqlstate)
    text = " ".join(clean(str(exc)).split())
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return TransientFailure(step, reason)
    return TerminalFailure(step, reason)


def scrubbed(exc: BaseException, redact: Callable[[str], str] | None) -> BaseException:
    """``exc`` fit to be kept as a cause: itself, or a copy of its type with the secrets removed.

    A cause is printed with every traceback that logs the error; when ``redact`` changes its text (a
    driver error quoting a password), a copy carrying the redacted text (and the traceback, not the
    original's own causes) stands in for it.
    """
    if redact is None:
        return exc
    text = str(exc)
    clean = redact(text)
    if clean == text:
        return exc
    try:
        copy = type(exc)(clean)
    except Exception:  # a type that cannot be built from its message
        copy = RuntimeError(f"{type(exc).__name__}: {clean}")
    return copy.with_traceback(exc.__traceback__)


@contextlib.contextmanager
def error_boundary(step: str, *, idempotent: bool = True, conn: Any = None,
                   redact: Callable[[str], str] | None = None) -> Iterator[None]:
    """A stage's one error boundary: whatever escapes leaves as a classified reconcile error.

    ``with error_boundary("replay of slot s"): ...`` re-raises a reconcile error untouched and turns
    any other exception into :func:`stage_error`'s answer, raised from it (from its :func:`scrubbed`
    form when it quotes a secret); ``KeyboardInterrupt`` and ``SystemExit`` pass through.
    """
    try:
        yield
    except ReconcileError:
        raise
    except Exception as exc:
        raise stage_error(exc, step, idempotent=idempotent, conn=conn, redact=redact) from scrubbed(exc, redact)


def retry_step(fn: Callable[[], R], *, policy: RetryPolicy = DEFAULT_POLICY, label: str = "step",
               sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> R:
    """Run a whole read-only or idempotent step again while it fails with a transient error.

    For steps that do not run in one target transaction (a diff of a table reads both sides over
    many statements), so :func:`run_with_retry` cannot own them: ``fn`` is called again from the
    start, with the same capped, jittered backoff, while it raises a
    :class:`~reconcile.errors.TransientError`; the last one is raised once ``policy.max_attempts``
    are used up (so an orchestrator can retry later). Anything else is raised at once.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except ReconcileError as exc:
            if not exc.retryable or attempt >= policy.max_attempts:
                raise
            delay = policy.delay(attempt - 1, rng)
            log.warning("%s failed (%s); retry %d/%d in %.3f s", label, exc, attempt, policy.max_attempts - 1, delay)
            sleep(delay)


class Reconnector:
    """Keeps one live connection from a factory; reopens it after a drop or when it gets old.

    Pass one to :func:`run_with_retry` in a loop to reuse the connection across transactions
    (a bare factory opens and closes a connection per call). DSQL closes connections after 60
    minutes, so connections are recycled between transactions after ``max_age`` seconds.
    """

    def __init__(self, factory: ConnectionFactory, *, max_age: float | None = 3300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.factory = factory
        self.max_age = max_age
        self._clock = clock
        self._conn: psycopg.Connection | None = None
        self._opened = 0.0
        self._lock = threading.Lock()

    def get(self) -> psycopg.Connection:
        """The live connection, opened (or reopened) as needed."""
        with self._lock:
            conn = self._conn
            too_old = self.max_age is not None and self._clock() - self._opened > self.max_age
            if conn is not None and (conn.closed or too_old):
                self._close(conn)
                conn = None
            if conn is None:
                conn = self._conn = self.factory()
                self._opened = self._clock()
            return conn

    @property
    def current(self) -> psycopg.Connection | None:
        """The connection handed out last, if any (possibly closed)."""
        return self._conn

    def reset(self) -> None:
        """Drop the current connection; the next :meth:`get` opens a new one."""
        with self._lock:
            if self._conn is not None:
                self._close(self._conn)
            self._conn = None

    close = reset

    @staticmethod
    def _close(conn: psycopg.Connection) -> None:
        try:
            conn.close()
        except Exception:  # closing a broken connection must not hide why it broke
            log.debug("error ignored while closing a dropped connection", exc_info=True)

    def __enter__(self) -> Reconnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Fixed:
    """A caller-owned connection: used as is, never reopened."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.current = conn

    def get(self) -> psycopg.Connection:
        return self.current

    def reset(self) -> None:
        if getattr(self.current, "closed", False):
            raise ConnectionFailed(
                "The target connection dropped and run_with_retry cannot reopen it; pass a connection "
                "factory (or a Reconnector) instead of a connection to retry across dropped connections."
            )


def _source(target: Target) -> tuple[Any, bool]:
    """(connection source, whether run_with_retry owns it and must close it)."""
    if isinstance(target, Reconnector):
        return target, False
    if isinstance(target, psycopg.Connection) or hasattr(target, "transaction"):
        return _Fixed(target), False
    if callable(target):
        return Reconnector(target, max_age=None), True
    raise TypeError(f"run_with_retry needs a connection, a connection factory or a Reconnector, got {target!r}")


def _pipelined(conn: psycopg.Connection, fn: Callable[[psycopg.Connection], R]) -> R:
    """``fn(conn)`` in one transaction sent in libpq pipeline mode: ``BEGIN`` goes with ``fn``'s first read
    and the ``COMMIT`` with everything after ``fn``'s last read, so a commit costs two round trips.

    psycopg's ``conn.transaction()`` syncs (waits) on entry and exit inside a pipeline, so the block is
    opened by hand. A server error skips the rest up to the sync (the ``COMMIT`` included) and is raised
    at the sync; whatever fails, a transaction left open is rolled back before the error propagates.
    """
    try:
        with conn.pipeline():
            conn.execute("BEGIN")
            result = fn(conn)
            conn.execute("COMMIT")
        return result
    except BaseException:
        if not conn.closed and conn.info.transaction_status != pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()  # also forgets statements prepared in the skipped part of the pipeline
        raise


def _check_ready(conn: Any) -> None:
    if not conn.autocommit:
        raise ValueError(
            "run_with_retry needs an autocommit connection (psycopg.connect(..., autocommit=True)): "
            "it opens the transaction itself, and a block inside an implicit one becomes a SAVEPOINT."
        )
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError(
            "run_with_retry was called inside an open transaction; a nested block would become a "
            "SAVEPOINT, which DSQL rejects: call it outside any transaction block."
        )


def _record(counters: RetryCounters, failure: Failure) -> None:
    deltas: dict[str, int] = {}
    if failure.kind is Kind.CONFLICT:
        deltas["conflicts"] = 1
        if failure.marker == "OC000":
            deltas["oc000"] = 1
        elif failure.marker == "OC001":
            deltas["oc001"] = 1
    elif failure.kind in (Kind.CONNECTION, Kind.AUTH_EXPIRED):
        deltas["connection_errors"] = 1
    elif failure.kind is Kind.THROTTLED:
        deltas["throttled"] = 1
    elif failure.kind is Kind.UNAVAILABLE:
        deltas["unavailable"] = 1
    if deltas:
        counters.add(**deltas)


def run_with_retry(
    target: Target,
    fn: Callable[[psycopg.Connection], R],
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
    counters: RetryCounters | None = None,
    idempotent: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    label: str = "transaction",
    pipeline: bool = False,
) -> R:
    """Run ``fn(conn)`` in one target transaction, retrying the whole transaction when that may help.

    Args:
        target: an autocommit connection (used as is, never reopened), a factory returning a new
            autocommit connection (opened here, reopened after a drop, closed at the end), or a
            :class:`Reconnector` (reopened after a drop, kept open for the next call).
        fn: the work; it may run several times, so it must not keep state between attempts.
        policy: attempts and backoff.
        counters: where to count attempts, retries and conflicts (shared between threads is fine).
        idempotent: whether committing the work twice is harmless; when False, ``XX000 server
            unavailable`` (commit outcome unknown) is not retried.
        sleep: called with each backoff delay (tests inject a recorder).
        rng: source of the jitter (tests inject a seeded ``random.Random``).
        label: names the work in log lines.
        pipeline: run the whole transaction in libpq pipeline mode: ``BEGIN`` travels with ``fn``'s first
            statement, and the statements after ``fn``'s last read travel with the ``COMMIT`` (a round trip
            a network away is paid twice, not once per statement). ``fn`` may still read (a fetch waits for
            what was sent so far); an error in any statement surfaces at the commit's round trip, and
            raising inside ``fn`` rolls back as usual.

    Returns:
        What ``fn`` returned on the attempt that committed.

    Raises:
        LimitExceeded: the transaction hit a DSQL limit (54000); never retried.
        RetriesExhausted: a retryable failure persisted for ``policy.max_attempts`` attempts.
        ConnectionFailed: a caller-owned connection dropped and cannot be reopened here.
        psycopg.Error: any other database error, re-raised on the first occurrence.
    """
    counters = counters if counters is not None else RetryCounters()
    source, owned = _source(target)
    auth_renewed = False
    attempt = 0
    try:
        while True:
            attempt += 1
            counters.add(attempts=1)
            try:
                conn = source.get()
                _check_ready(conn)
                if pipeline:
                    return _pipelined(conn, fn)
                with conn.transaction():
                    result = fn(conn)
                return result
            except psycopg.Error as exc:
                failure = classify(exc, idempotent=idempotent, conn=source.current)
                if failure.kind is Kind.LIMIT:
                    raise LimitExceeded(
                        f"The {label} hit a DSQL transaction limit (SQLSTATE {failure.sqlstate}: "
                        f"{_primary_message(exc)}); it is not retried: split the work into smaller transactions."
                    ) from exc
                _record(counters, failure)
                if failure.kind is Kind.AUTH_EXPIRED:
                    # An expired IAM token: a new connection mints a new one; once is enough.
                    retryable, auth_renewed = not auth_renewed, True
                else:
                    retryable = failure.retryable
                if not retryable:
                    raise
                if failure.kind in (Kind.CONNECTION, Kind.AUTH_EXPIRED):
                    try:
                        source.reset()
                    except ConnectionFailed as cannot:
                        raise cannot from exc
                if attempt >= policy.max_attempts:
                    counters.add(gave_up=1)
                    raise RetriesExhausted(failure.sqlstate, attempt, failure.marker) from exc
                delay = policy.delay(attempt - 1, rng)
                counters.add(retries=1, total_sleep=delay)
                log.info(
                    "%s failed with %s%s (%s); retry %d/%d in %.3f s",
                    label, failure.sqlstate or "no SQLSTATE", f" {failure.marker}" if failure.marker else "",
                    failure.kind.value, attempt, policy.max_attempts - 1, delay,
                )
                sleep(delay)
    finally:
        if owned:
            source.close()


def retrying(
    fn: Callable[..., R] | None = None,
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
    counters: RetryCounters | None = None,
    idempotent: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> Any:
    """Decorator form of :func:`run_with_retry`.

    The decorated ``f(conn, *args, **kwargs)`` is called as ``f(target, *args, **kwargs)`` where
    ``target`` is anything :func:`run_with_retry` accepts::

        @retrying(counters=stats)
        def save_chunk(conn, table, chunk_id): ...

        save_chunk(reconnector, "ledger.entries", 7)
    """

    def decorate(f: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(f)
        def wrapper(target: Target, *args: Any, **kwargs: Any) -> R:
            return run_with_retry(
                target, lambda conn: f(conn, *args, **kwargs), policy=policy, counters=counters,
                idempotent=idempotent, sleep=sleep, rng=rng, label=f.__name__,
            )

        return wrapper

    return decorate if fn is None else decorate(fn)
