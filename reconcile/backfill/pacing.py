"""How big each batch is, and how fast all of them may go.

* :class:`BatchSizer` adapts the rows per batch toward a time target, as pt-table-checksum's
  ``--chunk-time`` does: it keeps a weighted average of the rows per second the last batches achieved
  and asks for ``rate * target`` rows next, never more than the transaction budget allows (rows, and
  bytes at the sizes the last batch measured), never fewer than one.
* :class:`Throttle` is a token bucket shared by all workers, for ``--max-rows-per-second``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class BatchSizer:
    """Rows per batch for one worker on one table.

    >>> s = BatchSizer(cap_rows=1000, byte_cap=10_000_000, target_seconds=0.5)
    >>> s.next()
    1000
    >>> s.observe(1000, 2.0, 100)  # 500 rows/s: 0.5 s is 250 rows
    >>> s.next()
    250
    >>> s.observe(250, 0.01, 100)  # fast again: grows, up to the cap
    >>> s.next()
    1000
    """

    def __init__(self, *, cap_rows: int, byte_cap: int, target_seconds: float, extra_bytes: int = 0,
                 weight: float = 0.5, start: int | None = None) -> None:
        if cap_rows < 1 or byte_cap < 1 or target_seconds <= 0:
            raise ValueError("BatchSizer needs cap_rows >= 1, byte_cap >= 1 and target_seconds > 0")
        self.cap_rows = cap_rows
        self.byte_cap = byte_cap
        self.target_seconds = target_seconds
        self.extra_bytes = extra_bytes
        self.weight = weight
        self._rate: float | None = None
        self._n = max(1, min(cap_rows, start or cap_rows))

    def next(self) -> int:
        """Rows to ask for in the next batch."""
        return self._n

    def observe(self, rows: int, seconds: float, bytes_per_row: float) -> None:
        """Record a batch: ``rows`` read and written in ``seconds``, at ``bytes_per_row`` measured."""
        if rows <= 0 or seconds <= 0:
            return
        rate = rows / seconds
        self._rate = rate if self._rate is None else self.weight * rate + (1 - self.weight) * self._rate
        by_time = int(self._rate * self.target_seconds)
        by_bytes = int(self.byte_cap // max(1.0, bytes_per_row + self.extra_bytes))
        self._n = max(1, min(self.cap_rows, by_time, by_bytes))


class Throttle:
    """A token bucket: at most ``rate`` rows per second over every caller; 0 means no limit.

    The bucket starts empty (no burst at start, the source is eased in) and holds up to one second
    of tokens (a short burst after a pause).
    """

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = float(rate)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._last = clock()

    def acquire(self, rows: int, stop: threading.Event | None = None) -> None:
        """Block until ``rows`` may be read (returns early when ``stop`` is set)."""
        if self.rate <= 0 or rows <= 0:
            return
        with self._lock:
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= rows  # may go negative: the debt is paid by waiting below
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        while wait > 0 and not (stop is not None and stop.is_set()):
            step = min(wait, 0.25)
            self._sleep(step)
            wait -= step
