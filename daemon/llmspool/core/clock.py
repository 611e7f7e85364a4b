"""The daemon's calendar: what time it is, and waiting until a time comes.

Everything the daemon decides by the date and time of day goes through a ``Clock``: deadlines
(the tier a call gets, when a job is late, when a batch must be escalated), the budget day (when
daily caps start again), job retention, and the batch schedule (when a group is sent, when an
open batch is polled, when a straggler is batched again). The daemon runs on ``SYSTEM_CLOCK``;
``llmspool.testing.ManualClock`` is one a test moves forward by hand, so a six-hour deadline or
midnight takes no waiting.

What is not on this clock, on purpose: the time limits of calls in flight, retry backoff and the
rate limiter (they bound real waiting on real servers, so they run on real time).
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import anyio


class Clock(Protocol):
    """Unix time, and waits measured against it."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""
        ...

    async def wait(self, event: anyio.Event, until: float) -> bool:
        """Wait for ``event`` until this clock reads ``until`` (``math.inf``: no limit);
        True if the event was set."""
        ...


class SystemClock:
    """The machine's clock (``time.time``) and anyio's sleeps."""

    __slots__ = ()

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    async def wait(self, event: anyio.Event, until: float) -> bool:
        if math.isinf(until):
            await event.wait()
            return True
        with anyio.move_on_after(max(0.0, until - time.time())):
            await event.wait()
        return event.is_set()


SYSTEM_CLOCK: Clock = SystemClock()  # stateless: one is enough for every daemon
