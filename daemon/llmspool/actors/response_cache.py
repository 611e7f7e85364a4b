"""The response cache actor: never pay twice for the same answer.

Calls that have a cache plan (``policy/cache_keys.py``) come here from the front door and the job
keeper instead of going straight to the request queue. For each, in order:

1. a live entry in the cache file answers it at once (``x-llmspool-cache: hit``);
2. an identical call in flight (same key) is joined: the call waits for that one's outcome
   and shares it (``shared``), as does one arriving just after it finished (``LINGER``);
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
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from llmspool.cache.answers import ledger_entry, replies_for, would_have_cost
from llmspool.cache.nearby import NearDuplicates
from llmspool.cache.pending import PendingBatches
from llmspool.cache.store import CachedAnswer, CacheReader, CacheWriter, Corrupt, connect
from llmspool.core.calls import Tier, Usage
from llmspool.core.config.sections import CacheConfig
from llmspool.core.errors import ApiError, ServiceUnavailable, UpstreamError
from llmspool.core.wire import SseMeter, usage_of
from llmspool.messages import (
    Abort,
    Answer,
    CacheFill,
    CacheUsed,
    Call,
    Failure,
    Query,
    Reply,
    StreamChunk,
    StreamEnd,
    StreamStart,
)
from llmspool.policy.cache_keys import HEADER
from llmspool.policy.planner import Planner
from llmspool.resilience.failures import FailureClass, classify
from llmspool.store.records import NewEntry, Settled

log = logging.getLogger(__name__)

# Seconds a finished flight still answers newcomers, until its entry is committed (or at most).
LINGER = 5.0
FLUSH_EVERY = 0.05  # seconds between group commits while there is something to write
MAX_PENDING = 10_000  # entries waiting for a commit; past it new ones are dropped
BATCH_POLL = 0.5  # seconds between looks for the answer of a batch a call waits for
_STREAM_BUFFER = 32
_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError)
CacheMessage = Call | CacheFill | CacheUsed | Query


@dataclass(eq=False)
class Flight:
    """Identical calls sharing one upstream call: the leader's, followed by the rest."""

    key: bytes
    leader: Call
    followers: list[Call] = field(default_factory=list)
    # Near-duplicate matching: the leader's (group, embedding, number among calls in flight).
    near: tuple[bytes, bytes, int] | None = None


@dataclass
class CacheCounts:
    """What ``/v1/status`` shows of the cache."""

    hits: int = 0
    misses: int = 0
    shared: int = 0
    corrupt_dropped: int = 0
    written: int = 0
    dropped_writes: int = 0
    too_large: int = 0
    evicted: int = 0
    expired: int = 0
    write_errors: int = 0
    waited_for_batch: int = 0
    near_hits: int = 0
    near_shared: int = 0
    batch_wait_gave_up: int = 0


class ResponseCache:
    def __init__(
        self,
        inbox: MemoryObjectReceiveStream[CacheMessage],
        queue: MemoryObjectSendStream[Call | Query],
        ledger: MemoryObjectSendStream[Settled],
        *,
        config: CacheConfig,
        state_dir: Path,
        planner: Planner,
        batches: PendingBatches | None = None,
        near: NearDuplicates | None = None,
    ) -> None:
        self._batches = batches
        self._near = near
        self._flights_by_number: dict[int, Flight] = {}
        self._inbox = inbox
        self._queue = queue
        self._ledger = ledger
        self._config = config
        self._state_dir = state_dir
        self._planner = planner
        self._flights: dict[bytes, Flight] = {}
        self._recent: dict[bytes, tuple[CachedAnswer, float]] = {}
        self._pending: list[NewEntry] = []
        self._touched: dict[int, float] = {}
        self._drops: set[int] = set()
        self._dropping: set[int] = set()  # in the commit under way
        self._wake_writer = anyio.Event()
        self._stopping = False
        self._landed: anyio.Event | None = None  # set when the last flight ends, at shutdown
        self._counts = CacheCounts()
        self._entries = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        writer_connection = await anyio.to_thread.run_sync(
            lambda: connect(self._state_dir, writer=True))
        writer = CacheWriter(writer_connection, self._config.max_entries)
        self._entries = writer.count
        reader = CacheReader(connect(self._state_dir, writer=False))
        if self._near is not None:
            for entry_id, grp, vector in await anyio.to_thread.run_sync(reader.vectors):
                with contextlib.suppress(ValueError):  # a damaged vector: matched exactly only
                    self._near.cached.add(grp, entry_id, vector)
        try:
            async with self._queue, self._ledger, anyio.create_task_group() as group:
                group.start_soon(self._write_behind, writer)
                task_status.started()
                async with self._inbox:
                    async for message in self._inbox:
                        if isinstance(message, Call):
                            self._take(message, reader, group)
                        elif isinstance(message, CacheUsed):
                            self._used(message)
                        elif isinstance(message, CacheFill):
                            self._keep(message.entries, readable_now=True)
                        else:
                            message.reply.send_nowait(self._snapshot())
                # Nothing new comes in; flights finish as their calls do, then the last commit.
                if self._flights:
                    self._landed = anyio.Event()
                    await self._landed.wait()
                self._stopping = True
                self._wake_writer.set()
        finally:
            reader.close()
            writer.close()
            if self._batches is not None:
                self._batches.close()

    # --- taking a call ------------------------------------------------------------------

    def _take(self, call: Call, reader: CacheReader, group: TaskGroup) -> None:
        plan = call.cache
        assert plan is not None, "calls without a cache plan go straight to the queue"
        now = time.time()
        found = self._committed(plan.key, reader, now)
        if found is not None and self._answer(call, found, "hit", group):
            self._counts.hits += 1
            self._touched[found.entry_id] = now
            self._wake_writer.set()
            return
        flight = self._flights.get(plan.key)
        if flight is not None:
            flight.followers.append(call)
            return
        recent = self._recent.get(plan.key)
        if recent is not None and recent[1] > now and self._answer(call, recent[0], "shared",
                                                                   group):
            self._counts.shared += 1
            return
        self._counts.misses += 1
        flight = self._flights[plan.key] = Flight(plan.key, call)
        if call.deadline_at is not None and self._batches is not None:
            expected = self._batches.expected_end(plan.key)
            give_up_at = self._batches.give_up_at(call.provider, call.model, call.deadline_at)
            if expected is not None and expected <= give_up_at:
                self._counts.waited_for_batch += 1
                group.start_soon(self._await_batch, flight, give_up_at, reader, group)
                return
        if plan.similar and self._near is not None:
            group.start_soon(self._near_then_lead, flight, reader, group)
            return
        group.start_soon(self._lead, flight, reader, group)

    def _answer(self, call: Call, answer: CachedAnswer, how: str, group: TaskGroup) -> bool:
        """Answer ``call`` from ``answer`` (``how``: hit, shared); False if the answer turned
        out to be unreadable (it is dropped from the cache)."""
        would_have = would_have_cost(self._planner, call, answer.usage)
        try:
            replies = replies_for(call, answer, how, would_have)
        except Corrupt as bad:
            self._corrupt(bad.entry_id)
            return False
        entry = ledger_entry(call, "cache" if how == "hit" else "dedup", would_have,
                             self._planner)
        _send_all(call, self._settle(call, replies, entry, group))
        return True

    def _settle(self, call: Call, replies: list[Reply], entry: Settled,
                group: TaskGroup) -> list[Reply]:
        """Send ``entry`` to the ledger before the replies go out (a client that asks for its
        costs right after sees it), or, for a job's call, hand it over with the answer."""
        if call.settle_with_result:
            return [dataclasses.replace(r, settled=entry) if isinstance(r, Answer) else r
                    for r in replies]
        self._record(entry, group)
        return replies

    def _record(self, settled: Settled, group: TaskGroup) -> None:
        try:
            self._ledger.send_nowait(settled)
        except anyio.WouldBlock:
            group.start_soon(self._ledger.send, settled)
        except _GONE:
            log.warning("the ledger is gone; %s not recorded", settled.request_id)

    def _used(self, message: CacheUsed) -> None:
        """The front door answered a hit itself (or found a corrupt entry)."""
        if message.corrupt:
            self._corrupt(message.entry_id)
            return
        self._counts.hits += 1
        self._touched[message.entry_id] = message.at
        self._wake_writer.set()

    def _corrupt(self, entry_id: int) -> None:
        if entry_id and entry_id not in self._drops and entry_id not in self._dropping:
            log.warning("cache entry %d is corrupt; dropped, and the request sent upstream",
                        entry_id)
            self._counts.corrupt_dropped += 1
            self._drops.add(entry_id)
            self._wake_writer.set()

    # --- waiting for a batch ------------------------------------------------------------

    async def _await_batch(self, flight: Flight, give_up_at: float, reader: CacheReader,
                           group: TaskGroup) -> None:
        """Wait for the identical request in a pending batch to be answered; lead a call of
        our own if the batch is late, or gives its copy back unanswered."""
        assert self._batches is not None
        key = flight.key
        gone_once = False
        while True:
            await anyio.sleep(max(0.0, min(BATCH_POLL, give_up_at - time.time())))
            now = time.time()
            found = self._lookup(key, reader, now)
            if found is not None:
                self._end_flight(flight)
                for call in (flight.leader, *flight.followers):
                    if self._answer(call, found, "shared", group):
                        self._counts.shared += 1
                    else:
                        self._take(call, reader, group)
                self._check_landed()
                return
            if flight.leader.abort.fired and not flight.followers:  # its client went away
                self._end_flight(flight)
                flight.leader.reply.close()
                self._check_landed()
                return
            if now >= give_up_at:
                break
            if self._batches.expected_end(key) is None:
                # Answered (its entry is on its way here) or given back: look once more.
                if gone_once:
                    break
                gone_once = True
        self._counts.batch_wait_gave_up += 1
        await self._lead(flight, reader, group)

    def _committed(self, key: bytes, reader: CacheReader, now: float) -> CachedAnswer | None:
        """The live answer in the file under ``key`` (a corrupt one is dropped: None)."""
        try:
            return reader.get(key, now)
        except Corrupt as bad:
            self._corrupt(bad.entry_id)
            return None

    def _lookup(self, key: bytes, reader: CacheReader, now: float) -> CachedAnswer | None:
        """The answer under ``key``: committed, or on its way to the file."""
        found = self._committed(key, reader, now)
        if found is not None:
            self._touched[found.entry_id] = now
            return found
        recent = self._recent.get(key)
        return recent[0] if recent is not None and recent[1] > now else None

    def _check_landed(self) -> None:
        if self._landed is not None and not self._flights:
            self._landed.set()

    # --- near duplicates ----------------------------------------------------------------

    async def _near_then_lead(self, flight: Flight, reader: CacheReader,
                              group: TaskGroup) -> None:
        """Share a call in flight, or a cached answer, for a request worded alike; else lead."""
        near = self._near
        assert near is not None
        probe = near.probe(flight.leader)
        vector = None
        if probe is not None:
            vector = await near.embed(flight.leader, probe.text, self._queue)
        if probe is not None and vector is not None:
            number = near.flight_near(probe.group, vector)
            other = self._flights_by_number.get(number) if number is not None else None
            if other is not None and self._flights.get(other.key) is other:
                self._end_flight(flight)
                other.followers += [flight.leader, *flight.followers]
                self._counts.near_shared += 1 + len(flight.followers)
                return
            match = near.entry_near(probe.group, vector)
            if match is not None and self._answer_near(flight, match, reader, group):
                return
            number = near.flying(probe.group, vector)
            flight.near = (probe.group, vector, number)
            self._flights_by_number[number] = flight
        await self._lead(flight, reader, group)

    def _answer_near(self, flight: Flight, match: tuple[int, float], reader: CacheReader,
                     group: TaskGroup) -> bool:
        """Answer the flight's calls from the cached entry its leader's wording matched."""
        assert self._near is not None
        entry_id, similarity = match
        now = time.time()
        try:
            found = reader.get_by_id(entry_id, now)
        except Corrupt:
            self._corrupt(entry_id)
            found = None
        if found is None:  # evicted or expired since: forget its vector
            self._near.cached.remove(entry_id)
            return False
        self._end_flight(flight)
        self._touched[entry_id] = now
        for call in (flight.leader, *flight.followers):
            would_have = would_have_cost(self._planner, call, found.usage)
            try:
                replies = replies_for(call, found, "hit", would_have, similarity=similarity)
            except Corrupt:
                self._corrupt(entry_id)
                self._take(call, reader, group)
                continue
            _send_all(call, self._settle(call, replies,
                                         ledger_entry(call, "cache", would_have, self._planner),
                                         group))
            self._counts.near_hits += 1
        self._check_landed()
        return True

    # --- leading a flight ---------------------------------------------------------------

    async def _lead(self, flight: Flight, reader: CacheReader, group: TaskGroup) -> None:
        leader = flight.leader
        # The leader's replies come here first; the upstream call keeps the usage chunk (the
        # cache keeps whole streams) and has an abort of its own (see _watch_leader).
        tee_in, tee_out = anyio.create_memory_object_stream[Reply](
            _STREAM_BUFFER if leader.stream else 1)
        upstream = dataclasses.replace(leader, reply=tee_in, abort=Abort(),
                                       strip_usage_chunk=False)
        try:
            await self._queue.send(upstream)
        except _GONE:
            tee_in.close()
            tee_out.close()
            self._end_flight(flight)
            for call in (leader, *flight.followers):
                _send_all(call, [Failure(_shutting_down())])
            return
        replies: list[Reply] = []
        relay = _LeaderRelay(leader)
        async with tee_out, anyio.create_task_group() as watch:
            watch.start_soon(self._watch_leader, flight, upstream)
            async for reply in tee_out:
                replies.append(reply)
                if not await relay.send(reply) and leader.stream and not flight.followers:
                    break  # nobody wants the rest: closing the tee stops the upstream call
            watch.cancel_scope.cancel()
        leader.reply.close()
        self._end_flight(flight)
        self._finish(flight, replies, reader, group)
        self._check_landed()

    async def _watch_leader(self, flight: Flight, upstream: Call) -> None:
        """Stops the upstream call when the leader's client goes away, unless others wait."""
        with anyio.CancelScope() as scope:
            flight.leader.abort.bind(scope)
            await anyio.sleep_forever()
        if not flight.followers:
            upstream.abort.fire()

    def _end_flight(self, flight: Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        if flight.near is not None and self._near is not None:
            self._near.landed(flight.near[2])
            self._flights_by_number.pop(flight.near[2], None)

    def _finish(self, flight: Flight, replies: list[Reply], reader: CacheReader,
                group: TaskGroup) -> None:
        leader = flight.leader
        outcome = _outcome(replies, leader.stream)
        if isinstance(outcome, CachedAnswer):
            plan = leader.cache
            assert plan is not None
            now = time.time()
            self._recent[flight.key] = (outcome, now + min(LINGER, plan.ttl))
            if len(outcome.body) > self._config.max_entry_size:
                self._counts.too_large += 1
            else:
                group_of, vector = flight.near[:2] if flight.near is not None else (None, None)
                self._keep([NewEntry(flight.key, outcome.stream, outcome.body, leader.provider,
                                     leader.model, leader.endpoint.value, outcome.tier,
                                     outcome.usage, plan.ttl, group_of, vector)])
            for call in flight.followers:
                if self._answer(call, outcome, "shared", group):
                    self._counts.shared += 1
            return
        if isinstance(outcome, Failure):
            for call in flight.followers:
                _send_all(call, [outcome])
            return
        # Nothing the followers can use: each goes its own way again (one leads, the rest
        # follow it).
        for call in flight.followers:
            self._take(call, reader, group)

    # --- writing ------------------------------------------------------------------------

    def _keep(self, entries: list[NewEntry], *, readable_now: bool = False) -> None:
        """Queue ``entries`` for the next commit; ``readable_now`` serves them from memory
        until then (batch answers that a waiting call may be looking for)."""
        if readable_now:
            now = time.time()
            for entry in entries:
                self._recent[entry.key] = (
                    CachedAnswer(0, entry.stream, entry.body, entry.tier, entry.usage, now),
                    now + min(LINGER, entry.ttl))
        room = MAX_PENDING - len(self._pending)
        if len(entries) > room:
            self._counts.dropped_writes += len(entries) - max(0, room)
            entries = entries[:max(0, room)]
        self._pending.extend(entries)
        self._wake_writer.set()

    async def _write_behind(self, writer: CacheWriter) -> None:
        while True:
            await self._wake_writer.wait()
            await anyio.sleep(FLUSH_EVERY)  # gather a group for one commit
            self._wake_writer = anyio.Event()
            entries, self._pending = self._pending, []
            touched, self._touched = self._touched, {}
            drops, self._drops = self._drops, set()
            now = time.time()
            self._recent = {key: kept for key, kept in self._recent.items() if kept[1] > now}
            if entries or touched or drops:
                self._dropping = drops
                with anyio.CancelScope(shield=True):
                    await self._commit(writer, entries, touched, drops)
                self._dropping = set()
            if self._stopping and not self._pending:
                return

    async def _commit(self, writer: CacheWriter, entries: list[NewEntry],
                      touched: dict[int, float], drops: set[int]) -> None:
        try:
            result = await anyio.to_thread.run_sync(writer.commit, entries, touched.items(),
                                                    drops)
        except sqlite3.Error as exc:
            # The cache is an optimisation: a failing disk costs misses, never answers.
            self._counts.write_errors += 1
            log.warning("cache write failed (%s); %d entries not kept", exc, len(entries))
            return
        for entry, entry_id in zip(entries, result.written, strict=True):
            self._recent.pop(entry.key, None)  # readable from the file now
            if self._near is not None and entry.group is not None and entry.vector is not None:
                with contextlib.suppress(ValueError):
                    self._near.cached.add(entry.group, entry_id, entry.vector)
        self._counts.written += len(result.written)
        self._counts.evicted += result.evicted
        self._counts.expired += result.expired
        self._entries = writer.count

    def _snapshot(self) -> dict[str, Any]:
        counts = self._counts
        lookups = counts.hits + counts.misses
        return {
            "enabled": self._config.enabled,
            "entries": self._entries,
            "max_entries": self._config.max_entries,
            "hits": counts.hits,
            "misses": counts.misses,
            "hit_ratio": round(counts.hits / lookups, 4) if lookups else None,
            "shared": counts.shared,
            "in_flight": len(self._flights),
            "waiting_on_flights": sum(len(f.followers) for f in self._flights.values()),
            "written": counts.written,
            "evicted": counts.evicted,
            "expired": counts.expired,
            "too_large": counts.too_large,
            "corrupt_dropped": counts.corrupt_dropped,
            "dropped_writes": counts.dropped_writes,
            "write_errors": counts.write_errors,
            "waited_for_batch": counts.waited_for_batch,
            "batch_wait_gave_up": counts.batch_wait_gave_up,
            "near_duplicates": None if self._near is None else {
                "vectors": len(self._near.cached),
                "hits": counts.near_hits,
                "shared": counts.near_shared,
                "embedding_calls": self._near.embedding_calls,
                "embedding_failures": self._near.embedding_failures,
            },
        }


class _LeaderRelay:
    """The leader's replies on their way to its client: marked as a cache miss, with the
    usage chunk removed when the client did not ask for it."""

    def __init__(self, leader: Call) -> None:
        self._leader = leader
        self._meter = SseMeter(strip_usage_chunk=True) if leader.strip_usage_chunk else None
        self.here = True

    async def send(self, reply: Reply) -> bool:
        """Pass ``reply`` on; False once the client is gone."""
        if not self.here:
            return False
        meter = self._meter
        out: list[Reply]
        if isinstance(reply, Answer):
            out = [dataclasses.replace(reply, headers={**reply.headers, HEADER: "miss"})]
        elif isinstance(reply, StreamStart):
            first = meter.feed(reply.first) if meter is not None else reply.first
            out = [StreamStart(reply.status, {**reply.headers, HEADER: "miss"}, first)]
        elif isinstance(reply, StreamChunk) and meter is not None:
            data = meter.feed(reply.data)
            out = [StreamChunk(data)] if data else []
        elif isinstance(reply, StreamEnd) and meter is not None:
            rest = meter.flush()
            out = [StreamChunk(rest), reply] if rest else [reply]
        else:
            out = [reply]
        try:
            for item in out:
                await self._leader.reply.send(item)
        except _GONE:
            self.here = False
        return self.here


def _outcome(replies: list[Reply], stream: bool) -> CachedAnswer | Failure | None:
    """What a flight's followers get: its answer, an error to share, or nothing."""
    if not replies:
        return None
    first, last = replies[0], replies[-1]
    now = time.time()
    if isinstance(first, Answer):
        if first.status != 200:
            return None
        return CachedAnswer(0, False, first.body, first.tier,
                            usage_of(first.document) or Usage(), now)
    if isinstance(first, StreamStart) and stream:
        if first.status != 200 or not isinstance(last, StreamEnd) or last.error is not None:
            return None
        body = first.first + b"".join(r.data for r in replies if isinstance(r, StreamChunk))
        meter = SseMeter()
        meter.feed(body)
        meter.flush()
        return CachedAnswer(0, True, body, meter.tier or Tier.STANDARD,
                            meter.usage or Usage(), now)
    if isinstance(first, Failure) and _same_again(first.error):
        return first
    return None


def _same_again(error: ApiError) -> bool:
    """Whether the same request would surely get ``error`` again (the provider refused it)."""
    return isinstance(error, UpstreamError) and \
        classify(error).kind is FailureClass.PERMANENT


def _send_all(call: Call, replies: list[Reply]) -> None:
    with contextlib.suppress(anyio.WouldBlock, *_GONE):  # the client is gone
        for reply in replies:
            call.reply.send_nowait(reply)
    call.reply.close()


def _shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable(
        "llmspool is shutting down and takes no new requests; retry in a moment",
        retry_after=2.0, code="shutting_down",
    )
