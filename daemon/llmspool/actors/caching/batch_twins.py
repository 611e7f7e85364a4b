"""Waiting for a batch twin: a call whose identical request waits in a pending batch expected
to end within the call's deadline waits for that answer (it lands in the cache), giving up in
time for the call to be sent on its own (``llmspool.cache.pending``)."""

from __future__ import annotations

import time

from anyio.abc import TaskGroup

from llmspool.actors.caching.counts import CacheCounts
from llmspool.actors.caching.flights import Flight, Flights, Take
from llmspool.actors.caching.replies import Replier
from llmspool.actors.caching.write_behind import WriteBehind
from llmspool.cache.pending import PendingBatches
from llmspool.cache.store import CacheReader
from llmspool.core.clock import Clock

BATCH_POLL = 0.5  # seconds between looks for the answer of a batch a call waits for


class BatchTwins:
    """Flights that wait for a pending batch's answer instead of calling upstream."""

    def __init__(self, batches: PendingBatches, flights: Flights, writes: WriteBehind,
                 replier: Replier, counts: CacheCounts, take: Take, clock: Clock) -> None:
        self._batches = batches
        self._clock = clock  # deadlines (``give_up_at``) are on the daemon's clock
        self._flights = flights
        self._writes = writes
        self._replier = replier
        self._counts = counts
        self._take = take

    async def wait(self, flight: Flight, give_up_at: float, reader: CacheReader,
                   group: TaskGroup) -> None:
        """Wait for the identical request in a pending batch to be answered; lead a call of
        our own if the batch is late, or gives its copy back unanswered."""
        key = flight.key
        gone_once = False
        while True:
            await self._clock.sleep(max(0.0, min(BATCH_POLL, give_up_at - self._clock.now())))
            found = self._writes.lookup(key, reader, time.time())  # the cache's own ages
            if found is not None:
                self._flights.end(flight)
                for call in (flight.leader, *flight.followers):
                    if self._replier.answer(call, found, "shared", group):
                        self._counts.shared += 1
                    else:
                        self._take(call, reader, group)
                self._flights.check_landed()
                return
            if flight.leader.abort.fired and not flight.followers:  # its client went away
                self._flights.end(flight)
                flight.leader.reply.close()
                self._flights.check_landed()
                return
            if self._clock.now() >= give_up_at:
                break
            if self._batches.expected_end(key) is None:
                # Answered (its entry is on its way here) or given back: look once more.
                if gone_once:
                    break
                gone_once = True
        self._counts.batch_wait_gave_up += 1
        await self._flights.lead(flight, reader, group)
