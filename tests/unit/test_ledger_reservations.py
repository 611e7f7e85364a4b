"""Reservations are the ledger's durable intents: a call admitted and never settled (the
daemon died mid-call) is billed at its reservation as an unknown outcome on the next start,
and counts against the caps; a settled call leaves no reservation behind; a job's result and
its entry are stored together, once. Each runs on both backends (``store_location``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson
from llmspool.actors.ledger import COMMIT_INTERVAL, Ledger, LedgerMessage
from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.core.config.sections import BudgetsConfig
from llmspool.core.errors import ApiError
from llmspool.core.streams import create_memory_stream
from llmspool.messages import Admit, LedgerStatus, Release, StatusQuery, StoreJobResults
from llmspool.store import ledger as ledger_sql
from llmspool.store.backend import StoreLocation
from llmspool.store.connect import connect, connected_async
from llmspool.store.jobs import insert_job
from llmspool.store.ledger import LedgerConnection
from llmspool.store.records import Caller, JobLine, JobResult, NewJob, Settled

USD = 10**12
NOW = 1.8e9
Scenario = Callable[[Any], Awaitable[Any]]


async def run_ledger(store: StoreLocation, budgets: BudgetsConfig, scenario: Scenario,
                     commit_interval: float = COMMIT_INTERVAL) -> Any:
    """Run a ledger on ``store`` for ``scenario``; leaving it without a clean stop is what a
    crash looks like to the store (nothing is flushed that was not already committed)."""
    async def with_inbox(_ledger: Ledger, inbox: Any) -> Any:
        return await scenario(inbox)

    return await run_ledger_with(store, budgets, with_inbox, commit_interval)


async def run_ledger_with(store: StoreLocation, budgets: BudgetsConfig,
                          scenario: Callable[[Ledger, Any], Awaitable[Any]],
                          commit_interval: float = COMMIT_INTERVAL) -> Any:
    """``run_ledger`` for a scenario that also calls the ledger itself."""
    database = LedgerConnection.open(store)
    inbox_in, inbox_out = create_memory_stream[LedgerMessage](64)
    ledger = Ledger(inbox_out, database, budgets=budgets, clock=lambda: NOW,
                    commit_interval=commit_interval)
    try:
        async with anyio.create_task_group() as group:
            await group.start(ledger.run)
            async with inbox_in:
                return await scenario(ledger, inbox_in)
    finally:
        database.close()


async def admit(inbox: Any, request_id: str, estimate: int) -> ApiError | None:
    reply_in, reply_out = create_memory_stream[ApiError | None](1)
    with reply_in, reply_out:
        await inbox.send(Admit(request_id, "openai", "gpt-4o-mini", None, 1000, None, estimate,
                               reply_in, Endpoint.CHAT, Tier.STANDARD))
        return await reply_out.receive()


async def status(inbox: Any) -> LedgerStatus:
    reply_in, reply_out = create_memory_stream[LedgerStatus](1)
    with reply_in, reply_out:
        await inbox.send(StatusQuery(reply_in))
        return await reply_out.receive()


def entry(request_id: str, cost: int) -> Settled:
    return Settled(
        request_id=request_id, provider="openai", model="gpt-4o-mini", endpoint=Endpoint.CHAT,
        tier=Tier.STANDARD, usage=Usage(10, 0, 10), cost_picodollars=cost,
        standard_cost_picodollars=cost, caller=Caller(uid=1000), operation=None, status=200,
        started_at=NOW, finished_at=NOW,
    )


def rows(store: StoreLocation, sql: str) -> list[tuple[Any, ...]]:
    connection = connect(store)
    try:
        return [tuple(row) for row in connection.execute(sql).fetchall()]
    finally:
        connection.close()


def test_a_call_in_flight_at_a_crash_is_billed_at_its_reservation_and_counts_on(
    store_location: StoreLocation,
) -> None:
    budgets = BudgetsConfig(daily_usd=1.0)
    state = store_location

    async def before_the_crash(inbox: Any) -> None:
        assert await admit(inbox, "settled-call", USD // 10) is None
        await inbox.send(entry("settled-call", USD // 20))
        assert await admit(inbox, "cut-off-call", 3 * USD // 10) is None
        await status(inbox)  # everything sent so far is committed

    anyio.run(run_ledger, state, budgets, before_the_crash)
    # The reservation of the call that never settled is on disk; the settled one's is not.
    assert rows(state, "SELECT request_id FROM reservations") == [("cut-off-call",)]

    async def after_the_restart(inbox: Any) -> tuple[dict[str, Any], ApiError | None,
                                                      ApiError | None]:
        report = await status(inbox)
        # $1 cap: $0.05 settled + $0.30 unknown = $0.35 spent; $0.70 more would break it.
        refused = await admit(inbox, "too-much", 7 * USD // 10)
        fits = await admit(inbox, "fits", 6 * USD // 10)
        return report, refused, fits

    report, refused, fits = anyio.run(run_ledger, state, budgets, after_the_restart)
    assert report["unknown_outcome_today"] == 1
    assert report["unknown_outcome_today_usd"] == 0.3
    assert report["spend_today_usd"] == 0.35
    assert refused is not None and refused.code == "budget_day"
    assert fits is None
    unknown = rows(state, "SELECT request_id, cost_picodollars, flag, usage_estimated "
                          "FROM ledger_entries WHERE flag IS NOT NULL")
    assert unknown == [("cut-off-call", 3 * USD // 10, "unknown_outcome", 1)]


def test_released_and_settled_calls_leave_no_reservation(store_location: StoreLocation) -> None:
    state = store_location

    async def calls(inbox: Any) -> dict[str, Any]:
        for number in range(20):
            assert await admit(inbox, f"call-{number}", USD // 100) is None
        for number in range(20):
            if number % 2:
                await inbox.send(entry(f"call-{number}", USD // 200))
            else:
                await inbox.send(Release(f"call-{number}"))
        return await status(inbox)

    report = anyio.run(run_ledger, state, BudgetsConfig(), calls)
    assert report["calls_reserved"] == 0
    assert rows(state, "SELECT COUNT(*) FROM reservations") == [(0,)]
    assert rows(state, "SELECT COUNT(*) FROM ledger_entries") == [(10,)]


def test_a_job_result_and_its_entry_are_stored_together_once(
    store_location: StoreLocation,
) -> None:
    state = store_location

    async def make_job() -> None:
        async with connected_async(state) as database:
            body = orjson.dumps({"model": "gpt-4o-mini", "messages": []})
            await insert_job(database, NewJob(  # type: ignore[arg-type]
                "job_1", NOW, NOW + 3600, None, {}, 1000,
                [JobLine(1, "a", Endpoint.CHAT, "openai", "gpt-4o-mini", body)]))

    anyio.run(make_job)
    request_id = rows(state, "SELECT id FROM job_requests")[0][0]

    async def store_twice(inbox: Any) -> tuple[list[int], list[int], dict[str, Any]]:
        stored = []
        for attempt in ("call-1", "call-2"):  # the second: a repeat after a crash
            assert await admit(inbox, attempt, USD // 100) is None
            result = JobResult(request_id, "job_1", "succeeded", "standard", USD // 200,
                               USD // 200, b'{"custom_id":"a"}', 1)
            reply_in, reply_out = create_memory_stream[list[int]](1)
            with reply_in, reply_out:
                await inbox.send(StoreJobResults([result], [entry(attempt, USD // 200)],
                                                 reply_in))
                stored.append(await reply_out.receive())
        return stored[0], stored[1], await status(inbox)

    first, second, report = anyio.run(run_ledger, state, BudgetsConfig(), store_twice)
    assert first == [request_id] and second == []  # the result is stored once
    # Both calls were answered (and billed by the provider): both are in the ledger.
    assert rows(state, "SELECT request_id FROM ledger_entries ORDER BY id") == [
        ("call-1",), ("call-2",)]
    assert rows(state, "SELECT state FROM job_requests") == [("succeeded",)]
    assert rows(state, "SELECT COUNT(*) FROM reservations") == [(0,)]
    assert report["calls_reserved"] == 0


def test_a_group_commit_that_fails_stores_none_of_it_and_the_next_one_goes_in(
    store_location: StoreLocation,
) -> None:
    """On PostgreSQL a group commit is one pipeline: a statement failing in it must still
    roll the whole group back, and leave the connection ready for the next."""
    connection = connect(store_location)
    good = ("kept", "call", NOW, "openai", "gpt-4o-mini", "/v1/chat/completions",
            "standard", None, 1000, None, USD // 100, None, "d")
    bad = ("broken", "neither call nor line", *good[2:])  # breaks the CHECK on kind
    try:
        try:
            ledger_sql.write_group(connection, [good, bad], [entry("with-it", USD // 200)], [])
        except Exception:  # sqlite3.IntegrityError or psycopg's CheckViolation
            pass
        else:
            raise AssertionError("a reservation of an unknown kind was stored")
        assert not connection.in_transaction
        assert connection.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 0
        assert connection.execute("SELECT COUNT(*) FROM ledger_entries").fetchone()[0] == 0
        ledger_sql.write_group(connection, [good], [entry("after", USD // 200)], [])
        assert [tuple(row) for row in connection.execute(
            "SELECT request_id FROM reservations").fetchall()] == [("kept",)]
        assert connection.execute("SELECT COUNT(*) FROM ledger_entries").fetchone()[0] == 1
    finally:
        connection.close()
