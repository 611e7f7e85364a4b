"""ASGI plumbing: reading bodies, sending answers, waiting while noticing a client that left or a
server that stops, and dropping a connection without any HTTP answer.

ASGI has no "drop this connection" message. Under uvicorn the ``send`` callable is a method of
the request cycle that holds the connection's transport, so ``drop_connection`` aborts that
transport with ``SO_LINGER`` 0: the client sees a reset, as when a real upstream dies. Under
another server it falls back to an unfinished answer, which the server closes.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from enum import Enum
from typing import Any

import anyio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

Headers = list[tuple[bytes, bytes]]
FixedHeaders = tuple[tuple[bytes, bytes], ...]

JSON_HEADERS: FixedHeaders = ((b"content-type", b"application/json"),)
SSE_HEADERS: FixedHeaders = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
)
_LINGER_RESET = struct.pack("ii", 1, 0)
# How long to wait for the server to notice a connection we aborted.
_ABORT_NOTICE_SECONDS = 1.0


class BodyTooLarge(Exception):
    """The request body is over the limit."""


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or ``None`` if the client left first."""
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def send_bytes(send: Send, status: int, body: bytes, headers: Headers) -> None:
    """Answer ``status`` with a complete ``body`` (headers must include its content type)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class WaitEnd(Enum):
    """Why a ``Waiter.wait`` ended."""

    ELAPSED = "elapsed"
    GONE = "gone"
    """The client disconnected."""
    STOPPING = "stopping"
    """The server is stopping."""


class Waiter:
    """Waits that end early when the client leaves or when the server stops.

    ``stop`` ends every wait at once, so that a hung request or a slow stream does not hold up
    a shutdown until the server cancels it (which uvicorn reports as an application error).
    """

    def __init__(self) -> None:
        self.stopping = False
        self._scopes: set[anyio.CancelScope] = set()

    async def wait(self, receive: Receive, seconds: float) -> WaitEnd:
        if self.stopping:
            return WaitEnd.STOPPING
        if seconds <= 0:
            return WaitEnd.ELAPSED
        with anyio.move_on_after(seconds) as scope:
            self._scopes.add(scope)
            try:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return WaitEnd.GONE
            finally:
                self._scopes.discard(scope)
        return WaitEnd.STOPPING if self.stopping else WaitEnd.ELAPSED

    def stop(self) -> None:
        """End all waits now and any later ones at once (``WaitEnd.STOPPING``)."""
        self.stopping = True
        for scope in self._scopes:
            scope.cancel()


async def _wait_for_disconnect(receive: Receive, seconds: float) -> None:
    with anyio.move_on_after(seconds):
        while (await receive())["type"] != "http.disconnect":
            pass


def connection_transport(send: Send) -> object | None:
    """The transport of the connection a request came on (under uvicorn; else ``None``): one
    object per connection, for as long as it is open."""
    transport: object | None = getattr(getattr(send, "__self__", None), "transport", None)
    return transport


async def drop_connection(send: Send, receive: Receive, *, response_started: bool) -> None:
    """Close the connection at once, with no (further) HTTP answer."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # On a socket without linger (a Unix socket) a plain close is the best we can do.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()
        # Let the server see the connection go before we return, or it would answer 500 for
        # a request that "returned without a response".
        await _wait_for_disconnect(receive, _ABORT_NOTICE_SECONDS)
        return
    if not response_started:
        # Promise a body that never comes: the server has to close the connection.
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*JSON_HEADERS, (b"content-length", b"1")],
            }
        )
