"""A relayed stream's time limits: the wait for one chunk, the whole attempt, and neither while
a chunk waits for room towards a slow client."""

from __future__ import annotations

import anyio
import pytest
from llmspool.actors.dispatch.stream_clock import StreamClock

pytestmark = pytest.mark.anyio


async def test_a_wait_longer_than_the_idle_limit_is_cut_and_named_so() -> None:
    started = anyio.current_time()
    with anyio.CancelScope() as scope:
        clock = StreamClock(scope, idle=0.05, deadline=started + 5)
        assert clock.waiting()
        await anyio.sleep(5)
    clock.stop()
    assert scope.cancelled_caught
    assert clock.idle_ran_out
    assert 0.05 <= anyio.current_time() - started < 1


async def test_chunks_at_a_steady_pace_run_until_the_total_limit() -> None:
    started = anyio.current_time()
    chunks = 0
    with anyio.CancelScope() as scope:
        clock = StreamClock(scope, idle=0.06, deadline=started + 0.3)
        while clock.waiting():
            await anyio.sleep(0.02)  # each chunk well within the idle limit
            chunks += 1
    clock.stop()
    # Cancelled by the timer during a wait, or (on a busy machine, the timer late) by
    # ``waiting`` finding the total limit passed: either way the scope was cancelled.
    assert scope.cancel_called
    assert not clock.idle_ran_out
    assert 0.3 <= anyio.current_time() - started < 1
    assert chunks >= 10  # every wait was short: only the total limit ended it


async def test_a_chunk_held_by_a_slow_client_runs_out_no_limit_until_it_has_gone() -> None:
    started = anyio.current_time()
    with anyio.CancelScope() as scope:
        clock = StreamClock(scope, idle=0.05, deadline=started + 0.15)
        assert clock.waiting()
        clock.held()
        await anyio.sleep(0.3)  # past both limits, waiting on the client
        assert not scope.cancel_called
        # The chunk has gone: the total limit has run out, and the next wait says so.
        assert not clock.waiting()
    clock.stop()
    assert scope.cancel_called
    assert not clock.idle_ran_out


async def test_a_stream_that_ends_in_time_leaves_no_timer_behind() -> None:
    with anyio.CancelScope() as scope:
        clock = StreamClock(scope, idle=0.05, deadline=anyio.current_time() + 5)
        assert clock.waiting()
        clock.stop()
    await anyio.sleep(0.15)  # past where the idle timer was
    assert not scope.cancel_called
