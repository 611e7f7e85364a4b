"""The calls the simulator answered, one entry each, newest kept: ``GET /_sim/requests``.

A crash test of the daemon's billing checks, for every call the "provider" answered, that the
daemon's ledger has exactly one entry for it, with the same tokens. So the log holds exactly
what a provider bills:

- every generation the stats count as served (``SimStats.served``): chat completions,
  responses and embeddings, streamed or not, with the tokens billed and ``complete: true``;
- the answers cut on the way (``complete: false``): a ``reset_midway`` fault (a whole answer
  was generated, so all its tokens are billed; a stream's first event is cut, so none), a
  ``stream_cut`` fault, or a stream whose client left or whose server stopped mid-way, each
  billed for the tokens streamed until then;
- the answered lines (status 200, in the output file) of a batch when it ends, with the line's
  ``custom_id`` as ``request_id`` and tier ``batch``.

Calls refused before any answer (400s, flex *resource unavailable*, rate limited, error, drop
and hang faults) are not billed, so not logged. ``request_id`` is the request's
``X-Client-Request-Id`` header (the daemon sends its own request id there), or ``None``.
``tier`` is the daemon's name for what was served: ``standard`` (OpenAI's ``default`` or
``scale``, and embeddings), ``flex``, ``priority`` or ``batch``.

Entries are numbered by ``seq`` from 1 in the order they are logged; the numbers go on
increasing after a reset (``POST /_sim/stats/reset`` empties the log), so a reader polling with
``?since=SEQ`` never misses an entry. Only the newest ``[sim] request_log_size`` entries are
kept; ``dropped`` counts the ones evicted since the last reset.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from llmspool.core.calls import Tier

DEFAULT_SIZE = 100_000
"""Entries kept by default (``[sim] request_log_size``): some 20 MB."""
MAX_SIZE = 10_000_000


@dataclass(frozen=True, slots=True)
class LoggedCall:
    """One call billed by the simulator; its fields are the JSON entry's keys."""

    seq: int
    request_id: str | None
    """The ``X-Client-Request-Id`` header, or a batch line's ``custom_id``."""
    endpoint: str
    """The endpoint path: ``/v1/chat/completions``, ``/v1/responses`` or ``/v1/embeddings``."""
    model: str
    tier: str
    """``standard``, ``flex``, ``priority`` or ``batch``."""
    stream: bool
    input_tokens: int
    output_tokens: int
    """Output tokens billed: all of them, or those generated before the answer was cut."""
    complete: bool
    """Whether the whole answer was sent; ``False``: cut by a fault, the client or a stop."""
    batch_id: str | None
    """The batch a batch line belongs to; ``None`` for a direct call."""
    time: float
    """When it was answered (a batch line: when its batch ended), Unix seconds."""


def tier_of(service_tier: str | None) -> str:
    """The daemon's tier for the ``service_tier`` an answer reports (``None``: no tiers)."""
    tier = Tier.from_service_tier(service_tier) or Tier.STANDARD
    return tier.value


class RequestLog:
    """The newest ``size`` billed calls, in the order they were logged."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: deque[LoggedCall] = deque(maxlen=size)
        self._seq = itertools.count(1)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(
        self,
        *,
        request_id: str | None,
        endpoint: str,
        model: str,
        tier: str,
        stream: bool,
        input_tokens: int,
        output_tokens: int,
        complete: bool,
        batch_id: str | None = None,
        at: float | None = None,
    ) -> LoggedCall:
        """Log one call (``at``: when, default now); the oldest goes if the log is full."""
        entry = LoggedCall(
            seq=next(self._seq),
            request_id=request_id,
            endpoint=endpoint,
            model=model,
            tier=tier,
            stream=stream,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            complete=complete,
            batch_id=batch_id,
            time=time.time() if at is None else at,
        )
        if len(self._entries) == self.size:
            self.dropped += 1
        self._entries.append(entry)
        return entry

    def clear(self) -> None:
        """Forget every entry and the dropped count; ``seq`` goes on from where it was."""
        self._entries.clear()
        self.dropped = 0

    def since(self, seq: int, limit: int | None = None) -> list[LoggedCall]:
        """The entries after ``seq``, oldest first; at most ``limit`` of them."""
        entries = self._entries
        if not entries:
            return []
        # Kept entries have consecutive numbers, so the first wanted one is found by arithmetic.
        start = max(0, seq - entries[0].seq + 1)
        stop = None if limit is None else start + limit
        return list(itertools.islice(entries, start, stop))

    def to_json(self, since: int = 0, limit: int | None = None) -> dict[str, Any]:
        """The answer of ``GET /_sim/requests``: entries after ``since`` (at most ``limit``),
        whether more follow, and how many were dropped by the bound."""
        data = self.since(since, limit)
        after = data[-1].seq if data else since
        last = self._entries[-1].seq if self._entries else 0
        return {
            "object": "list",
            "data": data,
            "dropped": self.dropped,
            "has_more": last > after,
        }
