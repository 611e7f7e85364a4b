"""The planner: which tier serves a call, given its deadline, its policy, and what was observed.

For each call the planner picks the cheapest tier whose expected completion fits before the
deadline. "Expected" is the 95th percentile of the latencies observed per (provider, model,
tier), times ``[planner] margin``, plus ``[planner] safety``; before anything is observed, the
configured defaults stand in. Flex is chosen only if it fits *and* leaves room to fall back to
standard in time (when fallback is allowed), so a flex call can always be escalated.

A tier named explicitly (``service_tier`` in the request, or ``tier`` of the call's operation)
is honoured as it is. A call without a deadline is served on standard, as before. A deadline
shorter than a standard call's budget goes up instead of down: to the priority tier, when
``[planner] allow_priority`` is on and the model has a priority price (budgets still apply).

Batch is for deferred work only (the job keeper asks ``batch_fits``; an interactive call is
never batched). A batch is a hedged tier: the poller cancels a batch still open at its
escalation point (time for a cancel to take effect, ``[batch] cancel_wait``, and for a standard
call before the earliest deadline) and sends its unfinished lines directly, so escalation, not
a percentile, guarantees the deadline. A batch is therefore worth making while its *expected*
(median) turnaround fits before the escalation point: observed per provider and model, or the
prior ``[planner] default_batch_latency`` (2.5 min, the published median of small OpenAI
batches) until one has finished.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from llmspool.core.calls import Tier
from llmspool.core.clock import SYSTEM_CLOCK, Clock
from llmspool.core.config.sections import Config, OperationConfig
from llmspool.core.pricing import PriceTable, TierPrice
from llmspool.policy.billing import PriceBook

WINDOW = 200  # latencies kept per (provider, model, tier)
BATCH_WINDOW = 24 * 3600.0  # OpenAI's completion window: a batch ends (or expires) by then
PlanKey = tuple[str, str, Tier]


@dataclass(frozen=True, slots=True)
class TierPolicy:
    """What a call allows: a forced tier, flex at all, and falling back from flex to standard."""

    forced: Tier | None = None
    flex: bool = True
    fallback_to_standard: bool = True
    flex_max_retries: int | None = 3  # None: only the deadline bounds flex retries
    batch: bool = True


class LatencyBook:
    """Observed latencies per (provider, model, tier), and their 95th percentile."""

    def __init__(self, defaults: Mapping[Tier, float]) -> None:
        self._defaults = dict(defaults)
        self._samples: dict[PlanKey, deque[float]] = {}
        self._p95: dict[PlanKey, float] = {}

    def observe(self, key: PlanKey, seconds: float) -> None:
        samples = self._samples.get(key)
        if samples is None:
            samples = self._samples[key] = deque(maxlen=WINDOW)
        samples.append(seconds)
        self._p95.pop(key, None)

    def observe_many(self, observations: Iterable[tuple[PlanKey, float]]) -> None:
        for key, seconds in observations:
            self.observe(key, seconds)

    def p50(self, key: PlanKey) -> float:
        """The median observed (the configured default until something is observed)."""
        samples = self._samples.get(key)
        if not samples:
            return self._defaults.get(key[2], self._defaults[Tier.STANDARD])
        ordered = sorted(samples)
        return ordered[len(ordered) // 2]

    def p95(self, key: PlanKey) -> float:
        cached = self._p95.get(key)
        if cached is not None:
            return cached
        samples = self._samples.get(key)
        if not samples:
            return self._defaults.get(key[2], self._defaults[Tier.STANDARD])
        ordered = sorted(samples)
        value = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        self._p95[key] = value
        return value

    def snapshot(self) -> dict[str, dict[str, float | int]]:
        return {
            f"{provider}/{model}/{tier.value}": {
                "p95_s": round(self.p95((provider, model, tier)), 3),
                "samples": len(samples),
            }
            for (provider, model, tier), samples in sorted(self._samples.items())
        }


class Planner:
    """Chooses tiers and flex budgets from the config, the prices and the latency book."""

    def __init__(self, config: Config, prices: PriceBook | PriceTable, book: LatencyBook,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._config = config
        # The daemon's clock: deadlines are read against it, and the actors that hold the
        # planner read the time from it (a test's ``ManualClock`` moves them all at once).
        self.clock = clock
        self.prices = _as_book(prices)
        self._prices = self.prices.table
        self.book = book

    def set_prices(self, prices: PriceBook | PriceTable) -> None:
        """The price book from now on (SIGHUP), for tier choices and would-have costs."""
        self.prices = _as_book(prices)
        self._prices = self.prices.table

    def price(self, provider: str, model: str, tier: Tier) -> TierPrice | None:
        """The current price of ``model`` on ``tier`` (None: not priced there)."""
        return self._prices.price(provider, model, tier)

    def policy(self, operation: str | None, explicit: Tier | None, *,
               deferred: bool = False) -> TierPolicy:
        """The policy of a call tagged ``operation`` that asked for ``explicit`` (if any);
        ``deferred``: a job's request, whose flex retries only its deadline bounds (unless
        ``[flex] deferred_max_retries`` or the operation's ``max_retries`` says otherwise)."""
        flex = self._config.flex
        op = self._config.operations.get(operation or "") or OperationConfig()
        forced = explicit
        if forced is None and op.tier != "auto":
            forced = Tier(op.tier)
        return TierPolicy(
            forced=forced,
            flex=flex.enabled if op.flex is None else op.flex,
            fallback_to_standard=(
                flex.fallback_to_standard
                if op.fallback_to_standard is None
                else op.fallback_to_standard
            ),
            flex_max_retries=(op.max_retries if op.max_retries is not None
                              else flex.deferred_max_retries if deferred else flex.max_retries),
            batch=self._config.batch.enabled if op.batch is None else op.batch,
        )

    def operation_deadline(self, operation: str | None) -> float:
        """Seconds a job of ``operation`` gets when it names no deadline."""
        op = self._config.operations.get(operation or "")
        if op is not None and op.deadline is not None:
            return op.deadline
        return self._config.jobs.default_deadline

    def choose(
        self, provider: str, model: str, policy: TierPolicy, deadline_at: float | None,
        now: float | None = None,
    ) -> Tier:
        if policy.forced is not None and policy.forced is not Tier.BATCH:
            return policy.forced
        if deadline_at is None:
            return Tier.STANDARD
        remaining = deadline_at - (self.clock.now() if now is None else now)
        standard = self.need(provider, model, Tier.STANDARD)
        if self.flex_possible(provider, model, policy):
            reserve = standard if policy.fallback_to_standard else 0.0
            if remaining >= self.need(provider, model, Tier.FLEX) + reserve:
                return Tier.FLEX
        if remaining < standard and self.priority_possible(provider, model):
            return Tier.PRIORITY
        return Tier.STANDARD

    def priority_possible(self, provider: str, model: str) -> bool:
        """Whether the planner may pay for priority: allowed, and priced for ``model``."""
        return self._config.planner.allow_priority and \
            self._prices.price(provider, model, Tier.PRIORITY) is not None

    def fastest_expected(self, provider: str, model: str) -> float:
        """Seconds the fastest tier the planner may choose typically takes (its median): a
        deadline shorter than this is one no tier can be expected to meet."""
        typical = self.book.p50((provider, model, Tier.STANDARD))
        if self.priority_possible(provider, model):
            typical = min(typical, self.book.p50((provider, model, Tier.PRIORITY)))
        return typical

    def batch_fits(
        self, provider: str, model: str, policy: TierPolicy, deadline_at: float,
        now: float | None = None,
    ) -> bool:
        """Whether deferred work due at ``deadline_at`` may go through a batch now."""
        if policy.forced is not None and policy.forced is not Tier.BATCH:
            return False
        if self._prices.price(provider, model, Tier.BATCH) is None:
            return False
        if not policy.batch and policy.forced is not Tier.BATCH:
            return False
        return (self.clock.now() if now is None else now) <= self.latest_batch_submit(
            provider, model, deadline_at)

    def latest_batch_submit(self, provider: str, model: str, deadline_at: float) -> float:
        """The last moment a batch carrying work due at ``deadline_at`` may be created: its
        expected turnaround still ends before the point where it would be escalated."""
        return deadline_at - self.batch_expected(provider, model) - self.escalation_reserve(
            provider, model)

    def batch_expected(self, provider: str, model: str) -> float:
        """Seconds a batch is expected to take (the median turnaround), within 24 h."""
        return min(BATCH_WINDOW, self.book.p50((provider, model, Tier.BATCH)))

    def escalation_reserve(self, provider: str, model: str) -> float:
        """Seconds before a deadline at which a late batch must start giving its work back:
        time for a cancel to take effect, then for a standard call."""
        return self._config.batch.cancel_wait + self.need(provider, model, Tier.STANDARD)

    def flex_possible(self, provider: str, model: str, policy: TierPolicy) -> bool:
        return policy.flex and self._prices.price(provider, model, Tier.FLEX) is not None

    def need(self, provider: str, model: str, tier: Tier) -> float:
        """Seconds to budget for one call on ``tier``: p95 x margin + safety."""
        planner = self._config.planner
        return self.book.p95((provider, model, tier)) * planner.margin + planner.safety

    def flex_budget(
        self, provider: str, model: str, policy: TierPolicy, deadline_at: float | None,
        now: float | None = None,
    ) -> float:
        """Seconds the next flex attempt may take before it must give way to standard."""
        timeout = self._config.flex.timeout
        if deadline_at is None:
            return timeout
        remaining = deadline_at - (self.clock.now() if now is None else now)
        if policy.fallback_to_standard:
            remaining -= self.need(provider, model, Tier.STANDARD)
        return max(0.0, min(timeout, remaining))


def default_latencies(config: Config) -> dict[Tier, float]:
    planner = config.planner
    return {
        Tier.STANDARD: planner.default_standard_latency,
        Tier.PRIORITY: planner.default_standard_latency,
        Tier.FLEX: planner.default_flex_latency,
        Tier.BATCH: planner.default_batch_latency,
    }


def _as_book(prices: PriceBook | PriceTable) -> PriceBook:
    return prices if isinstance(prices, PriceBook) else PriceBook.from_table(prices)
