"""A call's attempts: the retry policy's attempts on one tier, sharing the call's time.

Each retry is its own span (a first attempt is told on the call's span). An attempt is
routed past open circuit breakers (``targets``), waits for room in the (provider, model) rate
limits, and runs in cancel scopes that name the timeout that fired (request, flex attempt,
stream idle; the plugin names a connect timeout). A failure is classified once
(``failures.classify``) and retried by tenacity within ``[retry]``'s attempts, backoff and
budget; only what was never begun on the client's side is retried. Its outcome is told to the
breaker it went through.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext

from opentelemetry import metrics, trace
from opentelemetry.trace import Span, Status, StatusCode

from llmspool.actors.dispatch.accounts import Accounts
from llmspool.actors.dispatch.flex import FlexTimedOut, NoFlexCapacity
from llmspool.actors.dispatch.relay import Relay
from llmspool.actors.dispatch.targets import MIN_ATTEMPT, Targets
from llmspool.core.calls import Tier
from llmspool.core.clock import Clock
from llmspool.core.errors import ApiError, UpstreamError, UpstreamUnreachable
from llmspool.core.tracing import Tally, records
from llmspool.core.units import format_duration
from llmspool.messages import Call
from llmspool.resilience.failures import FailureClass, classify
from llmspool.resilience.limits import RateLimits
from llmspool.resilience.retry import CallRetries, Retrier


class Attempts:
    """Runs a call's attempts on a tier until one answers or the retry policy says stop."""

    def __init__(self, *, retrier: Retrier, timeouts: Mapping[str, float], targets: Targets,
                 limits: RateLimits, relay: Relay, accounts: Accounts, tracer: trace.Tracer,
                 meter: metrics.Meter, clock: Clock) -> None:
        self._retrier = retrier
        self._clock = clock  # deadlines are on the daemon's clock
        self._timeouts = timeouts
        self._targets = targets
        self._limits = limits
        self._relay = relay
        self._accounts = accounts
        self._tracer = tracer
        self._records = records(tracer)
        self._counter = Tally(meter, "llmspool.upstream.attempts", "{attempt}",
                              "upstream attempts, retries included")
        self.count = 0
        self.failed_over = 0
        # Calls between their first attempt and their outcome, by the tier they are on now (a
        # flex call that falls back to standard moves to standard): ``/v1/status`` shows it.
        self.in_flight_by_tier: dict[str, int] = {}

    async def run(self, call: Call, tier: Tier, flex_limit: float | None, span: Span) -> None:
        """Attempts on ``tier`` until one answers or the retry policy says stop (raising the
        last failure). ``flex_limit``: the time a flex attempt may take.

        The attempts share one allowance, never more than the provider's request timeout and
        never past the call's deadline: a retry gets what is left, so a hung upstream keeps
        the caller waiting for the timeout once, not once per attempt. When the allowance runs
        out the caller gets 504 ``deadline_exceeded`` saying what was tried.
        """
        timeout = self._timeouts.get(call.provider, 600.0)
        ends_at = self._clock.now() + timeout
        if call.deadline_at is not None and not call.deferred:
            ends_at = min(ends_at, call.deadline_at)
        state = CallRetries(call.provider, call.request_id, tier is Tier.FLEX,
                            ends_at if flex_limit is None else call.deadline_at)
        tried: list[str] = []

        async def attempt(number: int) -> None:
            if flex_limit is None and ends_at - self._clock.now() < MIN_ATTEMPT:
                raise _out_of_time(call, timeout, tried, self._clock.now())
            try:
                await self._attempt(call, tier, flex_limit, ends_at, number, span)
            except ApiError as error:
                tried.append(f"attempt {number}: {error.message}")
                if isinstance(error, UpstreamUnreachable) and flex_limit is not None \
                        and error.code == "upstream_timeout":
                    # The flex attempt used the time the deadline gave it: not a retry on
                    # flex, but the flex policy's turn (escalate in time).
                    raise FlexTimedOut(error) from error
                raise

        in_flight = self.in_flight_by_tier
        in_flight[tier.value] = in_flight.get(tier.value, 0) + 1
        try:
            await self._retrier.run(state, attempt)
        except UpstreamUnreachable as error:
            if flex_limit is None and error.code == "upstream_timeout" and \
                    ends_at - self._clock.now() < MIN_ATTEMPT:
                raise _out_of_time(call, timeout, tried, self._clock.now()) from error
            raise
        finally:
            in_flight[tier.value] -= 1
            if not in_flight[tier.value]:
                del in_flight[tier.value]  # only tiers with calls on them

    async def _attempt(self, call: Call, tier: Tier, flex_limit: float | None, ends_at: float,
                       number: int, span: Span) -> None:
        """One upstream attempt, as its own span; relays its answer to the caller.

        Raises ``NoFlexCapacity`` before anything reached the caller when flex had no room,
        and the ``ApiError`` of a failure that may be retried (nothing reached the caller).
        """
        target = self._targets.route(call, tier, flex_limit, ends_at, span)
        tokens = (self._accounts.requested_tokens(call)
                  if self._limits.counts_tokens(call.provider, call.model) else 0)
        permit = await self._limits.acquire(target.provider, target.model, tokens,
                                            interactive=call.deadline_at is None)
        self.count += 1
        self._counter.add(1, (("llmspool.provider", target.provider),))
        refused = False  # the upstream turned the request down as it was sent
        try:
            # A first attempt is told on the call's own span (most calls have no other): a
            # span per attempt was a third of the spans to build and export. Retries get
            # their own spans, so a retried call shows each attempt and how it ended.
            own_span = self._records and number > 1
            with (self._tracer.start_as_current_span(
                f"attempt {number}", context=trace.set_span_in_context(span),
                attributes={"llmspool.attempt": number, "llmspool.provider": target.provider,
                            "gen_ai.request.model": target.model,
                            "llmspool.tier": target.tier.value},
                record_exception=False, set_status_on_exception=False,
            ) if own_span else nullcontext(span)) as attempt_span:
                if target.failover_from is not None:
                    self.failed_over += 1
                    attempt_span.set_attribute("llmspool.failover_from", target.failover_from)
                    span.add_event("failover", {"from": target.failover_from,
                                                "to": target.provider, "model": target.model})
                try:
                    sent = await self._relay.send(call, target, span, attempt_span, permit)
                    if sent is not None and sent.late_error is not None:
                        attempt_span.set_status(Status(StatusCode.ERROR,
                                                       sent.late_error.message))
                        self._targets.tell_breaker(target, sent.late_error, attempt_span)
                        return
                except ApiError as error:
                    refused = _refused_as_sent(error)
                    error_type = error.code or type(error).__name__
                    if own_span:
                        attempt_span.set_status(Status(StatusCode.ERROR, error.message))
                        attempt_span.set_attribute("error.type", error_type)
                    else:  # the call may still succeed: its span says how this attempt ended
                        span.add_event(f"attempt {number} failed",
                                       {"error.type": error_type, "message": error.message})
                    self._targets.tell_breaker(target, error, attempt_span)
                    raise
                except NoFlexCapacity:
                    target.breaker.no_outcome(probe=target.probe)
                    raise
                except BaseException:
                    target.breaker.no_outcome(probe=target.probe)
                    raise
                self._targets.succeeded(target, attempt_span)
        finally:
            # No refund of unused requested tokens: OpenAI counts what a call asks for (prompt
            # plus max output) against its TPM when the call arrives, and gives nothing back.
            # A request it refused as sent was never run, and all its tokens come back: kept,
            # one invalid request asking for 25M tokens held every later call to its model for
            # up to a minute. (Should the upstream count it after all, the next answer's
            # x-ratelimit-remaining-tokens lowers our bucket again.)
            permit.release(0 if refused else None)


def _refused_as_sent(error: ApiError) -> bool:
    """Whether the upstream turned the request down without running it: an error of its own
    that the same request would get again (``failures.classify``'s permanent class: a bad
    parameter, a key or model it does not accept, no quota left). A rate limit (429) is
    ``RateLimits.rate_limited``'s business."""
    return isinstance(error, UpstreamError) and classify(error).kind is FailureClass.PERMANENT


def _out_of_time(call: Call, timeout: float, tried: list[str], now: float) -> ApiError:
    """The call's time ran out (its deadline, or the request timeout its attempts share)."""
    if call.deadline_at is not None and call.deadline_at <= now + MIN_ATTEMPT:
        limit = "its deadline"
    else:
        limit = (f"[providers.{call.provider}] timeout = {format_duration(timeout)}, which its "
                 "attempts share")
    return ApiError(
        f"{call.provider} gave no answer within {limit}; tried: "
        f"{'; '.join(tried) or 'nothing (no time left to try)'}",
        status=504, code="deadline_exceeded", error_type="timeout",
    )
