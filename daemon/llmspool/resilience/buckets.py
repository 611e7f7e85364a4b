"""The token-bucket machinery of the rate limiter: the refill timeline a key's buckets share
(full rate, paused after a 429, then ramping back), a continuously refilling bucket, one
limit's books (its bucket and the totals that correcting it from headers needs), and the
waiters and permits that per-key admission (``key_limits``) hands out.

The upstream's model (OpenAI's): per model, a bucket of requests (RPM) and one of tokens
(TPM), each holding at most its per-minute limit and refilled at limit/60 per second. After a
429's pause the refill rate and burst ramp linearly from ``RAMP_START`` back to 100%.
Pure and I/O-free: every method takes the time it is called at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import anyio

from llmspool.core.errors import InvalidRequest

SECONDS_PER_MINUTE = 60.0
RAMP_START = 0.25
"""The fraction of the full refill rate (and burst) right after a 429's pause ends."""

# Refill sums drift in the last bits; an exact fit must not wait another turn for them.
FIT_SLACK = 1e-6


class Ramp:
    """The refill rate as a fraction of the full rate over time, shared by a key's buckets:
    1 until a 429; 0 during its pause; then RAMP_START rising linearly to 1 over ``seconds``.

    ``progress(t)`` integrates the fraction (seconds of full-rate refill), so a bucket gains
    ``rate * (progress(t1) - progress(t0))`` between two times. Buckets settle before the
    timeline changes, so only differences within one timeline are ever taken."""

    __slots__ = ("paused_until", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = max(0.0, seconds)
        self.paused_until: float | None = None

    def paused(self, now: float) -> bool:
        return self.paused_until is not None and now < self.paused_until

    def _slope(self) -> float:
        return (1.0 - RAMP_START) / self.seconds

    def _ramp_area(self) -> float:
        return (RAMP_START + 1.0) / 2.0 * self.seconds

    def fraction(self, t: float) -> float:
        start = self.paused_until
        if start is None:
            return 1.0
        if t < start:
            return 0.0
        elapsed = t - start
        if elapsed >= self.seconds:
            return 1.0
        return RAMP_START + self._slope() * elapsed

    def progress(self, t: float) -> float:
        start = self.paused_until
        if start is None:
            return t
        elapsed = max(0.0, t - start)
        if elapsed >= self.seconds:
            return self._ramp_area() + (elapsed - self.seconds)
        return RAMP_START * elapsed + 0.5 * self._slope() * elapsed * elapsed

    def time_at_progress(self, target: float) -> float:
        """The earliest time whose ``progress`` reaches ``target``."""
        start = self.paused_until
        if start is None:
            return target
        if target <= 0:
            return start
        area = self._ramp_area()
        if target >= area:
            return start + self.seconds + (target - area)
        # RAMP_START*x + slope/2*x² = target; this form of the root does not cancel.
        root = math.sqrt(RAMP_START * RAMP_START + 2.0 * self._slope() * target)
        return start + 2.0 * target / (RAMP_START + root)

    def time_at_fraction(self, wanted: float) -> float:
        """The earliest time whose ``fraction`` reaches ``wanted`` (at most 1)."""
        start = self.paused_until
        if start is None:
            return -math.inf
        if wanted <= RAMP_START or self.seconds <= 0:
            return start
        return start + (wanted - RAMP_START) / self._slope()


class Bucket:
    """A continuously refilling bucket; ``level`` may go below 0 (a debt the refill repays)
    when the upstream turns out to have less than we thought, or a call used more."""

    __slots__ = ("capacity", "level", "updated")

    def __init__(self, capacity: float, level: float, now: float) -> None:
        self.capacity = capacity
        self.level = level
        self.updated = now

    @property
    def rate(self) -> float:
        return self.capacity / SECONDS_PER_MINUTE

    def ceiling(self, now: float, ramp: Ramp) -> float:
        # The burst ramps back with the rate, so that a long pause cannot end in a full burst.
        return self.capacity * ramp.fraction(now)

    def settle(self, now: float, ramp: Ramp) -> None:
        if now > self.updated:
            if ramp.paused_until is None:
                # No 429 yet: full rate and burst. The same sums as below (progress(t) is t,
                # the ceiling the capacity), inline: every call settles its key's buckets
                # some nine times.
                level = self.level + self.capacity / SECONDS_PER_MINUTE * (now - self.updated)
                self.level = level if level < self.capacity else self.capacity
            else:
                gained = self.rate * (ramp.progress(now) - ramp.progress(self.updated))
                self.level = min(self.level + gained, self.ceiling(now, ramp))
            self.updated = now

    def ready_at(self, need: float, now: float, ramp: Ramp) -> float:
        """When a settled bucket will hold ``need`` (``need`` at most ``capacity``)."""
        ready = now
        missing = need - self.level
        if missing > FIT_SLACK:
            ready = ramp.time_at_progress(ramp.progress(now) + missing / self.rate)
        if need > self.ceiling(now, ramp):
            ready = max(ready, ramp.time_at_fraction(need / self.capacity))
        return ready


@dataclass(frozen=True, slots=True)
class Mark:
    """A resource's books right after a call was charged, for correcting from its headers."""

    level: float | None
    """Our bucket's level after the charge (``None``: no bucket yet, the limit was unknown)."""
    charged: float
    """The resource's running total of net charges, this call's included."""
    corrected: float
    """The resource's running total of lowerings from headers and 429s."""
    at: float
    """When the call was admitted."""


class Resource:
    """One of a key's two limits (requests or tokens): the bucket, once a limit is known, and
    the running totals the header correction needs."""

    __slots__ = ("bucket", "charged", "configured", "corrected", "learned")

    def __init__(self, configured: int, now: float) -> None:
        self.configured = configured
        self.learned = 0
        self.bucket = Bucket(configured, configured, now) if configured else None
        # Kept even while unlimited, so that the first headers can account for what we sent.
        self.charged = 0.0
        self.corrected = 0.0

    @property
    def limit(self) -> int:
        return self.configured or self.learned

    @property
    def source(self) -> str:
        if self.configured:
            return "configured"
        return "learned" if self.learned else "unknown"

    def settle(self, now: float, ramp: Ramp) -> None:
        if self.bucket is not None:
            self.bucket.settle(now, ramp)

    def fits(self, amount: float) -> bool:
        return self.bucket is None or self.bucket.level + FIT_SLACK >= amount

    def ready_at(self, amount: float, now: float, ramp: Ramp) -> float:
        if self.bucket is None:
            return -math.inf
        return self.bucket.ready_at(amount, now, ramp)

    def charge(self, amount: float, now: float) -> Mark:
        self.charged += amount
        level = None
        if self.bucket is not None:
            self.bucket.level -= amount
            level = self.bucket.level
        return Mark(level, self.charged, self.corrected, now)

    def give_back(self, amount: float, now: float, ramp: Ramp) -> None:
        """Return ``amount`` to the bucket (take it, if negative)."""
        self.charged -= amount
        if self.bucket is not None:
            self.bucket.settle(now, ramp)
            self.bucket.level = min(self.bucket.level + amount, self.bucket.ceiling(now, ramp))

    def learn(self, limit: int, now: float, ramp: Ramp) -> None:
        if limit <= 0 or limit == self.learned:
            return
        self.learned = limit
        if self.configured:
            return  # the operator's limit stays in force; the learned one is only shown
        if self.bucket is None:
            # Nothing known yet: start full (the usual case), less during a 429's pause and
            # ramp; the same answer's remaining-* header corrects it right after.
            self.bucket = Bucket(limit, limit * ramp.fraction(now), now)
        else:
            self.bucket.settle(now, ramp)
            self.bucket.capacity = limit
            self.bucket.level = min(self.bucket.level, limit)

    def lower_to(self, estimate: float) -> None:
        if self.bucket is not None and estimate < self.bucket.level:
            self.corrected += self.bucket.level - estimate
            self.bucket.level = estimate

    def correct(
        self, remaining: float, mark: Mark | None, upstream_limit: int, now: float
    ) -> None:
        """Lower our bucket to what the upstream can have left now, given that it had
        ``remaining`` when it took the call whose admission left our books at ``mark``.

        Two estimates of the upstream's level now, each exact when both buckets run alike:

        - from the upstream's side: ``remaining``, plus the upstream's refill since the call
          (capped at its limit), minus what we charged since (net of refunds). The refill term
          matters: without it, a call that took 20 s would report a level 20 s stale and
          throttle us by 20 s worth of tokens at every answer.
        - from our side: our level now, minus how far we were above the upstream when the
          call was charged (``mark.level - remaining``), minus the lowerings made since
          (so one discrepancy, reported by many answers, is corrected once).

        Each errs low only when one of the buckets hit its capacity while the other did not;
        the larger is kept. If the upstream stamps its headers when it answers rather than
        when it takes the call, both count calls of that window twice; at saturation our
        admissions match the refill so this cancels, and a burst costs a one-time dip.
        We only ever lower: our bucket is the conservative one, and a header that says more
        remains than we think is stale or counts fewer calls than we sent.
        """
        bucket = self.bucket
        if bucket is None:
            return
        if mark is None:
            estimate = remaining  # nothing to anchor it in time: take it as of now
        else:
            refill = upstream_limit / SECONDS_PER_MINUTE * max(0.0, now - mark.at)
            estimate = min(upstream_limit, remaining + refill) - (self.charged - mark.charged)
            if mark.level is not None:
                above = mark.level - remaining - (self.corrected - mark.corrected)
                estimate = max(estimate, bucket.level - above)
        self.lower_to(estimate)

    def drain(self) -> None:
        self.lower_to(0.0)  # a debt (below 0) stays


class Waiter:
    __slots__ = ("error", "interactive", "permit", "tokens", "wake")

    def __init__(self, tokens: int, interactive: bool) -> None:
        self.tokens = tokens
        self.interactive = interactive
        self.wake: anyio.Event | None = None
        self.permit: Permit | None = None
        self.error: InvalidRequest | None = None

    def done(self) -> bool:
        return self.permit is not None or self.error is not None


def wake(waiter: Waiter) -> None:
    if waiter.wake is not None:
        waiter.wake.set()


class _Issuer(Protocol):
    """What a permit needs of the per-key limits that admitted it (``key_limits``)."""

    provider: str
    model: str

    def release(self, permit: Permit, used_tokens: int | None) -> None: ...


class Permit:
    """One admitted call's share of its (provider, model) limits; ``release`` it when the call
    ends (answered, failed or cancelled)."""

    __slots__ = (
        "_key",
        "_marks",
        "_released",
        "_seq",
        "admitted_at",
        "model",
        "provider",
        "tokens",
    )

    def __init__(
        self, key: _Issuer, seq: int, tokens: int, admitted_at: float, marks: dict[str, Mark]
    ) -> None:
        self._key = key
        self._seq = seq
        self._released = False
        self.provider = key.provider
        self.model = key.model
        self.tokens = tokens
        """Tokens charged at admission."""
        self.admitted_at = admitted_at
        self._marks = marks

    @property
    def released(self) -> bool:
        return self._released

    def release(self, used_tokens: int | None = None) -> None:
        """The call ended: free its concurrency slot; with the real token count, give back (or
        take) the difference from what was charged (never refunding more than was charged).
        Releasing twice does nothing the second time.

        Pass ``used_tokens`` only for an upstream that counts actual usage against its limit:
        OpenAI's charge is the requested tokens and stays, and refunding it here would admit
        more than the upstream accepts (the next headers would correct it, after some 429s)."""
        self._key.release(self, used_tokens)
