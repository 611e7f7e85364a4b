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

Waiting: waiters queue per key, interactive ones always served before deferred ones, first
come first served within each class. A head that does not fit blocks those behind it in its
class, so a big request is never starved by small ones; an interactive arrival still goes
ahead of deferred waiters. No task is owned by the limiter: the waiter at the head sleeps
exactly until the buckets will hold what it needs, the others sleep until woken, and every
change (a release, a header, a 429, a cancelled waiter) admits whoever now fits and wakes the
new head to time its own wait. A cancelled waiter leaves no charge and no slot behind.

429 ``rate_limit_exceeded``: the upstream says its bucket is empty. ``rate_limited`` empties
ours, pauses every waiter of the key until the hinted time, then refills at a reduced rate
(and with a reduced burst) that ramps linearly from 25% back to 100% over ``ramp_seconds``.

Pure and I/O-free; time comes from an injectable clock, sleeping is anyio's.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import anyio

from llmspool.core.errors import InvalidRequest

SECONDS_PER_MINUTE = 60.0
RAMP_START = 0.25
"""The fraction of the full refill rate (and burst) right after a 429's pause ends."""
DEFAULT_PAUSE = 1.0
"""Seconds to pause after a 429 that hints at nothing."""

# Refill sums drift in the last bits; an exact fit must not wait another turn for them.
_FIT_SLACK = 1e-6
# A computed wait that rounds to nothing must not become a busy loop.
_MIN_SLEEP = 0.001

_REQUESTS = "requests"
_TOKENS = "tokens"


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


_UNCONFIGURED = LimitSettings()


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


# Go's time.Duration.String() forms ("1m30.5s", "12ms", "6m0s", "1h2m3s", "500µs").
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,  # Go accepts the micro sign and the Greek mu alike
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_go_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration (``1s``, ``6m0s``, ``12ms``, ``1m30.5s``, ``0s``, ``0``);
    a bare number is read as seconds, which some OpenAI-compatible servers send. Anything
    else (including negative values) gives ``None``: a header we cannot read is ignored, it
    never fails a call. ``llmspool.core.units.parse_duration`` is for operators' config and raises,
    and does not know Go's ``us``/``ns`` units, hence this one."""
    if text is None:
        return None
    compact = text.strip().removeprefix("+")
    if not compact:
        return None
    bare = _number(compact)
    if bare is not None:
        return bare
    position = 0
    total = 0.0
    for match in _GO_PART.finditer(compact):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _GO_UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(compact) or not math.isfinite(total):
        return None
    return total


def _number(text: str | None) -> float | None:
    """A finite, non-negative number in a header, or ``None``."""
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    # Plain dicts from tests or plugins may keep the upstream's capitalisation.
    return {name.lower(): value for name, value in headers.items()}


def retry_pause(headers: Mapping[str, str]) -> float:
    """Seconds a 429 asks us to wait: ``retry-after-ms``, else ``retry-after`` (seconds or an
    HTTP date), else the reset of the exhausted bucket(s), else ``DEFAULT_PAUSE``."""
    lowered = _lowered(headers)
    milliseconds = _number(lowered.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000.0
    retry_after = lowered.get("retry-after")
    if retry_after is not None:
        seconds = _number(retry_after)
        if seconds is not None:
            return seconds
        try:
            when = parsedate_to_datetime(retry_after)
        except (TypeError, ValueError, IndexError):
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return max(0.0, when.timestamp() - time.time())
    exhausted: list[float] = []
    others: list[float] = []
    for kind in (_REQUESTS, _TOKENS):
        reset = parse_go_duration(lowered.get(f"x-ratelimit-reset-{kind}"))
        if reset is None:
            continue
        remaining = _number(lowered.get(f"x-ratelimit-remaining-{kind}"))
        (exhausted if remaining is not None and remaining < 1 else others).append(reset)
    # "reset" is when a bucket is full again: for the bucket(s) the 429 says are empty, that
    # is the honest answer. If none says so, the soonest reset is the least harmful guess; our
    # own drained bucket paces the restart anyway.
    if exhausted:
        return max(exhausted)
    if others:
        return min(others)
    return DEFAULT_PAUSE


class _Ramp:
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


class _Bucket:
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

    def ceiling(self, now: float, ramp: _Ramp) -> float:
        # The burst ramps back with the rate, so that a long pause cannot end in a full burst.
        return self.capacity * ramp.fraction(now)

    def settle(self, now: float, ramp: _Ramp) -> None:
        if now > self.updated:
            gained = self.rate * (ramp.progress(now) - ramp.progress(self.updated))
            self.level = min(self.level + gained, self.ceiling(now, ramp))
            self.updated = now

    def ready_at(self, need: float, now: float, ramp: _Ramp) -> float:
        """When a settled bucket will hold ``need`` (``need`` at most ``capacity``)."""
        ready = now
        missing = need - self.level
        if missing > _FIT_SLACK:
            ready = ramp.time_at_progress(ramp.progress(now) + missing / self.rate)
        if need > self.ceiling(now, ramp):
            ready = max(ready, ramp.time_at_fraction(need / self.capacity))
        return ready


@dataclass(frozen=True, slots=True)
class _Mark:
    """A resource's books right after a call was charged, for correcting from its headers."""

    level: float | None
    """Our bucket's level after the charge (``None``: no bucket yet, the limit was unknown)."""
    charged: float
    """The resource's running total of net charges, this call's included."""
    corrected: float
    """The resource's running total of lowerings from headers and 429s."""
    at: float
    """When the call was admitted."""


class _Resource:
    """One of a key's two limits (requests or tokens): the bucket, once a limit is known, and
    the running totals the header correction needs."""

    __slots__ = ("bucket", "charged", "configured", "corrected", "learned")

    def __init__(self, configured: int, now: float) -> None:
        self.configured = configured
        self.learned = 0
        self.bucket = _Bucket(configured, configured, now) if configured else None
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

    def settle(self, now: float, ramp: _Ramp) -> None:
        if self.bucket is not None:
            self.bucket.settle(now, ramp)

    def fits(self, amount: float) -> bool:
        return self.bucket is None or self.bucket.level + _FIT_SLACK >= amount

    def ready_at(self, amount: float, now: float, ramp: _Ramp) -> float:
        if self.bucket is None:
            return -math.inf
        return self.bucket.ready_at(amount, now, ramp)

    def charge(self, amount: float, now: float) -> _Mark:
        self.charged += amount
        level = None
        if self.bucket is not None:
            self.bucket.level -= amount
            level = self.bucket.level
        return _Mark(level, self.charged, self.corrected, now)

    def give_back(self, amount: float, now: float, ramp: _Ramp) -> None:
        """Return ``amount`` to the bucket (take it, if negative)."""
        self.charged -= amount
        if self.bucket is not None:
            self.bucket.settle(now, ramp)
            self.bucket.level = min(self.bucket.level + amount, self.bucket.ceiling(now, ramp))

    def learn(self, limit: int, now: float, ramp: _Ramp) -> None:
        if limit <= 0 or limit == self.learned:
            return
        self.learned = limit
        if self.configured:
            return  # the operator's limit stays in force; the learned one is only shown
        if self.bucket is None:
            # Nothing known yet: start full (the usual case), less during a 429's pause and
            # ramp; the same answer's remaining-* header corrects it right after.
            self.bucket = _Bucket(limit, limit * ramp.fraction(now), now)
        else:
            self.bucket.settle(now, ramp)
            self.bucket.capacity = limit
            self.bucket.level = min(self.bucket.level, limit)

    def lower_to(self, estimate: float) -> None:
        if self.bucket is not None and estimate < self.bucket.level:
            self.corrected += self.bucket.level - estimate
            self.bucket.level = estimate

    def correct(
        self, remaining: float, mark: _Mark | None, upstream_limit: int, now: float
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


class _Waiter:
    __slots__ = ("error", "interactive", "permit", "tokens", "wake")

    def __init__(self, tokens: int, interactive: bool) -> None:
        self.tokens = tokens
        self.interactive = interactive
        self.wake: anyio.Event | None = None
        self.permit: Permit | None = None
        self.error: RequestTooLarge | None = None

    def done(self) -> bool:
        return self.permit is not None or self.error is not None


def _wake(waiter: _Waiter) -> None:
    if waiter.wake is not None:
        waiter.wake.set()


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
        self, key: _KeyLimits, seq: int, tokens: int, admitted_at: float, marks: dict[str, _Mark]
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


class _KeyLimits:
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
        self.ramp = _Ramp(ramp_seconds)
        self.resources = {
            _REQUESTS: _Resource(settings.rpm, now),
            _TOKENS: _Resource(settings.tpm, now),
        }
        self.interactive: deque[_Waiter] = deque()
        self.deferred: deque[_Waiter] = deque()
        # In admission order (dicts keep it): the oldest stands in for an unnamed answer.
        self.in_flight: dict[int, Permit] = {}
        self.admissions = 0
        self.rate_limited = 0

    # -- admission -------------------------------------------------------------------------

    def check_size(self, tokens: int) -> None:
        limit = self.resources[_TOKENS].limit
        if limit and tokens > limit:
            raise RequestTooLarge(self.provider, self.model, limit, tokens)

    def enqueue(self, waiter: _Waiter) -> None:
        (self.interactive if waiter.interactive else self.deferred).append(waiter)

    def head(self) -> _Waiter | None:
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

    def _fits(self, waiter: _Waiter, now: float) -> bool:
        return (
            not self.ramp.paused(now)
            and self._slot_free()
            and self.resources[_REQUESTS].fits(1)
            and self.resources[_TOKENS].fits(waiter.tokens)
        )

    def pump(self, now: float, *, wake_blocked: bool = True) -> None:
        """Admit waiters from the head while they fit, then wake the head that does not, so
        that it times its own wait against the state as it is now (``wake_blocked=False``:
        nothing changed for it, only a waiter arrived)."""
        self._settle(now)
        token_limit = self.resources[_TOKENS].limit
        while (head := self.head()) is not None:
            if token_limit and head.tokens > token_limit:
                # Queued while the limit was unknown or larger: fail it rather than block all.
                self._pop(head)
                head.error = RequestTooLarge(self.provider, self.model, token_limit, head.tokens)
                _wake(head)
                continue
            if not self._fits(head, now):
                if wake_blocked:
                    _wake(head)
                return
            self._pop(head)
            head.permit = self._admit(head.tokens, now)
            _wake(head)

    def _pop(self, waiter: _Waiter) -> None:
        (self.interactive if waiter.interactive else self.deferred).popleft()

    def _admit(self, tokens: int, now: float) -> Permit:
        seq = self.admissions
        self.admissions += 1
        marks = {
            _REQUESTS: self.resources[_REQUESTS].charge(1, now),
            _TOKENS: self.resources[_TOKENS].charge(tokens, now),
        }
        permit = Permit(self, seq, tokens, now, marks)
        self.in_flight[seq] = permit
        return permit

    def delay(self, waiter: _Waiter, now: float) -> float:
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
            self.resources[_REQUESTS].ready_at(1, now, self.ramp),
            self.resources[_TOKENS].ready_at(waiter.tokens, now, self.ramp),
        )
        return max(ready - now, _MIN_SLEEP)

    def abandon(self, waiter: _Waiter) -> None:
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
            self.resources[_TOKENS].give_back(refund, now, self.ramp)
        self.pump(now)

    def _undo(self, permit: Permit) -> None:
        permit._released = True
        del self.in_flight[permit._seq]
        now = self.clock()
        self.resources[_REQUESTS].give_back(1, now, self.ramp)
        self.resources[_TOKENS].give_back(permit.tokens, now, self.ramp)

    def _learn(self, headers: dict[str, str], now: float) -> dict[str, int]:
        limits: dict[str, int] = {}
        for kind, resource in self.resources.items():
            limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
            if limit is not None and limit >= 1:
                limits[kind] = int(limit)
                resource.learn(int(limit), now, self.ramp)
        return limits

    def observe(self, headers: Mapping[str, str], permit: Permit | None) -> None:
        lowered = _lowered(headers)
        now = self.clock()
        self._settle(now)
        limits = self._learn(lowered, now)
        basis = permit if permit is not None and permit._key is self else self._oldest()
        for kind, resource in self.resources.items():
            remaining = _number(lowered.get(f"x-ratelimit-remaining-{kind}"))
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
        lowered = _lowered(headers)
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
        requests = self.resources[_REQUESTS]
        tokens = self.resources[_TOKENS]
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


def _available(resource: _Resource) -> int | None:
    return None if resource.bucket is None else math.floor(resource.bucket.level + _FIT_SLACK)


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
            key: _KeyLimits(key[0], key[1], value, clock, ramp_seconds)
            for key, value in settings.items()
        }

    def _limits(self, provider: str, model: str) -> _KeyLimits:
        key = (provider, model)
        limits = self._keys.get(key)
        if limits is None:
            limits = _KeyLimits(provider, model, self._default, self._clock, self._ramp_seconds)
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
        waiter = _Waiter(tokens, interactive)
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
        return limits is not None and limits.resources[_TOKENS].limit > 0

    def snapshot(self) -> dict[str, Any]:
        """Per ``"provider/model"``: the limits in force and where they came from, what is
        available now, calls in flight and waiting, the pause, 429s seen, and the ramp."""
        return {
            f"{provider}/{model}": limits.snapshot()
            for (provider, model), limits in sorted(self._keys.items())
        }
