"""The limits of one (provider, model): its settings, buckets, waiters and permits, and how
they admit, time, correct and pause calls.

Waiters queue per key, interactive ones always served before deferred ones, first come first
served within each class. A head that does not fit blocks those behind it in its class, so a
big request is never starved by small ones; an interactive arrival still goes ahead of
deferred waiters. Every change (a release, a header, a 429, a cancelled waiter) admits whoever
now fits and wakes the new head to time its own wait (``KeyLimits.pump``). A cancelled waiter
leaves no charge and no slot behind.

429 ``rate_limit_exceeded``: the upstream says its bucket is empty. ``on_rate_limited``
empties ours, pauses every waiter of the key until the hinted time, then refills at a reduced
rate (and with a reduced burst) that ramps linearly from 25% back to 100% over
``ramp_seconds``.

Buckets, waiters and permits themselves live in ``buckets``, reading the headers in
``ratelimit_headers``; ``limits`` keeps one ``KeyLimits`` per key and does the waiting.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llmspool.core.errors import InvalidRequest
from llmspool.resilience.buckets import FIT_SLACK, Permit, Ramp, Resource, Waiter, wake
from llmspool.resilience.ratelimit_headers import (
    REQUESTS,
    TOKENS,
    header_number,
    lowered_headers,
    retry_pause,
)

__all__ = ["KeyLimits", "LimitSettings", "RequestTooLarge"]

# A computed wait that rounds to nothing must not become a busy loop.
_MIN_SLEEP = 0.001

# The headers of each limit, named once rather than formatted at every answer.
_LIMIT_HEADERS = {kind: f"x-ratelimit-limit-{kind}" for kind in (REQUESTS, TOKENS)}
_REMAINING_HEADERS = {kind: f"x-ratelimit-remaining-{kind}" for kind in (REQUESTS, TOKENS)}


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """Configured limits for one (provider, model); 0 means "not configured"."""

    rpm: int = 0
    """Requests per minute; 0: unknown, learned from headers (until then: unlimited)."""
    tpm: int = 0
    """Tokens per minute; 0: unknown, learned from headers (until then: unlimited)."""
    concurrency: int = 0
    """Calls in flight at once; 0: no cap."""

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "concurrency"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} cannot be negative: {getattr(self, name)}")


class RequestTooLarge(InvalidRequest):
    """400: the call asks for more tokens than the model's whole per-minute limit, so no
    amount of waiting would ever let it through."""

    def __init__(self, provider: str, model: str, limit: int, requested: int) -> None:
        super().__init__(
            f"This request asks for {requested} tokens (input plus max_tokens), more than the "
            f"{limit} tokens per minute that {provider}/{model} allows, so it can never be "
            "sent. Reduce max_tokens or the input.",
            code="request_too_large",
        )
        self.provider = provider
        self.model = model
        self.limit = limit
        self.requested = requested


class KeyLimits:
    """Everything one (provider, model) shares: its limits, buckets, waiters and permits."""

    def __init__(
        self,
        provider: str,
        model: str,
        settings: LimitSettings,
        clock: Callable[[], float],
        ramp_seconds: float,
    ) -> None:
        now = clock()
        self.provider = provider
        self.model = model
        self.settings = settings
        self.clock = clock
        self.ramp = Ramp(ramp_seconds)
        self.resources = {
            REQUESTS: Resource(settings.rpm, now),
            TOKENS: Resource(settings.tpm, now),
        }
        self.interactive: deque[Waiter] = deque()
        self.deferred: deque[Waiter] = deque()
        # In admission order (dicts keep it): the oldest stands in for an unnamed answer.
        self.in_flight: dict[int, Permit] = {}
        self.admissions = 0
        self.rate_limited = 0
        # The last answer's limit headers as read (requests, tokens), and the limits in them.
        self._limits_read: tuple[tuple[str | None, str | None], Mapping[str, int]] = (
            (None, None), {})

    # -- admission -------------------------------------------------------------------------

    def check_size(self, tokens: int) -> None:
        limit = self.resources[TOKENS].limit
        if limit and tokens > limit:
            raise RequestTooLarge(self.provider, self.model, limit, tokens)

    def enqueue(self, waiter: Waiter) -> None:
        (self.interactive if waiter.interactive else self.deferred).append(waiter)

    def head(self) -> Waiter | None:
        if self.interactive:
            return self.interactive[0]
        if self.deferred:
            return self.deferred[0]
        return None

    def _settle(self, now: float) -> None:
        for resource in self.resources.values():
            resource.settle(now, self.ramp)

    def _slot_free(self) -> bool:
        cap = self.settings.concurrency
        return not cap or len(self.in_flight) < cap

    def _fits(self, tokens: int, now: float) -> bool:
        return (
            not self.ramp.paused(now)
            and self._slot_free()
            and self.resources[REQUESTS].fits(1)
            and self.resources[TOKENS].fits(tokens)
        )

    def admit_at_once(self, tokens: int, now: float) -> Permit | None:
        """A permit for a call that finds nobody waiting and room for it (``check_size``
        done): what ``enqueue`` then ``pump`` would give it, without making and queueing a
        waiter. None: it must wait its turn."""
        if self.interactive or self.deferred:
            return None
        self._settle(now)
        return self._admit(tokens, now) if self._fits(tokens, now) else None

    def pump(self, now: float, *, wake_blocked: bool = True) -> None:
        """Admit waiters from the head while they fit, then wake the head that does not, so
        that it times its own wait against the state as it is now (``wake_blocked=False``:
        only a waiter arrived, so the head's own timer still holds, unless this pump let the
        head go: the waiter now at the head slept as one behind it, without a timer)."""
        if not self.interactive and not self.deferred:
            return  # nobody to admit; the buckets settle when they are next read
        self._settle(now)
        token_limit = self.resources[TOKENS].limit
        new_head = wake_blocked
        while (head := self.head()) is not None:
            if token_limit and head.tokens > token_limit:
                # Queued while the limit was unknown or larger: fail it rather than block all.
                self._pop(head)
                head.error = RequestTooLarge(self.provider, self.model, token_limit, head.tokens)
                wake(head)
                new_head = True
                continue
            if not self._fits(head.tokens, now):
                if new_head:
                    wake(head)
                return
            self._pop(head)
            head.permit = self._admit(head.tokens, now)
            wake(head)
            new_head = True

    def _pop(self, waiter: Waiter) -> None:
        (self.interactive if waiter.interactive else self.deferred).popleft()

    def _admit(self, tokens: int, now: float) -> Permit:
        seq = self.admissions
        self.admissions += 1
        marks = {
            REQUESTS: self.resources[REQUESTS].charge(1, now),
            TOKENS: self.resources[TOKENS].charge(tokens, now),
        }
        permit = Permit(self, seq, tokens, now, marks)
        self.in_flight[seq] = permit
        return permit

    def delay(self, waiter: Waiter, now: float) -> float:
        """How long ``waiter`` should sleep before looking again: until the buckets hold what
        it needs if it is the head; until woken otherwise (or while no slot is free)."""
        if waiter is not self.head():
            return math.inf
        self._settle(now)
        if self.ramp.paused(now) and self.ramp.paused_until is not None:
            return max(self.ramp.paused_until - now, _MIN_SLEEP)
        if not self._slot_free():
            return math.inf  # a release wakes it
        ready = max(
            self.resources[REQUESTS].ready_at(1, now, self.ramp),
            self.resources[TOKENS].ready_at(waiter.tokens, now, self.ramp),
        )
        return max(ready - now, _MIN_SLEEP)

    def abandon(self, waiter: Waiter) -> None:
        """A waiter was cancelled: take back whatever it holds and let the next one go."""
        if waiter.permit is not None:
            # Admitted, but cancelled before it could see it: the call was never sent.
            self._undo(waiter.permit)
        elif waiter.error is None:
            (self.interactive if waiter.interactive else self.deferred).remove(waiter)
        self.pump(self.clock())

    # -- after admission -------------------------------------------------------------------

    def release(self, permit: Permit, used_tokens: int | None) -> None:
        if permit._released:
            return
        permit._released = True
        del self.in_flight[permit._seq]
        now = self.clock()
        if used_tokens is not None:
            refund = permit.tokens - max(0, used_tokens)  # at most what was charged
            self.resources[TOKENS].give_back(refund, now, self.ramp)
        self.pump(now)

    def _undo(self, permit: Permit) -> None:
        permit._released = True
        del self.in_flight[permit._seq]
        now = self.clock()
        self.resources[REQUESTS].give_back(1, now, self.ramp)
        self.resources[TOKENS].give_back(permit.tokens, now, self.ramp)

    def _learn(self, headers: Mapping[str, str], now: float) -> Mapping[str, int]:
        raw = (headers.get(_LIMIT_HEADERS[REQUESTS]), headers.get(_LIMIT_HEADERS[TOKENS]))
        if raw == self._limits_read[0]:
            # What the last answer said, which was learnt then (``Resource.learn`` of the same
            # limit does nothing): most answers repeat it.
            return self._limits_read[1]
        limits: dict[str, int] = {}
        for kind, resource in self.resources.items():
            limit = header_number(headers.get(_LIMIT_HEADERS[kind]))
            if limit is not None and limit >= 1:
                limits[kind] = int(limit)
                resource.learn(int(limit), now, self.ramp)
        self._limits_read = (raw, limits)
        return limits

    def observe(self, headers: Mapping[str, str], permit: Permit | None) -> None:
        lowered = lowered_headers(headers)
        now = self.clock()
        self._settle(now)
        limits = self._learn(lowered, now)
        basis = permit if permit is not None and permit._key is self else self._oldest()
        for kind, resource in self.resources.items():
            remaining = header_number(lowered.get(_REMAINING_HEADERS[kind]))
            if remaining is None:
                continue
            upstream_limit = limits.get(kind) or resource.limit
            mark = basis._marks[kind] if basis is not None else None
            resource.correct(remaining, mark, upstream_limit, now)
        # A learned limit may make the head too large; a corrected level changes its wait.
        self.pump(now)

    def _oldest(self) -> Permit | None:
        # Answers mostly come back in the order calls went out, and the call being observed is
        # usually still in flight: the oldest permit in flight is the best guess for it.
        return next(iter(self.in_flight.values()), None)

    def on_rate_limited(self, headers: Mapping[str, str]) -> float:
        lowered = lowered_headers(headers)
        now = self.clock()
        self._settle(now)
        self._learn(lowered, now)
        pause = retry_pause(lowered)
        for resource in self.resources.values():
            resource.drain()  # the upstream says it is empty, whatever we thought
        until = now + pause
        current = self.ramp.paused_until
        if current is not None and current > until:
            pause = current - now  # an earlier 429 asked for longer
        else:
            # Buckets have settled at `now`, so moving the timeline here loses no refill.
            self.ramp.paused_until = until
        self.rate_limited += 1
        self.pump(now)  # the head re-times its wait to the pause
        return pause

    # -- reporting -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        self._settle(now)
        requests = self.resources[REQUESTS]
        tokens = self.resources[TOKENS]
        paused_until = self.ramp.paused_until
        return {
            "rpm": requests.limit or None,
            "rpm_source": requests.source,
            "tpm": tokens.limit or None,
            "tpm_source": tokens.source,
            "concurrency": self.settings.concurrency or None,
            "requests_available": _available(requests),
            "tokens_available": _available(tokens),
            "in_flight": len(self.in_flight),
            "waiting_interactive": len(self.interactive),
            "waiting_deferred": len(self.deferred),
            "paused_for_s": (
                round(max(0.0, paused_until - now), 3) if paused_until is not None else 0.0
            ),
            "rate_limited": self.rate_limited,
            "ramp": round(self.ramp.fraction(now), 3),
        }


def _available(resource: Resource) -> int | None:
    return None if resource.bucket is None else math.floor(resource.bucket.level + FIT_SLACK)
