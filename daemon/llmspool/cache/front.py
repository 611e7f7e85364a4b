"""The front door's side of the response cache: a hit is answered in the request's own task.

Looking the key up here, on a read-only connection of the front door's own, saves a hit the
two hops to the cache actor and back and the task that watches for a client going away
(``tests/bench/bench_cache.py`` measured the difference). Everything else (misses, flights,
waiting for batches, writes) is the cache actor's: a hit tells it which entry was used (for
the eviction order and the hit count), and a corrupt entry which one to drop, by messages that
never wait. A miss goes to the actor as ``Missed``, with when it was looked up: the actor
reads the file again only if its own writes landed since.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import NamedTuple

import anyio

from llmspool.cache.answers import ledger_entry, replies_for, would_have_cost
from llmspool.cache.presence import KeyPresence
from llmspool.cache.store import CacheReader, Corrupt, connect
from llmspool.core.streams import MemorySendStream
from llmspool.messages import CacheUsed, Call, Reply
from llmspool.policy.planner import Planner
from llmspool.store.records import Settled

_FULL_OR_GONE = (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError)


class Looked(NamedTuple):
    """What the front door found: the replies of a hit, or None; and, when no live entry was
    under the key, when it looked (``time.time()``), so that the cache actor need not read the
    file again unless its writes landed since (``messages.Missed``)."""

    replies: list[Reply] | None
    missed_at: float | None


class CacheFront:
    def __init__(self, state_dir: Path, cache: MemorySendStream[CacheUsed],
                 ledger: MemorySendStream[Settled], planner: Planner,
                 presence: KeyPresence) -> None:
        self._state_dir = state_dir
        self._presence = presence  # the cache actor's: read here, never changed
        self._cache = cache
        self._ledger = ledger
        self._planner = planner
        self._reader: CacheReader | None = None

    def look(self, call: Call) -> Looked:
        """The replies that answer ``call`` from the cache; or none, and the cache actor takes
        it: a miss (``missed_at`` says when), an unreadable entry, or a ledger too busy to take
        the entry at once."""
        assert call.cache is not None
        now = time.time()
        if not self._presence.might_hold(call.cache.key):
            return Looked(None, now)  # not in the file: no read
        if self._reader is None:
            # Opened on first use: the cache actor creates the file before the door opens.
            self._reader = CacheReader(connect(self._state_dir, writer=False))
        try:
            found = self._reader.get(call.cache.key, now)
            if found is None:
                return Looked(None, now)
            would_have = would_have_cost(self._planner, call, found.usage)
            replies = replies_for(call, found, "hit", would_have)
        except Corrupt as bad:
            self._tell(CacheUsed(bad.entry_id, now, corrupt=True))
            return Looked(None, now)  # the actor drops it: for it too, nothing is there
        try:
            # Before the answer: a client that asks for its costs right after sees this entry.
            self._ledger.send_nowait(ledger_entry(call, "cache", would_have, self._planner))
        except _FULL_OR_GONE:
            return Looked(None, None)  # it is there: the actor answers from it
        self._tell(CacheUsed(found.entry_id, now))
        return Looked(replies, None)

    def _tell(self, message: CacheUsed) -> None:
        with contextlib.suppress(*_FULL_OR_GONE):  # only the eviction order is less exact
            self._cache.send_nowait(message)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
