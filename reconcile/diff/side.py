"""The two ends of a diff: thread-local connections, session settings, concurrent queries.

A :class:`Side` hands each thread its own autocommit connection (psycopg connections are not
shared between threads), set up so that values print the same on both servers: ``TimeZone=UTC``,
``DateStyle=ISO``, ``IntervalStyle=postgres``, ``extra_float_digits=1`` (shortest exact floats),
and so that row values load exactly and never fail (:func:`exact_loaders`: ``infinity`` dates as
text, intervals as text, json numbers as Decimal). A :class:`Pair` runs one query on each side at
the same time: the source query in the calling thread, the target query in a small pool, so a
segment costs the slower side, not the sum.

Reads only: the diff never writes through these connections (control-table writes go through
:mod:`reconcile.diff.store` and the OCC retry helper).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.adapt import Loader

SESSION = ("SET TimeZone TO 'UTC'", "SET DateStyle TO 'ISO, MDY'", "SET IntervalStyle TO 'postgres'",
           "SET extra_float_digits TO 1")


class _Overflowing:
    """Mixin: a value Python's type cannot hold (``infinity``, a year past 9999, BC) loads as its text form."""

    def load(self, data):  # type: ignore[no-untyped-def]
        try:
            return super().load(data)  # type: ignore[misc]
        except (psycopg.DataError, ValueError, OverflowError):
            return bytes(data).decode()


class _OverflowingBinary:
    """Mixin for binary date/time loaders: the infinities (the type's largest and smallest values) load as
    ``infinity`` / ``-infinity``, as the text loaders do (key columns are fetched in binary)."""

    def load(self, data):  # type: ignore[no-untyped-def]
        try:
            return super().load(data)  # type: ignore[misc]
        except (psycopg.DataError, ValueError, OverflowError):
            raw = bytes(data)
            value = int.from_bytes(raw, "big", signed=True)
            return "-infinity" if value < 0 else "infinity"


class _Text(Loader):
    """Loads a value as its text form (intervals: months are not 30 days, so timedelta would equate them)."""

    def load(self, data):  # type: ignore[no-untyped-def]
        return bytes(data).decode()


def exact_loaders(conn: psycopg.Connection) -> None:
    """Make the row fetch of a diff exact and total: every value the backfill can copy loads and compares.

    * date, timestamp, timestamptz: Python's types stop at year 9999 and have no infinity; such values
      load as their text form (``infinity``, ``-infinity``) instead of raising ``DataError``;
    * interval: its text form (psycopg's timedelta counts a month as 30 days: ``1 mon`` would equal
      ``30 days``);
    * json, jsonb: parsed with decimals kept exact (``1.50`` stays ``Decimal('1.50')``, never a float).
    """
    from psycopg.types import datetime as pgdt
    from psycopg.types.json import set_json_loads

    for name, text, binary in (("date", pgdt.DateLoader, pgdt.DateBinaryLoader),
                               ("timestamp", pgdt.TimestampLoader, pgdt.TimestampBinaryLoader),
                               ("timestamptz", pgdt.TimestamptzLoader, pgdt.TimestamptzBinaryLoader)):
        conn.adapters.register_loader(name, type(f"Exact{text.__name__}", (_Overflowing, text), {}))
        conn.adapters.register_loader(name, type(f"Exact{binary.__name__}", (_OverflowingBinary, binary), {}))
    conn.adapters.register_loader("interval", _Text)
    set_json_loads(lambda s: json.loads(s, parse_float=Decimal), conn)


class Side:
    """One server (``name`` is "source" or "target"): per-thread connections from ``factory``."""

    def __init__(self, name: str, factory: Callable[[], psycopg.Connection]) -> None:
        self.name = name
        self.factory = factory
        self._local = threading.local()
        self._all: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self.queries = 0

    def conn(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self.factory()
            if not conn.autocommit:
                conn.autocommit = True
            with conn.pipeline():  # one round trip for the session settings, not one per SET
                for stmt in SESSION:
                    conn.execute(stmt)
            exact_loaders(conn)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def fetch(self, query: sql.Composable, params: Any = None, *, binary: bool = False) -> list[tuple]:
        self._count()
        return self.conn().execute(query, params, binary=binary).fetchall()

    def one(self, query: Any, params: Any = None) -> tuple | None:
        self._count()
        return self.conn().execute(query, params).fetchone()

    def _count(self) -> None:
        """Every statement sent counts (``queries``: the round trips of a diff, for the run's details)."""
        with self._lock:
            self.queries += 1

    def estimate_rows(self, schema: str, table: str) -> float | None:
        row = self.one("SELECT c.reltuples FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                       "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s", (schema, table))
        if row is None or row[0] is None or row[0] < 0:
            return None
        return float(row[0])

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # closing must not hide the real error
                pass


class Pair:
    """Source and target, queried concurrently."""

    def __init__(self, source: Side, target: Side, *, workers: int = 2) -> None:
        self.source, self.target = source, target
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="diff-target")

    def both(self, fn: Callable[[Side], Any]) -> tuple[Any, Any]:
        """``(fn(source), fn(target))``, the two running at the same time."""
        future = self._pool.submit(fn, self.target)
        try:
            src = fn(self.source)
        finally:
            tgt = future.result()
        return src, tgt

    @property
    def queries(self) -> int:
        return self.source.queries + self.target.queries

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.source.close()
        self.target.close()

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
