"""Forwarding OpenAI-compatible requests: validate, make a ``Call``, answer from its replies.

The body is parsed once (orjson) to check it and to read ``model``, ``stream`` and
``service_tier``; it is re-encoded only when the daemon must change it: a provider-prefixed
model name, or a streamed chat completion whose usage the daemon needs
(``stream_options.include_usage``; the extra usage chunk is then kept from the client).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from llmspool.cache.front import CacheFront
from llmspool.core.calls import Endpoint, Tier
from llmspool.core.errors import (
    ApiError,
    InvalidRequest,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from llmspool.core.tracing import context_from_headers
from llmspool.messages import (
    Answer,
    Call,
    Failure,
    Reply,
    StreamChunk,
    StreamEnd,
    StreamStart,
)
from llmspool.policy.cache_keys import HEADER as CACHE_HEADER
from llmspool.policy.cache_keys import CacheRules
from llmspool.policy.deadlines import parse_deadline
from llmspool.policy.planner import Planner
from llmspool.policy.routing import ModelRouter
from llmspool.server.bodies import read_limited
from llmspool.server.disconnect import DISCONNECT_KEY, DisconnectHooks
from llmspool.server.uvicorn_server import caller_of

log = logging.getLogger(__name__)

STREAM_BUFFER = 32  # replies a streamed call may run ahead of a slow client
_REQUIRED_INPUT = {
    Endpoint.CHAT: "messages",
    Endpoint.EMBEDDINGS: "input",
}
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def error_response(error: ApiError, request_id: str | None = None) -> Response:
    headers = error.headers()
    if request_id:
        headers["x-llmspool-request-id"] = request_id
    return Response(error.body(), error.status, headers, media_type="application/json")


class Forwarder:
    """Turns requests on the OpenAI-compatible endpoints into calls for the request queue."""

    def __init__(
        self,
        queue: MemoryObjectSendStream[Call],
        router: ModelRouter,
        planner: Planner,
        tracer: trace.Tracer,
        *,
        max_body_size: int,
        cache: MemoryObjectSendStream[Call] | None = None,
        cache_rules: CacheRules | None = None,
        cache_front: CacheFront | None = None,
    ) -> None:
        self._queue = queue
        self._cache = cache
        self._cache_rules = cache_rules
        self._cache_front = cache_front
        self._router = router
        self._planner = planner
        self._tracer = tracer
        self._max_body_size = max_body_size
        # Unique across restarts (the ledger keys on it) without a uuid4 per request.
        self._id_prefix = f"llmspool-{secrets.token_hex(6)}-"
        self.stop_clock = StopClock()
        self._id_counter = itertools.count(1)

    async def handle(self, request: Request, endpoint: Endpoint) -> Response:
        request_id = f"{self._id_prefix}{next(self._id_counter):x}"
        headers = request.headers
        span = self._tracer.start_span(
            f"POST {endpoint.value}",
            context=context_from_headers(headers),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "POST",
                "url.path": endpoint.value,
                "llmspool.request_id": request_id,
            },
        )
        try:
            call, replies = await self._make_call(request, endpoint, request_id, span)
            if call.cache is not None and self._cache_front is not None:
                hit = self._cache_front.hit(call)
                if hit is not None:
                    call.reply.close()
                    replies.close()
                    return self._respond_from_cache(call, hit[0], span)
            await self._submit(call, replies)
        except ApiError as error:
            return self._finish_with_error(span, error, request_id)
        except BaseException:
            span.end()
            raise
        try:
            first = await _first_reply(request, call, replies, self.stop_clock)
        except anyio.EndOfStream:
            first = Failure(_shutting_down())
        except BaseException:
            replies.close()
            span.end()
            raise
        return self._respond(call, first, replies, span)

    async def _make_call(
        self, request: Request, endpoint: Endpoint, request_id: str, span: Span
    ) -> tuple[Call, MemoryObjectReceiveStream[Reply]]:
        body = await self._read_body(request)
        parsed = _parse_json_object(body)
        requested_model = parsed.get("model")
        if not isinstance(requested_model, str) or not requested_model:
            raise InvalidRequest(
                "you must provide a model parameter (a model id string)", param="model",
                code="missing_required_parameter" if requested_model is None else "invalid_type",
            )
        required = _REQUIRED_INPUT.get(endpoint)
        if required is not None and required not in parsed:
            raise InvalidRequest(
                f"missing required parameter: '{required}'", param=required,
                code="missing_required_parameter",
            )
        stream = parsed.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidRequest("'stream' must be true or false", param="stream",
                                 code="invalid_type")
        stream = stream and endpoint is not Endpoint.EMBEDDINGS
        provider, model = self._router.resolve(requested_model)
        rewrite = model != requested_model
        if rewrite:
            parsed["model"] = model
        strip_usage_chunk = False
        if stream and endpoint is Endpoint.CHAT:
            options = parsed.get("stream_options")
            if not isinstance(options, dict) or options.get("include_usage") is not True:
                # The daemon needs the usage to bill the call; the client did not ask for it.
                parsed["stream_options"] = {**(options or {}), "include_usage": True}
                strip_usage_chunk = rewrite = True
        operation = request.headers.get("x-llmspool-operation")
        requested_tier = parsed.get("service_tier")
        # "auto" (OpenAI's default) names no tier: the planner may choose one for a deadline.
        explicit = None if requested_tier == "auto" else Tier.from_service_tier(requested_tier)
        if explicit is Tier.BATCH:
            explicit = None  # not a value OpenAI takes in a request; let the planner decide
        deadline_at = _deadline_header(request.headers.get("x-llmspool-deadline"))
        caller = caller_of(request.scope)
        cache_plan = None
        if self._cache_rules is not None:
            cache_plan = self._cache_rules.plan(
                endpoint, provider, model, parsed, header=request.headers.get(CACHE_HEADER),
                operation=operation, uid=caller.uid, stream=stream,
            )
        span.set_attributes({
            "gen_ai.request.model": model,
            "gen_ai.operation.name": endpoint.operation_name,
            "llmspool.provider": provider,
            "llmspool.stream": stream,
        })
        replies_in: MemoryObjectSendStream[Reply]
        replies_in, replies_out = anyio.create_memory_object_stream[Reply](
            STREAM_BUFFER if stream else 1
        )
        call = Call(
            request_id=request_id,
            endpoint=endpoint,
            provider=provider,
            model=model,
            body=orjson.dumps(parsed) if rewrite else body,
            stream=stream,
            policy=self._planner.policy(operation, explicit),
            caller=caller,
            operation=operation,
            received_at=time.time(),
            trace=trace.set_span_in_context(span),
            reply=replies_in,
            strip_usage_chunk=strip_usage_chunk,
            deadline_at=deadline_at,
            session=request.headers.get("x-llmspool-session"),
            cache=cache_plan,
        )
        return call, replies_out

    async def _submit(self, call: Call, replies: MemoryObjectReceiveStream[Reply]) -> None:
        """Hand ``call`` over: from here the queue (or the cache actor), then the dispatcher,
        owns its reply stream's send end and closes it."""
        try:
            if call.cache is not None and self._cache is not None:
                await self._cache.send(call)
            else:
                await self._queue.send(call)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            call.reply.close()
            replies.close()
            raise _shutting_down() from None

    async def _read_body(self, request: Request) -> bytes:
        content_type = request.headers.get("content-type", "application/json")
        if "json" not in content_type.lower():
            raise UnsupportedMediaType(
                f"send the body as JSON with 'content-type: application/json' "
                f"(got {content_type!r})",
                code="unsupported_content_type",
            )
        return await read_limited(request, self._max_body_size, _too_large)

    def _respond(
        self, call: Call, first: Reply, replies: MemoryObjectReceiveStream[Reply], span: Span
    ) -> Response:
        common = {"x-llmspool-request-id": call.request_id}
        if isinstance(first, Answer | StreamStart) and CACHE_HEADER in first.headers:
            span.set_attribute("llmspool.cache", first.headers[CACHE_HEADER])
        if isinstance(first, Answer):
            replies.close()
            span.set_attribute("http.response.status_code", first.status)
            span.set_attribute("llmspool.tier", first.tier.value)
            span.end()
            return Response(first.body, first.status, {**first.headers, **common},
                            media_type="application/json")
        if isinstance(first, Failure):
            replies.close()
            return self._finish_with_error(span, first.error, call.request_id)
        if isinstance(first, StreamStart):
            span.set_attribute("http.response.status_code", first.status)
            return _RelayResponse(
                first.first,
                replies,
                span,
                first.status,
                {**first.headers, **common, **_SSE_HEADERS},
                media_type="text/event-stream",
            )
        replies.close()
        span.end()
        raise RuntimeError(f"unexpected first reply {type(first).__name__}")

    def _respond_from_cache(self, call: Call, first: Reply, span: Span) -> Response:
        """A hit's answer: a whole body, or a stored stream sent as one body of events."""
        span.set_attribute("llmspool.cache", "hit")
        span.set_attribute("http.response.status_code", 200)
        span.end()
        if isinstance(first, Answer):
            return Response(first.body, first.status,
                            {**first.headers, "x-llmspool-request-id": call.request_id},
                            media_type="application/json")
        assert isinstance(first, StreamStart)
        return Response(first.first, first.status,
                        {**first.headers, "x-llmspool-request-id": call.request_id,
                         **_SSE_HEADERS}, media_type="text/event-stream")

    def _finish_with_error(self, span: Span, error: ApiError, request_id: str) -> Response:
        span.set_status(Status(StatusCode.ERROR, error.message))
        span.set_attribute("http.response.status_code", error.status)
        span.set_attribute("error.type", error.code or type(error).__name__)
        span.end()
        return error_response(error, request_id)


class _RelayResponse(StreamingResponse):
    """Server-sent events from a call's replies, written as they come.

    Whatever ends the response (the last event, a client that disconnects, a shutdown), the
    reply stream is closed, which tells the dispatcher to stop the upstream call.
    """

    def __init__(
        self,
        first: bytes,
        replies: MemoryObjectReceiveStream[Reply],
        span: Span,
        status: int,
        headers: dict[str, str],
        media_type: str,
    ) -> None:
        super().__init__(_relay(first, replies, span), status, headers, media_type=media_type)
        self._replies = replies
        self._span = span

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._replies.close()
            self._span.end()


async def _relay(
    first: bytes, replies: MemoryObjectReceiveStream[Reply], span: Span
) -> AsyncIterator[bytes]:
    """The stream's chunks as they come, until its end."""
    if first:
        yield first
    async for reply in replies:
        if isinstance(reply, StreamChunk):
            yield reply.data
        elif isinstance(reply, StreamEnd):
            if reply.error is not None:
                span.set_status(Status(StatusCode.ERROR, reply.error.message))
                yield b"data: " + reply.error.body() + b"\n\n"
            return


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


async def _first_reply(
    request: Request, call: Call, replies: MemoryObjectReceiveStream[Reply], stop: StopClock,
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


def _shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable(
        "llmspool is shutting down and takes no new requests; retry in a moment",
        retry_after=2.0,
        code="shutting_down",
    )


def _deadline_header(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_deadline(value, time.time())
    except ValueError as exc:
        raise InvalidRequest(
            f"x-llmspool-deadline: {exc}", param="x-llmspool-deadline", code="invalid_deadline"
        ) from None


def _parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"the body is not valid JSON ({exc}); send one JSON object",
            code="invalid_json",
        ) from None
    if not isinstance(parsed, dict):
        raise InvalidRequest("the body must be a JSON object", code="invalid_json")
    return parsed


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the body is {size} bytes or more, over the limit of {limit} bytes "
        "([daemon] max_body_size)",
        code="body_too_large",
    )
