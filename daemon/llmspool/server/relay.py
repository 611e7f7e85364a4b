"""Relaying a streamed call to its client: its replies written as server-sent events."""

from __future__ import annotations

from typing import Any

import anyio
from opentelemetry.trace import Span, Status, StatusCode
from starlette.responses import StreamingResponse
from starlette.types import Send

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
        # The body is written by ``stream_response``, straight from the replies.
        super().__init__((), status, headers, media_type=media_type)
        self._first = first
        self._replies = replies
        self._span = span
        self._tap = tap

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

    async def stream_response(self, send: Send) -> None:
        """The stream's events as they come, until its end: ``StreamingResponse``'s loop over
        the replies themselves, without an async iterator between them and the writes (a
        generator's turn an event, at every streamed event)."""
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        tap = self._tap
        if self._first:
            if tap is not None:
                tap.feed(self._first)
            await send({"type": "http.response.body", "body": self._first, "more_body": True})
        replies = self._replies
        while True:
            try:
                reply = await replies.receive()
            except anyio.EndOfStream:
                break
            if isinstance(reply, StreamChunk):
                if tap is not None:
                    tap.feed(reply.data)
                await send({"type": "http.response.body", "body": reply.data, "more_body": True})
            elif isinstance(reply, StreamEnd):
                if reply.error is not None:
                    self._span.set_status(Status(StatusCode.ERROR, reply.error.message))
                    await send({"type": "http.response.body", "more_body": True,
                                "body": b"data: " + reply.error.body() + b"\n\n"})
                elif tap is not None:
                    await tap.finish()
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})
