"""The dispatcher actor: runs each call against its provider and tells everyone how it went.

Each ``Call`` is taken by one of its workers (tasks kept from call to call: one per call in
flight and a few spare, see ``Dispatcher._work``), which asks the planner for a tier, reserves
the call's cost with the ledger, sends the request through the provider plugin, answers the
caller on ``call.reply`` (a whole ``Answer``, or ``StreamStart``, chunks and ``StreamEnd``),
reads the usage and the tier the answer says it served, prices it, and sends a ``Settled`` to
the ledger and a ``SlotFreed`` to the queue. A client that goes away before its answer fires
``call.abort``, which cancels the call's scope.

This module is the actor: its inbox and workers, each call from start to end, and the status.
The work is done by the parts in ``llmspool.actors.dispatch``, made once here and kept for the
daemon's life (nothing is made per call): the flex policy (``flex``), the retry policy's
attempts (``attempts``), the routing past circuit breakers (``targets``), the upstream request
and the relay of its answer (``relay``), and each call's money (``accounts``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from llmspool.actors.dispatch.accounts import Accounts
from llmspool.actors.dispatch.attempts import Attempts
from llmspool.actors.dispatch.flex import FlexMetrics, FlexPolicy
from llmspool.actors.dispatch.relay import Relay, tell
from llmspool.actors.dispatch.targets import Targets
from llmspool.core.calls import Tier
from llmspool.core.config.sections import BreakerConfig, BudgetsConfig, FailoverConfig, FlexConfig
from llmspool.core.errors import ApiError
from llmspool.core.histograms import Histograms
from llmspool.core.provider import Provider
from llmspool.core.spans import LeanTracer, SpanFields
from llmspool.core.streams import MemoryReceiveStream, MemorySendStream
from llmspool.core.tracing import NO_SPAN, GenAiMetrics, links_of, records
from llmspool.messages import (
    Admit,
    AdmitNow,
    Call,
    DispatcherStatus,
    Failure,
    NewPrices,
    Release,
    SettleNow,
    SlotFreed,
    StatusQuery,
    answer,
)
from llmspool.policy.billing import PriceBook
from llmspool.policy.estimate import TokenEstimator
from llmspool.policy.planner import Planner
from llmspool.resilience.limits import RateLimits
from llmspool.resilience.retry import Retrier
from llmspool.store.records import Settled

log = logging.getLogger(__name__)

# Calls from the request queue; status questions from the front door; prices on SIGHUP.
DispatcherMessage = Call | StatusQuery[DispatcherStatus] | NewPrices

_LEDGER_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError)  # or the queue
# What an upstream call's span is told as it starts (the GenAI conventions' names), and when
# the planner has chosen its tier.
CALL_FIELDS = SpanFields("gen_ai.system", "gen_ai.provider.name", "gen_ai.operation.name",
                         "gen_ai.request.model", "llmspool.request_id", "llmspool.provider",
                         "llmspool.queue_wait_ms")
PLANNED_FIELDS = SpanFields("llmspool.planned_tier")
# At most this many calls in flight, an answer is written before its call's bookkeeping (a
# loop turn: at concurrency 1, ~70 µs less latency). At 2 it was also taken under light
# load, where the turn costs more than it saves: c=4 4% fewer req/s, and an open loop at
# 2,700/s a p99 0.7 ms higher, for the same c=1 latency.
QUIET_CALLS = 1
# Workers kept beyond the most calls in flight at once in the last BUSIEST_WINDOW seconds
# (``Dispatcher._work``): a burst's workers end as the calls after it are served.
SPARE_WORKERS = 16
BUSIEST_WINDOW = 60.0


class Dispatcher:
    def __init__(
        self,
        inbox: MemoryReceiveStream[DispatcherMessage],
        freed: MemorySendStream[SlotFreed],
        ledger: MemorySendStream[Settled | Admit | Release],
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
        histograms: Histograms | None,
        retrier: Retrier,
        breaker: BreakerConfig,
        failover: FailoverConfig,
        limits: RateLimits,
        admit_now: AdmitNow | None = None,
        settle_now: SettleNow | None = None,
        free_slot: Callable[[], bool] | None = None,
    ) -> None:
        self._inbox = inbox
        self._freed = freed
        self._free_slot = free_slot  # the request queue counting it in this task, when it can
        self._ledger = ledger
        self._providers = providers
        self._provider_kinds = provider_kinds
        self._planner = planner
        self._tracer = tracer
        self._records = records(tracer)
        self._lean = tracer if isinstance(tracer, LeanTracer) else None
        self._retrier = retrier
        self._limits = limits
        self._in_flight = 0
        self._workers = 0  # tasks serving calls or waiting for one (``_work``)
        self._idle_workers = 0  # those waiting on the inbox
        self._busiest = 0  # the most calls in flight at once since ``_busiest_since``
        self._busiest_since = time.monotonic()
        self._failed = 0
        self._aborted = 0  # calls cancelled by their client leaving before the answer
        self._flex_metrics = FlexMetrics(meter)
        self._accounts = Accounts(
            ledger, prices=prices, budgets=budgets, estimator=estimator, planner=planner,
            provider_kinds=provider_kinds, flex=self._flex_metrics, genai=GenAiMetrics(histograms),
            admit_now=admit_now, settle_now=settle_now)
        self._targets = Targets(breaker, failover, timeouts, prices, planner, meter)
        self._relay = Relay(providers, limits, stream_idle_timeouts, self._accounts,
                            planner.clock, quiet=lambda: self._in_flight <= QUIET_CALLS)
        self._attempts = Attempts(
            retrier=retrier, timeouts=timeouts, targets=self._targets, limits=limits,
            relay=self._relay, accounts=self._accounts, tracer=tracer, meter=meter,
            clock=planner.clock)
        self._flex = FlexPolicy(flex, planner, self._flex_metrics, self._attempts.run)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with self._freed, self._ledger:
            with self._inbox:
                # The group waits for every worker: each ends when the inbox does (after the
                # call it took), or with the group's cancellation.
                async with anyio.create_task_group() as workers:
                    workers.start_soon(self._work, workers)
                    task_status.started()

    async def _work(self, workers: TaskGroup) -> None:
        """One of the dispatcher's workers: takes the inbox's messages and serves its calls.

        A task per call cost anyio's spawn on every call (a ``TaskHandle``, its cancel scope and
        event, a wrapper coroutine and one more loop step): 7% of a call's CPU at c=4. Workers
        are kept instead: one that takes a call while none is left waiting starts another, so
        a message never waits for a worker, and one that finishes a call ends when the workers
        outnumber, by ``SPARE_WORKERS``, the most calls in flight at once lately (see
        ``_one_worker_too_many``).
        """
        inbox = self._inbox
        self._workers += 1
        try:
            while True:
                self._idle_workers += 1
                try:
                    message = await inbox.receive()
                except anyio.EndOfStream:
                    return
                finally:
                    self._idle_workers -= 1
                if isinstance(message, Call):
                    if not self._idle_workers:
                        workers.start_soon(self._work, workers)
                    await self._serve(message)
                    if self._idle_workers >= SPARE_WORKERS and self._one_worker_too_many():
                        return
                elif isinstance(message, StatusQuery):
                    answer(message.reply, self._snapshot())
                else:
                    self._accounts.set_prices(message.prices)
                    self._targets.set_prices(message.prices)
                    self._planner.set_prices(message.prices)
        finally:
            self._workers -= 1

    def _one_worker_too_many(self) -> bool:
        """Whether a worker that just finished a call is more than the dispatcher needs: the
        others already outnumber, by ``SPARE_WORKERS``, the most calls in flight at once in
        the last ``BUSIEST_WINDOW`` seconds.

        Not the calls in flight now: under load, calls end in waves (each group commit of the
        ledger lets many end in one turn of the loop, before the next ones arrive), and a
        worker ended at each wave was one started at the next (at c=64, 15% of the throughput).
        """
        now = time.monotonic()
        if now - self._busiest_since > BUSIEST_WINDOW:
            self._busiest, self._busiest_since = self._in_flight, now
        return self._workers - 1 >= self._busiest + SPARE_WORKERS

    def _call_span(self, call: Call, kind: str,
                   started: float) -> contextlib.AbstractContextManager[trace.Span]:
        """The upstream call's span, ended as the block ends; or none, when nothing records.

        Not made current: what the call's attempts tell on it (retries' spans, breakers'
        moves) is handed it, which on every call saved making a context, attaching it and
        detaching it (some 11 Python calls). Under a request span the sampler dropped, the
        call's own would be dropped too: that one stands in for it, without a span and its
        attributes built (what tracing cost nine calls in ten, one trace in ten sampled)."""
        if not self._records:
            return NO_SPAN
        dropped = self._lean.dropped_parent(call.trace) if self._lean is not None else None
        if dropped is not None:
            return contextlib.nullcontext(dropped)
        operation = call.endpoint.operation_name
        return CALL_FIELDS.start_span(
            self._tracer, f"{operation} {call.model}",
            (kind, kind, operation, call.model, call.request_id, call.provider,
             round((started - call.received_at) * 1000, 3)),
            context=call.trace,
            kind=SpanKind.CLIENT,
            # A job's request links to the span that submitted the job.
            links=links_of(call.trace),
            # What fails is told on the span (``_serve``), as the caller is told it.
            record_exception=False, set_status_on_exception=False,
        )

    async def _serve(self, call: Call) -> None:
        self._in_flight += 1
        self._busiest = max(self._busiest, self._in_flight)
        started = self._planner.clock.now()
        kind = self._provider_kinds.get(call.provider, call.provider)
        admitted = False
        error_type: str | None = None
        try:
            with self._call_span(call, kind, started) as span, \
                    anyio.CancelScope() as client_scope:
                call.abort.bind(client_scope)
                try:
                    tier = self._planner.choose(
                        call.provider, call.model, call.policy, call.deadline_at, started
                    )
                    PLANNED_FIELDS.set(span, tier.value)
                    admitted = await self._accounts.admit(call, tier)
                    if tier is Tier.FLEX:
                        await self._flex.serve(call, span)
                    else:
                        await self._attempts.run(call, tier, None, span)
                except ApiError as error:
                    self._failed += 1
                    error_type = error.code or type(error).__name__
                    span.set_status(Status(StatusCode.ERROR, error.message))
                    span.set_attribute("error.type", error_type)
                    await tell(call, Failure(error))
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
            await tell(call, Failure(ApiError(
                f"llmspool hit an unexpected error serving this request ({type(exc).__name__}); "
                "it is logged, and the daemon keeps serving",
                code="internal_error",
            )))
        finally:
            if self._accounts.end(call, kind, self._planner.clock.now() - started, error_type):
                # Its entry ended the reservation: in the ledger, or with the job keeper, which
                # stores it with the result (after a crash, an unknown outcome).
                admitted = False
            if admitted:
                # Ends the reservation of a call that settled nothing. At the end of a stop the
                # ledger may be gone: the reservation then stays in the store and the next
                # start bills it as an unknown outcome.
                with anyio.CancelScope(shield=True), contextlib.suppress(*_LEDGER_GONE):
                    await self._ledger.send(Release(call.request_id))
            call.reply.close()
            self._in_flight -= 1
            if self._free_slot is None or not self._free_slot():
                with contextlib.suppress(*_LEDGER_GONE):  # the queue is gone at a stop's end
                    self._freed.send_nowait(SlotFreed(call.request_id))

    def _snapshot(self) -> DispatcherStatus:
        return {
            "in_flight": self._in_flight,
            "workers": self._workers,
            "in_flight_by_tier": dict(self._attempts.in_flight_by_tier),
            "served_by_tier": dict(self._accounts.served_by_tier),
            "failed": self._failed,
            "flex": self._flex_metrics.snapshot(),
            "latency": self._planner.book.snapshot(),
            "upstream_attempts": self._attempts.count,
            "failed_over": self._attempts.failed_over,
            # Left before the answer, or mid-stream (the relay's count).
            "aborted_by_client": self._aborted + self._relay.aborted,
            "retries": self._retrier.snapshot(),
            "breakers": self._targets.breakers(),
            "breaker_transitions": self._targets.transitions(),
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
