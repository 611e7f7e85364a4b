"""The response cache across a fleet: the daemons of one PostgreSQL store (``[store] url``)
share their answers and their calls in flight.

Each daemon keeps its own cache file, read on every call in microseconds. A call that misses
there and would lead a flight asks the fleet first (``cache.fleet``, a round trip or two):

- an answer another daemon cached answers it (``x-llmspool-cache: hit``, billed as a cache
  hit), and is kept in this daemon's file for the next time;
- an identical call in flight on another daemon is waited for (``shared``), as a follower of a
  flight here would, but only until the call must be sent on its own to meet its deadline
  (``Planner.need`` of a standard call before it), and never past the other flight's end;
  a daemon that dies stops being waited for when it is taken over (its lease runs out);
- otherwise this daemon leads the fleet's flight for the key: it calls upstream, and publishes
  the answer it caches (or nothing, for an error) as the flight ends, in one transaction.

The fleet is an optimisation, like the cache: a store that fails costs this daemon a warning
and a call upstream, never an answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
import psycopg

from llmspool.cache import fleet as fleet_sql
from llmspool.cache.store import CachedAnswer
from llmspool.core.calls import Tier
from llmspool.messages import Call
from llmspool.policy.planner import Planner
from llmspool.store.backend import StoreLocation
from llmspool.store.connect import connected_async
from llmspool.store.connections import AsyncConnection
from llmspool.store.records import NewEntry

log = logging.getLogger("llmspool.actors.response_cache")  # the name it always logged under

POLL = 0.05  # seconds between looks for the answer of another daemon's flight
FLIGHT_LIMIT = 600.0  # seconds a flight stands at most (its daemon hung, but holds its lease)
SWEEP_EVERY = 60.0  # seconds between deletions of the fleet's expired answers


class FleetCache:
    """This daemon's part in the fleet's cache: its connection, and the flights it leads."""

    def __init__(self, location: StoreLocation, name: str, planner: Planner) -> None:
        self._location = location
        self._name = name
        self._planner = planner
        self._connection: AsyncConnection | None = None
        self._leading: set[bytes] = set()
        self._swept_at = 0.0
        self.hits = 0  # calls answered from another daemon's cached answer
        self.shared = 0  # calls answered by waiting for another daemon's call
        self.errors = 0  # round trips to the store that failed (the call went upstream)

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[None]:
        """The fleet's cache, usable while this is entered."""
        async with connected_async(self._location) as connection:
            self._connection = connection
            try:
                yield
            finally:
                self._connection = None

    async def answer_or_lead(self, key: bytes, call: Call) -> tuple[CachedAnswer, str] | None:
        """The fleet's answer to ``call`` and how it came (``hit``: cached by another daemon;
        ``shared``: another daemon's call, waited for); None: this daemon calls upstream (it
        leads the fleet's flight, or stopped waiting for another's in time)."""
        connection = self._connection
        if connection is None:
            return None
        try:
            return await self._answer_or_lead(connection, key, call)
        except psycopg.Error as exc:
            self._failed("look up", exc)
            return None

    async def _answer_or_lead(self, connection: AsyncConnection, key: bytes, call: Call
                              ) -> tuple[CachedAnswer, str] | None:
        give_up_at = (float("inf") if call.deadline_at is None else call.deadline_at
                      - self._planner.need(call.provider, call.model, Tier.STANDARD))
        waited = False
        while True:
            now = time.time()
            found = await fleet_sql.find(connection, key, now)
            if found is None and await fleet_sql.start_flight(connection, key, self._name, now,
                                                              now + FLIGHT_LIMIT):
                # Another daemon's flight may have landed between the look and the start:
                # its answer is then in the fleet's cache, and this flight is not needed. (A
                # look after the start sees any flight that landed before it.)
                found = await fleet_sql.find(connection, key, now)
                if found is None:
                    self._leading.add(key)
                    return None
                await fleet_sql.land(connection, key, self._name, None, now)
            if found is not None:
                if waited:
                    self.shared += 1
                else:
                    self.hits += 1
                return found, "shared" if waited else "hit"
            if now + POLL >= give_up_at:
                return None  # its deadline cannot wait longer: it is sent on its own
            waited = True
            await anyio.sleep(POLL)

    async def landed(self, key: bytes, entry: NewEntry | None) -> None:
        """This daemon's call for ``key`` ended with ``entry`` to cache (None: nothing the
        others can use): published, and the fleet's flight, if it led it, ended."""
        connection = self._connection
        leading = key in self._leading
        self._leading.discard(key)
        if connection is None or (entry is None and not leading):
            return
        now = time.time()
        try:
            await fleet_sql.land(connection, key, self._name, entry, now)
            if now - self._swept_at >= SWEEP_EVERY:
                self._swept_at = now
                await fleet_sql.sweep(connection, now)
        except psycopg.Error as exc:
            self._failed("publish to", exc)

    async def publish(self, entries: Sequence[NewEntry]) -> None:
        """Answers this daemon cached without a call of its own (a batch's), for the fleet."""
        connection = self._connection
        if connection is None or not entries:
            return
        try:
            await fleet_sql.publish(connection, entries, self._name, time.time())
        except psycopg.Error as exc:
            self._failed("publish to", exc)

    def _failed(self, what: str, exc: psycopg.Error) -> None:
        self.errors += 1
        log.warning("could not %s the fleet's cache (%s); the call goes upstream", what,
                    str(exc).strip() or type(exc).__name__)
