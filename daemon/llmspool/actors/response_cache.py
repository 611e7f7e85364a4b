"""The response cache actor: never pay twice for the same answer.

Calls that have a cache plan (``policy/cache_keys.py``) come here from the front door and the job
keeper instead of going straight to the request queue. For each, in order:

1. a live entry in the cache file answers it at once (``x-llmspool-cache: hit``);
2. an identical call in flight (same key) is joined: the call waits for that one's outcome
   and shares it (``shared``); one arriving just after it finished, before its entry is
   committed, is answered from memory (``LINGER``): a ``hit``, as it would be a moment later;
3. an identical request waiting in a pending batch whose expected end fits the call's deadline
   is waited for (its answer lands in the cache), giving up in time for the call to be sent on
   its own (``cache/pending.py``);
4. with near-duplicate matching on for its operation, its text's embedding is compared with
   those of cached answers and of calls in flight (``cache/similar.py``);
5. otherwise it leads a flight: it goes to the request queue, and its replies pass through
   here on their way to its client, so that followers get the answer and the cache keeps it.

A flight's outcome: a 200 answer is shared with every follower and kept in the cache; an error
the provider gave that the same request would get again is shared too; anything else (a
timeout, a client that went away, a stream cut short) sends the followers on their way again,
the first of them leading a new flight. An error is never cached. A leader whose client goes
away keeps its upstream call going while others wait for it.

Writes are write-behind: entries, hits (for the eviction order) and drops are collected and
committed together in a worker thread; a full backlog drops new entries rather than make
anybody wait.

The front door's misses skip the hop to this actor's task when that changes nothing but the
wait (``take_now``: the actor reads its inbox and nothing waits in it ahead of the call), as
the leader's upstream call skips the hop to the request queue's (``queue_take_now``): the event
loop has one thread, and taking a call never awaits.

This module is the actor: its inbox, the cache file's reader and writer, and taking each call
(steps 1 to 3 above, and where it goes next). The rest is done by the parts in
``llmspool.actors.caching``, made once here and sharing its state by reference (nothing is
made per call): answering from an answer (``replies``), the write-behind (``write_behind``),
single flight (``flights``), waiting on a batch twin (``batch_twins``), near duplicates
(``near_duplicates``), the counters and status snapshot (``counts``), and, for the daemons of
a shared store, the fleet's answers and calls in flight (``fleet``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
from anyio.abc import TaskGroup, TaskStatus

from llmspool.actors.caching.batch_twins import BatchTwins
from llmspool.actors.caching.counts import CacheCounts, snapshot
from llmspool.actors.caching.fleet import FleetCache
from llmspool.actors.caching.flights import Flight, Flights
from llmspool.actors.caching.near_duplicates import NearMatcher
from llmspool.actors.caching.replies import Replier
from llmspool.actors.caching.write_behind import WriteBehind
from llmspool.cache.nearby import NearDuplicates
from llmspool.cache.pending import PendingBatches
from llmspool.cache.presence import KeyPresence
from llmspool.cache.store import CacheReader, CacheWriter, connect
from llmspool.cache.unwritten import UnwrittenKeys
from llmspool.core.config.sections import CacheConfig
from llmspool.core.streams import MemoryReceiveStream, MemorySendStream
from llmspool.messages import (
    CacheFill,
    CacheStatus,
    CacheUsed,
    Call,
    Missed,
    StatusQuery,
    answer,
)
from llmspool.policy.planner import Planner
from llmspool.store.records import Settled

CacheMessage = Call | Missed | CacheFill | CacheUsed | StatusQuery[CacheStatus]


class ResponseCache:
    def __init__(
        self,
        inbox: MemoryReceiveStream[CacheMessage],
        queue: MemorySendStream[Call],
        ledger: MemorySendStream[Settled],
        *,
        config: CacheConfig,
        state_dir: Path,
        planner: Planner,
        batches: PendingBatches | None = None,
        near: NearDuplicates | None = None,
        presence: KeyPresence,
        unwritten: UnwrittenKeys,
        fleet: FleetCache | None = None,
        queue_take_now: Callable[[Call], bool] | None = None,
    ) -> None:
        self._fleet = fleet
        self._batches = batches
        self._near = near
        self._inbox = inbox
        self._queue = queue
        self._ledger = ledger
        self._config = config
        self._state_dir = state_dir
        self._counts = CacheCounts()
        self._writes = WriteBehind(self._counts, near, presence, unwritten)
        self._replier = Replier(planner, ledger, self._writes)
        self._flights = Flights(queue, config, self._counts, self._writes, self._replier, near,
                                self._take, fleet, queue_take_now)
        # While the actor reads its inbox: its reader and task group, for ``take_now``.
        self._taking: tuple[CacheReader, TaskGroup] | None = None
        self._twins = None if batches is None else BatchTwins(
            batches, self._flights, self._writes, self._replier, self._counts, self._take,
            planner.clock)
        self._matcher = None if near is None else NearMatcher(
            near, queue, self._flights, self._writes, self._replier, self._counts, self._take)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        writer_connection = await anyio.to_thread.run_sync(
            lambda: connect(self._state_dir, writer=True))
        writer = CacheWriter(writer_connection, self._config.max_entries)
        self._writes.entries = writer.count
        reader = CacheReader(connect(self._state_dir, writer=False))
        if self._near is not None:
            for entry_id, grp, vector in await anyio.to_thread.run_sync(reader.vectors):
                with contextlib.suppress(ValueError):  # a damaged vector: matched exactly only
                    self._near.cached.add(grp, entry_id, vector)
        fleet: AbstractAsyncContextManager[None] = (
            contextlib.nullcontext() if self._fleet is None else self._fleet.opened())
        try:
            async with fleet, self._queue, self._ledger, anyio.create_task_group() as group:
                group.start_soon(self._writes.run, writer)
                task_status.started()
                self._taking = reader, group
                try:
                    await self._read_inbox(reader, group)
                finally:
                    self._taking = None
                # Nothing new comes in; flights finish as their calls do, then the last commit.
                await self._flights.all_landed()
                self._writes.stop()
        finally:
            reader.close()
            writer.close()
            if self._batches is not None:
                self._batches.close()

    async def _read_inbox(self, reader: CacheReader, group: TaskGroup) -> None:
        async with self._inbox:
            async for message in self._inbox:
                if isinstance(message, Call):
                    self._take(message, reader, group)
                elif isinstance(message, Missed):
                    self._take(message.call, reader, group, message.at)
                elif isinstance(message, CacheUsed):
                    self._used(message)
                elif isinstance(message, CacheFill):
                    self._writes.keep(message.entries, readable_now=True)
                    if self._fleet is not None:
                        group.start_soon(self._fleet.publish, message.entries)
                else:
                    answer(message.reply, snapshot(
                        self._counts, self._config, self._writes.entries,
                        len(self._flights.by_key), self._flights.waiting(),
                        self._near, self._fleet))

    def take_now(self, call: Call, missed_at: float | None) -> bool:
        """Take ``call`` (a front door's miss at ``missed_at``) in the caller's own task,
        without the hop to the actor's, when that is what the actor would do at once: it reads
        its inbox and nothing waits there ahead of the call. False: send it."""
        if self._taking is None or self._inbox.backlog():
            return False
        self._take(call, *self._taking, missed_at)
        return True

    def _take(self, call: Call, reader: CacheReader, group: TaskGroup,
              missed_at: float | None = None) -> None:
        plan = call.cache
        assert plan is not None, "calls without a cache plan go straight to the queue"
        now = time.time()
        # The front door found nothing at ``missed_at``: the file needs reading again only if
        # a commit landed since (what committed later is still in ``recent`` until it lands).
        found = None if missed_at is not None and self._writes.landed_at < missed_at \
            else self._writes.committed(plan.key, reader, now)
        if found is not None and self._replier.answer(call, found, "hit", group):
            self._counts.hits += 1
            self._writes.hit(found.entry_id, now)
            return
        flight = self._flights.by_key.get(plan.key)
        if flight is not None:
            flight.followers.append(call)
            return
        # An answer in hand, its commit still to land. A flight's is a hit, as it will be once
        # committed: the label and the ledger's saving source say what the call found, not
        # where the write-behind stood (``WriteBehind.recent``).
        recent = self._writes.recent.get(plan.key)
        if recent is not None and recent[1] > now:
            answer, _until, how = recent
            if self._replier.answer(call, answer, how, group):
                if how == "hit":
                    self._counts.hits += 1
                else:
                    self._counts.shared += 1
                return
        self._counts.misses += 1
        flight = self._flights.by_key[plan.key] = Flight(plan.key, call)
        if call.deadline_at is not None and self._batches is not None:
            assert self._twins is not None
            expected = self._batches.expected_end(plan.key)
            give_up_at = self._batches.give_up_at(call.provider, call.model, call.deadline_at)
            if expected is not None and expected <= give_up_at:
                self._counts.waited_for_batch += 1
                group.start_soon(self._twins.wait, flight, give_up_at, reader, group)
                return
        if plan.similar and self._matcher is not None:
            group.start_soon(self._matcher.match_then_lead, flight, reader, group)
            return
        self._flights.start(flight, reader, group)

    def _used(self, message: CacheUsed) -> None:
        """The front door answered a hit itself (or found a corrupt entry)."""
        if message.corrupt:
            self._writes.corrupt(message.entry_id)
            return
        self._counts.hits += 1
        self._writes.hit(message.entry_id, message.at)
