"""Flights of the fleet's cache on a real PostgreSQL store: a daemon that misses the fleet's
cache leads a flight, unless another daemon's answer landed meanwhile.

The race this guards against: daemon c1 looks for an answer and finds none, c0's flight lands
(its answer published, its flight ended), and c1 starts a flight of its own: without a second
look, c1 called upstream for an answer the fleet had just paid for.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import psycopg
import pytest
from llmspool.actors.caching import fleet as fleet_module
from llmspool.actors.caching.fleet import FleetCache
from llmspool.cache import fleet as fleet_sql
from llmspool.cache.store import CachedAnswer
from llmspool.core.calls import Tier, Usage
from llmspool.core.config.sections import Config
from llmspool.messages import Call
from llmspool.policy.billing import load_price_book
from llmspool.policy.planner import LatencyBook, Planner, default_latencies
from llmspool.store.backend import Backend, StoreLocation
from llmspool.store.records import NewEntry
from llmspool.store.schema import migrate_store

from tests.support.cached_calls import cached_call

Found = tuple[CachedAnswer, str] | None  # what FleetCache.answer_or_lead returns

KEY = b"k" * 32
ANSWER = b'{"id": "chatcmpl-1", "choices": []}'
ENTRY = NewEntry(KEY, False, ANSWER, "openai", "gpt-4o-mini", "chat", Tier.STANDARD,
                 Usage(10, 0, 5, 0), 60.0)


def _fleet_of_two(url: str) -> tuple[FleetCache, FleetCache]:
    config = Config()
    planner = Planner(config, load_price_book(), LatencyBook(default_latencies(config)))
    location = StoreLocation(Backend.POSTGRESQL, url)
    return FleetCache(location, "c0", planner), FleetCache(location, "c1", planner)


def _flights(url: str) -> list[str]:
    with psycopg.connect(url) as connection:
        return [row[0] for row in connection.execute(b"SELECT daemon FROM cache_flights")]


def _call() -> Call:
    return cached_call("r", KEY)[0]


def test_an_answer_that_lands_as_a_flight_starts_answers_the_call(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    anyio.run(migrate_store, StoreLocation(Backend.POSTGRESQL, postgres_url))
    first, second = _fleet_of_two(postgres_url)
    start_flight = fleet_sql.start_flight

    async def c0_lands_first(*args: Any) -> bool:
        await first.landed(KEY, ENTRY)  # c0's answer comes back just after c1's look
        return await start_flight(*args)

    async def race() -> tuple[Found, Found]:
        async with first.opened(), second.opened():
            leading = await first.answer_or_lead(KEY, _call())
            assert _flights(postgres_url) == ["c0"]
            monkeypatch.setattr(fleet_sql, "start_flight", c0_lands_first)
            return leading, await second.answer_or_lead(KEY, _call())

    leading, following = anyio.run(race)
    assert leading is None  # c0 led the flight: it calls upstream
    assert following is not None, "c1 called upstream for an answer the fleet had"
    found, how = following
    assert (found.body, how) == (ANSWER, "hit")
    assert (second.hits, second.errors) == (1, 0)
    assert _flights(postgres_url) == []  # c1's needless flight ended with its look


def test_a_daemon_leads_the_flight_when_the_fleet_has_no_answer(postgres_url: str) -> None:
    anyio.run(migrate_store, StoreLocation(Backend.POSTGRESQL, postgres_url))
    first, _second = _fleet_of_two(postgres_url)

    async def lead() -> Found:
        async with first.opened():
            return await first.answer_or_lead(KEY, _call())

    assert anyio.run(lead) is None
    assert _flights(postgres_url) == ["c0"]


def test_a_flight_whose_daemon_hung_is_taken_over_once_it_runs_out(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A daemon that hangs but keeps its lease never lands its flight: the others wait for it
    # up to FLIGHT_LIMIT (600 s; here 0.5 s), then the next to look leads a flight of its own.
    monkeypatch.setattr(fleet_module, "FLIGHT_LIMIT", 0.5)
    anyio.run(migrate_store, StoreLocation(Backend.POSTGRESQL, postgres_url))
    hung, waiting = _fleet_of_two(postgres_url)

    async def take_over() -> tuple[Found, float]:
        async with hung.opened(), waiting.opened():
            assert await hung.answer_or_lead(KEY, _call()) is None  # leads, then hangs
            started = time.monotonic()
            with anyio.fail_after(10):  # without the limit, c1 would wait for ever
                found = await waiting.answer_or_lead(KEY, _call())
            return found, time.monotonic() - started

    found, waited = anyio.run(take_over)
    assert found is None  # c1 calls upstream itself
    assert 0.3 <= waited < 5, waited  # after c0's flight ran out, not before
    assert _flights(postgres_url) == ["c1"]
    assert (waiting.hits, waiting.shared, waiting.errors) == (0, 0, 0)
