"""The dispatcher actor: runs each call against its provider and tells everyone how it went.

For every ``Call`` it starts a task that sends the request through the provider plugin,
answers the caller on ``call.reply`` (a whole ``Answer``, or ``StreamStart``, chunks and
``StreamEnd``), reads the usage and the tier the answer says it served, prices it, and sends a
``Settled`` to the ledger and a ``SlotFreed`` to the request queue.

Cost is computed at the tier the provider reports it served, never the one asked for.
A client that goes away mid-stream closes its reply stream; the next send fails, and leaving
the provider's context closes the upstream connection, so the upstream call stops too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import anyio
import orjson
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from llmspool.calls import Tier, Usage
from llmspool.errors import ApiError, BadUpstreamAnswer, UpstreamError
from llmspool.messages import (
    Answer,
    Call,
    Failure,
    NewPrices,
    Query,
    Reply,
    Settled,
    SlotFreed,
    StreamChunk,
    StreamEnd,
    StreamStart,
)
from llmspool.pricing import PriceTable, usd
from llmspool.provider import Provider, UpstreamRequest, UpstreamResponse
from llmspool.wire import SseMeter, served_tier_of, usage_of

log = logging.getLogger(__name__)

# Upstream headers a client may rely on; the rest (rate limits, cookies) are the daemon's.
_PASSED_HEADERS = ("x-request-id", "openai-processing-ms", "openai-version")
_PASSED_ERROR_HEADERS = (*_PASSED_HEADERS, "retry-after", "retry-after-ms")
_CLIENT_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError)


class Dispatcher:
    def __init__(
        self,
        inbox: MemoryObjectReceiveStream[Call | Query | NewPrices],
        freed: MemoryObjectSendStream[SlotFreed],
        ledger: MemoryObjectSendStream[Settled],
        *,
        providers: Mapping[str, Provider],
        provider_kinds: Mapping[str, str],
        timeouts: Mapping[str, float],
        prices: PriceTable,
        tracer: trace.Tracer,
    ) -> None:
        self._inbox = inbox
        self._freed = freed
        self._ledger = ledger
        self._providers = providers
        self._provider_kinds = provider_kinds
        self._timeouts = timeouts
        self._prices = prices
        self._tracer = tracer
        self._in_flight = 0
        self._served_by_tier: dict[str, int] = {}
        self._failed = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with self._freed, self._ledger, anyio.create_task_group() as group:
            task_status.started()
            async with self._inbox:
                async for message in self._inbox:
                    if isinstance(message, Call):
                        group.start_soon(self._serve, message)
                    elif isinstance(message, Query):
                        message.reply.send_nowait(self._snapshot())
                    else:
                        self._prices = message.prices

    async def _serve(self, call: Call) -> None:
        self._in_flight += 1
        started = time.time()
        kind = self._provider_kinds.get(call.provider, call.provider)
        try:
            with self._tracer.start_as_current_span(
                f"{call.endpoint.operation_name} {call.model}",
                context=call.trace,
                kind=SpanKind.CLIENT,
                attributes={
                    "gen_ai.system": kind,
                    "gen_ai.provider.name": kind,
                    "gen_ai.operation.name": call.endpoint.operation_name,
                    "gen_ai.request.model": call.model,
                    "llmspool.request_id": call.request_id,
                    "llmspool.provider": call.provider,
                    "llmspool.queue_wait_ms": round((started - call.received_at) * 1000, 3),
                },
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                await self._forward(call, span, started)
        except Exception as exc:
            # A bug while serving one call must not take the daemon (and every other call)
            # down: log it, answer this caller 500, and keep serving.
            log.exception("unexpected error serving %s", call.request_id)
            self._failed += 1
            await _tell(call, Failure(ApiError(
                f"llmspool hit an unexpected error serving this request ({type(exc).__name__}); "
                "it is logged, and the daemon keeps serving",
                code="internal_error",
            )))
        finally:
            call.reply.close()
            self._in_flight -= 1
            self._freed.send_nowait(SlotFreed(call.request_id))

    async def _forward(self, call: Call, span: Span, started: float) -> None:
        provider = self._providers[call.provider]
        request = UpstreamRequest(
            endpoint=call.endpoint,
            model=call.model,
            body=call.body,
            stream=call.stream,
            tier=call.tier,
            timeout=self._timeouts[call.provider],
        )
        try:
            async with provider.send(request) as response:
                span.set_attribute("http.response.status_code", response.status)
                if response.status >= 400:
                    raise UpstreamError(
                        call.provider,
                        response.status,
                        await response.read(),
                        upstream_headers=_pick(response.headers, _PASSED_ERROR_HEADERS),
                    )
                if call.stream:
                    await self._relay_stream(call, response, span, started)
                else:
                    await self._relay_answer(call, response, span, started)
        except ApiError as error:
            self._failed += 1
            span.set_status(Status(StatusCode.ERROR, error.message))
            span.set_attribute("error.type", error.code or type(error).__name__)
            await _tell(call, Failure(error))

    async def _relay_answer(
        self, call: Call, response: UpstreamResponse, span: Span, started: float
    ) -> None:
        body = await response.read()
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadUpstreamAnswer(
                f"{call.provider} answered HTTP {response.status} with a body that is not "
                f"JSON ({len(body)} bytes starting {body[:60]!r})",
                code="upstream_not_json",
            ) from None
        if not isinstance(parsed, dict):
            raise BadUpstreamAnswer(
                f"{call.provider} answered with JSON that is not an object", code="upstream_shape"
            )
        tier, usage = self._served(call, parsed, usage_of(parsed))
        settled = self._settle(call, tier, usage, response.status, started, span)
        headers = _pick(response.headers, _PASSED_HEADERS)
        headers["x-llmspool-tier"] = tier.value
        if settled.cost_picodollars is not None:
            headers["x-llmspool-cost-usd"] = f"{usd(settled.cost_picodollars):.10f}"
        await _tell(call, Answer(response.status, headers, body, tier, settled.cost_picodollars))
        await self._ledger.send(settled)

    async def _relay_stream(
        self, call: Call, response: UpstreamResponse, span: Span, started: float
    ) -> None:
        meter = SseMeter(strip_usage_chunk=call.strip_usage_chunk)
        headers = _pick(response.headers, _PASSED_HEADERS)
        status = response.status
        begun = False
        try:
            async for data in response.iter_chunks():
                out = meter.feed(data)
                if out:
                    await call.reply.send(
                        StreamChunk(out) if begun else StreamStart(status, headers, out)
                    )
                    begun = True
            rest = meter.flush()
            if rest or not begun:
                await call.reply.send(
                    StreamChunk(rest) if begun else StreamStart(status, headers, rest)
                )
        except _CLIENT_GONE:
            # The client went away: leaving the provider's context closes the upstream
            # connection. Record what was used so far, as an estimate.
            span.add_event("client disconnected; upstream call cancelled")
            status = 499
        except ApiError as error:
            span.set_status(Status(StatusCode.ERROR, error.message))
            tier, usage = self._served(call, None, meter.usage, events=meter.events)
            await self._ledger.send(self._settle(call, tier, usage, 502, started, span))
            # Before the first event the client can still get a proper error status.
            await _tell(call, StreamEnd(error) if begun else Failure(error))
            return
        tier, usage = self._served(call, None, meter.usage, events=meter.events)
        if meter.tier is not None:
            tier = meter.tier
        # Settle before the end reaches the client, so a cost query it sends next sees it.
        await self._ledger.send(self._settle(call, tier, usage, status, started, span))
        await _tell(call, StreamEnd())

    def _served(
        self, call: Call, parsed: Any, usage: Usage | None, *, events: int = 0
    ) -> tuple[Tier, Usage]:
        tier = served_tier_of(parsed) or call.tier
        if usage is None:
            # No usage reported: count one output token per event seen, and say so.
            usage = Usage(output_tokens=events, estimated=True)
        return tier, usage

    def _settle(
        self, call: Call, tier: Tier, usage: Usage, status: int, started: float, span: Span
    ) -> Settled:
        price = self._prices.price(call.provider, call.model, tier)
        standard = self._prices.price(call.provider, call.model, Tier.STANDARD)
        cost = price.cost(usage) if price is not None else None
        span.set_attributes(
            {
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "gen_ai.response.model": call.model,
                "llmspool.tier": tier.value,
                "llmspool.usage_estimated": usage.estimated,
            }
        )
        if cost is not None:
            span.set_attribute("llmspool.cost_usd", usd(cost))
        tier_name = tier.value
        self._served_by_tier[tier_name] = self._served_by_tier.get(tier_name, 0) + 1
        return Settled(
            request_id=call.request_id,
            provider=call.provider,
            model=call.model,
            endpoint=call.endpoint,
            tier=tier,
            usage=usage,
            cost_picodollars=cost,
            standard_cost_picodollars=standard.cost(usage) if standard is not None else None,
            caller=call.caller,
            operation=call.operation,
            status=status,
            started_at=started,
            finished_at=time.time(),
        )

    def _snapshot(self) -> dict[str, Any]:
        return {"in_flight": self._in_flight, "served_by_tier": dict(self._served_by_tier),
                "failed": self._failed}


def _pick(headers: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {name: headers[name] for name in names if name in headers}


async def _tell(call: Call, reply: Reply) -> None:
    with contextlib.suppress(*_CLIENT_GONE):  # the client is gone; nobody to tell
        await call.reply.send(reply)
