"""Which keys the cache file may hold, known without reading it: a counting Bloom filter.

A cache miss used to cost an indexed lookup in the cache file. In a hot loop that is 3 µs; in
the daemon, between two calls whose work has pushed SQLite out of the processor's caches, it
took 30 µs of CPU, and the calls after it ran slower too: skipping it took about 55 µs off a
miss's added time at concurrency 1. The filter answers "not there" for most keys that are
not, in a few byte reads, so a miss on a request never seen reads no file
(``tests/bench/bench_cache_misses.py``). A key on an expired row is in the file until a
commit deletes it, so a miss on it still reads the file.

It is kept exactly in step with the file, by its only writer: the cache actor's write-behind
builds it from the file's keys before its first commit, and after each commit adds the keys
that commit inserted and removes those it deleted (expired, evicted, dropped as corrupt), as
the commit's ``RETURNING`` clauses name them. Until it is built, every key may be there.

A key it says is absent is not in the file, as of the last commit the actor has seen land
(the same moment as ``WriteBehind.landed_at``, which the actor already reasons with). A key
it says may be there is looked up as before: about 1% of absent keys with the file at
``max_entries`` (ten one-byte counters per entry, four hashes), more if the file holds more.
A counter that reaches 255 stays there, so it can only err towards "may be there".

Everything runs on the event loop's thread: the front door, and the job keeper before it
puts a cacheable line in a batch, read; the actor writes. The build's counters are made in a
worker thread and swapped in whole.
"""

from __future__ import annotations

from collections.abc import Iterable

_COUNTERS_PER_ENTRY = 10
_MOST_COUNTERS = 1 << 24  # 16 MiB: past 1.6M entries, more keys share counters instead
_SATURATED = 255
_MASK = (1 << 64) - 1


class KeyPresence:
    """The counting Bloom filter of one cache file's keys (see the module's docstring)."""

    def __init__(self, capacity: int) -> None:
        self.size = min(_MOST_COUNTERS, max(1024, capacity * _COUNTERS_PER_ENTRY))
        self._counters = bytearray(self.size)
        self.ready = False  # built from the file: until then every key may be there

    def might_hold(self, key: bytes) -> bool:
        """False only when ``key`` is not in the file."""
        if not self.ready:
            return True
        first, step = _probe(key)
        size, counters = self.size, self._counters
        return bool(counters[first % size] and counters[(first + step) % size]
                    and counters[(first + 2 * step) % size]
                    and counters[(first + 3 * step) % size])

    def build(self, keys: Iterable[bytes]) -> bytearray:
        """Counters for ``keys`` (every key in the file), to ``install``; run it in a worker
        thread: a million keys take about a second."""
        counters = bytearray(self.size)
        for key in keys:
            _count(counters, key, self.size, 1)
        return counters

    def install(self, counters: bytearray) -> None:
        self._counters = counters
        self.ready = True

    def added(self, keys: Iterable[bytes]) -> None:
        """``keys`` were inserted into the file (a key overwritten in place is not added)."""
        if self.ready:
            for key in keys:
                _count(self._counters, key, self.size, 1)

    def removed(self, keys: Iterable[bytes]) -> None:
        """``keys`` were deleted from the file."""
        if self.ready:
            for key in keys:
                _count(self._counters, key, self.size, -1)


def _probe(key: bytes) -> tuple[int, int]:
    """Where ``key``'s four counters start and their step: double hashing of one 64-bit hash
    (Python's, salted per process)."""
    hashed = hash(key) & _MASK
    return hashed & 0xFFFFFFFF, (hashed >> 32) | 1


def _count(counters: bytearray, key: bytes, size: int, change: int) -> None:
    first, step = _probe(key)
    for index in (first % size, (first + step) % size, (first + 2 * step) % size,
                  (first + 3 * step) % size):
        count = counters[index]
        # A saturated counter no longer knows how many keys it counts; one at zero counts
        # none (nothing removes a key it did not add: kept at zero all the same).
        if count != _SATURATED and count + change >= 0:
            counters[index] = count + change
