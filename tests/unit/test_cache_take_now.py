"""The front door's cache miss is taken in its own task (``ResponseCache.take_now``) only when
the cache actor would take it at once: the actor reads its inbox, and no call waits there ahead
of it (taking it then would let it overtake an identical call and lead a second flight)."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
from llmspool.actors.caching.flights import LeaderTee
from llmspool.actors.response_cache import CacheMessage, ResponseCache
from llmspool.cache.presence import KeyPresence
from llmspool.cache.unwritten import UnwrittenKeys
from llmspool.core.config.sections import CacheConfig, Config
from llmspool.core.streams import create_memory_stream
from llmspool.messages import Call, Missed, Settled
from llmspool.policy.billing import load_price_book
from llmspool.policy.planner import LatencyBook, Planner, default_latencies

from tests.support.cached_calls import cached_call


def test_a_miss_is_taken_in_the_doors_task_only_when_it_overtakes_nothing(
        tmp_path: Path) -> None:
    anyio.run(_take_now, tmp_path)


async def _take_now(state_dir: Path) -> None:
    config = Config()
    planner = Planner(config, load_price_book(), LatencyBook(default_latencies(config)))
    inbox, inbox_out = create_memory_stream[CacheMessage](8)
    queue, queued = create_memory_stream[Call](8)
    ledger, _ledger_out = create_memory_stream[Settled](8)
    cache = ResponseCache(inbox_out, queue, ledger, config=CacheConfig(), state_dir=state_dir,
                          planner=planner, presence=KeyPresence(CacheConfig().max_entries),
                          unwritten=UnwrittenKeys())
    early, _ = cached_call("early", b"e" * 32)
    assert not cache.take_now(early, time.time())  # the actor does not run yet
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            await group.start(cache.run)
            await anyio.wait_all_tasks_blocked()

            first, _ = cached_call("first", b"a" * 32)
            assert cache.take_now(first, time.time())
            led = queued.receive_nowait()  # sent on in this task: no turn of the loop
            assert led.request_id == "first" and isinstance(led.reply, LeaderTee)

            # One sent to the actor and not yet read: a twin taken now would overtake it and
            # lead a flight of its own.
            second, _ = cached_call("second", b"b" * 32)
            twin, _ = cached_call("twin", b"b" * 32)
            await inbox.send(Missed(second, time.time()))
            assert not cache.take_now(twin, time.time())
            await inbox.send(Missed(twin, time.time()))
            await anyio.wait_all_tasks_blocked()
            assert queued.receive_nowait().request_id == "second"  # one flight for both
            assert queued.backlog() == 0  # the twin follows it

            group.cancel_scope.cancel()  # the flights under way never land here
    late, _ = cached_call("late", b"c" * 32)
    assert not cache.take_now(late, time.time())  # the actor has stopped: send it
