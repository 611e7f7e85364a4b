"""The batch poller actor: watches open batches until their results are stored.

Each open batch is polled with backoff: ``[batch] poll_min`` after creation, doubling up to
``poll_max``, and never later than half the time left before its escalation point, so polls
come faster as a deadline approaches. At start it adopts every batch the store says is open
upstream, so a restart resumes polling and resubmits nothing.

Statuses:

- ``validating``, ``in_progress``, ``finalizing``, ``cancelling``: poll again;
- ``completed``, ``expired``, ``cancelled``: the provider writes the results as the daemon's
  result lines (``llmspool.core.batch_lines``; each file whole or not at all), every line is mapped
  back by ``custom_id``: answers are stored and billed at
  batch prices, retryable line errors go back to the job keeper (bounded attempts), expired or
  cancelled lines go back to be sent otherwise;
- ``failed``: ``token_limit_exceeded`` gives the lines back to be batched again once the
  model's enqueued tokens have room; validation errors naming a line fail that line, and the
  other lines are sent again.

Stragglers: a batch still open ``[batch] rebatch_after`` after its submission is cancelled while
a new batch is still expected to end before its escalation point; its unfinished lines then go
into a new batch (only what it finished is billed). Batch turnaround has a long tail, and a new
batch is expected to take its median.

Deadline escalation: when a batch is still open ``[batch] cancel_wait`` plus the time of a
standard call before the earliest deadline it carries, the poller cancels it; once it is
``cancelled`` only the lines it did not finish go back, so nothing is paid twice. If the cancel
has not taken effect by the time a standard call is the only way to meet the deadline, the
unfinished lines go back anyway (the deadline wins); a line the batch then still answers is
billed (the provider charges it) and counted as paid twice.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from llmspool.batches.context import BatchContext
from llmspool.core.batch_lines import BatchFiles
from llmspool.core.calls import Tier
from llmspool.core.errors import ApiError
from llmspool.core.provider import BatchProvider
from llmspool.core.remote_batch import TOKEN_LIMIT_EXCEEDED, RemoteBatch
from llmspool.core.states import BatchState, BatchStatus
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
)
from llmspool.policy.billing import PriceBook
from llmspool.store import batches as batch_sql
from llmspool.store.batch_files import batch_files, input_line_ids, remove_files
from llmspool.store.batch_results import MapReport, ResultMapper
from llmspool.store.records import BatchChunk, BatchChunkStored, RequeuedLine

log = logging.getLogger(__name__)

POLL_ERROR_BACKOFF = 30.0
PollerMessage = BatchOpened | NewPrices | StatusQuery[PollerStatus]
LedgerNote = StoreBatchChunk | ReleaseLines


class BatchPoller:
    def __init__(
        self,
        inbox: MemoryObjectReceiveStream[PollerMessage],
        keeper: MemoryObjectSendStream[BatchLinesDone],
        submitter: MemoryObjectSendStream[BatchClosed],
        ledger: MemoryObjectSendStream[LedgerNote],
        *,
        context: BatchContext,
        prices: PriceBook,
        cache: MemoryObjectSendStream[CacheFill] | None = None,
        meter: metrics.Meter | None = None,
    ) -> None:
        self._ready = context.ready
        self._cache = cache
        self._inbox = inbox
        self._keeper = keeper
        self._submitter = submitter
        self._ledger = ledger
        self._providers = context.providers
        self._database_path = context.database_path
        self._state_dir = context.state_dir
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
        self._rebatched = 0
        (meter or active().meter).create_observable_gauge(  # without one given, the daemon's
            "llmspool.batches.open", [self._observe_open], "{batch}",
            "batches open upstream, by provider")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._store = await batch_sql.ThreadedConnection.open(self._database_path)
        try:
            for batch in await self._store.run(batch_sql.open_batches):
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
                            self._prices = message.prices
                        else:
                            message.reply.send_nowait(self._snapshot())
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
        await self._escalate_if_late(batch, provider, now)
        await self._rebatch_if_straggling(batch, provider, now)
        self._schedule(batch, now)

    def _schedule(self, batch: batch_sql.BatchRow, now: float) -> None:
        interval = min(self._config.poll_max, self._interval[batch.id] * 2)
        self._interval[batch.id] = interval
        if batch.cancel_requested_at is not None:
            interval = self._config.poll_min
        else:
            until_escalation = self._escalate_at(batch) - now
            interval = max(self._config.poll_min, min(interval, until_escalation / 2))
        self._next_poll[batch.id] = now + interval

    def _straggling_at(self, batch: batch_sql.BatchRow) -> float:
        after = self._config.rebatch_after
        if after <= 0 or batch.submitted_at is None:
            return math.inf
        return batch.submitted_at + after

    async def _rebatch_if_straggling(self, batch: batch_sql.BatchRow, provider: BatchProvider,
                                     now: float) -> None:
        """Cancel a straggler whose lines a new batch can still carry in time."""
        assert batch.remote_id is not None
        if now < self._straggling_at(batch) or batch.cancel_requested_at is not None:
            return
        # The cancel may take cancel_wait; the new batch must then fit before escalation.
        if now + self._config.cancel_wait > self._planner.latest_batch_submit(
                batch.provider, batch.model, batch.deadline_at):
            return
        log.info("batch %s: still open %.0f s after submission (a straggler); cancelling it so "
                 "its unfinished requests go into a new batch", batch.remote_id,
                 now - (batch.submitted_at or now))
        try:
            await provider.cancel_batch(batch.remote_id)
        except ApiError as error:
            log.warning("batch %s: cancel failed: %s", batch.remote_id, error.message)
            return
        await self._store.run(batch_sql.mark_cancel_requested, batch, now)
        self._rebatched += 1

    def _escalate_at(self, batch: batch_sql.BatchRow) -> float:
        return batch.deadline_at - self._planner.escalation_reserve(batch.provider, batch.model)

    def _hard_at(self, batch: batch_sql.BatchRow) -> float:
        return batch.deadline_at - self._planner.need(batch.provider, batch.model, Tier.STANDARD)

    async def _escalate_if_late(self, batch: batch_sql.BatchRow, provider: BatchProvider,
                                now: float) -> None:
        assert batch.remote_id is not None
        if now >= self._escalate_at(batch) and batch.cancel_requested_at is None:
            log.warning("batch %s: will not finish before its deadline in %.0f s; cancelling "
                        "it so its unfinished requests can be sent otherwise", batch.remote_id,
                        batch.deadline_at - now)
            try:
                await provider.cancel_batch(batch.remote_id)
            except ApiError as error:
                log.warning("batch %s: cancel failed: %s", batch.remote_id, error.message)
            else:
                await self._store.run(batch_sql.mark_cancel_requested, batch, now)
        if now >= self._hard_at(batch) and batch.escalated_at is None:
            requeued = await self._store.run(batch_sql.release_lines, batch, None, now,
                                             escalated=True)
            await self._released(requeued)
            log.warning("batch %s: the cancel has not taken effect and the deadline is near: "
                        "%d unfinished requests are sent directly now", batch.remote_id,
                        len(requeued))
            await self._keeper.send(BatchLinesDone(requeued=requeued, batch_again=False))

    # --- results ----------------------------------------------------------------------------

    async def _retrieve(self, batch: batch_sql.BatchRow, remote: RemoteBatch) -> None:
        provider = self._providers[batch.provider]
        files = batch_files(self._state_dir, batch.intent)
        try:
            with self._tracer.start_as_current_span(
                "batch retrieve", links=links_from(batch.traceparents),
                attributes={"llmspool.batch.id": remote.id,
                            "llmspool.batch.status": remote.status,
                            "llmspool.batch.lines": batch.lines},
            ) as span:
                if remote.status == BatchStatus.FAILED:
                    report, note = await self._failed(batch, remote, files.input)
                else:
                    if await provider.download_results(remote, files):
                        self._crash.reach("batch.after_download")
                    report = await anyio.to_thread.run_sync(
                        self._map_files, batch, files.output, files.errors)
                    note = remote.status
                span.set_attributes({"llmspool.batch.succeeded": report.succeeded,
                                     "llmspool.batch.failed": report.failed,
                                     "llmspool.batch.requeued": len(report.requeued)})
        except ApiError as error:
            log.warning("batch %s: retrieving results failed (%s); trying again in %.0f s",
                        remote.id, error.message, POLL_ERROR_BACKOFF)
            self._next_poll[batch.id] = self._clock.now() + POLL_ERROR_BACKOFF
            return
        await self._done(batch, remote, report, note)
        await self._clean_up(provider, remote, files)

    async def _released(self, requeued: list[RequeuedLine]) -> None:
        """Lines given back end their batch reservations (they are admitted again as calls)."""
        if requeued:
            await self._ledger.send(ReleaseLines([line.request_id for line in requeued]))

    async def _store_chunk(self, chunk: BatchChunk) -> BatchChunkStored:
        """The ledger stores a chunk of results with their entries, in one transaction."""
        reply_in, reply_out = anyio.create_memory_object_stream[
            BatchChunkStored | BaseException](1)
        with reply_in, reply_out:
            await self._ledger.send(StoreBatchChunk(chunk, reply_in))
            answer = await reply_out.receive()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _commit_from_thread(self, chunk: BatchChunk) -> BatchChunkStored:
        return anyio.from_thread.run(self._store_chunk, chunk)

    def _map_files(self, batch: batch_sql.BatchRow, *paths: Path) -> MapReport:
        mapper = ResultMapper(self._store.connection, batch, self._prices, self._clock.now(),
                              after_first_chunk=lambda: self._crash.reach(
                                  "batch.mid_mapping"),
                              commit=self._commit_from_thread)
        for path in paths:
            if path.exists():
                mapper.feed(path)
        return mapper.finish(batch.remote_status or "")

    async def _failed(self, batch: batch_sql.BatchRow, remote: RemoteBatch,
                      input_path: Path) -> tuple[MapReport, str]:
        codes = {error.code for error in remote.errors}
        summary = "; ".join(f"{e.code}: {e.message}" for e in remote.errors[:3]) or "no reason"
        log.warning("batch %s failed: %s", remote.id, summary)
        if TOKEN_LIMIT_EXCEEDED in codes:
            enqueued = await self._store.run(batch_sql.enqueued_tokens, batch.provider, batch.model)
            # The failed batch no longer counts as enqueued: what the others hold is what fits.
            # Alone over the cap, it was too big: half of it is the new guess. Each failure
            # costs the lines an attempt, so this ends even if the guesses stay too high.
            fits = enqueued if enqueued else batch.tokens // 2
            await self._submitter.send(BatchClosed(batch.provider, batch.model, True, fits))
            report = MapReport()
            report.requeued = await self._store.run(batch_sql.release_lines, batch, None,
                                                    self._clock.now(), charge_attempt=True)
            await self._store.run(batch_sql.finish_batch, batch, {},
                                  "failed: token_limit_exceeded", self._clock.now())
            return report, TOKEN_LIMIT_EXCEEDED
        numbered = {e.line: e for e in remote.errors if e.line is not None}

        def fail_and_finish() -> MapReport:
            ids = input_line_ids(input_path, set(numbered))
            mapper = ResultMapper(self._store.connection, batch, self._prices, self._clock.now(),
                                  commit=self._commit_from_thread)
            mapper.fail_lines({ids[n]: (e.code, e.message) for n, e in numbered.items()
                               if n in ids})
            if not numbered:  # the whole batch was refused: each line loses an attempt
                mapper.requeue.update(dict.fromkeys(mapper.line_ids(), True))
            return mapper.finish(f"failed: {summary}")

        return await anyio.to_thread.run_sync(fail_and_finish), BatchStatus.FAILED

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
            batch.cancel_requested_at < self._escalate_at(batch)
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

    async def _clean_up(self, provider: BatchProvider, remote: RemoteBatch,
                        files: BatchFiles) -> None:
        await anyio.to_thread.run_sync(remove_files, files)
        if not self._config.delete_files:
            return
        try:
            await provider.delete_batch_files(remote)
        except ApiError as error:  # housekeeping: the results are already stored
            log.info("batch %s: could not delete its files upstream: %s", remote.id,
                     error.message)

    def _snapshot(self) -> PollerStatus:
        now = self._clock.now()
        return {
            "open": [batch.to_json(now) for batch in self._open.values()],
            "finished": self._finished,
            "paid_twice": self._paid_twice,
            "rebatched": self._rebatched,
        }
