"""What the simulator saw, exactly: the answer of ``GET /_sim/stats``.

Tests and rehearsals ask it how many calls reached the "provider", per path, model and tier,
how many faults hit, how many flex requests were served or refused as *resource unavailable*,
and how many tokens were generated. The control paths (``/_sim/…``) are
not counted, so asking never changes the answer.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class SimStats:
    """Counters for ``GET /_sim/stats``; ``reset`` zeroes all but the live gauges."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.open_streams = 0
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.by_path: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.by_tier: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.client_closed = 0
        self.faults: Counter[str] = Counter()
        self.streams = 0
        self.flex_requests = 0
        self.flex_unavailable = 0
        self.flex_served = 0
        self.input_tokens = 0
        self.output_tokens = 0

    def request(self, path: str) -> None:
        """A request arrived at ``path`` (any path but ``/_sim/…``)."""
        self.requests += 1
        self.by_path[path] += 1

    def served(self, tier: str | None, input_tokens: int, output_tokens: int) -> None:
        """A request was answered with a generation (status 200, streamed or not)."""
        if tier is not None:
            self.by_tier[tier] += 1
            if tier == "flex":
                self.flex_served += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": {
                "total": self.requests,
                "in_flight": self.in_flight,
                "by_path": dict(self.by_path),
                "by_model": dict(self.by_model),
                "by_tier": dict(self.by_tier),
                "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
                "client_closed": self.client_closed,
            },
            "faults": {"total": sum(self.faults.values()), "by_kind": dict(self.faults)},
            "flex": {
                "requests": self.flex_requests,
                "served": self.flex_served,
                "unavailable": self.flex_unavailable,
            },
            "streams": {"open": self.open_streams, "total": self.streams},
            "tokens": {"input": self.input_tokens, "output": self.output_tokens},
        }
