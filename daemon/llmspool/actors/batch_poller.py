"""The batch poller actor: watches open batches until their results are stored.

Each open batch is polled with backoff: ``[batch] poll_min`` after creation, doubling up to
``poll_max``, and never later than half the time left before its escalation point, so polls
come faster as a deadline approaches. At start it adopts every batch the store says is open
upstream, so a restart resumes polling and resubmits nothing.

Statuses:

- ``validating``, ``in_progress``, ``finalizing``, ``cancelling``: poll again, cancelling a
  batch that will not finish before its deadline or straggles (``batching.escalation``);
- ``completed``, ``expired``, ``cancelled``, ``failed``: its results are stored and its lines
  mapped back (``batching.retrieval``); the poller then tells the job keeper what became of
  each line, the submitter that the model's enqueued tokens are free, and the cache what the
  batch answered.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable

import anyio
from anyio.abc import TaskStatus
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from llmspool.actors.batching.escalation import Escalation
from llmspool.actors.batching.retrieval import Retrieval
from llmspool.batches.context import BatchContext
from llmspool.core.calls import Tier
from llmspool.core.errors import ApiError
from llmspool.core.remote_batch import TOKEN_LIMIT_EXCEEDED, RemoteBatch
from llmspool.core.states import BatchState, BatchStatus
from llmspool.core.streams import MemoryReceiveStream, MemorySendStream
from llmspool.core.tracing import active, links_from
from llmspool.messages import (
    BatchClosed,
    BatchLinesDone,
    BatchOpened,
    CacheFill,
    NewPrices,
    PollerStatus,
    ReleaseLines,
    StatusQuery,
    StoreBatchChunk,
    answer,
)
from llmspool.policy.billing import PriceBook
from llmspool.store import batches as batch_sql
from llmspool.store.batch_results import MapReport
from llmspool.store.records import RequeuedLine

log = logging.getLogger(__name__)

POLL_ERROR_BACKOFF = 30.0
PollerMessage = BatchOpened | NewPrices | StatusQuery[PollerStatus]
LedgerNote = StoreBatchChunk | ReleaseLines


class BatchPoller:
    def __init__(
        self,
        inbox: MemoryReceiveStream[PollerMessage],
        keeper: MemorySendStream[BatchLinesDone],
        submitter: MemorySendStream[BatchClosed],
        ledger: MemorySendStream[LedgerNote],
        *,
        context: BatchContext,
        prices: PriceBook,
        cache: MemorySendStream[CacheFill] | None = None,
        meter: metrics.Meter | None = None,
    ) -> None:
        self._ready = context.ready
        self._cache = cache
        self._inbox = inbox
        self._keeper = keeper
        self._submitter = submitter
        self._ledger = ledger
        self._context = context
        self._providers = context.providers
        self._planner = context.planner
        self._clock = context.planner.clock
        self._prices = prices
        self._config = context.config
        self._tracer = context.tracer
        self._crash = context.crash
        self._open: dict[int, batch_sql.BatchRow] = {}
        self._next_poll: dict[int, float] = {}
        self._interval: dict[int, float] = {}
        self._wake = anyio.Event()
        self._finished = 0
        self._paid_twice = 0
        (meter or active().meter).create_observable_gauge(  # without one given, the daemon's
            "llmspool.batches.open", [self._observe_open], "{batch}",
            "batches open upstream, by provider")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._store = await batch_sql.ThreadedConnection.open(self._context.store_location)
        self._escalation = Escalation(self._store, self._context)
        self._retrieval = Retrieval(self._store, self._context, self._prices, self._submitter,
                                    self._ledger)
        try:
            for batch in await self._store.run(batch_sql.open_batches, None,
                                               self._context.daemon):
                if batch.state == BatchState.SUBMITTED:
                    self._adopt(batch, now=0.0)  # poll at once: it may have finished meanwhile
            if self._open:
                log.info("batch: adopted %d open batches", len(self._open))
            async with self._keeper, self._submitter, self._ledger, \
                    contextlib.AsyncExitStack() as stack, anyio.create_task_group() as group:
                if self._cache is not None:
                    await stack.enter_async_context(self._cache)
                group.start_soon(self._poll_loop)
                task_status.started()
                async with self._inbox:
                    async for message in self._inbox:
                        if isinstance(message, BatchOpened):
                            self._opened(message.batch)
                        elif isinstance(message, NewPrices):
                            self._retrieval.prices = message.prices
                        else:
                            answer(message.reply, self._snapshot())
                group.cancel_scope.cancel()
        finally:
            await self._store.close()

    def _opened(self, batch: batch_sql.BatchRow) -> None:
        self._adopt(batch, now=self._clock.now())
        self._wake.set()

    def _adopt(self, batch: batch_sql.BatchRow, now: float) -> None:
        self._open[batch.id] = batch
        self._interval[batch.id] = self._config.poll_min
        self._next_poll[batch.id] = now + (self._config.poll_min if now else 0.0)

    def _observe_open(self, _options: CallbackOptions) -> Iterable[Observation]:
        """Read by the metric reader's thread (the list copies the batches at once)."""
        by_provider: dict[str, int] = {}
        for batch in list(self._open.values()):
            by_provider[batch.provider] = by_provider.get(batch.provider, 0) + 1
        return [Observation(count, {"llmspool.provider": provider})
                for provider, count in by_provider.items()] or [Observation(0)]

    # --- polling --------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        await self._ready.wait()
        while True:
            now = self._clock.now()
            for batch_id in [b for b, at in self._next_poll.items() if at <= now]:
                await self._poll(self._open[batch_id])
            wake_at = min(self._next_poll.values(), default=math.inf)
            await self._clock.wait(self._wake, max(wake_at, self._clock.now() + 0.01))
            self._wake = anyio.Event()

    async def _poll(self, batch: batch_sql.BatchRow) -> None:
        provider = self._providers[batch.provider]
        assert batch.remote_id is not None
        try:
            with self._tracer.start_as_current_span(
                "batch poll", links=links_from(batch.traceparents),
                attributes={"llmspool.batch.id": batch.remote_id,
                            "llmspool.provider": batch.provider},
            ) as span:
                remote = await provider.retrieve_batch(batch.remote_id)
                span.set_attribute("llmspool.batch.status", remote.status)
        except ApiError as error:
            log.warning("batch %s: poll failed (%s); trying again in %.0f s", batch.remote_id,
                        error.message, POLL_ERROR_BACKOFF)
            self._next_poll[batch.id] = self._clock.now() + POLL_ERROR_BACKOFF
            return
        now = self._clock.now()
        if remote.status != batch.remote_status:
            log.info("batch %s: %s (%d/%d done, %d failed)", batch.remote_id, remote.status,
                     remote.completed, remote.total, remote.failed)
        await self._store.run(batch_sql.record_poll, batch, remote.status, remote.completed,
                       remote.failed, now)
        self._crash.reach("batch.after_poll")
        if remote.terminal:
            await self._retrieve(batch, remote)
            return
        requeued = await self._escalation.escalate_if_late(batch, provider, now)
        if requeued is not None:
            await self._released(requeued)
            log.warning("batch %s: the cancel has not taken effect and the deadline is near: "
                        "%d unfinished requests are sent directly now", batch.remote_id,
                        len(requeued))
            await self._keeper.send(BatchLinesDone(requeued=requeued, batch_again=False))
        await self._escalation.rebatch_if_straggling(batch, provider, now)
        self._schedule(batch, now)

    def _schedule(self, batch: batch_sql.BatchRow, now: float) -> None:
        interval = min(self._config.poll_max, self._interval[batch.id] * 2)
        self._interval[batch.id] = interval
        if batch.cancel_requested_at is not None:
            interval = self._config.poll_min
        else:
            until_escalation = self._escalation.escalate_at(batch) - now
            interval = max(self._config.poll_min, min(interval, until_escalation / 2))
        self._next_poll[batch.id] = now + interval

    # --- results ----------------------------------------------------------------------------

    async def _retrieve(self, batch: batch_sql.BatchRow, remote: RemoteBatch) -> None:
        try:
            report, note = await self._retrieval.collect(batch, remote)
        except ApiError as error:
            log.warning("batch %s: retrieving results failed (%s); trying again in %.0f s",
                        remote.id, error.message, POLL_ERROR_BACKOFF)
            self._next_poll[batch.id] = self._clock.now() + POLL_ERROR_BACKOFF
            return
        await self._done(batch, remote, report, note)
        await self._retrieval.clean_up(batch, remote)

    async def _released(self, requeued: list[RequeuedLine]) -> None:
        """Lines given back end their batch reservations (they are admitted again as calls)."""
        if requeued:
            await self._ledger.send(ReleaseLines([line.request_id for line in requeued]))

    async def _done(self, batch: batch_sql.BatchRow, remote: RemoteBatch,
                    report: MapReport, note: str) -> None:
        self._open.pop(batch.id, None)
        self._next_poll.pop(batch.id, None)
        self._interval.pop(batch.id, None)
        self._finished += 1
        self._paid_twice += report.paid_twice
        if remote.status == BatchStatus.COMPLETED and batch.submitted_at is not None:
            self._planner.book.observe((batch.provider, batch.model, Tier.BATCH),
                                       self._clock.now() - batch.submitted_at)
        await self._released(report.requeued)
        if report.cache_fills and self._cache is not None:
            # Batch answers serve later identical requests; the cache never makes us wait.
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError,
                                     anyio.ClosedResourceError):
                self._cache.send_nowait(CacheFill(report.cache_fills))
        # Cancelled before its escalation point: a straggler (also after a restart).
        straggler = batch.cancel_requested_at is not None and \
            batch.cancel_requested_at < self._escalation.escalate_at(batch)
        await self._keeper.send(BatchLinesDone(
            outcomes=report.outcomes, requeued=report.requeued,
            # Lines given back may go in the next batch when it still fits their deadline (the
            # planner decides, and lines past [batch] max_attempts go directly); only the lines
            # of a batch cancelled for a deadline are late already.
            batch_again=straggler or note in (TOKEN_LIMIT_EXCEEDED, BatchStatus.COMPLETED,
                                              BatchStatus.FAILED, BatchStatus.EXPIRED),
        ))
        if note != TOKEN_LIMIT_EXCEEDED:
            await self._submitter.send(BatchClosed(batch.provider, batch.model))
        log.info("batch %s %s: %d answers stored, %d failed, %d sent again%s", remote.id,
                 note, report.succeeded, report.failed, len(report.requeued),
                 f", {report.paid_twice} paid twice" if report.paid_twice else "")
        if report.unreadable:
            log.warning("batch %s: %d lines of its output could not be read or matched to a "
                        "request; those requests were sent again", remote.id, report.unreadable)

    def _snapshot(self) -> PollerStatus:
        now = self._clock.now()
        return {
            "open": [batch.to_json(now) for batch in self._open.values()],
            "finished": self._finished,
            "paid_twice": self._paid_twice,
            "rebatched": self._escalation.rebatched,
        }
