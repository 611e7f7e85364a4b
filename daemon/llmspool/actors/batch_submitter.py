"""The batch submitter actor: groups batch-tier requests into batches and creates them upstream.

Requests arrive from the job keeper (``ToBatch``) and wait in a group per (provider, endpoint,
model) until the group is due: full, old enough, or out of time (``batching.groups``). Each
batch is then made in recorded steps, reserved with the ledger first, so that a crash between
any two of them never creates a second batch upstream (``batching.creation``).

The enqueued-token cap: the provider limits the prompt tokens waiting in unfinished batches per
model. The submitter keeps a batch back while it would exceed the limit (configured, or learned
from a ``token_limit_exceeded`` failure), and hands its requests back to the job keeper when
their deadline no longer allows waiting.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import anyio
from anyio.abc import TaskStatus
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from llmspool.actors.batching.creation import BatchMaker
from llmspool.actors.batching.groups import GroupKey, Groups
from llmspool.batches.context import BatchContext
from llmspool.core.states import BatchState
from llmspool.core.streams import MemoryReceiveStream, MemorySendStream
from llmspool.core.tracing import active
from llmspool.messages import (
    AdoptBatches,
    BatchClosed,
    BatchLinesDone,
    BatchOpened,
    NewPrices,
    ReleaseLines,
    ReserveLines,
    StatusQuery,
    SubmitterStatus,
    ToBatch,
    answer,
)
from llmspool.policy.reservations import Reserver
from llmspool.store import batches as batch_sql

log = logging.getLogger(__name__)

SubmitterMessage = (ToBatch | AdoptBatches | BatchClosed | NewPrices
                    | StatusQuery[SubmitterStatus])


class BatchSubmitter:
    def __init__(
        self,
        inbox: MemoryReceiveStream[SubmitterMessage],
        poller: MemorySendStream[BatchOpened],
        keeper: MemorySendStream[BatchLinesDone],
        ledger: MemorySendStream[ReserveLines | ReleaseLines],
        *,
        context: BatchContext,
        reserver: Reserver,
        meter: metrics.Meter | None = None,
    ) -> None:
        self._ledger = ledger
        self._reserver = reserver
        self._ready = context.ready
        self._inbox = inbox
        self._poller = poller
        self._keeper = keeper
        self._context = context
        self._store_location = context.store_location
        self._folder = context.state_dir / "batches"
        self._clock = context.planner.clock
        self._groups = Groups(context.providers, context.config, context.planner)
        self._wake = anyio.Event()
        self._adopted: list[int] = []  # batches taken over from a dead daemon, to resume
        (meter or active().meter).create_observable_gauge(  # without one given, the daemon's
            "llmspool.batch.requests_waiting", [self._observe_waiting], "{request}",
            "job requests waiting to be put into a batch, by provider")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await anyio.Path(self._folder).mkdir(parents=True, exist_ok=True)
        self._store = await batch_sql.ThreadedConnection.open(self._store_location)
        self._maker = BatchMaker(self._store, self._context, self._reserver, self._poller,
                                 self._keeper, self._ledger)
        try:
            unfinished = [b for b in await self._store.run(batch_sql.open_batches, None,
                                                           self._context.daemon)
                          if b.state in (BatchState.INTENT, BatchState.UPLOADED)]
            async with self._poller, self._keeper, self._ledger, \
                    anyio.create_task_group() as group:
                group.start_soon(self._flusher, unfinished)
                task_status.started()
                async with self._inbox:
                    async for message in self._inbox:
                        self._handle(message)
                group.cancel_scope.cancel()
        finally:
            await self._store.close()

    def _handle(self, message: SubmitterMessage) -> None:
        if isinstance(message, ToBatch):
            self._groups.add(message.candidates, message.traceparents, self._clock.now())
            self._wake.set()
        elif isinstance(message, BatchClosed):
            learned = self._groups.closed(message)
            if learned is not None:
                log.warning("batch: %s %s hit the enqueued-token cap; keeping batches under "
                            "%d tokens", message.provider, message.model, learned)
            self._wake.set()
        elif isinstance(message, AdoptBatches):
            self._adopted += message.batch_ids  # the flusher resumes them
            self._wake.set()
        elif isinstance(message, NewPrices):
            self._reserver.set_prices(message.prices)  # lines are reserved at the new prices
        else:
            answer(message.reply, self._snapshot())

    async def _flusher(self, unfinished: list[batch_sql.BatchRow]) -> None:
        await self._ready.wait()
        for batch in unfinished:
            log.info("batch %s: resuming from %s after a restart", batch.intent, batch.state)
            await self._maker.advance(batch, resumed=True)
        waiting = self._groups.waiting
        while True:
            await self._resume_adopted()
            now = self._clock.now()
            for key in list(waiting):
                group = waiting[key]
                if group.held is None and self._groups.due(group, now):
                    await self._flush(key, now)
                elif group.held is not None and now >= group.latest_submit:
                    await self._maker.give_back(waiting.pop(key).candidates,
                                                f"could not be batched in time ({group.held})")
            wake_at = min((self._groups.next_due(g) for g in waiting.values()),
                          default=math.inf)
            await self._clock.wait(self._wake, max(wake_at, self._clock.now() + 0.05))
            self._wake = anyio.Event()

    async def _resume_adopted(self) -> None:
        """Open batches taken over from a dead daemon: those not yet submitted go on from
        their step, as after a restart; the submitted ones go to the poller."""
        while self._adopted:
            batch_id = self._adopted.pop(0)
            for batch in await self._store.run(batch_sql.open_batches, batch_id):
                if batch.state in (BatchState.INTENT, BatchState.UPLOADED):
                    log.info("batch %s: taken over at %s", batch.intent, batch.state)
                    await self._maker.advance(batch, resumed=True)
                else:
                    await self._poller.send(BatchOpened(batch))

    async def _flush(self, key: GroupKey, now: float) -> None:
        group = self._groups.waiting.pop(key)
        provider_name, _endpoint, model = key
        limit = self._groups.token_limit(provider_name, model)
        chunks = self._groups.split(group.candidates, limit)
        for index, chunk in enumerate(chunks):
            tokens = sum(c.size for c in chunk) // 4
            if limit:
                enqueued = await self._store.run(batch_sql.enqueued_tokens, provider_name, model)
                if enqueued and enqueued + tokens > limit:
                    # Keep the rest back until a batch of this model finishes (BatchClosed).
                    rest = [c for later in chunks[index:] for c in later]
                    held = self._groups.hold(
                        key, group, rest, f"enqueued-token cap: {enqueued} of {limit} in use")
                    log.info("batch: holding %d %s requests: %s", len(rest), model, held.held)
                    return
            await self._maker.make(chunk, group.traceparents, now)

    def _observe_waiting(self, _options: CallbackOptions) -> Iterable[Observation]:
        """Read by the metric reader's thread (the list copies the groups at once)."""
        by_provider: dict[str, int] = {}
        for (provider, _endpoint, _model), group in list(self._groups.waiting.items()):
            by_provider[provider] = by_provider.get(provider, 0) + len(group.candidates)
        return [Observation(count, {"llmspool.provider": provider})
                for provider, count in by_provider.items()] or [Observation(0)]

    def _snapshot(self) -> SubmitterStatus:
        now = self._clock.now()
        return {
            "waiting": [
                {"provider": p, "endpoint": e.value, "model": m, "requests": len(g.candidates),
                 "oldest_s": round(now - g.oldest_at, 1), "held": g.held}
                for (p, e, m), g in self._groups.waiting.items()
            ],
            "submitted": self._maker.submitted,
            "given_back": self._maker.given_back,
        }
