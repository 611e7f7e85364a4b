"""The request queue actor, in-process: it hands the dispatcher a call only while a place is
free, the most urgent waiting call first, and refuses past its bound with a 503."""

from __future__ import annotations

import time
from dataclasses import replace

import anyio
from llmspool.actors.request_queue import QueueMessage, RequestQueue
from llmspool.core.calls import Endpoint
from llmspool.core.streams import create_memory_stream
from llmspool.messages import Call, Failure, QueueStatus, SlotFreed, StatusQuery
from llmspool.policy.planner import TierPolicy
from llmspool.store.records import Caller
from opentelemetry.context import Context
from opentelemetry.metrics import NoOpMeterProvider

NOW = time.time()


def call(name: str, *, arrived: float, deadline: float | None = None) -> Call:
    reply, _answers = create_memory_stream[object](4)
    return Call(
        request_id=name, endpoint=Endpoint.CHAT, provider="openai", model="gpt-4o-mini",
        body=b"{}", stream=False, policy=TierPolicy(), caller=Caller(), operation=None,
        received_at=arrived, trace=Context(), reply=reply,  # type: ignore[arg-type]
        deadline_at=deadline,
    )


def handed_over(calls: list[Call], *, slots: int, max_waiting: int = 100,
                expect: int | None = None) -> list[str]:
    """The order in which a queue with ``slots`` places hands ``calls`` (sent in this order,
    all before any place is freed) to the dispatcher, which frees a place for each one it
    gets; ``expect`` calls are handed over (default: all)."""
    return anyio.run(_handed_over, calls, slots, max_waiting, expect or len(calls))


async def _handed_over(calls: list[Call], slots: int, max_waiting: int,
                       expect: int) -> list[str]:
    inbox, inbox_out = create_memory_stream[QueueMessage](len(calls))
    freed, freed_out = create_memory_stream[SlotFreed](len(calls))
    dispatcher, dispatched = create_memory_stream[Call](len(calls))
    queue = RequestQueue(inbox_out, freed_out, dispatcher, slots=slots,
                         max_waiting=max_waiting, meter=NoOpMeterProvider().get_meter("t"))
    order: list[str] = []
    async with anyio.create_task_group() as group:
        await group.start(queue.run)
        for waiting in calls:
            await inbox.send(waiting)
        await anyio.wait_all_tasks_blocked()  # every call admitted, handed over or waiting
        async with dispatched, freed:
            while len(order) < expect:
                message = await dispatched.receive()
                assert isinstance(message, Call)
                order.append(message.request_id)
                await freed.send(SlotFreed(message.request_id))
            await inbox.aclose()
            assert [message async for message in dispatched] == []
    return order


def test_waiting_calls_go_most_urgent_first() -> None:
    first = call("first", arrived=NOW)  # takes the one place at once
    in_an_hour = call("job-line", arrived=NOW + 1, deadline=NOW + 3600)
    waiting_caller = call("interactive", arrived=NOW + 2)
    in_ten_seconds = call("deadline-10s", arrived=NOW + 3, deadline=NOW + 12)
    soon = call("deadline-1s", arrived=NOW + 4, deadline=NOW + 1.5)
    order = handed_over([first, in_an_hour, waiting_caller, in_ten_seconds, soon], slots=1)
    assert order == ["first", "deadline-1s", "interactive", "deadline-10s", "job-line"]


def test_calls_without_deadlines_keep_their_arrival_order() -> None:
    calls = [call(f"c{i}", arrived=NOW) for i in range(6)]
    assert handed_over(calls, slots=2) == [f"c{i}" for i in range(6)]


def test_past_its_bound_the_queue_refuses_with_503_and_keeps_the_rest() -> None:
    replies = []
    calls = []
    for i in range(5):
        reply, answers = create_memory_stream[object](1)
        calls.append(replace(call(f"c{i}", arrived=NOW + i), reply=reply))
        replies.append(answers)
    # One in flight, two waiting: the fourth and fifth are refused.
    order = handed_over(calls, slots=1, max_waiting=2, expect=3)
    assert order == ["c0", "c1", "c2"]
    for refused in replies[3:]:
        failure = refused.receive_nowait()
        assert isinstance(failure, Failure)
        assert failure.error.status == 503 and failure.error.code == "queue_full"


def test_a_status_asker_that_gave_up_does_not_end_the_queue() -> None:
    # /v1/status gives up after its timeout and closes its reply stream; the queue answering
    # late must go on serving (before, the send raised in the actor and ended the daemon).
    async def scenario() -> list[str]:
        inbox, inbox_out = create_memory_stream[QueueMessage](4)
        freed, freed_out = create_memory_stream[SlotFreed](4)
        dispatcher, dispatched = create_memory_stream[Call](4)
        queue = RequestQueue(inbox_out, freed_out, dispatcher, slots=1, max_waiting=4,
                             meter=NoOpMeterProvider().get_meter("t"))
        async with anyio.create_task_group() as group:
            await group.start(queue.run)
            reply, answers = create_memory_stream[QueueStatus](1)
            answers.close()  # the asker is gone
            await inbox.send(StatusQuery(reply))
            await inbox.send(call("after", arrived=NOW))
            with anyio.fail_after(5):
                handed = await dispatched.receive()
            await freed.send(SlotFreed(handed.request_id))
            await inbox.aclose()
            async with dispatched, freed:
                pass
        return [handed.request_id]

    assert anyio.run(scenario) == ["after"]


def test_a_call_is_taken_in_the_callers_task_only_when_it_would_not_wait_or_overtake() -> None:
    anyio.run(_take_now)


async def _take_now() -> None:
    inbox, inbox_out = create_memory_stream[QueueMessage](8)
    freed, freed_out = create_memory_stream[SlotFreed](8)
    dispatcher, dispatched = create_memory_stream[Call](8)
    queue = RequestQueue(inbox_out, freed_out, dispatcher, slots=2, max_waiting=8,
                         meter=NoOpMeterProvider().get_meter("t"))
    assert not queue.take_now(call("too-early", arrived=NOW))  # the queue does not run yet
    async with anyio.create_task_group() as group:
        await group.start(queue.run)
        await anyio.wait_all_tasks_blocked()
        assert queue.take_now(call("direct", arrived=NOW))
        assert dispatched.receive_nowait().request_id == "direct"  # no turn of the loop
        # One sent and not yet read: a call taken now would overtake it.
        await inbox.send(call("sent", arrived=NOW + 1))
        assert not queue.take_now(call("behind", arrived=NOW + 2))
        await inbox.send(call("behind", arrived=NOW + 2))
        await anyio.wait_all_tasks_blocked()
        assert dispatched.receive_nowait().request_id == "sent"  # the second place
        assert not queue.take_now(call("no-place", arrived=NOW + 3))  # "behind" waits
        assert queue.free_slot()  # the dispatcher's task frees a place: "behind" gets it
        assert dispatched.receive_nowait().request_id == "behind"
        await inbox.aclose()
        await freed.aclose()
    assert not queue.free_slot()  # stopped: a freed place is sent (and nobody reads it)
