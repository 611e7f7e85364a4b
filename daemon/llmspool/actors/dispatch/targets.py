"""Where each attempt goes, past open circuit breakers, and the breakers' bookkeeping.

An attempt goes to the call's own provider, model and tier while its breaker allows. Past an
open breaker it goes to a slower tier the deadline allows (standard to flex, flex to standard
where the call may fall back), else to the ``[failover]`` provider with its model, else it is
refused with 503 ``circuit_open``. Each attempt's outcome is told back to the breaker it went
through; every transition is logged, traced, counted, and kept (the last 20) for the status.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from llmspool.actors.dispatch.flex import MIN_FLEX_ATTEMPT
from llmspool.core.calls import Tier
from llmspool.core.config.sections import BreakerConfig, FailoverConfig
from llmspool.core.errors import ApiError, ServiceUnavailable, UpstreamError
from llmspool.core.units import format_duration
from llmspool.messages import Call
from llmspool.policy.billing import PriceBook
from llmspool.policy.planner import Planner
from llmspool.resilience.breaker import Breakers, BreakerState, CircuitBreaker, Transition
from llmspool.resilience.failures import FailureClass, classify

# The dispatcher's logger, as before the split: its name is in every log line.
log = logging.getLogger("llmspool.actors.dispatcher")
MIN_ATTEMPT = 0.05  # seconds; with less time left, the call has run out of time


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: usually the call's own provider, model and tier; past an open
    breaker, a slower tier or the failover provider (``failover_from`` names the original)."""

    provider: str
    model: str
    tier: Tier
    body: bytes
    breaker: CircuitBreaker
    probe: bool
    time_limit: float
    timeout_name: str
    failover_from: str | None = None


class Targets:
    """The circuit breakers of every (provider, tier), and the routing past the open ones."""

    def __init__(self, breaker: BreakerConfig, failover: FailoverConfig,
                 timeouts: Mapping[str, float], prices: PriceBook, planner: Planner,
                 meter: metrics.Meter) -> None:
        self._failover = failover
        self._timeouts = timeouts
        self._prices = prices
        self._planner = planner
        self._breakers = Breakers(breaker, self._breaker_moved)
        # The span of the call that last asked or told a breaker, set just before it does:
        # a breaker moves only then (synchronously), so a move is told on that call's span.
        self._telling: trace.Span = trace.INVALID_SPAN
        self._transitions: list[dict[str, Any]] = []
        self._transitions_counter = meter.create_counter(
            "llmspool.breaker.transitions", "{transition}", "circuit breaker state changes")
        meter.create_observable_gauge(
            "llmspool.breaker.state", [self._observe_breakers], "1",
            "circuit breakers by provider, tier and state: 1 for the state each is in, else 0")

    def set_prices(self, prices: PriceBook) -> None:
        self._prices = prices

    def route(self, call: Call, tier: Tier, flex_limit: float | None,
              ends_at: float, span: trace.Span) -> Target:
        """Where this attempt goes, past open breakers; raises 503 ``circuit_open`` if nowhere.
        A breaker that moves (its cooldown over) says so on ``span``, the call's."""
        self._telling = span
        breaker = self._breakers.get(call.provider, tier)
        probe = breaker.allow()
        if probe is not None:
            if tier is Tier.FLEX and flex_limit is not None:
                return Target(call.provider, call.model, tier, call.body,
                              breaker, probe, flex_limit,
                              f"the flex attempt's time limit ({flex_limit:.0f}s: what the "
                              "deadline leaves after room for a standard call, at most [flex] "
                              "timeout)")
            return self._standard_target(call, call.provider, call.model, tier, breaker, probe,
                                         ends_at)
        if tier is Tier.STANDARD and call.policy.flex and call.policy.forced is None and \
                self._prices.price(call.provider, call.model, Tier.FLEX) is not None:
            budget = self._planner.flex_budget(call.provider, call.model, call.policy,
                                               call.deadline_at)
            flex_breaker = self._breakers.get(call.provider, Tier.FLEX)
            if budget >= MIN_FLEX_ATTEMPT and (flex_probe := flex_breaker.allow()) is not None:
                return Target(call.provider, call.model, Tier.FLEX,
                              call.body, flex_breaker, flex_probe, budget,
                              "the flex attempt's time limit (standard's breaker is open)")
        if tier is Tier.FLEX and call.policy.fallback_to_standard:
            standard = self._breakers.get(call.provider, Tier.STANDARD)
            if (standard_probe := standard.allow()) is not None:
                return self._standard_target(call, call.provider, call.model, Tier.STANDARD,
                                             standard, standard_probe, ends_at)
        stand_in = self._failover.providers.get(call.provider)
        if stand_in is not None:
            stand_in_breaker = self._breakers.get(stand_in, Tier.STANDARD)
            if (stand_in_probe := stand_in_breaker.allow()) is not None:
                model = self._failover.models.get(call.model, call.model)
                target = self._standard_target(call, stand_in, model, Tier.STANDARD,
                                               stand_in_breaker, stand_in_probe, ends_at)
                return Target(target.provider, target.model, target.tier,
                              _body_for_failover(call.body, model), target.breaker,
                              target.probe, target.time_limit, target.timeout_name,
                              failover_from=call.provider)
        wait = max(1.0, breaker.retry_after())
        where = (f"its failover {stand_in} is failing too" if stand_in else
                 f"no failover is configured ([failover] {call.provider} = \"PROVIDER\")")
        raise ServiceUnavailable(
            f"{call.provider} is failing on the {tier.value} tier, so its circuit breaker is "
            f"open (last failure: {breaker.last_failure or 'unknown'}), and {where}; "
            f"retry in {wait:.0f}s",
            retry_after=wait, code="circuit_open",
        )

    def _standard_target(self, call: Call, provider: str, model: str, tier: Tier,
                         breaker: CircuitBreaker, probe: bool, ends_at: float) -> Target:
        limit = self._timeouts.get(provider, 600.0)
        left = ends_at - self._planner.clock.now()
        name = (f"the request timeout ([providers.{provider}] timeout = "
                f"{format_duration(limit)})")
        if left + MIN_ATTEMPT < limit:  # a retry, or a deadline nearer than the timeout
            name = (f"what was left of the call's time ({format_duration(max(0.0, left))}: "
                    + ("its deadline" if call.deadline_at is not None
                       and call.deadline_at <= ends_at else
                       f"[providers.{call.provider}] timeout, shared by its attempts") + ")")
        return Target(provider, model, tier, call.body, breaker, probe,
                      max(0.0, min(limit, left)), name)

    def succeeded(self, target: Target, span: trace.Span) -> None:
        """Tells ``target``'s breaker its attempt succeeded (a move is told on ``span``)."""
        self._telling = span
        target.breaker.succeeded(probe=target.probe)

    def tell_breaker(self, target: Target, error: ApiError, span: trace.Span) -> None:
        """Tells ``target``'s breaker what an attempt's ``error`` says of its provider (a move
        is told on ``span``)."""
        self._telling = span
        failure = classify(error, flex=target.tier is Tier.FLEX)
        if failure.kind.counts_against_provider:
            target.breaker.failed(failure.reason, probe=target.probe)
        elif isinstance(error, UpstreamError) and failure.kind is FailureClass.PERMANENT:
            target.breaker.succeeded(probe=target.probe)  # it answered: it is alive
        else:
            target.breaker.no_outcome(probe=target.probe)

    def _breaker_moved(self, change: Transition) -> None:
        record = {"at": self._planner.clock.now(), "provider": change.provider,
                  "tier": change.tier.value, "from": change.old.value, "to": change.new.value,
                  "reason": change.reason}
        self._transitions = [*self._transitions[-19:], record]
        self._transitions_counter.add(1, {"llmspool.provider": change.provider,
                                          "llmspool.tier": change.tier.value,
                                          "llmspool.breaker.state": change.new.value})
        self._telling.add_event("circuit breaker " + change.new.value, {
            "llmspool.provider": change.provider, "llmspool.tier": change.tier.value,
            "reason": change.reason})
        level = logging.INFO if change.new.value == "closed" else logging.WARNING
        log.log(level, "circuit breaker %s/%s: %s -> %s (%s)", change.provider,
                change.tier.value, change.old.value, change.new.value, change.reason)

    def _observe_breakers(self, _options: CallbackOptions) -> Iterable[Observation]:
        """``llmspool.breaker.state``, read by the metric reader's thread: a state set, so a
        backend can count breakers per state (the snapshot copies the breakers at once)."""
        return [
            Observation(1 if breaker["state"] == state.value else 0, {
                "llmspool.provider": breaker["provider"], "llmspool.tier": breaker["tier"],
                "llmspool.breaker.state": state.value})
            for breaker in self._breakers.snapshot() for state in BreakerState
        ]

    def breakers(self) -> list[dict[str, Any]]:
        return self._breakers.snapshot()

    def transitions(self) -> list[dict[str, Any]]:
        return list(self._transitions)


def _body_for_failover(body: bytes, model: str) -> bytes:
    """The call's body for the failover provider: its model (the stand-in is asked for the
    standard tier, which its plugin writes into the body as its API wants)."""
    document = orjson.loads(body)
    document["model"] = model
    return orjson.dumps(document)
