"""One request being answered: where to reply, the headers every reply carries, and its pauses.

An ``Exchange`` is made for each HTTP request (``app.SimApp``); every endpoint gets it, reaches
the simulator's state through it (``state.SimState``), reads the request with it (its JSON body,
query, headers, the id in its path) and answers through it: whole, as an API error in the
flavor's shape, or cut halfway by a ``reset_midway`` fault. ``pause`` waits while watching for
the client leaving and for the server stopping.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson

from llmspool.core.errors import ApiError, InvalidRequest, PayloadTooLarge
from llmspool.sim import validate
from llmspool.sim.asgi import (
    JSON_HEADERS,
    BodyTooLarge,
    FixedHeaders,
    Headers,
    Receive,
    Scope,
    Send,
    WaitEnd,
    drop_connection,
    read_body,
    send_bytes,
)
from llmspool.sim.state import SimState

MAX_BODY_BYTES = 64 * 1024 * 1024
CONTROL_PREFIX = "/_sim/"
STATIC_HEADERS: FixedHeaders = ((b"openai-version", b"2020-10-01"),)
BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)

Handler = Callable[["Exchange"], Awaitable[None]]
"""An endpoint: answers the request."""


class Exchange:
    """One request being answered: where to reply, and what every reply's headers need."""

    __slots__ = (
        "body",
        "counted",
        "cut",
        "method",
        "model",
        "path",
        "receive",
        "request_id",
        "scope",
        "send",
        "started",
        "state",
    )

    def __init__(self, state: SimState, scope: Scope, receive: Receive, send: Send) -> None:
        self.state = state
        self.scope = scope
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        # Control requests stay out of the stats, so that asking never changes the answer.
        self.counted = not self.path.startswith(CONTROL_PREFIX)
        self.receive = receive
        self.send = send
        self.request_id = state.makers.ids.make("req_").encode()
        self.started = time.perf_counter()
        self.model: str | None = None
        """The model asked for, once known: whose rate-limit headers the answer carries."""
        self.cut = False
        """A ``reset_midway`` fault: the answer is cut after its headers and half its body."""
        self.body: bytes | None = None
        """The request body as sent, once ``read_json`` has read it (kept for the fault rules
        with ``contains``, which search it; keeping costs nothing, the bytes exist anyway)."""

    def headers(self, content: FixedHeaders, *, requests_exhausted: float | None = None) -> Headers:
        flavor = self.state.flavor
        if not flavor.openai_headers:
            ratelimit = self.state.ratelimit
            return [
                *content,
                *flavor.extra_headers(
                    self.request_id,
                    lambda: ratelimit.headers(self.model, requests_exhausted=requests_exhausted),
                ),
            ]
        elapsed_ms = int((time.perf_counter() - self.started) * 1000)
        return [
            *content,
            (b"x-request-id", self.request_id),
            (b"openai-processing-ms", str(elapsed_ms).encode()),
            *STATIC_HEADERS,
            *self.state.ratelimit.headers(self.model, requests_exhausted=requests_exhausted),
        ]

    async def send_answer(self, status: int, body: bytes, headers: Headers) -> None:
        """Send a complete answer, or with ``cut`` its start and then reset the connection."""
        if not self.cut:
            await send_bytes(self.send, status, body, headers)
            return
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await self.send(
            {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
        )
        await drop_connection(self.send, self.receive, response_started=True)

    async def reply(self, status: int, body: bytes, *, extra: Headers | None = None) -> None:
        headers = self.headers(JSON_HEADERS)
        if extra:
            headers.extend(extra)
        if self.counted:
            self.state.stats.by_status[status] += 1
        await self.send_answer(status, body, headers)

    async def reply_json(self, status: int, value: Any) -> None:
        await self.reply(status, orjson.dumps(value))

    async def reply_error(
        self,
        error: ApiError,
        *,
        extra: Headers | None = None,
        requests_exhausted: float | None = None,
    ) -> None:
        flavor = self.state.flavor
        error = flavor.translate(error, self.request_id.decode())
        content, body = flavor.error_body(error)
        headers = self.headers(content, requests_exhausted=requests_exhausted)
        given = {name for name, _ in extra or ()}
        headers.extend(
            (name.encode(), value.encode())
            for name, value in error.headers().items()
            if name.encode() not in given
        )
        if extra:
            headers.extend(extra)
        if self.counted:
            self.state.stats.by_status[error.status] += 1
        await self.send_answer(error.status, body, headers)

    def client_request_id(self) -> str | None:
        """The ``X-Client-Request-Id`` header (``None`` if absent)."""
        for key, value in self.scope.get("headers", ()):
            if key == b"x-client-request-id":
                text: str = value.decode("latin-1")
                return text
        return None

    def header(self, name: bytes) -> bytes:
        """A request header's value (``name`` in lower case), or ``b""``."""
        for key, value in self.scope.get("headers", ()):
            if key == name:
                result: bytes = value
                return result
        return b""

    def query(self) -> dict[str, str]:
        """The query string's parameters (the last of repeated ones)."""
        raw: bytes = self.scope.get("query_string", b"")
        return dict(parse_qsl(raw.decode("latin-1")))

    def path_id(self) -> str:
        """The id in ``/v1/files/{id}…`` or ``/v1/batches/{id}…``."""
        return self.path.split("/")[3]

    def message_batch_id(self) -> str:
        """The id in ``/v1/messages/batches/{id}…``."""
        return self.path.split("/")[4]

    def base_url(self) -> str:
        """The URL the client reached the simulator at (scheme and host, no path)."""
        host = self.header(b"host").decode("latin-1")
        if not host:
            server = self.scope.get("server") or ("127.0.0.1", 80)
            host = f"{server[0]}:{server[1]}"
        return f"{self.scope.get('scheme', 'http')}://{host}"

    async def read_json(self, limit: int = MAX_BODY_BYTES) -> dict[str, Any] | None:
        """The request's JSON object, or ``None`` if the client left; bad JSON raises 400."""
        try:
            body = await read_body(self.receive, limit)
        except BodyTooLarge:
            raise PayloadTooLarge(
                f"The request body is over {limit} bytes.", code="payload_too_large"
            ) from None
        if body is None:
            return None
        self.body = body
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidRequest(BAD_JSON) from None
        return validate.json_object(payload)

    async def pause(self, seconds: float, *, response_started: bool = False) -> bool:
        """Wait ``seconds`` (real time); ``False`` if the request is over instead (client gone,
        or the server stopping, in which case the connection is dropped)."""
        end = await self.state.waiter.wait(self.receive, seconds)
        if end is WaitEnd.ELAPSED:
            return True
        if end is WaitEnd.GONE:
            self.state.stats.client_closed += 1
        else:
            await drop_connection(self.send, self.receive, response_started=response_started)
        return False
