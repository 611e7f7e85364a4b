"""OpenAI's rate limits, per model: the buckets behind the ``x-ratelimit-*`` headers and, when
enforced, the 429 ``rate_limit_exceeded`` refusals.

Every model has its own two buckets (OpenAI's limits are per model), one of requests and one of
tokens. A bucket holds at most its per-minute limit, refills continuously at limit/60 per second
and starts full. ``x-ratelimit-remaining-*`` is what a bucket holds now (whole units, rounded
down), ``x-ratelimit-reset-*`` the time until it is full again (Go durations: ``12ms``,
``1.5s``, ``6m0s``). An answer that concerns no model (files, batches, an unknown model) reports
a full bucket.

A request is charged when it arrives (before its faults and its latency): 1 request, and the
tokens it *asks* for, which is what OpenAI counts against TPM: the prompt tokens the sim counts
plus the most output it may get, ``max_tokens`` / ``max_completion_tokens`` /
``max_output_tokens`` (times ``n`` for chat) or, when it sets none, the sim's default
``output_tokens``; embeddings only their input. (The sim generates exactly that much, so what is
charged is also what usage reports.)

Not enforcing (the default), every request is admitted and a bucket never goes below empty.
Enforcing (``[sim] enforce_ratelimits = true`` or ``POST /_sim/ratelimits``), a request that
does not fit is refused with 429 and nothing is charged for it:

- more tokens than the whole limit: "Request too large … on tokens per min (TPM): Limit L,
  Requested R. The input or output tokens must be reduced …" (type ``tokens``), no retry hint:
  waiting never helps;
- no request left: "Rate limit reached for MODEL in organization org-sim on requests per min
  (RPM): Limit L, Used U, Requested 1. Please try again in 100ms. …" (type ``requests``);
- not enough tokens: the same "on tokens per min (TPM)" (type ``tokens``);

all with code ``rate_limit_exceeded``; the two "Rate limit reached" ones with ``retry-after``
(whole seconds, rounded up) and ``retry-after-ms``: the wait until the request would fit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from llmspool.core.errors import ApiError, ConfigError

REFILL_SECONDS = 60.0
"""A bucket refills from empty to full in this long: the limits are per minute."""
ORGANIZATION = "org-sim"
RATE_LIMITS_URL = "https://platform.openai.com/account/rate-limits"
RateLimitHeaders = tuple[tuple[bytes, bytes], ...]
# Refill is computed in floating point: a wait of exactly the hinted time must be enough.
_EPSILON = 1e-6


def go_duration(seconds: float) -> str:
    """A duration as OpenAI's headers spell it, Go's way: ``12ms``, ``1s``, ``8.64s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


class Bucket:
    """A continuously refilling bucket: ``capacity`` at most, ``capacity / 60`` more per
    second, full at ``now`` when made. Times are the caller's clock, in seconds."""

    __slots__ = ("_at", "_level", "capacity", "rate")

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / REFILL_SECONDS
        self._level = self.capacity
        self._at = now

    def level(self, now: float) -> float:
        """What the bucket holds at ``now`` (never going back in time)."""
        if now > self._at:
            self._level = min(self.capacity, self._level + (now - self._at) * self.rate)
            self._at = now
        return self._level

    def remaining(self, now: float) -> int:
        """Whole units left now."""
        return math.floor(self.level(now) + _EPSILON)

    def fits(self, amount: float, now: float) -> bool:
        return self.level(now) + _EPSILON >= amount

    def take(self, amount: float, now: float) -> None:
        """Charge ``amount``; beyond what is left the bucket just stays empty."""
        self._level = max(0.0, self.level(now) - amount)

    def wait(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` fits (0: it fits now); ``inf`` if it never will."""
        if amount > self.capacity + _EPSILON:
            return math.inf
        return max(0.0, (amount - self.level(now)) / self.rate)

    def until_full(self, now: float) -> float:
        return (self.capacity - self.level(now)) / self.rate


class Refused(StrEnum):
    """Why a request was refused."""

    REQUESTS = "requests"
    """No request left in the minute's bucket (RPM)."""
    TOKENS = "tokens"
    """Not enough tokens left (TPM)."""
    TOO_LARGE = "too_large"
    """It asks more tokens than the whole limit: it never fits."""


class RateLimitExceeded(ApiError):
    """429 ``rate_limit_exceeded``; ``retry_after`` (seconds) is ``None`` when waiting never
    helps (a request too large)."""

    status = 429

    def __init__(self, message: str, *, kind: Refused, retry_after: float | None) -> None:
        error_type = "requests" if kind is Refused.REQUESTS else "tokens"
        super().__init__(message, code="rate_limit_exceeded", error_type=error_type)
        self.kind = kind
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {
            "retry-after": str(max(1, math.ceil(self.retry_after))),
            "retry-after-ms": str(max(1, math.ceil(self.retry_after * 1000))),
        }


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits every model gets, and whether they refuse requests."""

    requests: int
    """Requests per minute."""
    tokens: int
    """Tokens per minute."""
    enforce: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"enforce": self.enforce, "requests": self.requests, "tokens": self.tokens}


class _ModelBuckets:
    __slots__ = ("requests", "tokens")

    def __init__(self, limits: Limits, now: float) -> None:
        self.requests = Bucket(limits.requests, now)
        self.tokens = Bucket(limits.tokens, now)


class RateLimiter:
    """The buckets of every model that was asked for, under one set of ``Limits``."""

    def __init__(self, limits: Limits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _ModelBuckets] = {}
        self.limits = limits
        self.configure(limits)

    @property
    def request_limit(self) -> int:
        return self.limits.requests

    def configure(self, limits: Limits) -> None:
        """Make ``limits`` the limits; every bucket starts full again."""
        self.limits = limits
        self._buckets.clear()
        self._full_headers: RateLimitHeaders = (
            (b"x-ratelimit-limit-requests", str(limits.requests).encode()),
            (b"x-ratelimit-limit-tokens", str(limits.tokens).encode()),
            (b"x-ratelimit-remaining-requests", str(limits.requests).encode()),
            (b"x-ratelimit-remaining-tokens", str(limits.tokens).encode()),
            (b"x-ratelimit-reset-requests", b"0s"),
            (b"x-ratelimit-reset-tokens", b"0s"),
        )

    def _of(self, model: str, now: float) -> _ModelBuckets:
        buckets = self._buckets.get(model)
        if buckets is None:
            buckets = self._buckets[model] = _ModelBuckets(self.limits, now)
        return buckets

    def admit(self, model: str, tokens: int) -> RateLimitExceeded | None:
        """Charge one request of ``tokens`` to ``model``; or, enforcing, the refusal of a
        request that does not fit (nothing charged)."""
        now = self._clock()
        buckets = self._of(model, now)
        if self.limits.enforce:
            refusal = self._refusal(model, buckets, tokens, now)
            if refusal is not None:
                return refusal
        buckets.requests.take(1, now)
        buckets.tokens.take(tokens, now)
        return None

    def _refusal(
        self, model: str, buckets: _ModelBuckets, tokens: int, now: float
    ) -> RateLimitExceeded | None:
        limits = self.limits
        where = f"for {model} in organization {ORGANIZATION} on"
        if tokens > limits.tokens:
            return RateLimitExceeded(
                f"Request too large {where} tokens per min (TPM): Limit {limits.tokens}, "
                f"Requested {tokens}. The input or output tokens must be reduced in order to "
                f"run successfully. Visit {RATE_LIMITS_URL} to learn more.",
                kind=Refused.TOO_LARGE,
                retry_after=None,
            )
        for kind, bucket, amount, unit in (
            (Refused.REQUESTS, buckets.requests, 1, "requests per min (RPM)"),
            (Refused.TOKENS, buckets.tokens, tokens, "tokens per min (TPM)"),
        ):
            if bucket.fits(amount, now):
                continue
            wait = bucket.wait(amount, now)
            limit = round(bucket.capacity)
            return RateLimitExceeded(
                f"Rate limit reached {where} {unit}: Limit {limit}, "
                f"Used {limit - bucket.remaining(now)}, Requested {amount}. "
                f"Please try again in {go_duration(wait)}. "
                f"Visit {RATE_LIMITS_URL} to learn more.",
                kind=kind,
                retry_after=wait,
            )
        return None

    def headers(
        self, model: str | None, *, requests_exhausted: float | None = None
    ) -> RateLimitHeaders:
        """The six ``x-ratelimit-*`` headers of ``model`` now (``None``: a full bucket).

        ``requests_exhausted`` (seconds) reports no requests left, resetting after that long,
        as a simulated 429 ``rate_limit_exceeded`` fault does.
        """
        buckets = self._buckets.get(model) if model is not None else None
        if buckets is None and requests_exhausted is None:
            return self._full_headers
        now = self._clock()
        if buckets is None:
            buckets = _ModelBuckets(self.limits, now)
        if requests_exhausted is not None:
            remaining_requests, reset_requests = 0, requests_exhausted
        else:
            remaining_requests = buckets.requests.remaining(now)
            reset_requests = buckets.requests.until_full(now)
        return (
            *self._full_headers[:2],
            (b"x-ratelimit-remaining-requests", str(remaining_requests).encode()),
            (b"x-ratelimit-remaining-tokens", str(buckets.tokens.remaining(now)).encode()),
            (b"x-ratelimit-reset-requests", go_duration(reset_requests).encode()),
            (b"x-ratelimit-reset-tokens", go_duration(buckets.tokens.until_full(now)).encode()),
        )

    def state_json(self) -> dict[str, Any]:
        """The limits and, per model asked for so far, what its buckets hold now."""
        now = self._clock()
        return {
            **self.limits.to_json(),
            "models": {
                model: {
                    "remaining_requests": buckets.requests.remaining(now),
                    "remaining_tokens": buckets.tokens.remaining(now),
                    "reset_requests": go_duration(buckets.requests.until_full(now)),
                    "reset_tokens": go_duration(buckets.tokens.until_full(now)),
                }
                for model, buckets in sorted(self._buckets.items())
            },
        }


def limits_from_command(data: Any, current: Limits, configured: Limits) -> Limits:
    """The limits a ``POST /_sim/ratelimits`` body asks for.

    Keys, all optional: ``reset`` (true: start from the configured limits), ``enforce``
    (bool), ``requests`` and ``tokens`` (per minute, at least 1). Raises ``ConfigError``
    naming the bad key.
    """
    if not isinstance(data, dict):
        raise ConfigError("ratelimits", "must be a JSON object")
    for key in data:
        if key not in ("reset", "enforce", "requests", "tokens"):
            raise ConfigError(key, "unknown key; known keys: reset, enforce, requests, tokens")
    for key in ("reset", "enforce"):
        if key in data and not isinstance(data[key], bool):
            raise ConfigError(key, f"must be true or false, not {data[key]!r}")
    base = configured if data.get("reset", False) else current
    values: dict[str, int] = {}
    for key in ("requests", "tokens"):
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(key, f"must be a whole number of at least 1, not {value!r}")
            values[key] = value
    return Limits(
        requests=values.get("requests", base.requests),
        tokens=values.get("tokens", base.tokens),
        enforce=data.get("enforce", base.enforce),
    )
