"""The actors' memory streams keep anyio's contract: bounded, closable, nothing lost on cancel."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

import anyio
import pytest
from anyio import BrokenResourceError, ClosedResourceError, EndOfStream, WouldBlock
from llmspool.core.streams import FAIR_SHARE, create_memory_stream


def run(test: Callable[[], Awaitable[None]]) -> None:
    anyio.run(test, backend="asyncio", backend_options={"use_uvloop": True})


def test_a_full_buffer_holds_the_sender_until_a_receiver_makes_room() -> None:
    async def main() -> None:
        send, receive = create_memory_stream[int](1)
        sent: list[int] = []
        send.send_nowait(1)
        with pytest.raises(WouldBlock):
            send.send_nowait(2)

        async def sender() -> None:
            await send.send(2)
            sent.append(2)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(sender)
            await anyio.wait_all_tasks_blocked()
            assert sent == []  # waiting: the buffer is full
            assert await receive.receive() == 1
            await anyio.wait_all_tasks_blocked()
            assert sent == [2]
        assert receive.receive_nowait() == 2

    run(main)


def test_without_a_buffer_an_item_passes_hand_to_hand_in_order() -> None:
    async def main() -> None:
        send, receive = create_memory_stream[int]()
        with pytest.raises(WouldBlock):
            send.send_nowait(1)  # nobody waits to receive
        async with anyio.create_task_group() as tasks:
            for item in (1, 2, 3):
                tasks.start_soon(send.send, item)
                await anyio.wait_all_tasks_blocked()
            assert [receive.receive_nowait() for _ in range(3)] == [1, 2, 3]
            with pytest.raises(WouldBlock):
                receive.receive_nowait()

    run(main)


def test_receivers_drain_the_buffer_then_see_the_end_once_every_sender_closed() -> None:
    async def main() -> None:
        send, receive = create_memory_stream[int](5)
        other = send.clone()
        send.send_nowait(1)
        other.send_nowait(2)
        send.close()
        other.send_nowait(3)  # one sender still open
        other.close()
        assert [item async for item in receive] == [1, 2, 3]
        with pytest.raises(EndOfStream):
            await receive.receive()

    run(main)


def _wakes_its_waiter(wait: Callable[[], Awaitable[object]], close: Callable[[], None],
                      error: type[Exception]) -> None:
    """A task blocked in ``wait`` is woken with ``error`` when ``close`` runs."""
    async def main() -> None:
        outcome: list[str] = []

        async def waiter() -> None:
            with pytest.raises(error):
                await wait()
            outcome.append("woken")

        with anyio.fail_after(5):  # a waiter nobody wakes fails here, not by hanging
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                close()
        assert outcome == ["woken"]

    run(main)


def test_a_waiting_receiver_is_woken_by_the_end_of_the_stream() -> None:
    send, receive = create_memory_stream[int](1)
    _wakes_its_waiter(receive.receive, send.close, EndOfStream)


def test_senders_fail_once_every_receiver_closed_even_those_already_waiting() -> None:
    send, receive = create_memory_stream[int](0)
    _wakes_its_waiter(lambda: send.send(1), receive.close, BrokenResourceError)
    with pytest.raises(BrokenResourceError):
        send.send_nowait(2)


def test_an_end_closed_by_its_owner_refuses_use_and_wakes_its_waiters() -> None:
    send, receive = create_memory_stream[int](1)
    _wakes_its_waiter(receive.receive, receive.close, ClosedResourceError)
    with pytest.raises(ClosedResourceError):
        receive.receive_nowait()
    send.close()
    with pytest.raises(ClosedResourceError):
        run(lambda: send.send(1))
    with pytest.raises(ClosedResourceError):
        send.clone()


def test_an_item_handed_to_a_receiver_cancelled_before_it_resumes_is_not_lost() -> None:
    async def main() -> None:
        send, receive = create_memory_stream[str](1)
        received: list[str] = []
        async with anyio.create_task_group() as tasks:
            scope = anyio.CancelScope()

            async def by_scope() -> None:
                with scope:
                    received.append(await receive.receive())

            tasks.start_soon(by_scope)
            await anyio.wait_all_tasks_blocked()
            # A cancel scope does not interrupt a wait that has completed: the receiver
            # resumes with the item, and the cancellation reaches it at its next checkpoint.
            send.send_nowait("job-1")
            scope.cancel()
        assert received == ["job-1"]

        waiting: list[asyncio.Task[object]] = []

        async def by_task_cancel() -> None:
            waiting.append(asyncio.current_task())  # type: ignore[arg-type]
            try:
                received.append(await receive.receive())
            except asyncio.CancelledError:
                received.append("cancelled")

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(by_task_cancel)
            await anyio.wait_all_tasks_blocked()
            # asyncio's own cancellation does interrupt it: the item goes back to the stream,
            # for the next receiver.
            send.send_nowait("job-2")
            waiting[0].cancel()
        assert received == ["job-1", "cancelled"]
        assert receive.receive_nowait() == "job-2"

    run(main)


def test_a_cancelled_sender_withdraws_its_item() -> None:
    async def main() -> None:
        send, receive = create_memory_stream[str](0)
        with anyio.move_on_after(0.01):
            await send.send("withdrawn")
        with pytest.raises(WouldBlock):
            receive.receive_nowait()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(send.send, "next")
            await anyio.wait_all_tasks_blocked()
            assert await receive.receive() == "next"

    run(main)


def test_a_receiver_that_always_finds_items_still_lets_others_run_and_be_cancelled() -> None:
    async def main() -> None:
        items = FAIR_SHARE * 10
        send, receive = create_memory_stream[int](math.inf)
        for item in range(items):
            send.send_nowait(item)
        turns = 0

        async def other() -> None:
            nonlocal turns
            while True:
                turns += 1
                await anyio.sleep(0)

        taken = 0
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(other)
            await anyio.sleep(0)
            start = turns
            for _ in range(items // 2):
                await receive.receive()
                taken += 1
            assert turns - start >= items // 2 // FAIR_SHARE - 1
            with anyio.CancelScope() as scope:
                scope.cancel()
                while True:  # never blocks: the buffer is full
                    await receive.receive()
                    taken += 1
            tasks.cancel_scope.cancel()
        assert taken < items  # the cancellation reached the loop before the buffer ran dry

    run(main)


@pytest.mark.parametrize("size", [-1, 1.5])
def test_a_bad_buffer_size_is_refused(size: float) -> None:
    with pytest.raises(ValueError, match="max_buffer_size"):
        create_memory_stream[int](size)
