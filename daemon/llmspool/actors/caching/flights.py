"""Single flight: identical calls share one upstream call, the leader's.

The leader's call goes to the request queue with its replies teed through here, so that its
followers get the outcome and the cache keeps it: a ``LeaderTee`` takes the dispatcher's
replies and passes them on to the leader's client as they come (``LeaderRelay``), and lands
the flight when the dispatcher closes it. Only in a fleet, or when the request queue is full,
does a task of its own lead the flight (``Flights.lead``), awaiting what it must.

A 200 answer is shared with every follower and kept; an error the provider gave that the
same request would get again is shared too; anything else (a timeout, a client that went
away, a stream cut short) sends the followers on their way again, the first of them leading
a new flight. A leader whose client goes away keeps its upstream call going while
others wait for it.

In a fleet (daemons sharing a PostgreSQL store), a leader asks the fleet's cache before it
calls upstream, and publishes its flight's outcome to it (``fleet``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from llmspool.actors.caching.counts import CacheCounts
from llmspool.actors.caching.fleet import FleetCache
from llmspool.actors.caching.replies import GONE, Replier, send_all
from llmspool.actors.caching.write_behind import LINGER, WriteBehind
from llmspool.cache.nearby import NearDuplicates
from llmspool.cache.store import CachedAnswer, CacheReader
from llmspool.core.calls import Tier, Usage
from llmspool.core.config.sections import CacheConfig
from llmspool.core.errors import ApiError, ServiceUnavailable, UpstreamError
from llmspool.core.records import replaced
from llmspool.core.streams import MemorySendStream, create_memory_stream
from llmspool.core.wire import SseMeter, usage_of
from llmspool.messages import (
    Abort,
    Answer,
    Call,
    Failure,
    Reply,
    StreamChunk,
    StreamEnd,
    StreamStart,
)
from llmspool.policy.cache_keys import HEADER
from llmspool.resilience.failures import FailureClass, classify
from llmspool.store.records import NewEntry

log = logging.getLogger(__name__)

_STREAM_BUFFER = 32
Take = Callable[[Call, CacheReader, TaskGroup], None]  # the cache taking a call (again)


@dataclass(eq=False)
class Flight:
    """Identical calls sharing one upstream call: the leader's, followed by the rest."""

    key: bytes
    leader: Call
    followers: list[Call] = field(default_factory=list)
    # Near-duplicate matching: the leader's (group, embedding, number among calls in flight).
    near: tuple[bytes, bytes, int] | None = None


class Flights:
    """The flights under way, by key (and by number, for near-duplicate matching)."""

    def __init__(self, queue: MemorySendStream[Call], config: CacheConfig,
                 counts: CacheCounts, writes: WriteBehind, replier: Replier,
                 near: NearDuplicates | None, take: Take,
                 fleet: FleetCache | None = None,
                 queue_take_now: Callable[[Call], bool] | None = None) -> None:
        self._fleet = fleet
        self._queue = queue
        self._queue_take_now = queue_take_now  # the request queue taking a call in this task
        self._config = config
        self._counts = counts
        self._writes = writes
        self._replier = replier
        self._near = near
        self._take = take
        self.by_key: dict[bytes, Flight] = {}
        self.by_number: dict[int, Flight] = {}
        self._landed: anyio.Event | None = None  # set when the last flight ends, at shutdown

    def waiting(self) -> int:
        """How many calls follow a flight under way."""
        return sum(len(f.followers) for f in self.by_key.values())

    async def all_landed(self) -> None:
        """Return once no flight is under way (at shutdown: nothing new comes in)."""
        if self.by_key:
            self._landed = anyio.Event()
            await self._landed.wait()

    def check_landed(self) -> None:
        if self._landed is not None and not self.by_key:
            self._landed.set()

    def end(self, flight: Flight) -> None:
        if self.by_key.get(flight.key) is flight:
            del self.by_key[flight.key]
        if flight.near is not None and self._near is not None:
            self._near.landed(flight.near[2])
            self.by_number.pop(flight.near[2], None)

    def start(self, flight: Flight, reader: CacheReader, group: TaskGroup) -> None:
        """Lead ``flight``: its upstream call goes to the queue now, its replies through a
        ``LeaderTee``, and no task waits for them (a task per miss was some 40 of the 140 µs the
        cache added to a miss; the queue takes it in this task when it can). In a fleet, or
        with the queue full, a task leads it."""
        if self._fleet is not None:
            group.start_soon(self.lead, flight, reader, group)
            return
        leader = flight.leader
        upstream_abort = Abort()
        tee = LeaderTee(self, flight, reader, group, upstream_abort)
        upstream = replaced(leader, reply=tee, abort=upstream_abort, strip_usage_chunk=False)
        try:
            if self._queue_take_now is None or not self._queue_take_now(upstream):
                self._queue.send_nowait(upstream)
        except anyio.WouldBlock:
            group.start_soon(self.lead, flight, reader, group)
            return
        except GONE:
            self._shut_out(flight)
            return
        leader.abort.on_fire(tee.leader_left)

    async def lead(self, flight: Flight, reader: CacheReader, group: TaskGroup) -> None:
        leader = flight.leader
        if self._fleet is not None:
            found = await self._fleet.answer_or_lead(flight.key, leader)
            if found is not None and self._answer_from_fleet(flight, *found, group):
                return
        # The leader's replies come here first; the upstream call keeps the usage chunk (the
        # cache keeps whole streams) and has an abort of its own (fired by ``leader_left``).
        tee_in, tee_out = create_memory_stream[Reply](
            _STREAM_BUFFER if leader.stream else 1)
        upstream = dataclasses.replace(leader, reply=tee_in, abort=Abort(),
                                       strip_usage_chunk=False)
        try:
            await self._queue.send(upstream)
        except GONE:
            tee_in.close()
            tee_out.close()
            self._shut_out(flight)
            if self._fleet is not None:
                await self._fleet.landed(flight.key, None)
            return
        replies: list[Reply] = []
        relay = LeaderRelay(leader)

        def leader_left() -> None:
            # The leader's client went away: its upstream call stops, unless others wait.
            if not flight.followers:
                upstream.abort.fire()

        leader.abort.on_fire(leader_left)
        try:
            async with tee_out:
                async for reply in tee_out:
                    replies.append(reply)
                    if not await relay.send(reply) and leader.stream and not flight.followers:
                        break  # nobody wants the rest: closing the tee stops the upstream call
        finally:
            leader.abort.on_fire(None)
        leader.reply.close()
        self.end(flight)
        kept = self._finish(flight, replies, reader, group)
        if self._fleet is not None:
            await self._fleet.landed(flight.key, kept)
        self.check_landed()

    def land(self, flight: Flight, replies: list[Reply], reader: CacheReader,
             group: TaskGroup) -> None:
        """A flight led by a ``LeaderTee`` ends: its outcome to the followers and the cache."""
        flight.leader.reply.close()
        self.end(flight)
        self._finish(flight, replies, reader, group)
        self.check_landed()

    def _shut_out(self, flight: Flight) -> None:
        """The queue is gone (the daemon stops): the flight's calls are told so."""
        self.end(flight)
        for call in (flight.leader, *flight.followers):
            send_all(call, [Failure(_shutting_down())])

    def _answer_from_fleet(self, flight: Flight, found: CachedAnswer, how: str,
                           group: TaskGroup) -> bool:
        """Answer the flight's calls from another daemon's answer (``how``: hit, shared),
        kept in this daemon's cache file too (until it is written, the next identical call
        finds it in the fleet's again: a hit either way); False if it is unreadable (the
        leader calls)."""
        leader = flight.leader
        plan = leader.cache
        assert plan is not None
        if not self._replier.answer(leader, found, how, group):
            return False
        self.end(flight)
        self._writes.keep([NewEntry(flight.key, found.stream, found.body, leader.provider,
                                    leader.model, leader.endpoint.value, found.tier,
                                    found.usage, plan.ttl)])
        for call in flight.followers:
            if self._replier.answer(call, found, "shared", group):
                self._counts.shared += 1
        self.check_landed()
        return True

    def _finish(self, flight: Flight, replies: list[Reply], reader: CacheReader,
                group: TaskGroup) -> NewEntry | None:
        """Shares the flight's outcome with its followers; the entry kept, if any."""
        leader = flight.leader
        outcome = _outcome(replies, leader.stream)
        if isinstance(outcome, CachedAnswer):
            plan = leader.cache
            assert plan is not None
            now = time.time()
            self._writes.recent[flight.key] = (outcome, now + min(LINGER, plan.ttl), "hit")
            kept = None
            if len(outcome.body) > self._config.max_entry_size:
                self._counts.too_large += 1
            else:
                group_of, vector = flight.near[:2] if flight.near is not None else (None, None)
                kept = NewEntry(flight.key, outcome.stream, outcome.body, leader.provider,
                                leader.model, leader.endpoint.value, outcome.tier,
                                outcome.usage, plan.ttl, group_of, vector)
                self._writes.keep([kept])
            for call in flight.followers:
                if self._replier.answer(call, outcome, "shared", group):
                    self._counts.shared += 1
            return kept
        if isinstance(outcome, Failure):
            for call in flight.followers:
                send_all(call, [outcome])
            return None
        # Nothing the followers can use: each goes its own way again (one leads, the rest
        # follow it).
        for call in flight.followers:
            self._take(call, reader, group)
        return None


class LeaderTee:
    """The leader's upstream call sends its replies here (its ``Call.reply``): each is kept
    for the flight's outcome and passed on to the leader's client at once, in the
    dispatcher's task. Closing it (the dispatcher does, after the last reply) lands the
    flight."""

    def __init__(self, flights: Flights, flight: Flight, reader: CacheReader,
                 group: TaskGroup, upstream_abort: Abort) -> None:
        self._flights = flights
        self._flight = flight
        self._reader = reader
        self._group = group
        self._upstream_abort = upstream_abort  # the upstream call's own
        self._relay = LeaderRelay(flight.leader)
        self._replies: list[Reply] = []
        self._closed = False

    async def send(self, item: Reply, /) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        self._replies.append(item)
        flight = self._flight
        if not await self._relay.send(item) and flight.leader.stream and not flight.followers:
            # Nobody wants the rest: as a closed stream, this stops the upstream call.
            raise anyio.BrokenResourceError

    def send_nowait(self, item: Reply, /) -> None:
        """How the request queue fails a call it cannot take: one reply, passed on as is."""
        if self._closed:
            raise anyio.ClosedResourceError
        self._replies.append(item)
        with contextlib.suppress(anyio.WouldBlock, *GONE):
            self._flight.leader.reply.send_nowait(item)

    def leader_left(self) -> None:
        """The leader's client went away: its upstream call stops, unless others wait."""
        if not self._flight.followers:
            self._upstream_abort.fire()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._flight.leader.abort.on_fire(None)
        try:
            self._flights.land(self._flight, self._replies, self._reader, self._group)
        except Exception:  # the dispatcher closing its call must not fail with the cache
            log.exception("the response cache could not land the flight of %s",
                          self._flight.leader.request_id)


class LeaderRelay:
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
            out = [replaced(reply, headers={**reply.headers, HEADER: "miss"})]
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
        except GONE:
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
        usage = first.usage if first.usage is not None else usage_of(first.document)
        return CachedAnswer(0, False, first.body, first.tier, usage or Usage(), now)
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


def _shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable(
        "llmspool is shutting down and takes no new requests; retry in a moment",
        retry_after=2.0, code="shutting_down",
    )
