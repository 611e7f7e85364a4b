"""When a failed call is sent again: tenacity's loop, with the daemon's rules for each decision.

``Retrier.attempts`` yields tenacity attempts for one call. A failure is retried only when
every rule says yes, and each "no" and each "yes" is logged with its reason:

- its class is retryable (``failures.classify``: rate limits and passing failures);
- attempts are left (``[retry] max_attempts``, first attempt included);
- the provider's retry budget has room: retries are at most ``budget_fraction`` of its calls
  over a sliding ``budget_window`` (with ``budget_min_retries`` always allowed), so that when a
  provider fails broadly the daemon adds at most that share to its load instead of tripling it;
- the wait fits before the call's deadline.

The wait is full jitter, ``uniform(0, min(backoff_max, backoff_min * 2^(n-1)))`` (tenacity's
``wait_random_exponential``), or the provider's hint (``retry-after-ms``, ``retry-after``)
when that is longer: a provider that says when to come back is believed. A request cut off by
the server closing an idle kept-alive connection as it went out (``FailureClass.IDLE_CLOSE``)
is sent again at once: nothing says the provider needs a pause, and a wait of up to
``backoff_min`` (a second by default) was the whole of such a call's extra latency.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from llmspool.core.config.sections import RetryConfig
from llmspool.core.errors import ApiError, UpstreamError
from llmspool.resilience.failures import classify

log = logging.getLogger(__name__)


def retry_hint(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the provider asks to wait (``retry-after-ms``, else ``retry-after`` as seconds
    or an HTTP date), or None when it says nothing readable."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            value = float(raw_ms) / 1000
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RetryBudget:
    """Calls and retries of one provider over a sliding window, in one-second buckets."""

    def __init__(self, fraction: float, window: float, min_retries: int,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self._fraction = fraction
        self._min_retries = min_retries
        self._clock = clock
        self._size = max(1, math.ceil(window))
        self._calls = [0] * self._size
        self._retries = [0] * self._size
        self._stamps = [-1] * self._size
        self.denied = 0

    def _bucket(self) -> int:
        second = int(self._clock())
        index = second % self._size
        if self._stamps[index] != second:  # a bucket from an earlier lap: start it afresh
            self._stamps[index] = second
            self._calls[index] = 0
            self._retries[index] = 0
        return index

    def _live(self, counts: list[int]) -> int:
        oldest = int(self._clock()) - self._size
        return sum(c for c, stamp in zip(counts, self._stamps, strict=True) if stamp > oldest)

    def record_call(self) -> None:
        """A first attempt of a call."""
        self._calls[self._bucket()] += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget, if it has one."""
        index = self._bucket()
        allowed = max(self._min_retries, math.floor(self._fraction * self._live(self._calls)))
        if self._live(self._retries) >= allowed:
            self.denied += 1
            return False
        self._retries[index] += 1
        return True

    def snapshot(self) -> dict[str, int]:
        return {"calls": self._live(self._calls), "retries": self._live(self._retries),
                "denied": self.denied}


@dataclass(slots=True)
class CallRetries:
    """One call's retry state, shared by tenacity's callbacks and the dispatcher."""

    provider: str
    request_id: str
    flex: bool
    deadline_at: float | None
    hint: float | None = None
    at_once: bool = False  # the last failure's retry goes without waiting
    reasons: list[str] = field(default_factory=list)


class Retrier:
    """The retry policy of every provider (each with its own settings and budget)."""

    def __init__(self, default: RetryConfig, per_provider: Mapping[str, RetryConfig],
                 *, clock: Callable[[], float] = time.monotonic,
                 calendar: Callable[[], float] = time.time) -> None:
        """``clock`` paces the retry budgets; ``calendar`` is the daemon's clock, which
        calls' deadlines are on."""
        self._default = default
        self._calendar = calendar
        self._per_provider = per_provider
        self._clock = clock
        self._budgets: dict[str, RetryBudget] = {}
        self.retries = 0

    def settings(self, provider: str) -> RetryConfig:
        return self._per_provider.get(provider, self._default)

    def budget(self, provider: str) -> RetryBudget:
        budget = self._budgets.get(provider)
        if budget is None:
            settings = self.settings(provider)
            budget = self._budgets[provider] = RetryBudget(
                settings.budget_fraction, settings.budget_window, settings.budget_min_retries,
                clock=self._clock,
            )
        return budget

    async def run(self, state: CallRetries, attempt: Callable[[int], Awaitable[None]]) -> None:
        """``attempt(1)``, then the retries the rules allow (``attempt(2)``...), raising the last
        failure.

        The first attempt goes without tenacity: building its loop for every call cost about a
        fifth of the daemon's throughput, and most calls succeed first time. A first failure is
        handed to tenacity as its own attempt 1, so every decision after it is tenacity's,
        exactly as if the loop had run from the start.
        """
        self.budget(state.provider).record_call()
        try:
            await attempt(1)
            return
        except Exception as error:  # judged by tenacity's rules below
            first = error
        async for retry in self.attempts(state, counted=True):
            with retry:
                number = retry.retry_state.attempt_number
                if number == 1:
                    raise first
                await attempt(number)

    def attempts(self, state: CallRetries, *, counted: bool = False) -> AsyncRetrying:
        """Tenacity's loop for one call: ``async for attempt in retrier.attempts(state)``
        (``counted``: the call is already in the retry budget's count)."""
        settings = self.settings(state.provider)
        budget = self.budget(state.provider)
        if not counted:
            budget.record_call()
        jitter = wait_random_exponential(multiplier=settings.backoff_min, max=settings.backoff_max)

        def should_retry(exc: BaseException) -> bool:
            if not isinstance(exc, ApiError):
                return False
            failure = classify(exc, flex=state.flex)
            if not failure.kind.retryable:
                log.info("%s: not retried: %s", state.request_id, failure.reason)
                return False
            state.reasons.append(failure.reason)
            headers = exc.upstream_headers if isinstance(exc, UpstreamError) else {}
            state.hint = retry_hint(headers)
            state.at_once = failure.kind.at_once
            return True

        def wait(retry_state: RetryCallState) -> float:
            if state.at_once:
                return 0.0
            return max(jitter(retry_state), state.hint or 0.0)

        def stop(retry_state: RetryCallState) -> bool:
            reason = state.reasons[-1] if state.reasons else "?"
            attempt = retry_state.attempt_number
            if attempt >= settings.max_attempts:
                log.info("%s: not retried after %d attempts (%s): [retry] max_attempts",
                         state.request_id, attempt, reason)
                return True
            pause = retry_state.upcoming_sleep
            if state.deadline_at is not None and \
                    self._calendar() + pause >= state.deadline_at:
                log.info("%s: not retried (%s): waiting %.1fs would pass its deadline",
                         state.request_id, reason, pause)
                return True
            if not budget.try_spend():
                log.warning("%s: not retried (%s): %s's retry budget is spent (retries are "
                            "kept to [retry] budget_fraction of its calls)",
                            state.request_id, reason, state.provider)
                return True
            self.retries += 1
            log.info("%s: retry %d in %.2fs after %s", state.request_id, attempt, pause, reason)
            return False

        return AsyncRetrying(
            sleep=anyio.sleep,
            retry=retry_if_exception(should_retry),
            wait=wait,
            stop=stop,
            reraise=True,
        )

    def snapshot(self) -> dict[str, object]:
        return {"retries": self.retries,
                "budgets": {name: b.snapshot() for name, b in self._budgets.items()}}
