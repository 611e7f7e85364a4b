"""Making a ``Call`` from an OpenAI-compatible request: read and check the body, choose the
provider, tier policy and cache plan.

The body is parsed once (orjson) to check it and to read ``model``, ``stream`` and
``service_tier``; it is re-encoded only when the daemon must change it: a provider-prefixed
model name, a model chosen by the operation's ``route`` rules (``llmspool.policy.model_choice``),
or a streamed chat completion whose usage the daemon needs (``stream_options.include_usage``;
the extra usage chunk is then kept from the client).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import anyio
import orjson
from opentelemetry import trace
from opentelemetry.trace import Span
from starlette.requests import Request

from llmspool.core.calls import Endpoint, Tier
from llmspool.core.errors import (
    ApiError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from llmspool.core.json_values import check_values
from llmspool.core.spans import SpanFields
from llmspool.core.streams import MemoryReceiveStream, MemorySendStream, create_memory_stream
from llmspool.messages import Call, Reply
from llmspool.policy.cache_keys import HEADER as CACHE_HEADER
from llmspool.policy.cache_keys import CacheRules
from llmspool.policy.deadlines import DeadlineHeaders
from llmspool.policy.model_choice import ModelChooser, Route
from llmspool.policy.planner import Planner
from llmspool.policy.routing import ModelRouter
from llmspool.server.bodies import read_limited
from llmspool.server.uvicorn_server import caller_of

__all__ = ["STREAM_BUFFER", "Built", "CallBuilder"]

STREAM_BUFFER = 32  # replies a streamed call may run ahead of a slow client
# What a request's span is told of the call its body asks for.
REQUEST_FIELDS = SpanFields("gen_ai.request.model", "gen_ai.operation.name",
                            "llmspool.provider", "llmspool.stream")
_REQUIRED_INPUT = {
    Endpoint.CHAT: "messages",
    Endpoint.EMBEDDINGS: "input",
}


class Built(NamedTuple):
    """A request made into a call: the call, the receiving end of its reply stream, and the
    route that chose its model (None: the model asked for)."""

    call: Call
    replies: MemoryReceiveStream[Reply]
    route: Route | None


class CallBuilder:
    """Checks a request to an OpenAI-compatible endpoint and makes its ``Call``."""

    def __init__(
        self,
        router: ModelRouter,
        planner: Planner,
        *,
        max_body_size: int,
        max_json_values: int,
        cache_rules: CacheRules | None = None,
        chooser: ModelChooser | None = None,
    ) -> None:
        self._router = router
        self._chooser = chooser
        self._planner = planner
        self._max_body_size = max_body_size
        self._max_json_values = max_json_values
        self._cache_rules = cache_rules
        self._deadlines = DeadlineHeaders()

    async def build(
        self, request: Request, endpoint: Endpoint, request_id: str, span: Span
    ) -> Built:
        """The call for ``request``, the receiving end of its reply stream, and its route.

        Raises ``ApiError`` (an ``InvalidRequest``, a body too large or not JSON) when the
        request cannot be made into a call.
        """
        # The deadline counts from the request's head: a body that waits for room, or arrives
        # slowly, spends the call's time.
        deadline_at = self._deadline_header(request.headers.get("x-llmspool-deadline"),
                                            self._planner.clock.now())
        body = await self._read_body(request, deadline_at)
        parsed = _parse_json_object(body, self._max_json_values)
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
        operation = request.headers.get("x-llmspool-operation")
        route = None
        if self._chooser is not None and endpoint is not Endpoint.EMBEDDINGS:
            route = self._chooser.route(parsed, operation)
        routed_from = None
        if route is not None and route.model != requested_model:
            routed_from = self._asked(requested_model)
        provider, model = self._router.resolve(route.model if route else requested_model)
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
        requested_tier = parsed.get("service_tier")
        # "auto" (OpenAI's default) names no tier: the planner may choose one for a deadline.
        explicit = None if requested_tier == "auto" else Tier.from_service_tier(requested_tier)
        if explicit is Tier.BATCH:
            explicit = None  # not a value OpenAI takes in a request; let the planner decide
        now = self._planner.clock.now()  # the daemon's clock, which deadlines are read on
        caller = caller_of(request.scope)
        cache_plan = None
        if self._cache_rules is not None:
            cache_plan = self._cache_rules.plan(
                endpoint, provider, model, parsed, header=request.headers.get(CACHE_HEADER),
                operation=operation, uid=caller.uid, stream=stream,
            )
        REQUEST_FIELDS.set(span, model, endpoint.operation_name, provider, stream)
        replies_in: MemorySendStream[Reply]
        replies_in, replies_out = create_memory_stream[Reply](
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
            received_at=now,
            trace=trace.set_span_in_context(span),
            reply=replies_in,
            strip_usage_chunk=strip_usage_chunk,
            deadline_at=deadline_at,
            session=request.headers.get("x-llmspool-session"),
            cache=cache_plan,
            routed_from=routed_from,
            document=parsed,
        )
        if route is not None:
            span.set_attributes({"llmspool.route.model": route.model,
                                 "llmspool.route.reason": route.reason})
        return Built(call, replies_out, route)

    def _asked(self, requested_model: str) -> tuple[str, str] | None:
        """(provider, model) the request asked for, whose price a routed call's saving is
        measured against; None for a name no provider serves (a placeholder such as "auto"
        that only the route gives a model)."""
        try:
            return self._router.resolve(requested_model)
        except NotFound:
            return None

    def _deadline_header(self, value: str | None, now: float) -> float | None:
        if value is None:
            return None
        try:
            return self._deadlines.parse(value, now)
        except ValueError as exc:
            raise InvalidRequest(
                f"x-llmspool-deadline: {exc}", param="x-llmspool-deadline",
                code="invalid_deadline",
            ) from None

    async def _read_body(self, request: Request, deadline_at: float | None) -> bytes:
        content_type = request.headers.get("content-type", "application/json")
        if "json" not in content_type.lower():
            raise UnsupportedMediaType(
                f"send the body as JSON with 'content-type: application/json' "
                f"(got {content_type!r})",
                code="unsupported_content_type",
            )
        if deadline_at is None:  # most calls: no cancel scope made for them
            return await read_limited(request, self._max_body_size, _too_large)
        # Not past the deadline: waiting for room in max_bodies_in_memory is bounded by
        # bodies_wait, which may be longer, and a call out of time can only fail.
        with anyio.move_on_after(deadline_at - self._planner.clock.now()):
            return await read_limited(request, self._max_body_size, _too_large)
        raise ApiError(
            "the request's deadline (x-llmspool-deadline) passed while its body was still being "
            "read or waiting for room in [daemon] max_bodies_in_memory; nothing was sent "
            "upstream. Send it again with a later deadline, or when the daemon is less busy",
            status=504, code="deadline_exceeded", error_type="timeout")


def _parse_json_object(body: bytes, max_values: int) -> dict[str, Any]:
    check_values(body, max_values)
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
