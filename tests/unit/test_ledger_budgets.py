"""The ledger actor's budgets, driven directly: random concurrent streams of calls against
random caps on a real SQLite store. Spend never passes a cap (by more than one request's
estimate), the ledger's own spend equals what was settled, reservations net to zero, every
cap kind refuses with its own code, and a warning fires once per crossing."""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llmspool.actors.ledger import Ledger, LedgerMessage
from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.core.config.sections import BudgetsConfig, CapConfig
from llmspool.core.errors import ApiError, BudgetExceeded
from llmspool.core.streams import create_memory_stream
from llmspool.messages import Admit, LedgerStatus, Release, StatusQuery
from llmspool.store.ledger import open_ledger_connection
from llmspool.store.records import Caller, Settled

USD = 10**12


@dataclass
class Plan:
    estimate: int  # picodollars
    actual: int  # at most the estimate
    operation: str
    session: str
    release: bool  # the call fails: released, not settled
    pause: float


async def admit(inbox: Any, request_id: str, plan: Plan, provider: str = "openai",
                uid: int = 1000) -> ApiError | None:
    reply_in, reply_out = create_memory_stream[ApiError | None](1)
    with reply_in, reply_out:
        await inbox.send(Admit(request_id, provider, "gpt-5-mini", plan.operation, uid,
                               plan.session, plan.estimate, reply_in))
        return await reply_out.receive()


def settled(request_id: str, plan: Plan, provider: str = "openai") -> Settled:
    return Settled(
        request_id=request_id, provider=provider, model="gpt-5-mini",
        endpoint=Endpoint.CHAT, tier=Tier.STANDARD, usage=Usage(10, 0, 10),
        cost_picodollars=plan.actual, standard_cost_picodollars=plan.actual,
        caller=Caller(uid=1000), operation=plan.operation, status=200,
        started_at=0.0, finished_at=1.8e9, session=plan.session,
    )


async def status(inbox: Any) -> LedgerStatus:
    reply_in, reply_out = create_memory_stream[LedgerStatus](1)
    with reply_in, reply_out:
        await inbox.send(StatusQuery(reply_in))
        return await reply_out.receive()


async def run_ledger(budgets: BudgetsConfig, scenario: Any) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        database = await open_ledger_connection(Path(tmp))
        inbox_in, inbox_out = create_memory_stream[LedgerMessage](64)
        ledger = Ledger(inbox_out, database, budgets=budgets, clock=lambda: 1.8e9)
        try:
            async with anyio.create_task_group() as group:
                await group.start(ledger.run)
                async with inbox_in:
                    result = await scenario(inbox_in)
        finally:
            database.close()
        return result


plans = st.builds(
    lambda estimate, share, op, session, release, pause: Plan(
        estimate, estimate * share // 100, op, session, release, pause
    ),
    st.integers(1, 50_000),  # up to 5e-8 USD each: caps below are a few times that
    st.integers(50, 100),
    st.sampled_from(["evals", "kg_sync", ""]),
    st.sampled_from(["s1", "s2"]),
    st.sampled_from([False, False, False, True]),
    st.sampled_from([0.0, 0.0, 0.001, 0.003]),
)


@settings(max_examples=40, deadline=None)
@given(
    calls=st.lists(plans, min_size=10, max_size=40),
    daily=st.integers(1, 200_000),
    evals=st.integers(1, 100_000),
    session=st.integers(1, 150_000),
)
def test_concurrent_calls_never_race_past_a_cap(calls: list[Plan], daily: int, evals: int,
                                                 session: int) -> None:
    budgets = BudgetsConfig(
        daily_usd=daily / USD,
        session_usd=session / USD,
        operations={"evals": CapConfig(daily_usd=evals / USD)},
    )
    admitted: list[Plan] = []

    async def scenario(inbox: Any) -> dict[str, Any]:
        async def one(index: int, plan: Plan) -> None:
            if await admit(inbox, f"r{index}", plan) is not None:
                return
            await anyio.sleep(plan.pause)  # calls overlap: reservations are what protects
            if plan.release:
                await inbox.send(Release(f"r{index}"))
            else:
                admitted.append(plan)
                await inbox.send(settled(f"r{index}", plan))

        async with anyio.create_task_group() as group:
            for index, plan in enumerate(calls):
                group.start_soon(one, index, plan)
        return await status(inbox)

    report = anyio.run(run_ledger, budgets, scenario)
    largest = max(plan.estimate for plan in calls)

    def spend(predicate: Any) -> int:
        return sum(plan.actual for plan in admitted if predicate(plan))

    assert spend(lambda p: True) <= daily + largest
    assert spend(lambda p: p.operation == "evals") <= evals + largest
    for name in ("s1", "s2"):
        assert spend(lambda p, n=name: p.session == n) <= session + largest
    # The ledger's own books agree with what was settled, and nothing stays reserved.
    assert report["spend_today_usd"] == pytest.approx(spend(lambda p: True) / USD, abs=1e-15)
    assert report["calls_reserved"] == 0 and report["reserved_usd"] == 0


@pytest.mark.parametrize(
    ("budgets", "plan", "provider", "code", "named"),
    [
        (BudgetsConfig(per_request_usd=1e-9), Plan(2000, 0, "", "s", False, 0), "openai",
         "budget_per_request", "[budgets] per_request_usd"),
        (BudgetsConfig(daily_usd=1e-9), Plan(2000, 0, "", "s", False, 0), "openai",
         "budget_day", "[budgets] daily_usd"),
        (BudgetsConfig(session_usd=1e-9), Plan(2000, 0, "", "s", False, 0), "openai",
         "budget_session", "[budgets] session_usd"),
        (BudgetsConfig(operations={"evals": CapConfig(daily_usd=1e-9)}),
         Plan(2000, 0, "evals", "s", False, 0), "openai", "budget_operation",
         "[budgets.operations.evals] daily_usd"),
        (BudgetsConfig(users={"1000": CapConfig(daily_usd=1e-9)}),
         Plan(2000, 0, "", "s", False, 0), "openai", "budget_user", "daily_usd of user 1000"),
        (BudgetsConfig(providers={"openai": CapConfig(daily_usd=1e-9)}),
         Plan(2000, 0, "", "s", False, 0), "openai", "budget_provider",
         "[budgets.providers.openai] daily_usd"),
        (BudgetsConfig(operations={"evals": CapConfig(per_request_usd=1e-9)}),
         Plan(2000, 0, "evals", "s", False, 0), "openai", "budget_per_request",
         "[budgets.operations.evals] per_request_usd"),
    ],
)
def test_every_cap_kind_refuses_with_its_own_message(
    budgets: BudgetsConfig, plan: Plan, provider: str, code: str, named: str
) -> None:
    async def scenario(inbox: Any) -> ApiError | None:
        return await admit(inbox, "r1", plan, provider=provider)

    refusal = anyio.run(run_ledger, budgets, scenario)
    assert isinstance(refusal, BudgetExceeded)
    assert refusal.status == 402 and refusal.code == code
    assert named in refusal.message and "$" in refusal.message


def test_warning_fires_once_per_crossing() -> None:
    budgets = BudgetsConfig(daily_usd=100_000 / USD, warn_fraction=0.5)

    async def scenario(inbox: Any) -> dict[str, Any]:
        for index in range(8):  # 8 x 10,000: crosses 50% at the fifth
            plan = Plan(10_000, 10_000, "", "s", False, 0)
            assert await admit(inbox, f"w{index}", plan) is None
            await inbox.send(settled(f"w{index}", plan))
        return await status(inbox)

    report = anyio.run(run_ledger, budgets, scenario)
    assert len(report["warnings"]) == 1
    warning = report["warnings"][0]
    assert warning["cap"] == "[budgets] daily_usd" and warning["fraction"] == 0.5
    assert report["budgets"][0]["spent_usd"] == pytest.approx(80_000 / USD)


def test_a_burst_of_simultaneous_calls_is_held_to_the_cap() -> None:
    budgets = BudgetsConfig(daily_usd=100_000 / USD)

    async def scenario(inbox: Any) -> list[ApiError | None]:
        answers: list[ApiError | None] = []

        async def one(index: int) -> None:
            answers.append(await admit(inbox, f"b{index}", Plan(40_000, 0, "", "s", False, 0)))

        async with anyio.create_task_group() as group:  # all in flight, none settled yet
            for index in range(40):
                group.start_soon(one, index)
        return answers

    answers = anyio.run(run_ledger, budgets, scenario)
    assert answers.count(None) == 2  # 2 x 40,000 fit in 100,000; the reservations hold it


def test_no_caps_admits_everything() -> None:
    async def scenario(inbox: Any) -> list[ApiError | None]:
        return [await admit(inbox, f"n{i}", Plan(random.randint(1, 10**15), 0, "", "s", False, 0))
                for i in range(20)]

    assert anyio.run(run_ledger, BudgetsConfig(), scenario) == [None] * 20
