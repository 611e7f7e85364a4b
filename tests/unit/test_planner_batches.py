"""The planner treats a batch as a hedged tier: deferred work goes to a batch when the batch's
expected (median) turnaround still ends before the point where a late batch is escalated
(``[batch] cancel_wait`` plus a standard call), not only when a pessimistic percentile fits.
So, with the defaults, a 2 h job is batched on a fresh daemon."""

from __future__ import annotations

import time

from llmspool.core.calls import Tier
from llmspool.core.config.sections import Config
from llmspool.policy.billing import load_price_book
from llmspool.policy.planner import LatencyBook, Planner, TierPolicy, default_latencies

HOUR = 3600.0
BATCH = ("openai", "gpt-4o-mini", Tier.BATCH)


def planner() -> Planner:
    config = Config()
    return Planner(config, load_price_book(), LatencyBook(default_latencies(config)))


def fits(plan: Planner, hours: float) -> bool:
    now = time.time()
    return plan.batch_fits("openai", "gpt-4o-mini", TierPolicy(), now + hours * HOUR, now=now)


def test_with_the_defaults_a_two_hour_job_goes_to_a_batch() -> None:
    plan = planner()
    assert fits(plan, 2)
    assert fits(plan, 0.5)
    # 2.5 min expected + 10 min cancel_wait + a standard call (30 s x 1.5 + 30 s): no room.
    assert not fits(plan, 10 / 60)


def test_what_batches_are_seen_to_take_replaces_the_prior() -> None:
    plan = planner()
    for _ in range(10):
        plan.book.observe(BATCH, 1 * HOUR)  # this model's batches take an hour
    assert plan.batch_expected("openai", "gpt-4o-mini") == HOUR
    assert fits(plan, 2)
    assert not fits(plan, 1.1)
    # Another model keeps the prior.
    assert plan.batch_expected("openai", "gpt-4o") == Config().planner.default_batch_latency


def test_the_expected_turnaround_is_the_median_not_the_slowest() -> None:
    plan = planner()
    for seconds in (60.0, 90.0, 120.0, 150.0, 6 * HOUR):  # one straggler
        plan.book.observe(BATCH, seconds)
    assert plan.batch_expected("openai", "gpt-4o-mini") == 120.0
