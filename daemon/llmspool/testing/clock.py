"""``ManualClock``: a daemon clock a test jumps forward, so hours pass in milliseconds.

It runs at the machine's pace (so calls still take the time they take, and latencies measured
on it are real) plus an offset that only grows: ``advance(3600)`` is an hour later at once for
every reader, and every wait on the clock that the jump passes ends within ``TICK``. Give one to
``running_daemon(config, clock=...)`` and the daemon's deadlines, budget days, job retention and
batch schedule (``llmspool.core.clock`` lists what is on it) follow the test's hand.

Thread-safe: the test moves it from its own thread while the daemon reads it on its event loop.
"""

from __future__ import annotations

import math
import threading
import time

import anyio

TICK = 0.005  # seconds: how soon a wait notices that a jump has passed its time


class ManualClock:
    """Unix time that ``advance`` and ``jump_to`` move ahead (never back)."""

    def __init__(self, start: float | None = None) -> None:
        """``start``: the time it reads now (default: the machine's time)."""
        self._lock = threading.Lock()
        self._offset = 0.0 if start is None else start - time.time()

    def now(self) -> float:
        with self._lock:
            return time.time() + self._offset

    def advance(self, seconds: float) -> float:
        """Jump ``seconds`` ahead; returns the time it reads after the jump."""
        if not seconds >= 0:  # also refuses NaN
            raise ValueError(f"a clock moves forward only; cannot advance by {seconds}")
        with self._lock:
            self._offset += seconds
            return time.time() + self._offset

    def jump_to(self, when: float) -> None:
        """Jump to ``when`` (unix seconds), which must not be in this clock's past."""
        with self._lock:
            ahead = when - (time.time() + self._offset)
            if ahead < -TICK:
                raise ValueError(f"{when} is {-ahead:.3f} s in this clock's past")
            self._offset += max(0.0, ahead)

    async def sleep(self, seconds: float) -> None:
        await self.wait(anyio.Event(), self.now() + seconds)

    async def wait(self, event: anyio.Event, until: float) -> bool:
        if math.isinf(until):
            await event.wait()
            return True
        # A jump made from another thread cannot wake an event on the daemon's loop, so a wait
        # looks at the clock every TICK; it costs nothing that matters in a test.
        while not event.is_set():
            left = until - self.now()
            if left <= 0:
                return False
            with anyio.move_on_after(min(left, TICK)):
                await event.wait()
        return True
