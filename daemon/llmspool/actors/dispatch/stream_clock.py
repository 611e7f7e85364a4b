"""``StreamClock``: the time limits of a relayed stream, with one timer for all its chunks.

A stream is given up when the wait for any one chunk passes its provider's
``stream_idle_timeout``, or the whole attempt passes its time limit. The relay used to move an
anyio scope's deadline before each wait for a chunk: each move cancels a timer and schedules
another (``loop.call_at``), a few microseconds a chunk, at 200 chunks a second for every stream
in flight. Here the relay only notes when each wait begins (``waiting``, one read of the loop's
clock), and a single timer, when it fires, looks whether a limit really ran out: if not, it is
scheduled again for the earliest moment one could. So a stream that keeps its pace costs a
timer every ``stream_idle_timeout``, not one a chunk.

While a chunk waits for room towards the client (``held``), neither limit runs out: the
client's pace is not the upstream's. The relay looks at the total limit again (``waiting``)
once the chunk has gone.
"""

from __future__ import annotations

import asyncio

import anyio

__all__ = ["StreamClock"]


class StreamClock:
    """Cancels ``scope`` when a stream's wait for a chunk passes ``idle`` seconds or the loop's
    clock passes ``deadline``; ``idle_ran_out`` says which (``True``: the idle limit)."""

    def __init__(self, scope: anyio.CancelScope, idle: float, deadline: float) -> None:
        self._scope = scope
        self._idle = idle
        self._deadline = deadline
        self._loop = asyncio.get_running_loop()
        self._since = self._loop.time()  # when the wait for the next chunk began
        self._held = False
        self.idle_ran_out = False
        self._timer = self._loop.call_at(min(self._since + idle, deadline), self._check)

    def waiting(self) -> bool:
        """The wait for the next chunk begins now; False (the scope cancelled) when the
        attempt's time has run out already."""
        now = self._since = self._loop.time()
        self._held = False
        if now >= self._deadline:
            self._scope.cancel()
            return False
        return True

    def held(self) -> None:
        """A chunk waits for room towards the client: no limit runs out until ``waiting``."""
        self._held = True

    def stop(self) -> None:
        self._timer.cancel()

    def _check(self) -> None:
        now = self._loop.time()
        if not self._held:
            if now >= self._deadline:
                self._scope.cancel()
                return
            if now >= self._since + self._idle:
                self.idle_ran_out = True
                self._scope.cancel()
                return
            wake = min(self._since + self._idle, self._deadline)
        elif self._deadline > now:
            wake = min(now + self._idle, self._deadline)
        else:  # ran out while held: ``waiting`` says so once the chunk has gone
            wake = now + self._idle
        self._timer = self._loop.call_at(wake, self._check)
