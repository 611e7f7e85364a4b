"""Waiting for a call's first reply: giving up when the client leaves or the daemon stops.

Until the first reply the response has not started, so a client that disconnects aborts the
call (its upstream call stops, its reservation is released), and a daemon that stops answers
the calls still waiting with 503 ``daemon_stopping`` once its grace runs out (``StopClock``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import anyio
from starlette.requests import Request

from llmspool.core.errors import ServiceUnavailable
from llmspool.core.streams import MemoryReceiveStream
from llmspool.messages import Call, Failure, Reply
from llmspool.server.disconnect import DISCONNECT_KEY, DisconnectHooks

__all__ = ["StopClock", "first_reply"]


class StopClock:
    """When the daemon stops, the moment calls still waiting for their first reply give up:
    each then ends with 503 ``daemon_stopping`` (its upstream call stopped) instead of being
    cut off with nothing when the server closes its connections."""

    def __init__(self) -> None:
        self._deadline = math.inf
        self._waiting: set[anyio.CancelScope] = set()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[anyio.CancelScope]:
        scope = anyio.CancelScope(deadline=self._deadline)
        self._waiting.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._waiting.discard(scope)

    def stop_at(self, deadline: float) -> None:
        """Calls waiting now or later give up at ``deadline`` (``anyio.current_time()``)."""
        self._deadline = deadline
        for scope in self._waiting:
            scope.deadline = deadline


async def first_reply(
    request: Request, call: Call, replies: MemoryReceiveStream[Reply], stop: StopClock,
) -> Reply:
    """The call's first reply; if the client disconnects before it, the call is aborted (its
    upstream call stops, its reservation is released) and the stream ends. A call still
    waiting when the daemon's stop runs out of grace is aborted and answered 503."""
    first: Reply | None = None
    ended = False
    hooks = request.scope.get("extensions", {}).get(DISCONNECT_KEY)
    if isinstance(hooks, DisconnectHooks):
        # The daemon's own protocol says when the client leaves: no watching task needed.
        with stop.waiting() as waiting, hooks.watching(call.abort.fire):
            try:
                first = await replies.receive()
            except anyio.EndOfStream:
                ended = True  # aborted (its client left) or the daemon is stopping
        if ended:
            raise anyio.EndOfStream
        return _first_or_stopped(call, first, waiting)
    with stop.waiting() as waiting:
        async with anyio.create_task_group() as group:

            async def watch_for_disconnect() -> None:
                # The body is read, so the next ASGI message is the client going away.
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                call.abort.fire()

            group.start_soon(watch_for_disconnect)
            try:
                first = await replies.receive()
            except anyio.EndOfStream:
                ended = True  # aborted (its client left) or the daemon is stopping
            finally:
                group.cancel_scope.cancel()
    if ended:
        raise anyio.EndOfStream  # outside the task group: not wrapped in an exception group
    return _first_or_stopped(call, first, waiting)


def _first_or_stopped(call: Call, first: Reply | None, waiting: anyio.CancelScope) -> Reply:
    """The first reply, or 503 ``daemon_stopping`` when the stop's grace ran out first."""
    if first is None or waiting.cancelled_caught:
        call.abort.fire()
        return Failure(ServiceUnavailable(
            "llmspool is stopping and this call did not finish within [daemon] "
            "shutdown_grace; it was stopped upstream, send it again",
            retry_after=5.0, code="daemon_stopping"))
    return first
