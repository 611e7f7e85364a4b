"""The response cache's writes: new entries, hits (for the eviction order) and drops of
corrupt entries are collected and committed together in a worker thread; a full backlog drops
new entries rather than make anybody wait. Answers not yet in the file (a flight's, for
``LINGER`` seconds; a batch's, until committed) are served from memory meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time

import anyio

from llmspool.actors.caching.counts import CacheCounts
from llmspool.cache.nearby import NearDuplicates
from llmspool.cache.presence import KeyPresence
from llmspool.cache.store import CachedAnswer, CacheReader, CacheWriter, Corrupt
from llmspool.cache.unwritten import UnwrittenKeys
from llmspool.store.records import NewEntry

log = logging.getLogger("llmspool.actors.response_cache")  # the name it always logged under

# Seconds a finished flight still answers newcomers, until its entry is committed (or at most).
LINGER = 5.0
FLUSH_EVERY = 0.05  # seconds between group commits while there is something to write
MAX_PENDING = 10_000  # entries waiting for a commit; past it new ones are dropped


class WriteBehind:
    """What waits for the next commit, and the answers served from memory until then."""

    def __init__(self, counts: CacheCounts, near: NearDuplicates | None,
                 presence: KeyPresence, unwritten: UnwrittenKeys) -> None:
        self._counts = counts
        self._near = near
        # The file's keys, known without reading it (also the front door's): built before
        # the first commit, kept in step with each.
        self._presence = presence
        # The keys of ``_pending`` and of the commit under way (the job keeper's to read).
        self._unwritten = unwritten
        # Answers on their way to the file: key -> (answer, until when, how a call it answers
        # is told it was answered). A flight's lingers for calls that come after it: "hit", as
        # they would be once it is committed. A batch's is there for the lines that waited on
        # it (its twins, released when it lands): "shared".
        self.recent: dict[bytes, tuple[CachedAnswer, float, str]] = {}
        self._pending: list[NewEntry] = []
        self._touched: dict[int, float] = {}
        self._drops: set[int] = set()
        self._dropping: set[int] = set()  # in the commit under way
        self._wake = anyio.Event()
        self._stopping = False
        self.entries = 0
        # When (time.time()) the last commit landed: its entries left ``recent``, readable
        # from the file only. A front-door lookup made after it saw them.
        self.landed_at = 0.0

    def hit(self, entry_id: int, at: float) -> None:
        """``entry_id`` answered a call at ``at``: noted for the eviction order, and committed
        soon."""
        self._touched[entry_id] = at
        self._wake.set()

    def touch(self, entry_id: int, at: float) -> None:
        """Like ``hit``, committed with whatever is written next."""
        self._touched[entry_id] = at

    def corrupt(self, entry_id: int) -> None:
        if entry_id and entry_id not in self._drops and entry_id not in self._dropping:
            log.warning("cache entry %d is corrupt; dropped, and the request sent upstream",
                        entry_id)
            self._counts.corrupt_dropped += 1
            self._drops.add(entry_id)
            self._wake.set()

    def committed(self, key: bytes, reader: CacheReader, now: float) -> CachedAnswer | None:
        """The live answer in the file under ``key`` (a corrupt one is dropped: None)."""
        if not self._presence.might_hold(key):
            return None
        try:
            return reader.get(key, now)
        except Corrupt as bad:
            self.corrupt(bad.entry_id)
            return None

    def lookup(self, key: bytes, reader: CacheReader, now: float) -> CachedAnswer | None:
        """The answer under ``key``: committed, or on its way to the file."""
        found = self.committed(key, reader, now)
        if found is not None:
            self.touch(found.entry_id, now)
            return found
        recent = self.recent.get(key)
        return recent[0] if recent is not None and recent[1] > now else None

    def keep(self, entries: list[NewEntry], *, readable_now: bool = False) -> None:
        """Queue ``entries`` for the next commit; ``readable_now`` serves them from memory
        until then (batch answers that a waiting call may be looking for)."""
        if readable_now:
            now = time.time()
            for entry in entries:
                self.recent[entry.key] = (
                    CachedAnswer(0, entry.stream, entry.body, entry.tier, entry.usage, now),
                    now + min(LINGER, entry.ttl), "shared")
        room = MAX_PENDING - len(self._pending)
        if len(entries) > room:
            self._counts.dropped_writes += len(entries) - max(0, room)
            entries = entries[:max(0, room)]
        self._pending.extend(entries)
        self._unwritten.kept(entry.key for entry in entries)
        self._wake.set()

    def stop(self) -> None:
        """Commit what is left, then end ``run``."""
        self._stopping = True
        self._wake.set()

    async def run(self, writer: CacheWriter) -> None:
        await self._know_keys(writer)
        while True:
            await self._wake.wait()
            await anyio.sleep(FLUSH_EVERY)  # gather a group for one commit
            self._wake = anyio.Event()
            entries, self._pending = self._pending, []
            touched, self._touched = self._touched, {}
            drops, self._drops = self._drops, set()
            now = time.time()
            self.recent = {key: kept for key, kept in self.recent.items() if kept[1] > now}
            if entries or touched or drops:
                self._dropping = drops
                with anyio.CancelScope(shield=True):
                    await self._commit(writer, entries, touched, drops)
                self._dropping = set()
                # In the file (or, after a write error, never to be): readers look there now.
                self._unwritten.landed(entry.key for entry in entries)
            if self._stopping and not self._pending:
                return

    async def _know_keys(self, writer: CacheWriter) -> None:
        """Build ``presence`` from the file's keys (until then, every lookup reads the file)."""
        try:
            counters = await anyio.to_thread.run_sync(
                lambda: self._presence.build(writer.keys()))
        except sqlite3.Error as exc:
            log.warning("could not read the cache file's keys (%s); every cache lookup reads "
                        "the file", exc)
            return
        self._presence.install(counters)

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
        self.landed_at = time.time()
        # In step with the file, at the moment the actor counts the commit as landed.
        self._presence.added(result.inserted)
        self._presence.removed(result.deleted)
        for entry, entry_id in zip(entries, result.written, strict=True):
            self.recent.pop(entry.key, None)  # readable from the file now
            if self._near is not None and entry.group is not None and entry.vector is not None:
                with contextlib.suppress(ValueError):
                    self._near.cached.add(entry.group, entry_id, entry.vector)
        self._counts.written += len(result.written)
        self._counts.evicted += result.evicted
        self._counts.expired += result.expired
        self.entries = writer.count
