"""Near-duplicate matching for a call about to lead a flight: its text's embedding is compared
with those of calls in flight (it joins one) and of cached answers (it is answered from one),
for the operations where it is on (``llmspool.cache.nearby``)."""

from __future__ import annotations

import time

from anyio.abc import TaskGroup

from llmspool.actors.caching.counts import CacheCounts
from llmspool.actors.caching.flights import Flight, Flights, Take
from llmspool.actors.caching.replies import Replier
from llmspool.actors.caching.write_behind import WriteBehind
from llmspool.cache.nearby import NearDuplicates
from llmspool.cache.store import CacheReader, Corrupt
from llmspool.core.streams import MemorySendStream
from llmspool.messages import Call


class NearMatcher:
    """Shares a call in flight, or a cached answer, for a request worded alike."""

    def __init__(self, near: NearDuplicates, queue: MemorySendStream[Call],
                 flights: Flights, writes: WriteBehind, replier: Replier,
                 counts: CacheCounts, take: Take) -> None:
        self._near = near
        self._queue = queue
        self._flights = flights
        self._writes = writes
        self._replier = replier
        self._counts = counts
        self._take = take

    async def match_then_lead(self, flight: Flight, reader: CacheReader,
                              group: TaskGroup) -> None:
        """Share a call in flight, or a cached answer, for a request worded alike; else lead."""
        near = self._near
        flights = self._flights
        probe = near.probe(flight.leader)
        vector = None
        if probe is not None:
            vector = await near.embed(flight.leader, probe.text, self._queue)
        if probe is not None and vector is not None:
            number = near.flight_near(probe.group, vector)
            other = flights.by_number.get(number) if number is not None else None
            if other is not None and flights.by_key.get(other.key) is other:
                flights.end(flight)
                other.followers += [flight.leader, *flight.followers]
                self._counts.near_shared += 1 + len(flight.followers)
                return
            match = near.entry_near(probe.group, vector)
            if match is not None and self._answer(flight, match, reader, group):
                return
            number = near.flying(probe.group, vector)
            flight.near = (probe.group, vector, number)
            flights.by_number[number] = flight
        await flights.lead(flight, reader, group)

    def _answer(self, flight: Flight, match: tuple[int, float], reader: CacheReader,
                group: TaskGroup) -> bool:
        """Answer the flight's calls from the cached entry its leader's wording matched."""
        entry_id, similarity = match
        now = time.time()
        try:
            found = reader.get_by_id(entry_id, now)
        except Corrupt:
            self._writes.corrupt(entry_id)
            found = None
        if found is None:  # evicted or expired since: forget its vector
            self._near.cached.remove(entry_id)
            return False
        self._flights.end(flight)
        self._writes.touch(entry_id, now)
        for call in (flight.leader, *flight.followers):
            if not self._replier.answer_near(call, found, similarity, group):
                self._writes.corrupt(entry_id)
                self._take(call, reader, group)
                continue
            self._counts.near_hits += 1
        self._flights.check_landed()
        return True
