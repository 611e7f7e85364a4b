"""The dispatcher actor: runs each call against its provider and tells everyone how it went.

For every ``Call`` it starts a task that asks the planner for a tier, sends the request through
the provider plugin, answers the caller on ``call.reply`` (a whole ``Answer``, or
``StreamStart``, chunks and ``StreamEnd``), reads the usage and the tier the answer says it
served, prices it, and sends a ``Settled`` to the ledger and a ``SlotFreed`` to the queue.

Flex: a 429 *resource unavailable* means "no flex capacity", not a rate limit. The call is
retried on flex after a full-jitter backoff while its deadline allows (each attempt bounded so
that a standard call still fits), then falls back to standard where allowed, or fails with code
``flex_unavailable``. Cost is always computed at the tier the provider reports it served.

A client that goes away mid-stream closes its reply stream; the next send fails, and leaving
the provider's context closes the upstream connection, so the upstream call stops too.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Mapping
from typing import Any

import anyio
import orjson
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from opentelemetry import metrics, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from llmspool.calls import Tier, Usage
from llmspool.config import BudgetsConfig, FlexConfig
from llmspool.errors import (
    ApiError,
    BadUpstreamAnswer,
    InvalidRequest,
    UpstreamError,
    UpstreamUnreachable,
)
from llmspool.estimate import Estimate, TokenEstimator
from llmspool.messages import (
    Admit,
    Answer,
    Call,
    Failure,
    NewPrices,
    Query,
    Release,
    Reply,
    Settled,
    SlotFreed,
    StreamChunk,
    StreamEnd,
    StreamStart,
)
from llmspool.planner import Planner
from llmspool.pricing import PriceTable, usd
from llmspool.provider import Provider, UpstreamRequest, UpstreamResponse
from llmspool.wire import SseMeter, claimed_tier_of, served_tier_of, usage_of

log = logging.getLogger(__name__)

# Upstream headers a client may rely on; the rest (rate limits, cookies) are the daemon's.
_PASSED_HEADERS = ("x-request-id", "openai-processing-ms", "openai-version")
_PASSED_ERROR_HEADERS = (*_PASSED_HEADERS, "retry-after", "retry-after-ms")
_CLIENT_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError)
_MIN_FLEX_ATTEMPT = 1.0  # seconds; a shorter flex attempt is not worth starting


class _NoFlexCapacity(Exception):
    """The upstream answered 429 *resource unavailable* to a flex attempt."""


def is_resource_unavailable(status: int, body: bytes) -> bool:
    """Whether an upstream error is flex's "no capacity" (not a rate limit, not charged)."""
    if status != 429:
        return False
    error = UpstreamError("", status, body)
    return error.code == "resource_unavailable" or "resource unavailable" in error.message.lower()


class FlexMetrics:
    """Flex counters for ``/v1/status`` and, when tracing is on, OpenTelemetry metrics."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.requests = 0
        self.tokens = 0
        self.fallbacks = 0
        self.resource_unavailable = 0
        self.saved_picodollars = 0
        self._requests = meter.create_counter("llmspool.flex.requests", "{request}",
                                              "calls served on flex")
        self._tokens = meter.create_counter("llmspool.flex.tokens", "{token}",
                                            "tokens served on flex")
        self._fallbacks = meter.create_counter("llmspool.flex.fallbacks", "{request}",
                                               "flex calls sent again on standard")
        self._unavailable = meter.create_counter("llmspool.flex.resource_unavailable", "{error}",
                                                 "429 resource unavailable answers to flex")
        self._saved = meter.create_counter("llmspool.flex.saved", "USD",
                                           "saved by flex against standard prices")

    def served(self, usage: Usage, saved: int) -> None:
        self.requests += 1
        self.tokens += usage.total_tokens
        self.saved_picodollars += saved
        self._requests.add(1)
        self._tokens.add(usage.total_tokens)
        self._saved.add(usd(saved))

    def fell_back(self) -> None:
        self.fallbacks += 1
        self._fallbacks.add(1)

    def unavailable(self) -> None:
        self.resource_unavailable += 1
        self._unavailable.add(1)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "tokens": self.tokens,
            "standard_fallbacks": self.fallbacks,
            "resource_unavailable_errors": self.resource_unavailable,
            "estimated_savings_usd": usd(self.saved_picodollars),
        }


class Dispatcher:
    def __init__(
        self,
        inbox: MemoryObjectReceiveStream[Call | Query | NewPrices],
        freed: MemoryObjectSendStream[SlotFreed],
        ledger: MemoryObjectSendStream[Settled | Admit | Release],
        *,
        providers: Mapping[str, Provider],
        provider_kinds: Mapping[str, str],
        timeouts: Mapping[str, float],
        prices: PriceTable,
        planner: Planner,
        flex: FlexConfig,
        budgets: BudgetsConfig,
        estimator: TokenEstimator,
        tracer: trace.Tracer,
        meter: metrics.Meter,
    ) -> None:
        self._inbox = inbox
        self._freed = freed
        self._ledger = ledger
        self._providers = providers
        self._provider_kinds = provider_kinds
        self._timeouts = timeouts
        self._prices = prices
        self._planner = planner
        self._flex = flex
        self._budgets = budgets
        self._estimator = estimator
        self._tracer = tracer
        self._flex_metrics = FlexMetrics(meter)
        self._estimates: dict[str, Estimate] = {}
        self._last_estimate = Estimate(0, 0, "none")
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
                        self._planner.set_prices(message.prices)

    async def _serve(self, call: Call) -> None:
        self._in_flight += 1
        started = time.time()
        kind = self._provider_kinds.get(call.provider, call.provider)
        admitted = False
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
                try:
                    tier = self._planner.choose(
                        call.provider, call.model, call.policy, call.deadline_at, started
                    )
                    span.set_attribute("llmspool.planned_tier", tier.value)
                    admitted = await self._admit(call, tier)
                    if tier is Tier.FLEX:
                        await self._serve_flex(call, span)
                    else:
                        await self._attempt(call, tier, self._timeouts[call.provider], span)
                except ApiError as error:
                    self._failed += 1
                    span.set_status(Status(StatusCode.ERROR, error.message))
                    span.set_attribute("error.type", error.code or type(error).__name__)
                    await _tell(call, Failure(error))
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
            self._estimates.pop(call.request_id, None)
            if admitted:
                # Ends the reservation if the call settled nothing (a no-op if it did).
                with anyio.CancelScope(shield=True):
                    await self._ledger.send(Release(call.request_id))
            call.reply.close()
            self._in_flight -= 1
            self._freed.send_nowait(SlotFreed(call.request_id))

    async def _admit(self, call: Call, tier: Tier) -> bool:
        """Apply the unknown-model policy, and reserve the call's worst cost against the caps.

        Returns whether a reservation was made (none is needed when no cap is set); raises
        the ``ApiError`` that refuses the call.
        """
        priced = bool(self._prices.tiers(call.provider, call.model))
        if not priced and self._budgets.unknown_model == "refuse":
            raise InvalidRequest(
                f"{call.provider} model {call.model!r} has no price, so its cost cannot be "
                "counted; price it in pricing.toml, or set [budgets] unknown_model = "
                "\"ceiling\" to admit it at unknown_model_ceiling_usd per call",
                param="model", code="model_unpriced",
            )
        if not self._budgets.has_caps:
            return False
        if priced:
            estimate = self._worst_cost(call, tier, self._estimate(call))
            # Kept until the call settles, to calibrate the estimator on its real usage.
            self._estimates[call.request_id] = self._last_estimate
        else:
            estimate = round(self._budgets.unknown_model_ceiling_usd * 10**12)
        reply_in, reply_out = anyio.create_memory_object_stream[ApiError | None](1)
        with reply_in, reply_out:
            await self._ledger.send(Admit(
                call.request_id, call.provider, call.model, call.operation, call.caller.uid,
                call.session, estimate, reply_in,
            ))
            refusal = await reply_out.receive()
        if refusal is not None:
            raise refusal
        return True

    def _estimate(self, call: Call) -> Usage:
        try:
            document = orjson.loads(call.body)
        except orjson.JSONDecodeError:
            document = {}
        estimate = self._estimator.estimate(call.endpoint, document if isinstance(document, dict)
                                            else {}, call.model, call.operation)
        self._last_estimate = estimate
        return Usage(estimate.input_tokens, 0, estimate.output_tokens, estimated=True)

    def _worst_cost(self, call: Call, tier: Tier, usage: Usage) -> int:
        """The most ``usage`` may cost: on ``tier``, or on standard if flex may fall back."""
        candidates = [tier, Tier.STANDARD] if tier is Tier.FLEX else [tier]
        costs = [price.cost(usage) for t in candidates
                 if (price := self._prices.price(call.provider, call.model, t)) is not None]
        return max(costs) if costs else self._highest_cost(call, usage)

    def _highest_cost(self, call: Call, usage: Usage) -> int:
        prices = [self._prices.price(call.provider, call.model, t)
                  for t in self._prices.tiers(call.provider, call.model)]
        return max((p.cost(usage) for p in prices if p is not None), default=0)

    async def _serve_flex(self, call: Call, span: Span) -> None:
        """Flex with retries on *resource unavailable*, escalating to standard in time."""
        policy = call.policy
        for attempt in range(policy.flex_max_retries + 1):
            budget = self._planner.flex_budget(call.provider, call.model, policy, call.deadline_at)
            if budget < _MIN_FLEX_ATTEMPT:
                span.add_event("flex: the deadline leaves no room for another flex attempt")
                break
            try:
                await self._attempt(call, Tier.FLEX, budget, span)
                return
            except _NoFlexCapacity:
                self._flex_metrics.unavailable()
                span.add_event("flex: resource unavailable", {"attempt": attempt + 1})
            except UpstreamUnreachable as error:
                if error.code != "upstream_timeout" or budget >= self._flex.timeout:
                    raise
                span.add_event("flex: escalated, the attempt would not finish in time")
                break
            if attempt < policy.flex_max_retries:
                step = min(self._flex.backoff_max, self._flex.backoff_min * 2**attempt)
                room = self._planner.flex_budget(call.provider, call.model, policy,
                                                 call.deadline_at) - _MIN_FLEX_ATTEMPT
                await anyio.sleep(max(0.0, min(random.uniform(0, step), room)))
        if not policy.fallback_to_standard:
            raise ApiError(
                "no flex capacity (429 resource unavailable) within the request's retries and "
                "deadline, and falling back to standard is off for it "
                "([flex] fallback_to_standard, or its operation's)",
                status=429, code="flex_unavailable", error_type="resource_unavailable",
            )
        self._flex_metrics.fell_back()
        span.add_event("flex: falling back to standard")
        await self._attempt(call, Tier.STANDARD, self._timeouts[call.provider], span)

    async def _attempt(self, call: Call, tier: Tier, time_limit: float, span: Span) -> None:
        """One upstream call on ``tier``; relays its answer to the caller.

        Raises ``_NoFlexCapacity`` before anything reached the caller when flex had no room.
        """
        provider = self._providers[call.provider]
        request = UpstreamRequest(
            endpoint=call.endpoint,
            model=call.model,
            body=_body_for_tier(call, tier),
            stream=call.stream,
            tier=tier,
            timeout=time_limit,
        )
        started = time.time()
        async with provider.send(request) as response:
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 400:
                raw = await response.read()
                if tier is Tier.FLEX and is_resource_unavailable(response.status, raw):
                    raise _NoFlexCapacity
                raise UpstreamError(
                    call.provider,
                    response.status,
                    raw,
                    upstream_headers=_pick(response.headers, _PASSED_ERROR_HEADERS),
                )
            if call.stream:
                await self._relay_stream(call, tier, response, span, started)
            else:
                await self._relay_answer(call, tier, response, span, started)

    async def _relay_answer(
        self, call: Call, tier: Tier, response: UpstreamResponse, span: Span, started: float
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
        served = served_tier_of(parsed) or tier
        usage = usage_of(parsed) or self._estimate(call)
        settled = self._settle(call, served, usage, response.status, started, span,
                               claimed=claimed_tier_of(parsed))
        headers = _pick(response.headers, _PASSED_HEADERS)
        headers["x-llmspool-tier"] = served.value
        if settled.cost_picodollars is not None:
            headers["x-llmspool-cost-usd"] = f"{usd(settled.cost_picodollars):.10f}"
        # Settled first: a client that asks for its cost right after its answer then sees it
        # (the ledger answers queries in arrival order).
        await self._ledger.send(settled)
        await _tell(call, Answer(
            response.status, headers, body, served, settled.cost_picodollars,
            settled.standard_cost_picodollars, parsed,
        ))

    async def _relay_stream(
        self, call: Call, tier: Tier, response: UpstreamResponse, span: Span, started: float
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
            usage = meter.usage or Usage(output_tokens=meter.events, estimated=True)
            served = meter.tier or tier
            await self._ledger.send(self._settle(call, served, usage, 502, started, span))
            # Before the first event the client can still get a proper error status.
            await _tell(call, StreamEnd(error) if begun else Failure(error))
            return
        usage = meter.usage or Usage(output_tokens=meter.events, estimated=True)
        # Settle before the end reaches the client, so a cost query it sends next sees it.
        settled = self._settle(call, meter.tier or tier, usage, status, started, span,
                               claimed=meter.claimed_tier)
        await self._ledger.send(settled)
        await _tell(call, StreamEnd())

    def _settle(
        self, call: Call, tier: Tier, usage: Usage, status: int, started: float, span: Span,
        *, claimed: str | None = None,
    ) -> Settled:
        flag = None
        price = self._prices.price(call.provider, call.model, tier)
        standard = self._prices.price(call.provider, call.model, Tier.STANDARD)
        if claimed is not None and Tier.from_service_tier(claimed) is None:
            # A tier we do not know: bill the highest price we know for the model, and say so.
            flag = "unknown_tier"
            cost: int | None = self._highest_cost(call, usage)
        elif price is not None:
            cost = price.cost(usage)
        elif not self._prices.tiers(call.provider, call.model):
            # Admitted under [budgets] unknown_model = "ceiling": never silently free.
            flag = "unpriced"
            cost = round(self._budgets.unknown_model_ceiling_usd * 10**12)
        else:
            flag = "unknown_tier"  # priced, but not on the tier it says it served
            cost = self._highest_cost(call, usage)
        standard_cost = standard.cost(usage) if standard is not None else None
        finished = time.time()
        estimate = self._estimates.pop(call.request_id, None)
        if status == 200:
            self._planner.book.observe((call.provider, call.model, tier), finished - started)
            if not usage.estimated:
                self._estimator.observe_output(call.model, call.operation, usage.output_tokens)
                if estimate is not None:
                    self._estimator.observe(call.model, estimate.chars, usage.input_tokens,
                                            fixed_tokens=estimate.fixed_tokens)
        saving_source = None
        if tier in (Tier.FLEX, Tier.BATCH) and standard_cost is not None and cost is not None \
                and cost < standard_cost:
            saving_source = "tier"
        if tier is Tier.FLEX and cost is not None:
            self._flex_metrics.served(usage, max(0, (standard_cost or cost) - cost))
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
        if flag is not None:
            span.set_attribute("llmspool.billing_flag", flag)
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
            standard_cost_picodollars=standard_cost,
            caller=call.caller,
            operation=call.operation,
            status=status,
            started_at=started,
            finished_at=finished,
            session=call.session,
            flag=flag,
            saving_source=saving_source,
        )

    def _snapshot(self) -> dict[str, Any]:
        return {
            "in_flight": self._in_flight,
            "served_by_tier": dict(self._served_by_tier),
            "failed": self._failed,
            "flex": self._flex_metrics.snapshot(),
            "latency": self._planner.book.snapshot(),
        }


def _body_for_tier(call: Call, tier: Tier) -> bytes:
    """The call's body asking for ``tier``, re-encoded only when it asks for something else."""
    wanted = tier.service_tier
    names_a_tier = b'"service_tier"' in call.body
    if wanted is None or (tier is Tier.STANDARD and not names_a_tier):
        return call.body  # no tier named means standard
    document = orjson.loads(call.body)
    if document.get("service_tier") == wanted:
        return call.body
    document["service_tier"] = wanted
    return orjson.dumps(document)


def _pick(headers: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {name: headers[name] for name in names if name in headers}


async def _tell(call: Call, reply: Reply) -> None:
    with contextlib.suppress(*_CLIENT_GONE):  # the client is gone; nobody to tell
        await call.reply.send(reply)
