"""The ledgers of several daemons sharing one PostgreSQL store (issue 20), each a real ``Ledger``
actor on its own connection to a real server:

- 400 calls racing through four ledgers under one daily cap: what they reserve together, and
  then spend, never passes the cap (each ledger alone would have admitted up to the cap);
- a daemon that stops renewing its lease (killed) is taken over by another: its calls in
  flight are billed at their reservations, its share of the cap is freed, and the other
  daemons' calls in flight are left alone;
- a daemon restarting under its name settles only its own leftovers;
- the fleet's status names every daemon with its lease and the calls it holds.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
from anyio.abc import ObjectSendStream
from llmspool.actors.ledger import Ledger, LedgerMessage
from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.core.config.sections import BudgetsConfig
from llmspool.core.errors import ApiError
from llmspool.core.streams import create_memory_stream
from llmspool.messages import Admit, LedgerStatus, StatusQuery
from llmspool.store.backend import Backend, StoreLocation
from llmspool.store.fleet import Member
from llmspool.store.ledger import LedgerConnection
from llmspool.store.records import Caller, Settled
from llmspool.store.schema import migrate_store

USD = 10**12
CAP_USD = 0.05
CAP = round(CAP_USD * USD)
Inbox = ObjectSendStream[LedgerMessage]


def member(name: str, lease: float = 30.0) -> Member:
    return Member(name, "test-host", 4242, "test", lease)


@asynccontextmanager
async def running_ledger(store: StoreLocation, name: str, *, lease: float = 30.0,
                         budgets: BudgetsConfig | None = None) -> AsyncIterator[Inbox]:
    """A ledger of the daemon ``name`` for the block. Leaving the block cancels it without
    settling anything: what a kill -9 leaves in the store (nothing more is written)."""
    database = LedgerConnection.open(store)
    inbox_in, inbox_out = create_memory_stream[LedgerMessage](1024)
    ledger = Ledger(inbox_out, database, budgets=budgets or BudgetsConfig(daily_usd=CAP_USD),
                    clock=time.time, member=member(name, lease))
    try:
        async with anyio.create_task_group() as group:
            await group.start(ledger.run)
            try:
                yield inbox_in
            finally:
                group.cancel_scope.cancel()
    finally:
        database.close()


async def admit(inbox: Inbox, request_id: str, estimate: int) -> ApiError | None:
    reply_in, reply_out = create_memory_stream[ApiError | None](1)
    with reply_in, reply_out:
        await inbox.send(Admit(request_id, "openai", "gpt-4o-mini", None, 1000, None, estimate,
                               reply_in, Endpoint.CHAT, Tier.STANDARD))
        return await reply_out.receive()


async def status(inbox: Inbox) -> LedgerStatus:
    reply_in, reply_out = create_memory_stream[LedgerStatus](1)
    with reply_in, reply_out:
        await inbox.send(StatusQuery(reply_in))
        return await reply_out.receive()


def entry(request_id: str, cost: int) -> Settled:
    now = time.time()
    return Settled(
        request_id=request_id, provider="openai", model="gpt-4o-mini", endpoint=Endpoint.CHAT,
        tier=Tier.STANDARD, usage=Usage(10, 0, 10), cost_picodollars=cost,
        standard_cost_picodollars=cost, caller=Caller(uid=1000), operation=None, status=200,
        started_at=now, finished_at=now,
    )


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return [tuple(row) for row in connection.execute(sql.encode()).fetchall()]


def shared(url: str) -> StoreLocation:
    store = StoreLocation(Backend.POSTGRESQL, url)
    anyio.run(migrate_store, store)
    return store


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.05)


def test_400_calls_through_four_daemons_never_reserve_or_spend_past_a_shared_cap(
    postgres_url: str,
) -> None:
    store = shared(postgres_url)
    rng = random.Random(20)
    estimates = [rng.randrange(USD // 2000, USD // 500) for _ in range(400)]  # $0.0005-0.002
    delays = [rng.uniform(0, 0.3) for _ in estimates]  # arriving over 0.3 s, as calls do

    async def race() -> tuple[list[ApiError | None], list[LedgerStatus]]:
        async with (running_ledger(store, "d0") as d0, running_ledger(store, "d1") as d1,
                    running_ledger(store, "d2") as d2, running_ledger(store, "d3") as d3):
            inboxes = [d0, d1, d2, d3]
            verdicts: list[ApiError | None] = [None] * len(estimates)

            async def one(index: int) -> None:
                await anyio.sleep(delays[index])
                verdicts[index] = await admit(inboxes[index % 4], f"call-{index}",
                                              estimates[index])

            # One call through each daemon first: were the loop stalled past the 0.3 s
            # (a loaded machine), the first daemon to commit could take the whole cap alone.
            for index in range(4):
                verdicts[index] = await admit(inboxes[index], f"call-{index}", estimates[index])
            async with anyio.create_task_group() as calls:
                for index in range(4, len(estimates)):
                    calls.start_soon(one, index)
            # Every admitted call is answered and billed its whole reservation (the worst case).
            for index, verdict in enumerate(verdicts):
                if verdict is None:
                    await inboxes[index % 4].send(entry(f"call-{index}", estimates[index]))
            for inbox in inboxes:  # each ledger commits what it was sent
                await status(inbox)
            return verdicts, [await status(inbox) for inbox in inboxes]

    verdicts, reports = anyio.run(race)
    admitted = [estimates[i] for i, verdict in enumerate(verdicts) if verdict is None]
    refused = [verdict for verdict in verdicts if verdict is not None]
    assert refused and {error.code for error in refused} == {"budget_day"}
    assert sum(estimates) > 4 * CAP  # alone, each daemon would have admitted up to the cap
    assert sum(admitted) <= CAP
    assert CAP - sum(admitted) < max(estimates)  # and the cap was used, not just refused
    ((spent, entries),) = rows(postgres_url, "SELECT SUM(cost_picodollars)::BIGINT, COUNT(*) "
                                             "FROM ledger_entries")
    assert spent == sum(admitted) and entries == len(admitted)
    # Each entry names the daemon that made the call; each daemon made some.
    by_daemon = dict(rows(postgres_url, "SELECT daemon, COUNT(*) FROM ledger_entries "
                                        "GROUP BY daemon"))
    assert set(by_daemon) == {"d0", "d1", "d2", "d3"}
    assert rows(postgres_url, "SELECT COUNT(*) FROM reservations") == [(0,)]
    # Every daemon's status shows the fleet's spend, and the fleet.
    for report in reports:
        assert abs(report["spend_today_usd"] - spent / USD) < 1e-9
        assert [daemon["name"] for daemon in report["fleet"]] == ["d0", "d1", "d2", "d3"]
        assert all(daemon["alive"] for daemon in report["fleet"])


def test_a_daemon_whose_lease_runs_out_is_taken_over_its_calls_billed_at_their_reservations(
    postgres_url: str,
) -> None:
    store = shared(postgres_url)
    lease = 0.6

    async def scenario() -> tuple[ApiError | None, ApiError | None, LedgerStatus]:
        async with running_ledger(store, "survivor", lease=lease) as survivor:
            assert await admit(survivor, "survivor-call", CAP // 4) is None
            async with running_ledger(store, "doomed", lease=lease) as doomed:
                for number in range(2):
                    assert await admit(doomed, f"doomed-call-{number}", CAP // 4) is None
                # Three quarters of the cap are held: survivor's call and doomed's two.
                full = await admit(survivor, "one-too-many", CAP // 2)
            # doomed is gone without a word (kill -9): its lease runs out, survivor takes over.

            async def taken_over() -> bool:
                report = await status(survivor)
                return [d["name"] for d in report["fleet"]] == ["survivor"]

            await until(taken_over)
            # Its calls are billed at their reservations (nobody knows whether the provider
            # answered them), which no longer wait to be settled.
            after = await admit(survivor, "after", CAP // 8)
            return full, after, await status(survivor)

    full, after, report = anyio.run(scenario)
    assert full is not None and full.code == "budget_day"
    assert after is None
    assert rows(postgres_url, "SELECT request_id, cost_picodollars, flag, daemon FROM "
                              "ledger_entries ORDER BY request_id") == [
        (f"doomed-call-{n}", CAP // 4, "unknown_outcome", "doomed") for n in range(2)]
    # survivor's own calls in flight were left alone.
    assert sorted(rows(postgres_url, "SELECT request_id, daemon FROM reservations")) == [
        ("after", "survivor"), ("survivor-call", "survivor")]
    assert rows(postgres_url, "SELECT name FROM daemons") == [("survivor",)]
    assert report["unknown_outcome_today"] == 2
    assert rows(postgres_url, "SELECT spent, reserved FROM budget_usage WHERE kind = 'day'") \
        == [(CAP // 2, CAP // 4 + CAP // 8)]


def test_a_daemon_restarting_under_its_name_settles_only_its_own_leftovers(
    postgres_url: str,
) -> None:
    store = shared(postgres_url)

    async def scenario() -> None:
        async with running_ledger(store, "steady") as steady:
            assert await admit(steady, "steady-call", CAP // 10) is None
            async with running_ledger(store, "flaky") as flaky:
                assert await admit(flaky, "flaky-call", CAP // 10) is None
            async with running_ledger(store, "flaky") as flaky:  # the restart
                await status(flaky)
            await status(steady)

    anyio.run(scenario)
    assert rows(postgres_url, "SELECT request_id, flag, daemon FROM ledger_entries") == [
        ("flaky-call", "unknown_outcome", "flaky")]
    assert rows(postgres_url, "SELECT request_id, daemon FROM reservations") == [
        ("steady-call", "steady")]
