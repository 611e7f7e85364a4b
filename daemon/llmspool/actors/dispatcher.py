"""The dispatcher actor: runs each call against its provider and tells everyone how it went.

For every ``Call`` it starts a task that asks the planner for a tier, sends the request through
the provider plugin, answers the caller on ``call.reply`` (a whole ``Answer``, or
``StreamStart``, chunks and ``StreamEnd``), reads the usage and the tier the answer says it
served, prices it, and sends a ``Settled`` to the ledger and a ``SlotFreed`` to the queue.

Flex: a 429 *resource unavailable* means "no flex capacity", not a rate limit. The call is
retried on flex after a full-jitter backoff while its deadline allows (each attempt bounded so
that a standard call still fits), then falls back to standard where allowed, or fails with code
``flex_unavailable``. Cost is always computed at the tier the provider reports it served.

Resilience, per attempt (``llmspool.resilience``): each attempt is its own span. It is routed
past an open circuit breaker (to a slower tier the deadline allows, or to the ``[failover]``
provider, or refused with 503 ``circuit_open``), waits for room in the (provider, model) rate
limits, and runs in cancel scopes that name the timeout that fired (request, flex attempt,
stream idle; the plugin names a connect timeout). A failure is classified once
(``failures.classify``) and retried by tenacity within ``[retry]``'s attempts, backoff and
budget; only what was never begun on the client's side is retried.

A client that goes away mid-stream closes its reply stream; the next send fails, and leaving
the provider's context closes the upstream connection, so the upstream call stops too. One that
goes away before its answer fires ``call.abort``, which cancels the call's scope.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from llmspool.billing import PriceBook, bill
from llmspool.calls import Tier, Usage
from llmspool.config import BreakerConfig, BudgetsConfig, FailoverConfig, FlexConfig
from llmspool.errors import (
    ApiError,
    BadUpstreamAnswer,
    InvalidRequest,
    ServiceUnavailable,
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
from llmspool.pricing import PICODOLLARS_PER_USD, usd
from llmspool.provider import Provider, UpstreamRequest, UpstreamResponse
from llmspool.reservations import Reservation, Reserver
from llmspool.resilience.breaker import Breakers, BreakerState, CircuitBreaker, Transition
from llmspool.resilience.failures import FailureClass, classify
from llmspool.resilience.limits import Permit, RateLimits
from llmspool.resilience.retry import CallRetries, Retrier
from llmspool.tracing import GenAiMetrics, links_of
from llmspool.units import format_duration
from llmspool.wire import (
    SseMeter,
    claimed_tier_of,
    finish_reasons_of,
    response_id_of,
    response_model_of,
    served_tier_of,
    usage_of,
)

log = logging.getLogger(__name__)
_LEDGER_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError)  # or the queue

# Upstream headers a client may rely on; the rest (rate limits, cookies) are the daemon's.
_PASSED_HEADERS = ("x-request-id", "openai-processing-ms", "openai-version")
_PASSED_ERROR_HEADERS = (*_PASSED_HEADERS, "retry-after", "retry-after-ms")
_CLIENT_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError)
_MIN_FLEX_ATTEMPT = 1.0  # seconds; a shorter flex attempt is not worth starting
_MIN_ATTEMPT = 0.05  # seconds; with less time left, the call has run out of time


class _NoFlexCapacity(Exception):
    """The upstream answered 429 *resource unavailable* to a flex attempt."""


class _FlexTimedOut(Exception):
    """A flex attempt ran out of the time its deadline allowed (not retried on flex)."""

    def __init__(self, error: UpstreamUnreachable) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: usually the call's own provider, model and tier; past an open
    breaker, a slower tier or the failover provider (``failover_from`` names the original)."""

    provider: str
    model: str
    tier: Tier
    body: bytes
    breaker: CircuitBreaker
    probe: bool
    time_limit: float
    timeout_name: str
    failover_from: str | None = None


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
        stream_idle_timeouts: Mapping[str, float],
        prices: PriceBook,
        planner: Planner,
        flex: FlexConfig,
        budgets: BudgetsConfig,
        estimator: TokenEstimator,
        tracer: trace.Tracer,
        meter: metrics.Meter,
        retrier: Retrier,
        breaker: BreakerConfig,
        failover: FailoverConfig,
        limits: RateLimits,
    ) -> None:
        self._inbox = inbox
        self._freed = freed
        self._ledger = ledger
        self._providers = providers
        self._provider_kinds = provider_kinds
        self._timeouts = timeouts
        self._stream_idle = stream_idle_timeouts
        self._prices = prices
        self._planner = planner
        self._flex = flex
        self._budgets = budgets
        self._estimator = estimator
        self._tracer = tracer
        self._flex_metrics = FlexMetrics(meter)
        self._reserver = Reserver(prices, budgets, estimator)
        self._reserved: dict[str, Reservation] = {}  # by request id, until the call ends
        self._broken: dict[str, int] = {}  # broken attempts per request id, for their ids
        self._handed_over: set[str] = set()  # job calls whose entry went with their answer
        self._last_estimate = Estimate(0, 0, "none")
        self._in_flight = 0
        self._served_by_tier: dict[str, int] = {}
        self._failed = 0
        self._retrier = retrier
        self._failover = failover
        self._limits = limits
        self._breakers = Breakers(breaker, self._breaker_moved)
        self._transitions: list[dict[str, Any]] = []
        self._failed_over = 0
        self._aborted = 0
        self._breaker_transitions = meter.create_counter(
            "llmspool.breaker.transitions", "{transition}", "circuit breaker state changes")
        self._attempts_counter = meter.create_counter(
            "llmspool.upstream.attempts", "{attempt}", "upstream attempts, retries included")
        self._attempts = 0
        self._genai = GenAiMetrics(meter)
        # How each call in flight was settled (tier, model that served, status), for its
        # operation duration, recorded when the call ends.
        self._outcomes: dict[str, tuple[str, str, int]] = {}
        meter.create_observable_gauge(
            "llmspool.breaker.state", [self._observe_breakers], "1",
            "circuit breakers by provider, tier and state: 1 for the state each is in, else 0")

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
                        self._reserver.set_prices(message.prices)
                        self._planner.set_prices(message.prices)

    async def _serve(self, call: Call) -> None:
        self._in_flight += 1
        started = time.time()
        kind = self._provider_kinds.get(call.provider, call.provider)
        admitted = False
        error_type: str | None = None
        try:
            with self._tracer.start_as_current_span(
                f"{call.endpoint.operation_name} {call.model}",
                context=call.trace,
                kind=SpanKind.CLIENT,
                # A job's request links to the span that submitted the job.
                links=links_of(call.trace),
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
            ) as span, anyio.CancelScope() as client_scope:
                call.abort.bind(client_scope)
                try:
                    tier = self._planner.choose(
                        call.provider, call.model, call.policy, call.deadline_at, started
                    )
                    span.set_attribute("llmspool.planned_tier", tier.value)
                    admitted = await self._admit(call, tier)
                    if tier is Tier.FLEX:
                        await self._serve_flex(call, span)
                    else:
                        await self._with_retries(call, tier, None, span)
                except ApiError as error:
                    self._failed += 1
                    error_type = error.code or type(error).__name__
                    span.set_status(Status(StatusCode.ERROR, error.message))
                    span.set_attribute("error.type", error_type)
                    await _tell(call, Failure(error))
            if client_scope.cancelled_caught:
                self._aborted += 1
                error_type = error_type or "client_disconnected"
                span.add_event("client disconnected; upstream call cancelled")
        except Exception as exc:
            # A bug while serving one call must not take the daemon (and every other call)
            # down: log it, answer this caller 500, and keep serving.
            log.exception("unexpected error serving %s", call.request_id)
            error_type = type(exc).__name__
            self._failed += 1
            await _tell(call, Failure(ApiError(
                f"llmspool hit an unexpected error serving this request ({type(exc).__name__}); "
                "it is logged, and the daemon keeps serving",
                code="internal_error",
            )))
        finally:
            self._record_operation(call, kind, time.time() - started, error_type)
            self._reserved.pop(call.request_id, None)
            self._broken.pop(call.request_id, None)
            if call.request_id in self._handed_over:
                # The job keeper has the entry and stores it with the result; the reservation
                # ends in that transaction (or, after a crash, as an unknown outcome).
                self._handed_over.discard(call.request_id)
                admitted = False
            if admitted:
                # Ends the reservation if the call settled nothing (a no-op if it did). At the
                # end of a stop the ledger may be gone: the reservation then stays in the store
                # and the next start bills it as an unknown outcome.
                with anyio.CancelScope(shield=True), contextlib.suppress(*_LEDGER_GONE):
                    await self._ledger.send(Release(call.request_id))
            call.reply.close()
            self._in_flight -= 1
            with contextlib.suppress(*_LEDGER_GONE):  # the queue is gone at the end of a stop
                self._freed.send_nowait(SlotFreed(call.request_id))

    def _record_operation(self, call: Call, kind: str, seconds: float,
                          error_type: str | None) -> None:
        """``gen_ai.client.operation.duration`` of a call, from the dispatcher taking it to
        its end (retries and flex fallbacks included), with the tier and model that served."""
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": call.endpoint.operation_name,
            "gen_ai.provider.name": kind,
            "gen_ai.request.model": call.model,
        }
        outcome = self._outcomes.pop(call.request_id, None)
        if outcome is not None:
            tier, model, status = outcome
            attributes["gen_ai.response.model"] = model
            attributes["llmspool.tier"] = tier
            if status >= 400 and error_type is None:
                error_type = str(status)  # a stream cut (502) or left by its client (499)
        if error_type is not None:
            attributes["error.type"] = error_type
        self._genai.operation(seconds, attributes)

    async def _admit(self, call: Call, tier: Tier) -> bool:
        """Apply the unknown-model policy, and reserve the call's worst cost with the ledger.

        Every call is reserved, caps or not: the ledger commits the reservation before it
        answers, so a crash while the call runs leaves it billed as an unknown outcome.
        Returns True once reserved; raises the ``ApiError`` that refuses the call.
        """
        priced = bool(self._prices.tiers(call.provider, call.model))
        if not priced and self._budgets.unknown_model == "refuse":
            raise InvalidRequest(
                f"{call.provider} model {call.model!r} has no price, so its cost cannot be "
                "counted; price it in pricing.toml, or set [budgets] unknown_model = "
                "\"ceiling\" to admit it at unknown_model_ceiling_usd per call",
                param="model", code="model_unpriced",
            )
        tiers = [tier, Tier.STANDARD] if tier is Tier.FLEX else [tier]
        reservation = self._reserver.for_body(call.endpoint, call.provider, call.model,
                                              call.body, call.operation, tiers)
        # Kept until the call settles: a broken answer is billed at it, and the estimator
        # calibrates on the real usage.
        self._reserved[call.request_id] = reservation
        reply_in, reply_out = anyio.create_memory_object_stream[ApiError | None](1)
        with reply_in, reply_out:
            await self._ledger.send(Admit(
                call.request_id, call.provider, call.model, call.operation, call.caller.uid,
                call.session, reservation.picodollars, reply_in, call.endpoint, tier,
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

    async def _serve_flex(self, call: Call, span: Span) -> None:
        """Flex with retries on *resource unavailable*, escalating to standard in time: the
        deadline bounds the retries (each leaves room for a standard call after it), and a
        count only where the policy sets one (interactive calls: ``[flex] max_retries``)."""
        policy = call.policy
        limit = policy.flex_max_retries
        attempt = -1
        while limit is None or attempt < limit:
            attempt += 1
            budget = self._planner.flex_budget(call.provider, call.model, policy, call.deadline_at)
            if budget < _MIN_FLEX_ATTEMPT:
                span.add_event("flex: the deadline leaves no room for another flex attempt")
                break
            try:
                await self._with_retries(call, Tier.FLEX, budget, span)
                return
            except _NoFlexCapacity:
                self._flex_metrics.unavailable()
                span.add_event("flex: resource unavailable", {"attempt": attempt + 1})
            except _FlexTimedOut as timed_out:
                if budget >= self._flex.timeout:
                    raise timed_out.error from None
                span.add_event("flex: escalated, the attempt would not finish in time")
                break
            if limit is None or attempt < limit:
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
        await self._with_retries(call, Tier.STANDARD, None, span)

    async def _with_retries(
        self, call: Call, tier: Tier, flex_limit: float | None, span: Span
    ) -> None:
        """Attempts on ``tier`` until one answers or the retry policy says stop (raising the
        last failure). ``flex_limit``: the time a flex attempt may take.

        The attempts share one allowance, never more than the provider's request timeout and
        never past the call's deadline: a retry gets what is left, so a hung upstream keeps
        the caller waiting for the timeout once, not once per attempt. When the allowance runs
        out the caller gets 504 ``deadline_exceeded`` saying what was tried.
        """
        timeout = self._timeouts.get(call.provider, 600.0)
        ends_at = time.time() + timeout
        if call.deadline_at is not None and not call.deferred:
            ends_at = min(ends_at, call.deadline_at)
        state = CallRetries(call.provider, call.request_id, tier is Tier.FLEX,
                            ends_at if flex_limit is None else call.deadline_at)
        tried: list[str] = []

        async def attempt(number: int) -> None:
            if flex_limit is None and ends_at - time.time() < _MIN_ATTEMPT:
                raise _out_of_time(call, timeout, tried)
            try:
                await self._attempt(call, tier, flex_limit, ends_at, number, span)
            except ApiError as error:
                tried.append(f"attempt {number}: {error.message}")
                if isinstance(error, UpstreamUnreachable) and flex_limit is not None \
                        and error.code == "upstream_timeout":
                    # The flex attempt used the time the deadline gave it: not a retry on
                    # flex, but the flex policy's turn (escalate in time).
                    raise _FlexTimedOut(error) from error
                raise

        try:
            await self._retrier.run(state, attempt)
        except UpstreamUnreachable as error:
            if flex_limit is None and error.code == "upstream_timeout" and \
                    ends_at - time.time() < _MIN_ATTEMPT:
                raise _out_of_time(call, timeout, tried) from error
            raise

    def _route(self, call: Call, tier: Tier, flex_limit: float | None,
               ends_at: float) -> Target:
        """Where this attempt goes, past open breakers; raises 503 ``circuit_open`` if nowhere."""
        breaker = self._breakers.get(call.provider, tier)
        probe = breaker.allow()
        if probe is not None:
            if tier is Tier.FLEX and flex_limit is not None:
                return Target(call.provider, call.model, tier, call.body,
                              breaker, probe, flex_limit,
                              f"the flex attempt's time limit ({flex_limit:.0f}s: what the "
                              "deadline leaves after room for a standard call, at most [flex] "
                              "timeout)")
            return self._standard_target(call, call.provider, call.model, tier, breaker, probe,
                                         ends_at)
        if tier is Tier.STANDARD and call.policy.flex and call.policy.forced is None and \
                self._prices.price(call.provider, call.model, Tier.FLEX) is not None:
            budget = self._planner.flex_budget(call.provider, call.model, call.policy,
                                               call.deadline_at)
            flex_breaker = self._breakers.get(call.provider, Tier.FLEX)
            if budget >= _MIN_FLEX_ATTEMPT and (flex_probe := flex_breaker.allow()) is not None:
                return Target(call.provider, call.model, Tier.FLEX,
                              call.body, flex_breaker, flex_probe, budget,
                              "the flex attempt's time limit (standard's breaker is open)")
        if tier is Tier.FLEX and call.policy.fallback_to_standard:
            standard = self._breakers.get(call.provider, Tier.STANDARD)
            if (standard_probe := standard.allow()) is not None:
                return self._standard_target(call, call.provider, call.model, Tier.STANDARD,
                                             standard, standard_probe, ends_at)
        stand_in = self._failover.providers.get(call.provider)
        if stand_in is not None:
            stand_in_breaker = self._breakers.get(stand_in, Tier.STANDARD)
            if (stand_in_probe := stand_in_breaker.allow()) is not None:
                model = self._failover.models.get(call.model, call.model)
                target = self._standard_target(call, stand_in, model, Tier.STANDARD,
                                               stand_in_breaker, stand_in_probe, ends_at)
                return Target(target.provider, target.model, target.tier,
                              _body_for_failover(call.body, model), target.breaker,
                              target.probe, target.time_limit, target.timeout_name,
                              failover_from=call.provider)
        wait = max(1.0, breaker.retry_after())
        where = (f"its failover {stand_in} is failing too" if stand_in else
                 f"no failover is configured ([failover] {call.provider} = \"PROVIDER\")")
        raise ServiceUnavailable(
            f"{call.provider} is failing on the {tier.value} tier, so its circuit breaker is "
            f"open (last failure: {breaker.last_failure or 'unknown'}), and {where}; "
            f"retry in {wait:.0f}s",
            retry_after=wait, code="circuit_open",
        )

    def _standard_target(self, call: Call, provider: str, model: str, tier: Tier,
                         breaker: CircuitBreaker, probe: bool, ends_at: float) -> Target:
        limit = self._timeouts.get(provider, 600.0)
        left = ends_at - time.time()
        name = (f"the request timeout ([providers.{provider}] timeout = "
                f"{format_duration(limit)})")
        if left + _MIN_ATTEMPT < limit:  # a retry, or a deadline nearer than the timeout
            name = (f"what was left of the call's time ({format_duration(max(0.0, left))}: "
                    + ("its deadline" if call.deadline_at is not None
                       and call.deadline_at <= ends_at else
                       f"[providers.{call.provider}] timeout, shared by its attempts") + ")")
        return Target(provider, model, tier, call.body, breaker, probe,
                      max(0.0, min(limit, left)), name)

    async def _attempt(self, call: Call, tier: Tier, flex_limit: float | None, ends_at: float,
                       number: int, span: Span) -> None:
        """One upstream attempt, as its own span; relays its answer to the caller.

        Raises ``_NoFlexCapacity`` before anything reached the caller when flex had no room,
        and the ``ApiError`` of a failure that may be retried (nothing reached the caller).
        """
        target = self._route(call, tier, flex_limit, ends_at)
        permit = await self._limits.acquire(target.provider, target.model,
                                            self._requested_tokens(call),
                                            interactive=call.deadline_at is None)
        self._attempts += 1
        self._attempts_counter.add(1, {"llmspool.provider": target.provider})
        try:
            with self._tracer.start_as_current_span(
                f"attempt {number}",
                attributes={"llmspool.attempt": number, "llmspool.provider": target.provider,
                            "gen_ai.request.model": target.model,
                            "llmspool.tier": target.tier.value},
                record_exception=False, set_status_on_exception=False,
            ) as attempt_span:
                if target.failover_from is not None:
                    self._failed_over += 1
                    attempt_span.set_attribute("llmspool.failover_from", target.failover_from)
                    span.add_event("failover", {"from": target.failover_from,
                                                "to": target.provider, "model": target.model})
                try:
                    sent = await self._send(call, target, span, attempt_span, permit)
                    if sent is not None and sent.late_error is not None:
                        attempt_span.set_status(Status(StatusCode.ERROR,
                                                       sent.late_error.message))
                        self._tell_breaker(target, sent.late_error)
                        return
                except ApiError as error:
                    attempt_span.set_status(Status(StatusCode.ERROR, error.message))
                    attempt_span.set_attribute("error.type", error.code or type(error).__name__)
                    self._tell_breaker(target, error)
                    raise
                except _NoFlexCapacity:
                    target.breaker.no_outcome(probe=target.probe)
                    raise
                except BaseException:
                    target.breaker.no_outcome(probe=target.probe)
                    raise
                target.breaker.succeeded(probe=target.probe)
        finally:
            # No refund of unused requested tokens: OpenAI counts what a call asks for (prompt
            # plus max output) against its TPM when the call arrives, and gives nothing back.
            permit.release()

    def _tell_breaker(self, target: Target, error: ApiError) -> None:
        failure = classify(error, flex=target.tier is Tier.FLEX)
        if failure.kind.counts_against_provider:
            target.breaker.failed(failure.reason, probe=target.probe)
        elif isinstance(error, UpstreamError) and failure.kind is FailureClass.PERMANENT:
            target.breaker.succeeded(probe=target.probe)  # it answered: it is alive
        else:
            target.breaker.no_outcome(probe=target.probe)

    def _breaker_moved(self, change: Transition) -> None:
        record = {"at": time.time(), "provider": change.provider, "tier": change.tier.value,
                  "from": change.old.value, "to": change.new.value, "reason": change.reason}
        self._transitions = [*self._transitions[-19:], record]
        self._breaker_transitions.add(1, {"llmspool.provider": change.provider,
                                          "llmspool.tier": change.tier.value,
                                          "llmspool.breaker.state": change.new.value})
        trace.get_current_span().add_event("circuit breaker " + change.new.value, {
            "llmspool.provider": change.provider, "llmspool.tier": change.tier.value,
            "reason": change.reason})
        level = logging.INFO if change.new.value == "closed" else logging.WARNING
        log.log(level, "circuit breaker %s/%s: %s -> %s (%s)", change.provider,
                change.tier.value, change.old.value, change.new.value, change.reason)

    def _observe_breakers(self, _options: CallbackOptions) -> Iterable[Observation]:
        """``llmspool.breaker.state``, read by the metric reader's thread: a state set, so a
        backend can count breakers per state (the snapshot copies the breakers at once)."""
        return [
            Observation(1 if breaker["state"] == state.value else 0, {
                "llmspool.provider": breaker["provider"], "llmspool.tier": breaker["tier"],
                "llmspool.breaker.state": state.value})
            for breaker in self._breakers.snapshot() for state in BreakerState
        ]

    def _requested_tokens(self, call: Call) -> int:
        """What the call counts against a tokens-per-minute limit: its prompt's estimate and
        the most output it asks for (as OpenAI counts it), else the expected output."""
        if not self._limits.counts_tokens(call.provider, call.model):
            return 0
        usage = self._estimate(call)
        estimate = self._last_estimate
        prompt = usage.input_tokens
        if estimate.method == "ratio" and estimate.chars:
            # Without the reservation's safety margin: an over-count here leaves a share of
            # the limit unused, for good (the upstream never gives it back).
            ratio = self._estimator.ratio_for(call.model)
            prompt = math.ceil(estimate.chars / ratio) + estimate.fixed_tokens
        return prompt + (_max_output(call.body) or usage.output_tokens)

    async def _send(self, call: Call, target: Target, span: Span, attempt_span: Span,
                    permit: Permit) -> Sent | None:
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
        started = time.time()
        # For a stream the relay enforces the time limit between chunks itself (it knows
        # whether the client has seen anything); this scope is its backstop.
        grace = 1.0 if call.stream else 0.0
        with anyio.move_on_after(target.time_limit + grace) as scope:
            async with provider.send(request) as response:
                attempt_span.set_attribute("http.response.status_code", response.status)
                span.set_attribute("http.response.status_code", response.status)
                headers = response.headers
                self._limits.observe(target.provider, target.model, headers, permit=permit)
                if response.status >= 400:
                    raw = await response.read()
                    error = UpstreamError(
                        target.provider, response.status, raw,
                        upstream_headers=_pick(headers, _PASSED_ERROR_HEADERS),
                    )
                    failure = classify(error, flex=target.tier is Tier.FLEX)
                    if failure.kind is FailureClass.FLEX_UNAVAILABLE:
                        raise _NoFlexCapacity
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
        try:
            body = await response.read()
        except BaseException:
            # Answered 200, then cut mid-body (or given up while reading): the provider
            # bills what it generated, which nobody here can know. Billed at the reservation.
            await self._bill_broken(call, target, started, span, self._reserved_usage(call))
            raise
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            await self._bill_broken(call, target, started, span, self._reserved_usage(call))
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
        usage = usage_of(parsed) or self._estimate(call)
        settled = self._settle(call, target.provider, target.model, served, usage,
                               response.status, started, span, claimed=claimed_tier_of(parsed))
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
            self._handed_over.add(call.request_id)
        else:
            await self._ledger.send(settled)
        await _tell(call, Answer(
            response.status, headers, body, served, settled.cost_picodollars,
            settled.standard_cost_picodollars, parsed,
            settled=settled if call.settle_with_result else None,
        ))
        return Sent(usage)

    async def _relay_stream(
        self, call: Call, target: Target, response: UpstreamResponse, span: Span, started: float
    ) -> Sent:
        """Relays the events as they come. A failure before the first event raises (the call
        may still be retried, or answered with a proper error status); after it, the stream
        ends with an error event and the failure is returned (nothing can be retried)."""
        meter = SseMeter(strip_usage_chunk=call.strip_usage_chunk)
        headers = _pick(response.headers, _PASSED_HEADERS)
        if target.failover_from is not None:
            headers["x-llmspool-failover"] = f"{target.failover_from} -> {target.provider}"
            headers["x-llmspool-model"] = target.model
        status = response.status
        begun = False
        idle = self._stream_idle.get(target.provider, 300.0)
        deadline = anyio.current_time() + target.time_limit - (time.time() - started)
        chunks = aiter(response.iter_chunks())
        try:
            while True:
                left = deadline - anyio.current_time()
                with anyio.move_on_after(min(idle, left)) as waited:
                    data = await anext(chunks, None)
                if waited.cancelled_caught:
                    if idle < left:
                        raise _idle_timeout(target.provider, idle)
                    raise _timed_out(target.provider, target.timeout_name)
                if data is None:
                    break
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
            self._aborted += 1
            status = 499
            usage = meter.usage or self._partial_usage(call, meter.events)
            with anyio.CancelScope(shield=True):
                await self._ledger.send(self._settle(
                    call, target.provider, target.model, meter.tier or target.tier, usage,
                    status, started, span, flag=None if meter.usage else "broken_answer"))
            _describe_answer(span, meter.response_id, meter.model, meter.finish_reasons)
            return Sent(usage)
        except ApiError as error:
            if not begun:
                raise
            span.set_status(Status(StatusCode.ERROR, error.message))
            usage = meter.usage or self._partial_usage(call, meter.events)
            served = meter.tier or target.tier
            await self._ledger.send(self._settle(
                call, target.provider, target.model, served, usage, 502, started, span,
                flag=None if meter.usage else "broken_answer"))
            _describe_answer(span, meter.response_id, meter.model, meter.finish_reasons)
            await _tell(call, StreamEnd(error))
            return Sent(usage, late_error=error)
        usage = meter.usage or self._partial_usage(call, meter.events)
        # Settle before the end reaches the client, so a cost query it sends next sees it.
        settled = self._settle(call, target.provider, target.model, meter.tier or target.tier,
                               usage, status, started, span, claimed=meter.claimed_tier)
        _describe_answer(span, meter.response_id, meter.model, meter.finish_reasons)
        await self._ledger.send(settled)
        await _tell(call, StreamEnd())
        return Sent(usage)

    def _reserved_usage(self, call: Call) -> Usage:
        """What a broken answer is billed for when nothing of its usage is known: the
        reservation's estimate (prompt, and the output the call allowed)."""
        reservation = self._reserved.get(call.request_id)
        if reservation is None:
            return self._estimate(call)
        estimate = reservation.estimate
        return Usage(estimate.input_tokens, 0, estimate.output_tokens, estimated=True)

    def _partial_usage(self, call: Call, events: int) -> Usage:
        """A stream cut short: its prompt (estimated) and the output events it had sent, about
        a token each, which is what the provider generated and bills."""
        reservation = self._reserved.get(call.request_id)
        prompt = reservation.estimate.input_tokens if reservation is not None else \
            self._estimate(call).input_tokens
        return Usage(prompt, 0, events, estimated=True)

    async def _bill_broken(self, call: Call, target: Target, started: float, span: Span,
                           usage: Usage) -> None:
        """An attempt that was answered and then broke is billed under its own id (the call
        may still succeed on a retry, billed under the call's id)."""
        number = self._broken.get(call.request_id, 0) + 1
        self._broken[call.request_id] = number
        settled = self._settle(call, target.provider, target.model, target.tier, usage, 502,
                               started, span, flag="broken_answer",
                               request_id=f"{call.request_id}~{number}")
        with anyio.CancelScope(shield=True):
            await self._ledger.send(settled)

    def _settle(
        self, call: Call, provider: str, model: str, tier: Tier, usage: Usage, status: int,
        started: float, span: Span, *, claimed: str | None = None, flag: str | None = None,
        request_id: str | None = None,
    ) -> Settled:
        """The ledger's record of a call served by ``provider``'s ``model`` (the call's own, or
        its failover's) on ``tier``, billed by the one billing function."""
        billed = bill(
            self._prices, provider, model, tier, usage, claimed_tier=claimed,
            unpriced_ceiling_picodollars=round(self._budgets.unknown_model_ceiling_usd
                                               * PICODOLLARS_PER_USD),
            overhead_of=call.overhead_of,
        )
        cost = billed.cost_picodollars
        finished = time.time()
        reservation = self._reserved.get(call.request_id)
        if status == 200 and flag is None:
            self._planner.book.observe((provider, model, tier), finished - started)
            if not usage.estimated:
                self._estimator.observe_output(model, call.operation, usage.output_tokens)
                if reservation is not None:
                    estimate = reservation.estimate
                    self._estimator.observe(model, estimate.chars, usage.input_tokens,
                                            fixed_tokens=estimate.fixed_tokens)
        if tier is Tier.FLEX:
            self._flex_metrics.served(usage, max(0, billed.saving_picodollars))
        cost_usd = usd(cost)
        span.set_attributes(
            {
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                # Parts of the input, as the GenAI conventions name them.
                "gen_ai.usage.cache_read.input_tokens": usage.cached_input_tokens,
                "gen_ai.usage.cache_creation.input_tokens": usage.cache_write_tokens,
                "gen_ai.response.model": model,
                "llmspool.tier": tier.value,
                "llmspool.usage_estimated": usage.estimated,
                # What was billed, at the tier served (flex at flex prices): a backend that
                # prices tokens itself at list prices would show flex at twice its cost.
                # Named as the GenAI cost proposal names it, and as llmspool always did.
                "gen_ai.usage.cost.amount": cost_usd,
                "gen_ai.usage.cost.currency": "USD",
                "gen_ai.usage.cost.source": "local",
                "llmspool.cost_usd": cost_usd,
                "llmspool.price_version": billed.price_version,
            }
        )
        if claimed is not None:
            span.set_attribute("openai.response.service_tier", claimed)
        flag = flag or billed.flag
        if flag is not None:
            span.set_attribute("llmspool.billing_flag", flag)
        if request_id is None:
            self._outcomes[call.request_id] = (tier.value, model, status)
            if not usage.estimated:
                self._genai.tokens(usage.input_tokens, usage.output_tokens, {
                    "gen_ai.operation.name": call.endpoint.operation_name,
                    "gen_ai.provider.name": self._provider_kinds.get(provider, provider),
                    "gen_ai.request.model": call.model,
                    "gen_ai.response.model": model,
                    "llmspool.tier": tier.value,
                })
        tier_name = tier.value
        self._served_by_tier[tier_name] = self._served_by_tier.get(tier_name, 0) + 1
        return Settled(
            request_id=request_id or call.request_id,
            provider=provider,
            model=model,
            endpoint=call.endpoint,
            tier=tier,
            usage=usage,
            cost_picodollars=cost,
            standard_cost_picodollars=billed.list_cost_picodollars,
            caller=call.caller,
            operation=call.operation,
            status=status,
            started_at=started,
            finished_at=finished,
            session=call.session,
            flag=flag,
            saving_source=billed.saving_source,
            price_version=billed.price_version,
            deadline_window=call.deadline_window(),
            late=call.deadline_at is not None and finished > call.deadline_at,
        )

    def _snapshot(self) -> dict[str, Any]:
        return {
            "in_flight": self._in_flight,
            "served_by_tier": dict(self._served_by_tier),
            "failed": self._failed,
            "flex": self._flex_metrics.snapshot(),
            "latency": self._planner.book.snapshot(),
            "upstream_attempts": self._attempts,
            "failed_over": self._failed_over,
            "aborted_by_client": self._aborted,
            "retries": self._retrier.snapshot(),
            "breakers": self._breakers.snapshot(),
            "breaker_transitions": list(self._transitions),
            "rate_limits": self._limits.snapshot(),
            "connections": self._connection_stats(),
        }

    def _connection_stats(self) -> dict[str, dict[str, Any]]:
        """Per provider: data-plane requests and the share sent on a reused connection."""
        stats: dict[str, dict[str, Any]] = {}
        for name, provider in self._providers.items():
            counts = getattr(provider, "connection_stats", None)
            if counts is None:
                continue
            numbers = counts()
            requests = numbers.get("requests", 0)
            stats[name] = {**numbers, "reused_share": round(numbers.get("reused", 0) / requests, 4)
                           if requests else None}
        return stats


def _describe_answer(span: Span, response_id: str | None, model: str | None,
                     finish_reasons: list[str]) -> None:
    """What the GenAI conventions say of an answer: its id, the model that produced it (the
    answer's own, dated name when it gives one), and why each choice stopped."""
    if response_id is not None:
        span.set_attribute("gen_ai.response.id", response_id)
    if model is not None:
        span.set_attribute("gen_ai.response.model", model)
    if finish_reasons:
        span.set_attribute("gen_ai.response.finish_reasons", finish_reasons)


def _body_for_failover(body: bytes, model: str) -> bytes:
    """The call's body for the failover provider: its model (the stand-in is asked for the
    standard tier, which its plugin writes into the body as its API wants)."""
    document = orjson.loads(body)
    document["model"] = model
    return orjson.dumps(document)


def _max_output(body: bytes) -> int | None:
    """The most output tokens a request asks for, if it says."""
    if b"max_" not in body:
        return None
    document = orjson.loads(body)
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = document.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _timed_out(provider: str, which: str) -> UpstreamUnreachable:
    return UpstreamUnreachable(
        f"{provider} did not finish within {which}; the attempt was given up",
        code="upstream_timeout", status=504,
    )


def _out_of_time(call: Call, timeout: float, tried: list[str]) -> ApiError:
    """The call's time ran out (its deadline, or the request timeout its attempts share)."""
    if call.deadline_at is not None and call.deadline_at <= time.time() + _MIN_ATTEMPT:
        limit = "its deadline"
    else:
        limit = (f"[providers.{call.provider}] timeout = {format_duration(timeout)}, which its "
                 "attempts share")
    return ApiError(
        f"{call.provider} gave no answer within {limit}; tried: "
        f"{'; '.join(tried) or 'nothing (no time left to try)'}",
        status=504, code="deadline_exceeded", error_type="timeout",
    )


def _idle_timeout(provider: str, idle: float) -> UpstreamUnreachable:
    return UpstreamUnreachable(
        f"{provider}'s stream went quiet for {format_duration(idle)} between two chunks "
        f"([providers.{provider}] stream_idle_timeout); the call was given up",
        code="stream_idle_timeout", status=504,
    )


@dataclass(frozen=True, slots=True)
class Sent:
    """What an attempt that reached the caller used; ``late_error``: the stream broke after
    its first event (told to the client; it cannot be retried)."""

    usage: Usage
    late_error: ApiError | None = None


def _pick(headers: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {name: headers[name] for name in names if name in headers}


async def _tell(call: Call, reply: Reply) -> None:
    with contextlib.suppress(*_CLIENT_GONE):  # the client is gone; nobody to tell
        await call.reply.send(reply)
