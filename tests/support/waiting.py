"""Waiting on a condition instead of sleeping a fixed time.

A test that needs something to have happened (a call to reach the upstream, a job to move on, a
write-behind commit, a file to appear, a line in a log) polls for it with ``wait_for``: it
returns as soon as the condition holds, so a fast machine does not pay for a slow one's margin,
and a slow machine gets up to ``timeout`` before the test fails with a message naming what it
waited for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], *, timeout: float = 15.0, every: float = 0.02,
             what: str = "the condition") -> T:
    """Call ``predicate`` every ``every`` seconds until it returns something truthy, and return
    that; fail with an ``AssertionError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)
