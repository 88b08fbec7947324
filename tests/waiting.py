"""Waiting on conditions, never on the clock: what a test needs before it goes on is checked, not slept for.

The timeout only turns a hang into a failure with a reason; it is no speed claim (speed lives in bench/),
so it is generous: a busy 2-core CI machine must never hit it.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], what: str, *, timeout: float = 120.0, poll: float = 0.01) -> None:
    """Return as soon as ``condition()`` is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
