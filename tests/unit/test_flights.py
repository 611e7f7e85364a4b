"""A cache flight's leader call goes to the request queue with a ``LeaderTee`` for its replies
(no task of its own; the queue takes it in the cache's task when it can), or, when the
queue's inbox is full, with a task that waits to hand it over: either way the leader's client
gets the answer marked as a miss, a follower gets it shared, the answer is kept, and the
flight lands."""

from __future__ import annotations

import anyio
import orjson
import pytest
from llmspool.actors.caching.counts import CacheCounts
from llmspool.actors.caching.flights import Flight, Flights, LeaderTee
from llmspool.actors.caching.replies import Replier
from llmspool.actors.caching.write_behind import WriteBehind
from llmspool.cache.presence import KeyPresence
from llmspool.cache.store import CacheReader
from llmspool.cache.unwritten import UnwrittenKeys
from llmspool.core.calls import Tier
from llmspool.core.config.sections import CacheConfig, Config
from llmspool.core.streams import create_memory_stream
from llmspool.messages import Answer, Call, Settled
from llmspool.policy.billing import load_price_book
from llmspool.policy.planner import LatencyBook, Planner, default_latencies

from tests.support.cached_calls import cached_call

KEY = b"k" * 32
DOCUMENT = {"id": "chatcmpl-1", "model": "gpt-4o-mini", "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}}


@pytest.mark.parametrize(("queue_full", "queue_takes_it"),
                         [(False, False), (True, False), (False, True)])
def test_a_flight_lands_with_or_without_a_task_of_its_own(queue_full: bool,
                                                          queue_takes_it: bool) -> None:
    anyio.run(_fly, queue_full, queue_takes_it, backend="asyncio",
              backend_options={"use_uvloop": True})


async def _fly(queue_full: bool, queue_takes_it: bool) -> None:
    config = Config()
    planner = Planner(config, load_price_book(), LatencyBook(default_latencies(config)))
    counts = CacheCounts()
    writes = WriteBehind(counts, None, KeyPresence(CacheConfig().max_entries), UnwrittenKeys())
    ledger_in, ledger_out = create_memory_stream[Settled](10)
    # With no room in the queue's inbox, the flight needs a task to wait for some.
    queue_in, queue_out = create_memory_stream[Call](0 if queue_full else 1)
    taken: list[Call] = []  # what the request queue took in the flight's own task

    def queue_take_now(call: Call) -> bool:
        taken.append(call)
        return True

    flights = Flights(queue_in, CacheConfig(), counts, writes, Replier(planner, ledger_in, writes),
                      None, lambda *_: None, queue_take_now=queue_take_now if queue_takes_it
                      else None)
    leader, leader_replies = cached_call("leader", KEY)
    follower, follower_replies = cached_call("follower", KEY)
    flight = flights.by_key[KEY] = Flight(KEY, leader)
    flight.followers.append(follower)
    reader = CacheReader.__new__(CacheReader)  # never read: the flight brings its answer
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            flights.start(flight, reader, group)
            upstream = taken.pop() if queue_takes_it else await queue_out.receive()
            if queue_takes_it:
                with pytest.raises(anyio.WouldBlock):  # taken, so not also sent
                    queue_out.receive_nowait()
            assert isinstance(upstream.reply, LeaderTee) is not queue_full
            await upstream.reply.send(Answer(200, {}, orjson.dumps(DOCUMENT), Tier.STANDARD,
                                             1, 2, DOCUMENT))
            upstream.reply.close()  # as the dispatcher does after the last reply
            mine, theirs = await leader_replies.receive(), await follower_replies.receive()
    assert isinstance(mine, Answer) and mine.headers["x-llmspool-cache"] == "miss"
    assert isinstance(theirs, Answer) and theirs.headers["x-llmspool-cache"] == "shared"
    assert theirs.body == mine.body
    assert flights.by_key == {}
    assert writes.recent[KEY][0].body == mine.body  # kept for the next identical call
    assert isinstance(ledger_out.receive_nowait(), Settled)  # the follower's saving

