"""One upstream request, and its answer relayed to the caller.

A whole answer is read, checked, settled and sent on ``call.reply`` as one ``Answer``; a stream
is relayed event by event (``StreamStart``, chunks, ``StreamEnd``), with the provider's stream
idle timeout between chunks. Either way the call is settled with the ledger before its end
reaches the client, so a cost query it sends next sees it.

A client that goes away mid-stream closes its reply stream; the next send fails, and leaving
the provider's context closes the upstream connection, so the upstream call stops too.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anyio
import orjson
from opentelemetry.trace import Span, Status, StatusCode

from llmspool.actors.dispatch.accounts import Accounts
from llmspool.actors.dispatch.flex import NoFlexCapacity
from llmspool.actors.dispatch.stream_clock import StreamClock
from llmspool.actors.dispatch.targets import Target
from llmspool.core.calls import Tier, Usage
from llmspool.core.clock import Clock
from llmspool.core.errors import ApiError, BadUpstreamAnswer, UpstreamError, UpstreamUnreachable
from llmspool.core.pricing import usd
from llmspool.core.provider import Provider, UpstreamRequest, UpstreamResponse
from llmspool.core.spans import SpanFields
from llmspool.core.units import format_duration
from llmspool.core.wire import (
    SseMeter,
    claimed_tier_of,
    finish_reasons_of,
    response_id_of,
    response_model_of,
    served_tier_of,
    usage_of,
)
from llmspool.messages import (
    Answer,
    Call,
    Reply,
    StreamChunk,
    StreamEnd,
    StreamStart,
)
from llmspool.policy.billing import ROUTING_SAVING
from llmspool.resilience.buckets import Permit
from llmspool.resilience.failures import FailureClass, classify
from llmspool.resilience.limits import RateLimits

# Upstream headers a client may rely on; the rest (rate limits, cookies) are the daemon's.
_PASSED_HEADERS = ("x-request-id", "openai-processing-ms", "openai-version")
_PASSED_ERROR_HEADERS = (*_PASSED_HEADERS, "retry-after", "retry-after-ms")
_CLIENT_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError)
# What a call's span is told of the upstream's answer: its status as it starts, then what the
# GenAI conventions say of it (``_describe_answer``).
STATUS_FIELDS = SpanFields("http.response.status_code")
ANSWER_FIELDS = SpanFields("gen_ai.response.id", "gen_ai.response.model",
                           "gen_ai.response.finish_reasons")


@dataclass(frozen=True, slots=True)
class Sent:
    """What an attempt that reached the caller used; ``late_error``: the stream broke after
    its first event (told to the client; it cannot be retried)."""

    usage: Usage
    late_error: ApiError | None = None


class Relay:
    """Sends attempts through the provider plugins and relays what comes back."""

    def __init__(self, providers: Mapping[str, Provider], limits: RateLimits,
                 stream_idle_timeouts: Mapping[str, float], accounts: Accounts,
                 clock: Clock, quiet: Callable[[], bool] = lambda: False) -> None:
        self._providers = providers
        self._quiet = quiet  # few calls in flight: an answer goes out before the bookkeeping
        self._clock = clock  # the ledger's timestamps are the daemon's clock
        self._limits = limits
        self._stream_idle = stream_idle_timeouts
        self._accounts = accounts
        self.aborted = 0  # streams whose client went away mid-stream

    async def send(self, call: Call, target: Target, span: Span, attempt_span: Span,
                   permit: Permit) -> Sent | None:
        """Sends the attempt and relays its answer. Raises ``NoFlexCapacity`` when flex had no
        room, and the ``ApiError`` of a failure before anything reached the caller."""
        provider = self._providers[target.provider]
        request = UpstreamRequest(
            endpoint=call.endpoint,
            model=target.model,
            body=target.body,
            stream=call.stream,
            tier=target.tier,
            timeout=target.time_limit,
            request_id=call.request_id,
            deadline_at=call.deadline_at,
        )
        started = self._clock.now()
        # For a stream the relay enforces the time limit between chunks itself (it knows
        # whether the client has seen anything); this scope is its backstop.
        grace = 1.0 if call.stream else 0.0
        with anyio.move_on_after(target.time_limit + grace) as scope:
            async with provider.send(request) as response:
                status = response.status
                if type(status) is not int or not 100 <= status <= 599:
                    try:
                        status = _http_status(target.provider, status)
                    except BadUpstreamAnswer:
                        # Sent, and answered with something unreadable: what the provider
                        # bills is unknown, so billed at the reservation, as a broken answer.
                        await self._accounts.bill_broken(call, target, started, span,
                                                         self._accounts.estimate(call))
                        raise
                STATUS_FIELDS.set(span, status)
                if attempt_span is not span:  # a retry's own span
                    attempt_span.set_attribute("http.response.status_code", status)
                headers = response.headers
                self._limits.observe(target.provider, target.model, headers, permit=permit)
                if status >= 400:
                    raw = await response.read()
                    error = UpstreamError(
                        target.provider, status, raw,
                        upstream_headers=_pick(headers, _PASSED_ERROR_HEADERS),
                    )
                    failure = classify(error, flex=target.tier is Tier.FLEX)
                    if failure.kind is FailureClass.FLEX_UNAVAILABLE:
                        raise NoFlexCapacity
                    if failure.kind is FailureClass.RATE_LIMITED:
                        pause = self._limits.rate_limited(target.provider, target.model, headers)
                        attempt_span.add_event("rate limited", {"pause_s": pause})
                    raise error
                if call.stream:
                    return await self._relay_stream(call, target, response, span, started)
                return await self._relay_answer(call, target, response, span, started)
        if scope.cancelled_caught:
            raise _timed_out(target.provider, target.timeout_name)
        return None

    async def _relay_answer(
        self, call: Call, target: Target, response: UpstreamResponse, span: Span, started: float
    ) -> Sent:
        accounts = self._accounts
        try:
            body = await response.read()
        except BaseException:
            # Answered 200, then cut mid-body (or given up while reading): the provider
            # bills what it generated, which nobody here can know. Billed at the reservation.
            await accounts.bill_broken(call, target, started, span, accounts.estimate(call))
            raise
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            await accounts.bill_broken(call, target, started, span, accounts.estimate(call))
            raise BadUpstreamAnswer(
                f"{target.provider} answered HTTP {response.status} with a body that is not "
                f"JSON ({len(body)} bytes starting {body[:60]!r})",
                code="upstream_not_json",
            ) from None
        if not isinstance(parsed, dict):
            raise BadUpstreamAnswer(
                f"{target.provider} answered with JSON that is not an object",
                code="upstream_shape",
            )
        served = served_tier_of(parsed) or target.tier
        reported = usage_of(parsed)
        usage = reported or accounts.estimate(call)
        verdict = None
        if call.cascade_check is not None and response.status == 200:
            verdict = call.cascade_check(parsed)
            if not verdict.accepted:  # spent for nothing: routing's overhead
                call = dataclasses.replace(call, routed_from=None, overhead_of=ROUTING_SAVING)
        settled = accounts.settle(call, target.provider, target.model, served, usage,
                                  response.status, started, span, claimed=claimed_tier_of(parsed),
                                  response_id=response_id_of(parsed))
        _describe_answer(span, response_id_of(parsed), response_model_of(parsed),
                         finish_reasons_of(parsed))
        headers = _pick(response.headers, _PASSED_HEADERS)
        headers["x-llmspool-tier"] = served.value
        if target.failover_from is not None:
            headers["x-llmspool-failover"] = f"{target.failover_from} -> {target.provider}"
            headers["x-llmspool-model"] = target.model
        if settled.cost_picodollars is not None:
            headers["x-llmspool-cost-usd"] = f"{usd(settled.cost_picodollars):.10f}"
        # Settled first: a client that asks for its cost right after its answer then sees it
        # (the ledger answers queries in arrival order). A job's call hands its entry to the
        # job keeper instead, which stores it with the result in one transaction.
        if call.settle_with_result:
            accounts.hand_over(call)
        else:
            await accounts.record(settled)
        await tell(call, Answer(
            response.status, headers, body, served, settled.cost_picodollars,
            settled.standard_cost_picodollars, parsed,
            settled=settled if call.settle_with_result else None, verdict=verdict,
            usage=reported,
        ))
        if self._quiet():
            # Let the front door write the answer before this call's bookkeeping (breaker,
            # rate-limit permit, span, duration, queue slot) runs: at concurrency 1 that was
            # ~80 µs of every answer's latency. Under load the turn is a cost (c=64, taken
            # always: 3-6% fewer req/s) and answers do not wait on one call's bookkeeping.
            await anyio.lowlevel.cancel_shielded_checkpoint()
        return Sent(usage)

    async def _relay_stream(
        self, call: Call, target: Target, response: UpstreamResponse, span: Span, started: float
    ) -> Sent:
        """Relays the events as they come. A failure before the first event raises (the call
        may still be retried, or answered with a proper error status); after it, the stream
        ends with an error event and the failure is returned (nothing can be retried)."""
        accounts = self._accounts
        meter = SseMeter(strip_usage_chunk=call.strip_usage_chunk)
        headers = _pick(response.headers, _PASSED_HEADERS)
        if target.failover_from is not None:
            headers["x-llmspool-failover"] = f"{target.failover_from} -> {target.provider}"
            headers["x-llmspool-model"] = target.model
        status = response.status
        begun = False
        idle = self._stream_idle.get(target.provider, 300.0)
        deadline = anyio.current_time() + target.time_limit - (self._clock.now() - started)
        chunks = aiter(response.iter_chunks())
        data: bytes | None = b""
        try:
            # One scope for the whole stream, and one timer (``StreamClock``): a scope a chunk
            # was about a fifth of the daemon's CPU for each streamed chunk, and moving one
            # scope's deadline each chunk still cost a few µs of the ~27 left.
            with anyio.CancelScope() as waiting:
                clock = StreamClock(waiting, idle, deadline)
                try:
                    while clock.waiting():
                        data = await anext(chunks, None)
                        if data is None or waiting.cancel_called:
                            break  # the end; or the time ran out while this chunk waited
                        out = meter.feed(data)
                        if out:
                            reply = StreamChunk(out) if begun else \
                                StreamStart(status, headers, out)
                            begun = True
                            clock.held()  # while it waits for room towards the client
                            await call.reply.send(reply)
                finally:
                    clock.stop()
            if waiting.cancel_called and data is not None:
                if clock.idle_ran_out:
                    raise _idle_timeout(target.provider, idle)
                raise _timed_out(target.provider, target.timeout_name)
            rest = meter.flush()
            if rest or not begun:
                await call.reply.send(
                    StreamChunk(rest) if begun else StreamStart(status, headers, rest)
                )
        except _CLIENT_GONE:
            # The client went away: leaving the provider's context closes the upstream
            # connection. Record what was used so far, as an estimate.
            span.add_event("client disconnected; upstream call cancelled")
            self.aborted += 1
            status = 499
            usage = meter.usage or accounts.partial_usage(call, meter.events)
            with anyio.CancelScope(shield=True):
                await accounts.record(accounts.settle(
                    call, target.provider, target.model, meter.tier or target.tier, usage,
                    status, started, span, flag=None if meter.usage else "broken_answer"))
            _describe_answer(span, meter.response_id, meter.model, meter.finish_reasons)
            return Sent(usage)
        except ApiError as error:
            if not begun:
                raise
            span.set_status(Status(StatusCode.ERROR, error.message))
            usage = meter.usage or accounts.partial_usage(call, meter.events)
            served = meter.tier or target.tier
            await accounts.record(accounts.settle(
                call, target.provider, target.model, served, usage, 502, started, span,
                flag=None if meter.usage else "broken_answer"))
            _describe_answer(span, meter.response_id, meter.model, meter.finish_reasons)
            await tell(call, StreamEnd(error))
            return Sent(usage, late_error=error)
        usage = meter.usage or accounts.partial_usage(call, meter.events)
        # Settle before the end reaches the client, so a cost query it sends next sees it.
        settled = accounts.settle(call, target.provider, target.model, meter.tier or target.tier,
                                  usage, status, started, span, claimed=meter.claimed_tier,
                                  response_id=meter.response_id)
        _describe_answer(span, meter.response_id, meter.model, meter.finish_reasons)
        await accounts.record(settled)
        await tell(call, StreamEnd())
        return Sent(usage)


async def tell(call: Call, reply: Reply) -> None:
    """Answers the caller, if it is still there."""
    with contextlib.suppress(*_CLIENT_GONE):  # the client is gone; nobody to tell
        await call.reply.send(reply)


def _describe_answer(span: Span, response_id: str | None, model: str | None,
                     finish_reasons: list[str]) -> None:
    """What the GenAI conventions say of an answer: its id, the model that produced it (the
    answer's own, dated name when it gives one), and why each choice stopped."""
    if span.is_recording():  # else nothing to build the reasons' tuple for
        # A tuple, as OpenTelemetry keeps a sequence (and fields take values as given).
        ANSWER_FIELDS.set(span, response_id, model,
                          tuple(finish_reasons) if finish_reasons else None)


def _http_status(provider: str, status: object) -> int:
    """A provider plugin's ``status`` as the ``int`` it must be (an ``http.HTTPStatus`` is
    one); ``BadUpstreamAnswer`` for what is not an HTTP status code, which the caller is told
    instead of an internal error."""
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        return int(status)
    raise BadUpstreamAnswer(
        f"{provider}'s provider plugin answered with status {status!r}, which is not an HTTP "
        "status code (an int from 100 to 599), so the attempt was given up. This is a bug in "
        "the plugin: `llmspool plugins` names it and its version",
        code="bad_upstream_status",
    )


def _pick(headers: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {name: headers[name] for name in names if name in headers}


def _timed_out(provider: str, which: str) -> UpstreamUnreachable:
    return UpstreamUnreachable(
        f"{provider} did not finish within {which}; the attempt was given up",
        code="upstream_timeout", status=504,
    )


def _idle_timeout(provider: str, idle: float) -> UpstreamUnreachable:
    return UpstreamUnreachable(
        f"{provider}'s stream went quiet for {format_duration(idle)} between two chunks "
        f"([providers.{provider}] stream_idle_timeout); the call was given up",
        code="stream_idle_timeout", status=504,
    )
