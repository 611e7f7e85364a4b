"""Each call's money, from admission to its end.

At admission the call's worst cost is reserved with the ledger (every call, caps or not: the
ledger makes the reservation durable before it answers, so a crash while the call runs leaves
it billed as an unknown outcome), in this task when the ledger can decide it here
(``Ledger.admit_now``), else through its inbox. The reservation is kept while the call runs: a
broken answer is billed at it, and the estimator calibrates on the real usage. Each answer is
billed by the one billing function at the tier the provider says it served, into the
``Settled`` the ledger records (or, for a job's call, the job keeper stores with the result).
At the call's end its state here is dropped and its operation duration recorded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import anyio
import orjson
from opentelemetry.trace import Span

from llmspool.actors.dispatch.flex import FlexMetrics
from llmspool.actors.dispatch.targets import Target
from llmspool.core.calls import Tier, Usage
from llmspool.core.config.sections import BudgetsConfig
from llmspool.core.errors import ApiError, InvalidRequest
from llmspool.core.pricing import PICODOLLARS_PER_USD, usd
from llmspool.core.spans import SpanFields
from llmspool.core.streams import MemorySendStream, create_memory_stream
from llmspool.core.tracing import GenAiMetrics
from llmspool.messages import NOT_NOW, Admit, AdmitNow, Call, Release, SettleNow
from llmspool.policy.billing import PriceBook, bill
from llmspool.policy.estimate import Estimate, TokenEstimator
from llmspool.policy.planner import Planner
from llmspool.policy.reservations import Reservation, Reserver, max_output
from llmspool.store.records import Settled

# The bill, as a call's span is told it (``Accounts.settle``).
BILL_FIELDS = SpanFields(
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    # Parts of the input, as the GenAI conventions name them.
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.response.model",
    "llmspool.tier",
    "llmspool.usage_estimated",
    # What was billed, at the tier served (flex at flex prices): a backend that prices tokens
    # itself at list prices would show flex at twice its cost. Named as the GenAI cost
    # proposal names it, and as llmspool always did.
    "gen_ai.usage.cost.amount",
    "gen_ai.usage.cost.currency",
    "gen_ai.usage.cost.source",
    "llmspool.cost_usd",
    "llmspool.price_version",
    "openai.response.service_tier",  # the tier the answer claimed, when it said one
    "llmspool.billing_flag",
)


class Accounts:
    """The reservations, estimates and settlements of the calls in flight, and the counts of
    what was served."""

    def __init__(self, ledger: MemorySendStream[Settled | Admit | Release], *,
                 prices: PriceBook, budgets: BudgetsConfig, estimator: TokenEstimator,
                 planner: Planner, provider_kinds: Mapping[str, str], flex: FlexMetrics,
                 genai: GenAiMetrics, admit_now: AdmitNow | None = None,
                 settle_now: SettleNow | None = None) -> None:
        self._ledger = ledger
        self._admit_now = admit_now  # the ledger deciding in this task, when it can
        self._settle_now = settle_now
        self._prices = prices
        self._budgets = budgets
        self._estimator = estimator
        self._planner = planner
        self._provider_kinds = provider_kinds
        self._flex_metrics = flex
        self._genai = genai
        self._reserver = Reserver(prices, budgets, estimator)
        self._reserved: dict[str, Reservation] = {}  # by request id, until the call ends
        self._broken: dict[str, int] = {}  # broken attempts per request id, for their ids
        # Calls whose reservation their entry ends: sent to the ledger (which drops the
        # reservation with it), or handed to the job keeper with the answer.
        self._ended: set[str] = set()
        # How each call in flight was settled (tier, model that served, status), for its
        # operation duration, recorded when the call ends.
        self._outcomes: dict[str, tuple[str, str, int]] = {}
        self.served_by_tier: dict[str, int] = {}

    def set_prices(self, prices: PriceBook) -> None:
        self._prices = prices
        self._reserver.set_prices(prices)

    async def admit(self, call: Call, tier: Tier) -> bool:
        """Apply the unknown-model policy, and reserve the call's worst cost with the ledger.

        Returns True once reserved; raises the ``ApiError`` that refuses the call.
        """
        priced = bool(self._prices.tiers(call.provider, call.model))
        if not priced and self._budgets.unknown_model == "refuse":
            raise InvalidRequest(
                f"{call.provider} model {call.model!r} has no price, so its cost cannot be "
                "counted; price it in pricing.toml, or set [budgets] unknown_model = "
                "\"ceiling\" to admit it at unknown_model_ceiling_usd per call",
                param="model", code="model_unpriced",
            )
        tiers = [tier, Tier.STANDARD] if tier is Tier.FLEX else [tier]
        reserver = self._reserver
        reservation = reserver.for_body(
            call.endpoint, call.provider, call.model, call.body, call.operation, tiers,
        ) if call.document is None else reserver.for_document(
            call.endpoint, call.provider, call.model, call.document, call.operation, tiers)
        self._reserved[call.request_id] = reservation
        reply_in, reply_out = create_memory_stream[ApiError | None](1)
        with reply_in, reply_out:
            admit = Admit(
                call.request_id, call.provider, call.model, call.operation, call.caller.uid,
                call.session, reservation.picodollars, reply_in, call.endpoint, tier,
            )
            refusal = self._admit_now(admit) if self._admit_now is not None else NOT_NOW
            if refusal is NOT_NOW:
                await self._ledger.send(admit)
                refusal = await reply_out.receive()
        if refusal is not None:
            raise refusal
        return True

    def estimate(self, call: Call) -> Usage:
        """The call's usage as estimated from its body: what an answer that gives none is
        billed for, and a broken answer (the prompt, and the output the call allowed)."""
        estimate = self._estimate_of(call)
        return Usage(estimate.input_tokens, 0, estimate.output_tokens, estimated=True)

    def _estimate_of(self, call: Call) -> Estimate:
        """The estimate its reservation was made from (the body is walked once per call), or
        one made now for a call that has none."""
        reservation = self._reserved.get(call.request_id)
        if reservation is not None:
            return reservation.estimate
        if call.document is not None:
            return self._estimator.estimate(call.endpoint, call.document, call.model,
                                            call.operation)
        try:
            document = orjson.loads(call.body)
        except orjson.JSONDecodeError:
            document = {}
        return self._estimator.estimate(call.endpoint, document if isinstance(document, dict)
                                        else {}, call.model, call.operation)

    def requested_tokens(self, call: Call) -> int:
        """What the call counts against a tokens-per-minute limit: its prompt's estimate and
        the most output it asks for (as OpenAI counts it), else the expected output."""
        estimate = self._estimate_of(call)
        prompt = estimate.input_tokens
        if estimate.method == "ratio" and estimate.chars:
            # Without the reservation's safety margin: an over-count here leaves a share of
            # the limit unused, for good (the upstream never gives it back).
            ratio = self._estimator.ratio_for(call.model)
            prompt = math.ceil(estimate.chars / ratio) + estimate.fixed_tokens
        reservation = self._reserved.get(call.request_id)
        asked = reservation.asked_output if reservation is not None else _max_output(call.body)
        return prompt + (asked or estimate.output_tokens)

    def partial_usage(self, call: Call, events: int) -> Usage:
        """A stream cut short: its prompt (estimated) and the output events it had sent, about
        a token each, which is what the provider generated and bills."""
        return Usage(self._estimate_of(call).input_tokens, 0, events, estimated=True)

    async def bill_broken(self, call: Call, target: Target, started: float, span: Span,
                          usage: Usage) -> None:
        """An attempt that was answered and then broke is billed under its own id (the call
        may still succeed on a retry, billed under the call's id)."""
        number = self._broken.get(call.request_id, 0) + 1
        self._broken[call.request_id] = number
        settled = self.settle(call, target.provider, target.model, target.tier, usage, 502,
                              started, span, flag="broken_answer",
                              request_id=f"{call.request_id}~{number}")
        with anyio.CancelScope(shield=True):
            await self._ledger.send(settled)

    def settle(
        self, call: Call, provider: str, model: str, tier: Tier, usage: Usage, status: int,
        started: float, span: Span, *, claimed: str | None = None, flag: str | None = None,
        request_id: str | None = None, response_id: str | None = None,
    ) -> Settled:
        """The ledger's record of a call served by ``provider``'s ``model`` (the call's own, or
        its failover's) on ``tier``, billed by the one billing function."""
        billed = bill(
            self._prices, provider, model, tier, usage, claimed_tier=claimed,
            unpriced_ceiling_picodollars=round(self._budgets.unknown_model_ceiling_usd
                                               * PICODOLLARS_PER_USD),
            overhead_of=call.overhead_of,
            routed_from=call.routed_from,
        )
        cost = billed.cost_picodollars
        finished = self._planner.clock.now()
        reservation = self._reserved.get(call.request_id)
        if status == 200 and flag is None:
            self._planner.book.observe((provider, model, tier), finished - started)
            if not usage.estimated:
                self._estimator.observe_output(model, call.operation, usage.output_tokens)
                if reservation is not None:
                    estimate = reservation.estimate
                    self._estimator.observe(model, estimate.chars, usage.input_tokens,
                                            fixed_tokens=estimate.fixed_tokens)
        if tier is Tier.FLEX:
            self._flex_metrics.served(usage, max(0, billed.saving_picodollars))
        # The bill, on the call's span: built only when something records it.
        flag = flag or billed.flag
        if span.is_recording():
            cost_usd = usd(cost)
            BILL_FIELDS.set(
                span, usage.input_tokens, usage.output_tokens, usage.cached_input_tokens,
                usage.cache_write_tokens, model, tier.value, usage.estimated, cost_usd, "USD",
                "local", cost_usd, billed.price_version, claimed, flag)
        if request_id is None and self._genai.enabled:  # the metrics' attributes
            self._outcomes[call.request_id] = (tier.value, model, status)
            if not usage.estimated:
                self._genai.tokens(
                    usage.input_tokens, usage.output_tokens, call.endpoint.operation_name,
                    self._provider_kinds.get(provider, provider), call.model, model, tier.value)
        tier_name = tier.value
        self.served_by_tier[tier_name] = self.served_by_tier.get(tier_name, 0) + 1
        return Settled(
            request_id=request_id or call.request_id,
            provider=provider,
            model=model,
            endpoint=call.endpoint,
            tier=tier,
            usage=usage,
            cost_picodollars=cost,
            standard_cost_picodollars=billed.list_cost_picodollars,
            caller=call.caller,
            operation=call.operation,
            status=status,
            started_at=started,
            finished_at=finished,
            session=call.session,
            flag=flag,
            saving_source=billed.saving_source,
            price_version=billed.price_version,
            deadline_window=call.deadline_window(),
            late=call.deadline_at is not None and finished > call.deadline_at,
            response_id=response_id,
        )

    async def record(self, settled: Settled) -> None:
        """Send ``settled`` to the ledger. An entry under its call's own id ends the call's
        reservation there, so the call's end need not release it."""
        if self._settle_now is None or not self._settle_now(settled):
            await self._ledger.send(settled)
        self._ended.add(settled.request_id)

    def hand_over(self, call: Call) -> None:
        """The call's entry went with its answer to the job keeper, which stores it with the
        result; the reservation ends in that transaction (or, after a crash, as an unknown
        outcome), so the call's end releases nothing."""
        self._ended.add(call.request_id)

    def end(self, call: Call, kind: str, seconds: float, error_type: str | None) -> bool:
        """Forgets the call, recording its ``gen_ai.client.operation.duration`` (from the
        dispatcher taking it to its end, retries and flex fallbacks included, with the tier
        and model that served). Returns whether its entry ended its reservation (sent to the
        ledger, or handed over with a job's answer): otherwise the caller releases it."""
        if self._genai.enabled:
            outcome = self._outcomes.pop(call.request_id, None)
            tier = model = None
            if outcome is not None:
                tier, model, status = outcome
                if status >= 400 and error_type is None:
                    error_type = str(status)  # a stream cut (502) or left by its client (499)
            self._genai.operation(seconds, call.endpoint.operation_name, kind, call.model,
                                  model, tier, error_type)
        self._reserved.pop(call.request_id, None)
        self._broken.pop(call.request_id, None)
        if call.request_id in self._ended:
            self._ended.discard(call.request_id)
            return True
        return False


def _max_output(body: bytes) -> int | None:
    """The most output tokens a request whose JSON is ``body`` asks for, if it says."""
    if b"max_" not in body:
        return None
    document = orjson.loads(body)
    return max_output(document) if isinstance(document, dict) else None
