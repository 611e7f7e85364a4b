"""Forwarding OpenAI-compatible requests: hand each one's ``Call`` over, answer from its replies.

The call is made by ``call_builder``; the first reply is awaited in ``first_reply`` (which
gives up when the client leaves or the daemon stops) and a stream relayed by ``relay``. A
cache hit is answered here without a call being sent.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable

import anyio
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from starlette.requests import Request
from starlette.responses import Response

from llmspool.cache.front import CacheFront
from llmspool.core.calls import Endpoint
from llmspool.core.errors import ApiError, ServiceUnavailable
from llmspool.core.spans import SpanFields
from llmspool.core.streams import MemoryReceiveStream, MemorySendStream
from llmspool.core.tracing import context_from_headers
from llmspool.messages import Answer, Call, Failure, Missed, Reply, StreamStart
from llmspool.policy.cache_keys import HEADER as CACHE_HEADER
from llmspool.policy.cache_keys import CacheRules
from llmspool.policy.model_choice import ModelChooser, Route
from llmspool.policy.planner import Planner
from llmspool.policy.routing import ModelRouter
from llmspool.server.call_builder import CallBuilder
from llmspool.server.capture import Capturer
from llmspool.server.cascade import HEADER as CASCADE_HEADER
from llmspool.server.cascade import Cascade
from llmspool.server.first_reply import StopClock, first_reply
from llmspool.server.relay import SSE_HEADERS, RelayResponse

log = logging.getLogger(__name__)

ROUTE_HEADER = "x-llmspool-route"
# What a request's span is told as it starts, and as it is answered.
REQUEST_FIELDS = SpanFields("http.request.method", "url.path", "llmspool.request_id")
ANSWERED_FIELDS = SpanFields("http.response.status_code", "llmspool.tier")
ROUTE_REASON_HEADER = "x-llmspool-route-reason"


def error_response(error: ApiError, request_id: str | None = None) -> Response:
    headers = error.headers()
    if request_id:
        headers["x-llmspool-request-id"] = request_id
    return Response(error.body(), error.status, headers, media_type="application/json")


class Forwarder:
    """Turns requests on the OpenAI-compatible endpoints into calls for the request queue."""

    def __init__(
        self,
        queue: MemorySendStream[Call],
        router: ModelRouter,
        planner: Planner,
        tracer: trace.Tracer,
        *,
        max_body_size: int,
        max_json_values: int,
        cache: MemorySendStream[Call | Missed] | None = None,
        cache_rules: CacheRules | None = None,
        cache_front: CacheFront | None = None,
        chooser: ModelChooser | None = None,
        capturer: Capturer | None = None,
        take_now: Callable[[Call], bool] | None = None,
        cache_take_now: Callable[[Call, float | None], bool] | None = None,
    ) -> None:
        self._queue = queue
        self._take_now = take_now  # the request queue taking a call in this task, when it can
        self._cache_take_now = cache_take_now  # and the cache actor a miss
        self._capturer = capturer
        self._cache = cache
        self._cache_front = cache_front
        self._calls = CallBuilder(
            router, planner, max_body_size=max_body_size, max_json_values=max_json_values,
            cache_rules=cache_rules,
            chooser=chooser,
        )
        self._tracer = tracer
        # Unique across restarts (the ledger keys on it) without a uuid4 per request.
        self._id_prefix = f"llmspool-{secrets.token_hex(6)}-"
        self.stop_clock = StopClock()
        self._id_counter = itertools.count(1)
        self._cascade = None if chooser is None else \
            Cascade(chooser, router, self._submit, self.stop_clock)

    async def handle(self, request: Request, endpoint: Endpoint) -> Response:
        request_id = f"{self._id_prefix}{next(self._id_counter):x}"
        headers = request.headers
        span = REQUEST_FIELDS.start_span(
            self._tracer, f"POST {endpoint.value}", ("POST", endpoint.value, request_id),
            context=context_from_headers(headers), kind=SpanKind.SERVER,
        )
        try:
            call, replies, route = await self._calls.build(request, endpoint, request_id, span)
            extra = _route_headers(route)
            missed_at = None
            if call.cache is not None and self._cache_front is not None:
                hit, missed_at = self._cache_front.look(call)
                if hit is not None:
                    call.reply.close()
                    replies.close()
                    return self._respond_from_cache(call, hit[0], span, extra)
            # A rule that named the model decided; the cascade is for what no rule decided.
            cascade = self._cascade.applies(call) \
                if self._cascade is not None and route is None else None
            if cascade is None:
                await self._submit(call, replies, missed_at)
        except ApiError as error:
            return self._finish_with_error(span, error, request_id)
        except BaseException:
            span.end()
            raise
        try:
            if cascade is not None and self._cascade is not None:
                call, first, replies, outcome = await self._cascade.run(
                    request, call, replies, cascade)
                extra = {**extra, CASCADE_HEADER: outcome, ROUTE_HEADER: call.model}
                span.set_attribute("llmspool.cascade", outcome)
            else:
                first = await first_reply(request, call, replies, self.stop_clock)
        except anyio.EndOfStream:
            first = Failure(_shutting_down())
        except ApiError as error:  # the cascade's escalation could not be sent
            replies.close()
            return self._finish_with_error(span, error, request_id)
        except BaseException:
            replies.close()
            span.end()
            raise
        capturing = self._capturer is not None and self._capturer.wants(call)
        if capturing and isinstance(first, Answer) and first.status == 200:
            assert self._capturer is not None
            await self._capturer.keep_answer(call, first.document)
        return self._respond(call, first, replies, span, extra, capturing)

    async def _submit(self, call: Call, replies: MemoryReceiveStream[Reply],
                      missed_at: float | None = None) -> None:
        """Hand ``call`` over: from here the queue (or the cache actor), then the dispatcher,
        owns its reply stream's send end and closes it. ``missed_at``: when the front door
        found nothing for it in the cache file."""
        try:
            if call.cache is not None and self._cache is not None:
                if self._cache_take_now is None or not self._cache_take_now(call, missed_at):
                    await self._cache.send(call if missed_at is None else Missed(call, missed_at))
            elif self._take_now is None or not self._take_now(call):
                await self._queue.send(call)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            call.reply.close()
            replies.close()
            raise _shutting_down() from None


    def _respond(
        self, call: Call, first: Reply, replies: MemoryReceiveStream[Reply], span: Span,
        headers: dict[str, str],
        capturing: bool = False,
    ) -> Response:
        common = {"x-llmspool-request-id": call.request_id, **headers}
        if isinstance(first, Answer | StreamStart) and CACHE_HEADER in first.headers:
            span.set_attribute("llmspool.cache", first.headers[CACHE_HEADER])
        if isinstance(first, Answer):
            replies.close()
            ANSWERED_FIELDS.set(span, first.status, first.tier.value)
            span.end()
            return Response(first.body, first.status, {**first.headers, **common},
                            media_type="application/json")
        if isinstance(first, Failure):
            replies.close()
            return self._finish_with_error(span, first.error, call.request_id)
        if isinstance(first, StreamStart):
            span.set_attribute("http.response.status_code", first.status)
            return RelayResponse(
                first.first,
                replies,
                span,
                first.status,
                {**first.headers, **common, **SSE_HEADERS},
                media_type="text/event-stream",
                tap=self._capturer.tap(call) if capturing and self._capturer is not None
                and first.status == 200 else None,
            )
        replies.close()
        span.end()
        raise RuntimeError(f"unexpected first reply {type(first).__name__}")

    def _respond_from_cache(self, call: Call, first: Reply, span: Span,
                            headers: dict[str, str]) -> Response:
        """A hit's answer: a whole body, or a stored stream sent as one body of events."""
        span.set_attribute("llmspool.cache", "hit")
        span.set_attribute("http.response.status_code", 200)
        span.end()
        common = {"x-llmspool-request-id": call.request_id, **headers}
        if isinstance(first, Answer):
            return Response(first.body, first.status, {**first.headers, **common},
                            media_type="application/json")
        assert isinstance(first, StreamStart)
        return Response(first.first, first.status, {**first.headers, **common, **SSE_HEADERS},
                        media_type="text/event-stream")

    def _finish_with_error(self, span: Span, error: ApiError, request_id: str) -> Response:
        span.set_status(Status(StatusCode.ERROR, error.message))
        span.set_attribute("http.response.status_code", error.status)
        span.set_attribute("error.type", error.code or type(error).__name__)
        span.end()
        return error_response(error, request_id)


def _route_headers(route: Route | None) -> dict[str, str]:
    """``x-llmspool-route`` (the model a route rule chose) and ``x-llmspool-route-reason``."""
    if route is None:
        return {}
    return {ROUTE_HEADER: route.model, ROUTE_REASON_HEADER: route.reason}


def _shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable(
        "llmspool is shutting down and takes no new requests; retry in a moment",
        retry_after=2.0,
        code="shutting_down",
    )

