"""Billing rules at settle time: the tier an answer says it served decides the price; a tier
we do not know is billed at the highest price known for the model and flagged."""

from __future__ import annotations

from typing import Any

import pytest
from llmspool.actors.dispatch.accounts import Accounts
from llmspool.actors.dispatch.flex import FlexMetrics
from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.core.config.sections import Config
from llmspool.core.streams import MemorySendStream, create_memory_stream
from llmspool.core.tracing import GenAiMetrics
from llmspool.messages import Call
from llmspool.policy.billing import load_price_book
from llmspool.policy.estimate import TokenEstimator
from llmspool.policy.planner import LatencyBook, Planner, TierPolicy, default_latencies
from llmspool.store.records import Caller
from opentelemetry import metrics, trace
from opentelemetry.context import Context

PRICES = load_price_book()
USAGE = Usage(input_tokens=1000, output_tokens=500)


def accounts(ledger: MemorySendStream[Any] | None = None) -> Accounts:
    """The dispatcher's part that settles calls; ``ledger``: where it sends their entries."""
    config = Config()
    if ledger is None:
        ledger, _ledger_out = create_memory_stream[object](1)
    planner = Planner(config, PRICES, LatencyBook(default_latencies(config)))
    meter = metrics.NoOpMeter("test")
    return Accounts(
        ledger,
        prices=PRICES, budgets=config.budgets, estimator=TokenEstimator(use_tokenizer=False),
        planner=planner, provider_kinds={}, flex=FlexMetrics(meter), genai=GenAiMetrics(None),
    )


def call(model: str) -> Call:
    reply_in, _reply_out = create_memory_stream[object](1)
    return Call(
        request_id="r1", endpoint=Endpoint.CHAT, provider="openai", model=model, body=b"{}",
        stream=False, policy=TierPolicy(), caller=Caller(), operation=None, received_at=0.0,
        trace=Context(), reply=reply_in,  # type: ignore[arg-type]
    )


def cost(model: str, tier: Tier) -> int:
    price = PRICES.price("openai", model, tier)
    assert price is not None
    return price.cost(USAGE)


@pytest.mark.parametrize(
    ("served", "claimed", "expected_tier", "flag"),
    [
        (Tier.FLEX, "flex", Tier.FLEX, None),
        (Tier.STANDARD, "default", Tier.STANDARD, None),
        (Tier.STANDARD, "warp-speed", Tier.STANDARD, "unknown_tier"),
    ],
)
def test_settle_bills_the_served_tier_or_the_highest_price(
    served: Tier, claimed: str, expected_tier: Tier, flag: str | None
) -> None:
    settled = accounts().settle(call("gpt-5-mini"), "openai", "gpt-5-mini", served, USAGE,
                                200, 0.0, trace.INVALID_SPAN, claimed=claimed)
    assert settled.flag == flag
    highest = max(cost("gpt-5-mini", t) for t in PRICES.tiers("openai", "gpt-5-mini"))
    expected = highest if flag else cost("gpt-5-mini", expected_tier)
    assert settled.cost_picodollars == expected
    assert settled.standard_cost_picodollars == cost("gpt-5-mini", Tier.STANDARD)
    assert settled.saving_source == ("tier" if served is Tier.FLEX else None)


def test_a_tier_the_model_is_not_priced_on_is_billed_high_and_flagged() -> None:
    # gpt-4o-mini has no flex price: an answer saying flex is billed at its highest price.
    settled = accounts().settle(call("gpt-4o-mini"), "openai", "gpt-4o-mini", Tier.FLEX,
                                USAGE, 200, 0.0, trace.INVALID_SPAN, claimed="flex")
    assert settled.flag == "unknown_tier"
    assert settled.cost_picodollars == max(
        cost("gpt-4o-mini", t) for t in PRICES.tiers("openai", "gpt-4o-mini")
    )
