"""Flex: a 429 *resource unavailable* means "no flex capacity", not a rate limit.

The call is retried on flex after a full-jitter backoff while its deadline allows (each attempt
bounded so that a standard call still fits), then falls back to standard where allowed, or
fails with code ``flex_unavailable``. Cost is always computed at the tier the provider reports
it served (``accounts``), which also counts what flex served and saved here.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import anyio
from opentelemetry import metrics
from opentelemetry.trace import Span

from llmspool.core.calls import Tier, Usage
from llmspool.core.config.sections import FlexConfig
from llmspool.core.errors import ApiError, UpstreamUnreachable
from llmspool.core.pricing import usd
from llmspool.core.tracing import Tally
from llmspool.messages import Call, FlexStatus
from llmspool.policy.planner import Planner

MIN_FLEX_ATTEMPT = 1.0  # seconds; a shorter flex attempt is not worth starting

# ``Attempts.run``: a call's attempts on a tier (with the time a flex attempt may take) until
# one answers, raising the last failure.
RunAttempts = Callable[[Call, Tier, float | None, Span], Awaitable[None]]


class NoFlexCapacity(Exception):
    """The upstream answered 429 *resource unavailable* to a flex attempt."""


class FlexTimedOut(Exception):
    """A flex attempt ran out of the time its deadline allowed (not retried on flex)."""

    def __init__(self, error: UpstreamUnreachable) -> None:
        super().__init__(error.message)
        self.error = error


class FlexMetrics:
    """Flex counters for ``/v1/status`` and, when tracing is on, OpenTelemetry metrics."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.requests = 0
        self.tokens = 0
        self.fallbacks = 0
        self.resource_unavailable = 0
        self.saved_picodollars = 0
        self._requests = Tally(meter, "llmspool.flex.requests", "{request}",
                           "calls served on flex")
        self._tokens = Tally(meter, "llmspool.flex.tokens", "{token}",
                           "tokens served on flex")
        self._fallbacks = Tally(meter, "llmspool.flex.fallbacks", "{request}",
                           "flex calls sent again on standard")
        self._unavailable = Tally(meter, "llmspool.flex.resource_unavailable", "{error}",
                           "429 resource unavailable answers to flex")
        self._saved = Tally(meter, "llmspool.flex.saved", "USD",
                           "saved by flex against standard prices")

    def served(self, usage: Usage, saved: int) -> None:
        self.requests += 1
        self.tokens += usage.total_tokens
        self.saved_picodollars += saved
        self._requests.add(1)
        self._tokens.add(usage.total_tokens)
        self._saved.add(usd(saved))

    def fell_back(self) -> None:
        self.fallbacks += 1
        self._fallbacks.add(1)

    def unavailable(self) -> None:
        self.resource_unavailable += 1
        self._unavailable.add(1)

    def snapshot(self) -> FlexStatus:
        return {
            "requests": self.requests,
            "tokens": self.tokens,
            "standard_fallbacks": self.fallbacks,
            "resource_unavailable_errors": self.resource_unavailable,
            "estimated_savings_usd": usd(self.saved_picodollars),
        }


class FlexPolicy:
    """Serves the calls the planner put on flex, through ``run_attempts`` (given, not
    imported: the attempts raise this module's signals, so they sit below it)."""

    def __init__(self, config: FlexConfig, planner: Planner, counters: FlexMetrics,
                 run_attempts: RunAttempts) -> None:
        self._config = config
        self._planner = planner
        self._counters = counters
        self._run_attempts = run_attempts

    async def serve(self, call: Call, span: Span) -> None:
        """Flex with retries on *resource unavailable*, escalating to standard in time: the
        deadline bounds the retries (each leaves room for a standard call after it), and a
        count only where the policy sets one (interactive calls: ``[flex] max_retries``)."""
        policy = call.policy
        limit = policy.flex_max_retries
        attempt = -1
        while limit is None or attempt < limit:
            attempt += 1
            budget = self._planner.flex_budget(call.provider, call.model, policy, call.deadline_at)
            if budget < MIN_FLEX_ATTEMPT:
                span.add_event("flex: the deadline leaves no room for another flex attempt")
                break
            try:
                await self._run_attempts(call, Tier.FLEX, budget, span)
                return
            except NoFlexCapacity:
                self._counters.unavailable()
                span.add_event("flex: resource unavailable", {"attempt": attempt + 1})
            except FlexTimedOut as timed_out:
                if budget >= self._config.timeout:
                    raise timed_out.error from None
                span.add_event("flex: escalated, the attempt would not finish in time")
                break
            if limit is None or attempt < limit:
                step = min(self._config.backoff_max, self._config.backoff_min * 2**attempt)
                room = self._planner.flex_budget(call.provider, call.model, policy,
                                                 call.deadline_at) - MIN_FLEX_ATTEMPT
                await anyio.sleep(max(0.0, min(random.uniform(0, step), room)))
        if not policy.fallback_to_standard:
            raise ApiError(
                "no flex capacity (429 resource unavailable) within the request's retries and "
                "deadline, and falling back to standard is off for it "
                "([flex] fallback_to_standard, or its operation's)",
                status=429, code="flex_unavailable", error_type="resource_unavailable",
            )
        self._counters.fell_back()
        span.add_event("flex: falling back to standard")
        await self._run_attempts(call, Tier.STANDARD, None, span)
