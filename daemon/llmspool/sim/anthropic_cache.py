"""Anthropic's prompt caching, simulated: a prompt measured in Anthropic's order (tools,
``system``, ``messages``) with a breakpoint at each ``cache_control`` (``PromptWalk``, at most
``MAX_CACHE_BREAKPOINTS``), and the prefixes written to the cache with when each expires
(``PromptCache``), from which a request's ``PromptUsage`` (cache reads, cache writes, the
uncached rest) is told. See ``anthropic``'s docstring for what a client sees.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmspool.sim.anthropic_errors import AnthropicError, invalid
from llmspool.sim.anthropic_stream import PromptUsage
from llmspool.sim.speed import real
from llmspool.sim.text import CHARS_PER_TOKEN, PromptMeter

__all__ = ["MAX_CACHE_BREAKPOINTS", "Breakpoint", "PromptCache", "PromptWalk"]

MAX_CACHE_BREAKPOINTS = 4
_CACHE_TTL = {"5m": 300.0, "1h": 3600.0}
_CACHE_PRUNE_AT = 100_000
"""Cache entries kept before expired ones are swept out."""


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """A ``cache_control`` mark: the prompt up to it, as tokens and as a cache key."""

    tokens: int
    key: str
    ttl: float
    one_hour: bool


class PromptWalk:
    """Measures a prompt in Anthropic's order (tools, system, messages) as it is checked: its
    tokens and answer key (``PromptMeter``), and a hash of the prefix at each breakpoint."""

    def __init__(self, model: str) -> None:
        self.meter = PromptMeter()
        self._digest = hashlib.blake2b(model.encode(), digest_size=16)
        self.breakpoints: list[Breakpoint] = []

    def add(self, text: str) -> None:
        self.meter.add(text)
        self._digest.update(text.encode("utf-8", "surrogatepass") + b"\0")

    def mark(self, cache_control: Any, where: str) -> None:
        """Check a block's ``cache_control`` (if any) and make the prompt so far a breakpoint."""
        if cache_control is None:
            return
        if not isinstance(cache_control, dict):
            raise invalid(f"{where}.cache_control", "Input should be a valid dictionary")
        if cache_control.get("type") != "ephemeral":
            raise invalid(f"{where}.cache_control.type", "Input should be 'ephemeral'")
        ttl = cache_control.get("ttl", "5m")
        if ttl not in _CACHE_TTL:
            raise invalid(f"{where}.cache_control.ttl", "Input should be '5m' or '1h'")
        chars = self.meter.chars
        self.breakpoints.append(
            Breakpoint(
                tokens=(chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN,
                key=self._digest.hexdigest(),
                ttl=_CACHE_TTL[ttl],
                one_hour=ttl == "1h",
            )
        )
        if len(self.breakpoints) > MAX_CACHE_BREAKPOINTS:
            raise AnthropicError(
                f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be "
                f"provided. Found {len(self.breakpoints)}.",
                status=400,
            )


class PromptCache:
    """Prefixes written to the cache, by key, with when each expires (real seconds)."""

    def __init__(self, speed: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._speed = speed
        self._clock = clock
        self._expiry: dict[str, float] = {}

    def usage(self, walk: PromptWalk, *, remember: bool = True) -> PromptUsage:
        """How the prompt's tokens split; with ``remember``, its prefixes are cached from now."""
        total = walk.meter.tokens
        if not walk.breakpoints:
            return PromptUsage(total=total, uncached=total)
        now = self._clock()
        last = walk.breakpoints[-1]
        read = 0
        for mark in reversed(walk.breakpoints):
            if self._expiry.get(mark.key, -math.inf) > now:
                read = mark.tokens
                break
        if remember:
            if len(self._expiry) >= _CACHE_PRUNE_AT:
                self._expiry = {k: t for k, t in self._expiry.items() if t > now}
            for mark in walk.breakpoints:
                self._expiry[mark.key] = now + real(mark.ttl, self._speed)
        cached = min(last.tokens, total)
        return PromptUsage(
            total=total,
            uncached=total - cached,
            cache_creation=max(0, cached - read),
            cache_read=min(read, cached),
            one_hour=last.one_hour,
        )
