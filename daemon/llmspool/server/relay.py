"""Relaying a streamed call to its client: its replies written as server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
from opentelemetry.trace import Span, Status, StatusCode
from starlette.responses import StreamingResponse

from llmspool.core.streams import MemoryReceiveStream
from llmspool.messages import Reply, StreamChunk, StreamEnd
from llmspool.server.capture import StreamTap
from llmspool.server.disconnect import DISCONNECT_KEY, DisconnectHooks

__all__ = ["SSE_HEADERS", "RelayResponse"]

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class RelayResponse(StreamingResponse):
    """Server-sent events from a call's replies, written as they come.

    Whatever ends the response (the last event, a client that disconnects, a shutdown), the
    reply stream is closed, which tells the dispatcher to stop the upstream call. A ``tap``
    (an operation that captures) sees every event, and keeps the answer once the stream has
    ended without an error, before the client sees the end.
    """

    def __init__(
        self,
        first: bytes,
        replies: MemoryReceiveStream[Reply],
        span: Span,
        status: int,
        headers: dict[str, str],
        media_type: str,
        tap: StreamTap | None = None,
    ) -> None:
        super().__init__(_relay(first, replies, span, tap), status, headers,
                         media_type=media_type)
        self._replies = replies
        self._span = span

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        hooks = scope.get("extensions", {}).get(DISCONNECT_KEY)
        try:
            if isinstance(hooks, DisconnectHooks):
                # The daemon's own protocol says when the client leaves: it stops the relay
                # without a task (and a task group) per stream watching ``receive()``.
                with anyio.CancelScope() as relaying, hooks.watching(relaying.cancel):
                    await self.stream_response(send)
            else:
                await super().__call__(scope, receive, send)
        finally:
            self._replies.close()
            self._span.end()


async def _relay(
    first: bytes, replies: MemoryReceiveStream[Reply], span: Span,
    tap: StreamTap | None = None,
) -> AsyncIterator[bytes]:
    """The stream's chunks as they come, until its end."""
    if first:
        if tap is not None:
            tap.feed(first)
        yield first
    async for reply in replies:
        if isinstance(reply, StreamChunk):
            if tap is not None:
                tap.feed(reply.data)
            yield reply.data
        elif isinstance(reply, StreamEnd):
            if reply.error is not None:
                span.set_status(Status(StatusCode.ERROR, reply.error.message))
                yield b"data: " + reply.error.body() + b"\n\n"
            elif tap is not None:
                await tap.finish()
            return
