"""Circuit breakers: one per (provider, tier), closed, open or half-open from call outcomes.

- **closed**: calls go through. It opens after ``failures`` failures in a row, or when at
  least ``failure_rate`` of the calls over the last ``window`` failed (once ``min_calls`` were
  made: a handful of calls says little about a rate).
- **open**: calls are not sent (the dispatcher fails them over, or refuses them with a 503 and
  ``retry-after``) until ``cooldown`` has passed.
- **half-open**: exactly one call, the probe, goes through. Its success closes the breaker; its
  failure opens it again for another ``cooldown``. A probe that ends without telling (the
  client went away, a rate limit) frees the probe slot for the next call.

Only failures that say the provider is unwell count (``FailureClass.counts_against_provider``:
5xx, connection errors, timeouts); a 400 or a rate limit is an answer, so it counts as a success
for the consecutive count and is left out of the rate. A kept-alive connection the server closed
as a request went out on it (``FailureClass.IDLE_CLOSE``) says nothing either way.

The breakers are plain objects owned by the dispatcher. Every method is synchronous, so on the
one event loop a check and the state change it makes cannot interleave with another call's:
that is the "actor" property without a message round trip on every call. Transitions go to
``on_change`` (the dispatcher logs, traces and counts them).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from llmspool.core.calls import Tier
from llmspool.core.config.sections import BreakerConfig


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Transition:
    provider: str
    tier: Tier
    old: BreakerState
    new: BreakerState
    reason: str


class CircuitBreaker:
    """The breaker of one (provider, tier)."""

    def __init__(self, provider: str, tier: Tier, config: BreakerConfig,
                 on_change: Callable[[Transition], None],
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.provider = provider
        self.tier = tier
        self._config = config
        self._on_change = on_change
        self._clock = clock
        self.state = BreakerState.CLOSED
        self._consecutive = 0
        self._outcomes: deque[tuple[float, bool]] = deque()  # (when, failed) within the window
        self._failed_in_window = 0
        self._opened_at = 0.0
        self._probing = False
        self.last_failure = ""
        self.opened = 0

    # --- asking ---------------------------------------------------------------------------

    def allow(self) -> bool | None:
        """May a call go? None: no. False: yes. True: yes, as the half-open probe (report its
        outcome with ``probe=True``)."""
        if self.state is BreakerState.CLOSED:
            return False
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self._config.cooldown:
                return None
            self._move(BreakerState.HALF_OPEN, f"cooldown of {self._config.cooldown:g}s over")
        if self._probing:
            return None
        self._probing = True
        return True

    def retry_after(self) -> float:
        """Seconds until the breaker lets a probe through (0 if it would now)."""
        if self.state is not BreakerState.OPEN:
            return 0.0 if not self._probing else 1.0
        return max(0.0, self._config.cooldown - (self._clock() - self._opened_at))

    # --- telling --------------------------------------------------------------------------

    def succeeded(self, *, probe: bool = False) -> None:
        self._consecutive = 0
        self._record(failed=False)
        if probe:
            self._probing = False
            if self.state is BreakerState.HALF_OPEN:
                self._move(BreakerState.CLOSED, "the probe call succeeded")

    def failed(self, reason: str, *, probe: bool = False) -> None:
        self._consecutive += 1
        self.last_failure = reason
        self._record(failed=True)
        if probe or self.state is BreakerState.HALF_OPEN:
            self._probing = False
            self._open(f"the probe call failed: {reason}")
            return
        if self.state is not BreakerState.CLOSED:
            return
        if self._consecutive >= self._config.failures:
            self._open(f"{self._consecutive} failures in a row, the last: {reason}")
            return
        calls = len(self._outcomes)
        if calls >= max(1, self._config.min_calls) and \
                self._failed_in_window >= math.ceil(self._config.failure_rate * calls):
            self._open(f"{self._failed_in_window} of {calls} calls failed in the last "
                       f"{self._config.window:g}s, the last: {reason}")

    def no_outcome(self, *, probe: bool) -> None:
        """A call ended without saying anything about the provider's health."""
        if probe:
            self._probing = False

    # --- inside ---------------------------------------------------------------------------

    def _record(self, *, failed: bool) -> None:
        now = self._clock()
        self._outcomes.append((now, failed))
        self._failed_in_window += failed
        horizon = now - self._config.window
        while self._outcomes and self._outcomes[0][0] < horizon:
            _when, old_failed = self._outcomes.popleft()
            self._failed_in_window -= old_failed

    def _open(self, reason: str) -> None:
        self._opened_at = self._clock()
        self.opened += 1
        self._outcomes.clear()
        self._failed_in_window = 0
        self._move(BreakerState.OPEN, reason)

    def _move(self, new: BreakerState, reason: str) -> None:
        old, self.state = self.state, new
        if new is BreakerState.CLOSED:
            self._consecutive = 0
        if old is not new:
            self._on_change(Transition(self.provider, self.tier, old, new, reason))

    def snapshot(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "tier": self.tier.value,
            "state": self.state.value,
            "consecutive_failures": self._consecutive,
            "calls_in_window": len(self._outcomes),
            "failed_in_window": self._failed_in_window,
            "times_opened": self.opened,
            "retry_after_s": round(self.retry_after(), 1),
            "last_failure": self.last_failure,
        }


class Breakers:
    """Every (provider, tier) breaker, made on first use."""

    def __init__(self, config: BreakerConfig, on_change: Callable[[Transition], None],
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._on_change = on_change
        self._clock = clock
        self._breakers: dict[tuple[str, Tier], CircuitBreaker] = {}

    def get(self, provider: str, tier: Tier) -> CircuitBreaker:
        key = (provider, tier)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = CircuitBreaker(
                provider, tier, self._config, self._on_change, clock=self._clock)
        return breaker

    def snapshot(self) -> list[dict[str, Any]]:
        return [b.snapshot() for _key, b in sorted(self._breakers.items(),
                                                   key=lambda item: (item[0][0], item[0][1]))]
