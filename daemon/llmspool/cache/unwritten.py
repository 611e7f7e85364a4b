"""Keys whose answers are on their way to the cache file: kept, not yet committed.

The cache actor's write-behind commits new entries every ``FLUSH_EVERY`` seconds; until then
it serves them from memory. Whoever asks "is this answered already?" without going through
the actor (the job keeper, before it puts a cacheable line in a batch) must count them too:
a line asked for right after its twin was answered would otherwise be batched, and paid
for, though the answer is in hand (it was the demo's race: the repeat of call 1 went to a
batch whenever the job arrived within a commit of the answer).

The write-behind is the only writer; everything runs on the event loop's thread. A key kept
twice before a commit is counted twice, so it stays until both have landed.
"""

from __future__ import annotations

from collections.abc import Iterable


class UnwrittenKeys:
    """The multiset of keys the write-behind holds for its next commits."""

    def __init__(self) -> None:
        self._counts: dict[bytes, int] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._counts

    def __len__(self) -> int:
        return len(self._counts)

    def kept(self, keys: Iterable[bytes]) -> None:
        """``keys`` were queued for a commit."""
        counts = self._counts
        for key in keys:
            counts[key] = counts.get(key, 0) + 1

    def landed(self, keys: Iterable[bytes]) -> None:
        """The commit that carried ``keys`` has ended (written, or failed and given up)."""
        counts = self._counts
        for key in keys:
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)
