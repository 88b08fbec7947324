"""Progress while copying, and the summary at the end.

On a terminal, one line rewritten in place (``\\r``) on stderr: table, rows, percent, rows/s, ETA,
rejects and retries. Anywhere else (Airflow task logs, CI), one structured log line every
``log_every`` seconds: ``backfill progress table=ledger.entries rows=120000 total=1000000 ...``.
No third-party progress library: both forms are a few lines.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

log = logging.getLogger("reconcile.backfill")


@dataclass
class TableProgress:
    table: str
    total: int | None
    """Rows expected (from the plan), None when unknown."""
    rows: int = 0
    """Rows copied, including those copied by earlier runs of the selected chunks."""
    copied_now: int = 0
    """Rows copied by this run."""
    rejected: int = 0
    chunks: int = 0
    chunks_done: int = 0
    chunks_failed: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def rate(self, now: float) -> float:
        elapsed = (self.finished or now) - self.started
        return self.copied_now / elapsed if elapsed > 0 else 0.0


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def render_line(p: TableProgress, now: float, retries: int = 0, width: int = 24) -> str:
    """The terminal progress line of one table.

    >>> p = TableProgress("ledger.entries", total=1000, rows=250, copied_now=250, started=0.0)
    >>> render_line(p, now=1.0, width=8)
    'ledger.entries [##......]  25%  250/1,000 rows  250 rows/s  ETA 3s'
    """
    rate = p.rate(now)
    if p.total:
        frac = min(1.0, p.rows / p.total)
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        left = max(0, p.total - p.rows)
        eta = _eta(left / rate if rate > 0 else None)
        head = f"{p.table} [{bar}] {frac:4.0%}  {p.rows:,}/{p.total:,} rows"
    else:
        head, eta = f"{p.table} {p.rows:,} rows", "?"
    line = f"{head}  {rate:,.0f} rows/s  ETA {eta}"
    if p.rejected:
        line += f"  rejected {p.rejected:,}"
    if retries:
        line += f"  retries {retries:,}"
    return line


class Progress:
    """Thread-safe progress of a run; a background thread reports it while :meth:`running`."""

    def __init__(self, *, stream: IO[str] | None = None, tty: bool | None = None, interval: float = 0.5,
                 log_every: float = 10.0, retries: Callable[[], int] = lambda: 0, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval if self.tty else log_every
        self.retries = retries
        self.enabled = enabled
        self.tables: dict[str, TableProgress] = {}
        self._current: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False

    # --- updates (any thread) -----------------------------------------------------------------------

    def start_table(self, table: str, *, total: int | None, already: int, chunks: int) -> None:
        with self._lock:
            self.tables[table] = TableProgress(table, total, rows=already, chunks=chunks)
            self._current = table
        if self.enabled and not self.tty:
            log.info("backfill table=%s chunks=%d total_rows=%s already_copied=%d", table, chunks,
                     total if total is not None else "?", already)

    def add(self, table: str, rows: int, rejected: int = 0) -> None:
        with self._lock:
            p = self.tables[table]
            p.rows += rows
            p.copied_now += rows
            p.rejected += rejected

    def chunk_finished(self, table: str, *, failed: bool = False) -> None:
        with self._lock:
            p = self.tables[table]
            if failed:
                p.chunks_failed += 1
            else:
                p.chunks_done += 1

    def finish_table(self, table: str) -> None:
        with self._lock:
            p = self.tables[table]
            p.finished = time.monotonic()
        self._report(final=True)

    def snapshot(self) -> dict[str, TableProgress]:
        with self._lock:
            return {k: dataclasses.replace(v) for k, v in self.tables.items()}

    # --- reporting --------------------------------------------------------------------------------

    def _report(self, final: bool = False) -> None:
        if not self.enabled:
            return
        with self._lock:
            p = self.tables.get(self._current) if self._current else None
            p = dataclasses.replace(p) if p else None
        if p is None:
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + render_line(p, now, self.retries()) + "\x1b[K" + ("\n" if final else ""))
            self.stream.flush()
            self._drawn = not final
        else:
            rate = p.rate(now)
            left = (p.total - p.rows) / rate if p.total and rate > 0 else None
            log.info("backfill progress table=%s rows=%d total=%s rows_per_s=%.0f eta_s=%s rejected=%d "
                     "chunks_done=%d/%d retries=%d%s", p.table, p.rows, p.total if p.total is not None else "?",
                     rate, f"{left:.0f}" if left is not None else "?", p.rejected, p.chunks_done, p.chunks,
                     self.retries(), " final=true" if final else "")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._report()

    def __enter__(self) -> Progress:
        if self.enabled:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="backfill-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._drawn and self.tty:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


@dataclass
class TableSummary:
    table: str
    chunks_selected: int
    chunks_done: int
    chunks_failed: int
    rows: int
    """Rows copied by this run."""
    rejected: int
    seconds: float
    chunks_skipped: int = 0
    """Chunks another live run was copying (left to it)."""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class BackfillSummary:
    """What a run did; ``exit_code`` is 0 (all copied), 1 (some rows rejected), 2 (chunks failed)."""

    run_id: str | None
    status: str
    tables: list[TableSummary]
    seconds: float
    retries: int = 0
    conflicts: int = 0
    attempts: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def rejected(self) -> int:
        return sum(t.rejected for t in self.tables)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed_chunks(self) -> int:
        return sum(t.chunks_failed for t in self.tables)

    @property
    def exit_code(self) -> int:
        if self.status != "done" or self.failed_chunks:
            return 2
        return 1 if self.rejected else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "status": self.status, "rows": self.rows, "rejected": self.rejected,
            "retries": self.retries, "conflicts": self.conflicts, "attempts": self.attempts,
            "seconds": round(self.seconds, 3), "rows_per_s": round(self.rows_per_s, 1),
            "failed_chunks": self.failed_chunks, "errors": self.errors,
            "tables": [dataclasses.asdict(t) | {"rows_per_s": round(t.rows_per_s, 1), "seconds": round(t.seconds, 3)}
                       for t in self.tables],
        }

    def text(self) -> str:
        lines = [f"backfill {self.status}: {self.rows:,} rows copied, {self.rejected:,} rejected, "
                 f"{self.retries:,} retried transactions ({self.conflicts:,} conflicts) in {self.seconds:.1f} s "
                 f"({self.rows_per_s:,.0f} rows/s)"]
        for t in self.tables:
            lines.append(f"  {t.table}: {t.rows:,} rows, {t.rejected:,} rejected, chunks {t.chunks_done}/"
                         f"{t.chunks_selected} done" + (f", {t.chunks_failed} failed" if t.chunks_failed else "")
                         + (f", {t.chunks_skipped} left to another live run" if t.chunks_skipped else "")
                         + f", {t.seconds:.1f} s ({t.rows_per_s:,.0f} rows/s)")
        for e in self.errors:
            lines.append(f"  error: {e}")
        if self.rejected:
            lines.append("  see the refused rows with: reconcile backfill rejects")
        return "\n".join(lines)
