"""``BodyBudget``: room handed out first come, first served, and given back when a request ends,
even one cancelled while it waited."""

from __future__ import annotations

import functools
from typing import Any

import anyio
import pytest
from llmspool.core.errors import PayloadTooLarge, ServiceUnavailable
from llmspool.server.body_budget import TAKEN, BodyBudget

pytestmark = pytest.mark.anyio


async def take_in_turn(budget: BodyBudget, order: list[str], name: str,
                       scope: dict[str, Any], size: int) -> None:
    """Take ``size`` bytes for ``scope`` (waiting if need be), then note ``name`` in ``order``."""
    await budget.take(scope, size)
    order.append(name)


async def test_a_big_body_waiting_is_not_overtaken_by_small_ones() -> None:
    budget = BodyBudget(100, wait=10)
    first: dict[str, Any] = {}
    assert budget.take_now(first, 60)
    big: dict[str, Any] = {}
    small: dict[str, Any] = {}
    order: list[str] = []
    take = functools.partial(take_in_turn, budget, order)

    async with anyio.create_task_group() as group:
        group.start_soon(take, "big", big, 90)
        await anyio.wait_all_tasks_blocked()
        # 20 bytes fit beside the first body, but the big one came first.
        group.start_soon(take, "small", small, 20)
        await anyio.wait_all_tasks_blocked()
        assert order == [] and budget.snapshot()["waiting"] == 2
        budget.give_back(first)
        await anyio.wait_all_tasks_blocked()
        assert order == ["big"]
        budget.give_back(big)
    assert order == ["big", "small"]
    budget.give_back(small)
    assert budget.snapshot() == {"bytes_held": 0, "limit": 100, "waiting": 0, "waited": 2,
                                 "refused": 0}


async def test_a_body_that_finds_no_room_in_time_is_refused_and_holds_nothing() -> None:
    budget = BodyBudget(100, wait=0.05)
    holder: dict[str, Any] = {}
    assert budget.take_now(holder, 100)
    late: dict[str, Any] = {}
    with pytest.raises(ServiceUnavailable) as refused:
        await budget.wait_for_room(late, 1)
    assert refused.value.code == "bodies_memory_full"
    assert TAKEN not in late
    with pytest.raises(PayloadTooLarge):
        budget.take_now(late, 101)
    budget.give_back(holder)
    assert budget.snapshot()["bytes_held"] == 0 and budget.take_now(late, 100)


async def test_room_handed_to_a_cancelled_waiter_goes_back_with_its_request() -> None:
    budget = BodyBudget(100, wait=10)
    holder: dict[str, Any] = {}
    assert budget.take_now(holder, 100)
    waiter: dict[str, Any] = {}
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(budget.wait_for_room, waiter, 50)
            await anyio.wait_all_tasks_blocked()
            budget.give_back(holder)  # room handed over...
            scope.cancel()  # ...and the waiter cancelled before it ran again
    assert waiter[TAKEN] == 50
    budget.give_back(waiter)
    assert budget.snapshot()["bytes_held"] == 0


async def test_a_chunked_body_part_read_goes_on_past_a_body_waiting_for_its_room() -> None:
    # A chunked body takes room chunk by chunk. Queued behind a big body that waits for the
    # room it holds, each would wait for the other until bodies_wait ran out.
    budget = BodyBudget(100, wait=10)
    chunked: dict[str, Any] = {}
    assert budget.take_now(chunked, 30)
    big: dict[str, Any] = {}
    async with anyio.create_task_group() as group:
        group.start_soon(budget.wait_for_room, big, 90)
        await anyio.wait_all_tasks_blocked()
        assert budget.take_now(chunked, 30)  # its next chunk, while the big body waits
        assert not budget.take_now({}, 10)  # a new body queues behind the big one
        budget.give_back(chunked)  # the chunked body's answer is sent
    assert big[TAKEN] == 90


async def test_chunked_bodies_waiting_for_each_other_refuse_the_last_at_once() -> None:
    # Each holds part of the budget and needs more than is left. Waiting, neither could ever
    # get it: both would be refused when bodies_wait ran out. The last to wait is refused at
    # once instead, and its bytes, once its request ends, let the other finish.
    budget = BodyBudget(100, wait=60)
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    assert budget.take_now(first, 60) and budget.take_now(second, 40)
    outcome: dict[str, str] = {}

    async def more(name: str, scope: dict[str, Any], size: int) -> None:
        try:
            await budget.take(scope, size)
        except ServiceUnavailable as refused:
            outcome[name] = refused.code or ""
            budget.give_back(scope)  # the refused request ends
        else:
            outcome[name] = "room"

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(more, "first", first, 30)
            await anyio.wait_all_tasks_blocked()
            assert outcome == {} and budget.snapshot()["waiting"] == 1
            group.start_soon(more, "second", second, 10)
    assert outcome == {"second": "bodies_memory_full", "first": "room"}
    assert first[TAKEN] == 90 and TAKEN not in second
    budget.give_back(first)
    assert budget.snapshot() == {"bytes_held": 0, "limit": 100, "waiting": 0, "waited": 2,
                                 "refused": 1}


async def test_a_chunked_body_that_grows_past_the_whole_budget_gets_413_at_once() -> None:
    budget = BodyBudget(100, wait=60)
    chunked: dict[str, Any] = {}
    assert budget.take_now(chunked, 80)
    with anyio.fail_after(5), pytest.raises(PayloadTooLarge) as too_large:
        await budget.take(chunked, 30)  # 110 bytes could never fit, whoever gave back
    assert too_large.value.code == "body_over_memory_budget"
    assert "chunked body has grown past" in too_large.value.message
    assert budget.snapshot()["waiting"] == 0


async def test_a_body_part_read_is_handed_room_before_an_older_body_holding_none() -> None:
    budget = BodyBudget(100, wait=60)
    other: dict[str, Any] = {}
    chunked: dict[str, Any] = {}
    assert budget.take_now(other, 50) and budget.take_now(chunked, 40)
    fresh: dict[str, Any] = {}
    order: list[str] = []
    take = functools.partial(take_in_turn, budget, order)

    async with anyio.create_task_group() as group:
        group.start_soon(take, "fresh", fresh, 60)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(take, "chunked", chunked, 20)
        await anyio.wait_all_tasks_blocked()
        assert order == [] and budget.snapshot()["waiting"] == 2
        budget.give_back(other)  # 60 free: either fits, and the body part read goes first
        await anyio.wait_all_tasks_blocked()
        assert order == ["chunked"] and chunked[TAKEN] == 60
        budget.give_back(chunked)
    assert order == ["chunked", "fresh"]
    budget.give_back(fresh)
    assert budget.snapshot()["bytes_held"] == 0
