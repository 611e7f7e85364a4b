"""Waiting for a call's first reply: giving up when the client leaves or the daemon stops.

Until the first reply the response has not started, so a client that disconnects aborts the
call (its upstream call stops, its reservation is released), and a daemon that stops answers
the calls still waiting with 503 ``daemon_stopping`` once its grace runs out (``StopClock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Iterator

import anyio
from starlette.requests import Request

from llmspool.core.errors import ServiceUnavailable
from llmspool.core.streams import MemoryReceiveStream
from llmspool.messages import Call, Failure, Reply
from llmspool.server.disconnect import DISCONNECT_KEY, DisconnectHooks

__all__ = ["StopClock", "Waiting", "first_reply"]


class Waiting:
    """A call waiting for its first reply, as ``StopClock`` knows it."""

    __slots__ = ("_abort", "_replies", "ran_out")

    def __init__(self, replies: MemoryReceiveStream[Reply], abort: Callable[[], None]) -> None:
        self._replies = replies
        self._abort = abort
        self.ran_out = False  # the stop's grace ran out first

    def give_up(self) -> None:
        """Abort the call and close its replies' stream, which ends the wait for them at
        once (``ClosedResourceError``)."""
        self.ran_out = True
        self._abort()
        self._replies.close()


class StopClock:
    """When the daemon stops, the moment calls still waiting for their first reply give up:
    each then ends with 503 ``daemon_stopping`` (its upstream call stopped) instead of being
    cut off with nothing when the server closes its connections.

    One timer for them all, set when the stop begins, which closes each waiting call's replies'
    stream. (A cancel scope a call, with the stop's deadline, cost every call a scope's making,
    entering and leaving, for what happens at a stop: about 4% of a call's CPU at c=64.)"""

    def __init__(self) -> None:
        self._deadline = math.inf
        self._waiting: set[Waiting] = set()
        self._timer: asyncio.TimerHandle | None = None

    @contextlib.contextmanager
    def waiting(self, replies: MemoryReceiveStream[Reply], abort: Callable[[], None]
                ) -> Iterator[Waiting]:
        """While the block runs, the call is waiting: ``abort`` and the replies' closing are
        how it gives up."""
        waiting = Waiting(replies, abort)
        if self._deadline != math.inf and anyio.current_time() >= self._deadline:
            waiting.give_up()  # came after the grace ran out
        self._waiting.add(waiting)
        try:
            yield waiting
        finally:
            self._waiting.discard(waiting)

    def stop_at(self, deadline: float) -> None:
        """Calls waiting now or later give up at ``deadline`` (``anyio.current_time()``, the
        event loop's clock). Call it from the event loop."""
        self._deadline = deadline
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(deadline, self._give_up)

    def _give_up(self) -> None:
        self._timer = None
        for waiting in list(self._waiting):
            waiting.give_up()


async def first_reply(
    request: Request, call: Call, replies: MemoryReceiveStream[Reply], stop: StopClock,
) -> Reply:
    """The call's first reply; if the client disconnects before it, the call is aborted (its
    upstream call stops, its reservation is released) and the stream ends. A call still
    waiting when the daemon's stop runs out of grace is aborted and answered 503."""
    hooks = request.scope.get("extensions", {}).get(DISCONNECT_KEY)
    if isinstance(hooks, DisconnectHooks):
        # The daemon's own protocol says when the client leaves: no watching task needed.
        with stop.waiting(replies, call.abort.fire) as waiting, \
                hooks.watching(call.abort.fire):
            first = await _first_of(replies, waiting)
    else:
        with stop.waiting(replies, call.abort.fire) as waiting:
            async with anyio.create_task_group() as group:

                async def watch_for_disconnect() -> None:
                    # The body is read, so the next ASGI message is the client going away.
                    while (await request.receive())["type"] != "http.disconnect":
                        pass
                    call.abort.fire()

                group.start_soon(watch_for_disconnect)
                try:
                    first = await _first_of(replies, waiting)
                finally:
                    group.cancel_scope.cancel()
    if first is None and not waiting.ran_out:
        # Aborted (its client left): outside the task group, not in an exception group.
        raise anyio.EndOfStream
    return _first_or_stopped(call, first, waiting)


async def _first_of(replies: MemoryReceiveStream[Reply], waiting: Waiting) -> Reply | None:
    """The first reply; None when the stream ended without one (the call was aborted, or the
    stop's grace ran out and closed it)."""
    try:
        return await replies.receive()
    except anyio.EndOfStream:
        return None
    except anyio.ClosedResourceError:
        if not waiting.ran_out:
            raise
        return None


def _first_or_stopped(call: Call, first: Reply | None, waiting: Waiting) -> Reply:
    """The first reply, or 503 ``daemon_stopping`` when the stop's grace ran out first."""
    if first is None or waiting.ran_out:
        call.abort.fire()
        return Failure(ServiceUnavailable(
            "llmspool is stopping and this call did not finish within [daemon] "
            "shutdown_grace; it was stopped upstream, send it again",
            retry_after=5.0, code="daemon_stopping"))
    return first
