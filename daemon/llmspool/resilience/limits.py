"""Rate limits per (provider, model): admit a call only when the upstream will accept it.

The upstream's model (OpenAI's): per model, a continuously refilling bucket of requests (RPM)
and one of tokens (TPM), each holding at most its per-minute limit and refilled at limit/60
per second. A call is charged when it arrives, with the tokens it *asks* for (prompt plus the
maximum output). We keep a copy of both buckets per (provider, model) and admit a call only
when ours hold enough, so that this limiter, and not the upstream's 429s, holds traffic back.
There is no safety margin: a call reaches the upstream a little after we charged it, so an
upstream bucket that matches ours is never emptier than ours; where it differs (a restart
while the upstream was still partly used, another client on the same key, a token estimate
that ran low), the answers' ``x-ratelimit-*`` headers correct us (``observe``).

Limits come from config (``LimitSettings``) or are learned from ``x-ratelimit-limit-*``
headers; a key with neither is unlimited until an answer teaches it (Ollama never does).
A configured limit stays the one in force; headers may still lower what is *available*.

Waiting: no task is owned by the limiter: the waiter at the head of a key's queue sleeps
exactly until the buckets will hold what it needs, the others sleep until woken
(``key_limits`` says who is admitted, in what order, and when).

This module owns ``RateLimits``, the entry: one ``KeyLimits`` per key, and the waiting; a
key's admission, corrections and pauses live in ``key_limits``, buckets, waiters and permits
in ``buckets``, reading the headers in ``ratelimit_headers``. Pure and I/O-free; time comes
from an injectable clock, sleeping is anyio's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from llmspool.resilience.buckets import Permit, Waiter
from llmspool.resilience.key_limits import KeyLimits, LimitSettings
from llmspool.resilience.ratelimit_headers import TOKENS

__all__ = ["RateLimits"]

_UNCONFIGURED = LimitSettings()


class RateLimits:
    """Admission against per (provider, model) request, token and concurrency limits."""

    def __init__(
        self,
        settings: Mapping[tuple[str, str], LimitSettings],
        *,
        default: LimitSettings = _UNCONFIGURED,
        clock: Callable[[], float] = time.monotonic,
        ramp_seconds: float = 10.0,
    ) -> None:
        self._default = default
        self._clock = clock
        self._ramp_seconds = ramp_seconds
        # Configured keys exist from the start, so that `llmspool status` shows them.
        self._keys = {
            key: KeyLimits(key[0], key[1], value, clock, ramp_seconds)
            for key, value in settings.items()
        }

    def _limits(self, provider: str, model: str) -> KeyLimits:
        key = (provider, model)
        limits = self._keys.get(key)
        if limits is None:
            limits = KeyLimits(provider, model, self._default, self._clock, self._ramp_seconds)
            self._keys[key] = limits
        return limits

    async def acquire(self, provider: str, model: str, tokens: int, *, interactive: bool) -> Permit:
        """Wait until (provider, model) has a request, ``tokens`` tokens and a concurrency slot
        free; take them. Raises ``RequestTooLarge`` if ``tokens`` exceeds the whole TPM limit.
        Cancel-safe: a cancelled call takes nothing and blocks no one."""
        if tokens < 0:
            raise ValueError(f"tokens cannot be negative: {tokens}")
        limits = self._limits(provider, model)
        limits.check_size(tokens)
        # Most calls find nobody waiting and room. Each made, queued and popped a waiter
        # and settled the buckets three times: acquire, observe and release took 11.7-12.1
        # µs a call in a microbenchmark, 10.0 without (the limiter is ~8% of a call's CPU).
        permit = limits.admit_at_once(tokens, self._clock())
        if permit is not None:
            return permit
        waiter = Waiter(tokens, interactive)
        limits.enqueue(waiter)
        limits.pump(self._clock(), wake_blocked=False)
        try:
            while not waiter.done():
                wake = waiter.wake = anyio.Event()
                with anyio.move_on_after(limits.delay(waiter, self._clock())):
                    await wake.wait()
                if not waiter.done():
                    limits.pump(self._clock())
        except BaseException:
            limits.abandon(waiter)
            raise
        if waiter.permit is None:
            assert waiter.error is not None
            raise waiter.error
        return waiter.permit

    def observe(
        self,
        provider: str,
        model: str,
        headers: Mapping[str, str],
        *,
        permit: Permit | None = None,
    ) -> None:
        """Correct the buckets from an answer's ``x-ratelimit-*`` headers (any subset, or none).

        Pass the answered call's ``permit`` (before or after releasing it): its admission time
        and our books at that moment anchor the header in time. Without it, the oldest call in
        flight stands in for it."""
        self._limits(provider, model).observe(headers, permit)

    def rate_limited(self, provider: str, model: str, headers: Mapping[str, str]) -> float:
        """A 429 ``rate_limit_exceeded`` answer: pause everyone sharing this limit until the
        hinted time (``retry-after-ms``, ``retry-after``, or the reset header; 1 s if none),
        then ramp back. Returns the pause in force, in seconds."""
        return self._limits(provider, model).on_rate_limited(headers)

    def counts_tokens(self, provider: str, model: str) -> bool:
        """Whether calls to (provider, model) are counted against a tokens-per-minute limit
        (so the caller need not estimate their tokens when none is known)."""
        limits = self._keys.get((provider, model))
        return limits is not None and limits.resources[TOKENS].limit > 0

    def snapshot(self) -> dict[str, Any]:
        """Per ``"provider/model"``: the limits in force and where they came from, what is
        available now, calls in flight and waiting, the pause, 429s seen, and the ramp."""
        return {
            f"{provider}/{model}": limits.snapshot()
            for (provider, model), limits in sorted(self._keys.items())
        }
