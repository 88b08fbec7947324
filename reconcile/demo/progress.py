"""A one-line-per-step progress display for `reconcile demo`.

Each step prints ``[ n/N] label`` when it starts and, when it ends, its duration and a short result;
on a terminal the running line shows the elapsed time, updated in place. Nothing else is printed, so
the whole run fits one screen.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class StepRecord:
    """What one step did: its label, seconds taken, outcome and one-line detail."""

    label: str
    seconds: float = 0.0
    ok: bool = True
    detail: str = ""


@dataclass
class Progress:
    """Numbered steps with timings; ``echo`` receives finished lines (stdout by default)."""

    total: int
    echo: Callable[[str], None] = print
    live: bool = field(default_factory=lambda: sys.stderr.isatty())
    steps: list[StepRecord] = field(default_factory=list)

    @contextmanager
    def step(self, label: str) -> Iterator[StepRecord]:
        """Run one step: ``with progress.step("backfill") as s: ...; s.detail = "300,000 rows"``."""
        record = StepRecord(label)
        self.steps.append(record)
        prefix = f"[{len(self.steps):>2}/{self.total}] {label}"
        stop = threading.Event()
        ticker = None
        if self.live:
            def tick() -> None:
                t0 = time.monotonic()
                while not stop.wait(0.5):
                    sys.stderr.write(f"\r{prefix} ... {time.monotonic() - t0:5.1f}s")
                    sys.stderr.flush()
            ticker = threading.Thread(target=tick, daemon=True)
            ticker.start()
        t0 = time.monotonic()
        try:
            yield record
        except BaseException:
            record.ok = False
            raise
        finally:
            record.seconds = time.monotonic() - t0
            stop.set()
            if ticker is not None:
                ticker.join()
                sys.stderr.write("\r\033[K")
                sys.stderr.flush()
            mark = "ok " if record.ok else "FAILED"
            detail = f"  {record.detail}" if record.detail else ""
            self.echo(f"{prefix:<48} {mark} {record.seconds:6.1f}s{detail}")
