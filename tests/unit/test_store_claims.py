"""Claims on queued requests in a store several daemons share (``llmspool.store.jobs``,
PostgreSQL: SQLite serves one daemon, which claims nothing): each line offered to the fleet is
claimed by exactly one daemon however many ask at once, a job's owner sends only the lines no
other daemon claimed, lines it keeps (bound for a batch) are never offered, and the claims of a
daemon that stops, restarts or dies are offered again (and its calls in flight for the fleet's
response cache end)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from llmspool.store import jobs as jobs_sql
from llmspool.store import ledger as ledger_sql
from llmspool.store.backend import Backend, StoreLocation
from llmspool.store.connect import connect, connected_async
from llmspool.store.connections import AsyncConnection
from llmspool.store.fleet import Member, fleet_report, leave, register
from llmspool.store.schema import migrate_store

from tests.unit.test_store_jobs import chat_line, new_job, request_ids

LINES = 2000
HELPERS = ("h1", "h2", "h3", "h4")


@pytest.fixture
def shared(postgres_url: str) -> StoreLocation:
    location = StoreLocation(Backend.POSTGRESQL, postgres_url)
    anyio.run(migrate_store, location)
    return location


async def offered_job(connection: AsyncConnection, job_id: str, owner: str, lines: int
                      ) -> list[int]:
    """A job of ``owner``'s, all its lines offered (routed to be sent); their ids."""
    await jobs_sql.insert_job(connection, new_job(job_id, [chat_line(n)
                                                           for n in range(1, lines + 1)]), owner)
    ids = await request_ids(connection, job_id)
    await jobs_sql.offer(connection, owner, ids)
    return ids


async def claims(connection: AsyncConnection) -> dict[int, str | None]:
    rows = await connection.execute_fetchall("SELECT id, claimed_by FROM job_requests")
    return {int(row[0]): row[1] for row in rows}


def test_four_daemons_claiming_at_once_get_each_offered_line_exactly_once(
        shared: StoreLocation) -> None:
    got: dict[str, list[int]] = {name: [] for name in HELPERS}

    async def helper(name: str) -> None:
        async with connected_async(shared) as connection:
            while rows := await jobs_sql.claim_offered(connection, name, 25):
                got[name] += [row.id for row in rows]
                await anyio.sleep(0)

    async def main() -> tuple[list[int], list[int]]:
        async with connected_async(shared) as connection:
            ids = await offered_job(connection, "job_a", "owner", LINES)
            async with anyio.create_task_group() as group:
                for name in HELPERS:
                    group.start_soon(helper, name)
            # Its own job's lines are not the owner's to claim as a helper.
            await offered_job(connection, "job_b", "owner", 10)
            own = await jobs_sql.claim_offered(connection, "owner", 100)
            return ids, [row.id for row in own]

    ids, own = anyio.run(main)
    claimed = [line for lines in got.values() for line in lines]
    assert sorted(claimed) == sorted(ids)  # every line, none twice
    assert all(got.values())  # the four shared them
    assert own == []


def test_the_owner_sends_only_the_lines_no_other_daemon_claimed(shared: StoreLocation) -> None:
    async def main() -> tuple[list[int], list[int], list[int], list[int], dict[int, str | None]]:
        async with connected_async(shared) as connection:
            await jobs_sql.insert_job(
                connection, new_job("job_a", [chat_line(n) for n in range(1, 21)]), "owner")
            ids = await request_ids(connection, "job_a")
            # The first ten are routed to be sent (offered); the others stay the owner's (as
            # lines bound for a batch do).
            await jobs_sql.offer(connection, "owner", ids[:10])
            helped = [row.id for row in await jobs_sql.claim_offered(connection, "h1", 4)]
            sent = [row.id for row in await jobs_sql.fetch_requests(connection, ids[:10],
                                                                     "owner")]
            again = [row.id for row in await jobs_sql.claim_offered(connection, "h2", 100)]
            # The helper reads what it claimed; the owner's routing no longer sees it.
            mine = [row.id for row in await jobs_sql.fetch_requests(connection, helped, "h1")]
            return helped, sent, again, mine, await claims(connection)

    helped, sent, again, mine, owners = anyio.run(main)
    assert len(helped) == 4 and set(helped) <= set(owners)
    assert sorted(sent + helped) == sorted(owners)[:10]  # each of the ten sent by one daemon
    assert again == []  # nothing left on offer: the rest were never offered
    assert mine == helped
    assert sum(1 for who in owners.values() if who == "owner") == 16


def test_the_claims_of_a_daemon_that_stops_restarts_or_dies_are_offered_again(
        shared: StoreLocation) -> None:
    member = Member("h1", "host", 1, "test", 30.0)

    async def claim_all(name: str) -> list[int]:
        async with connected_async(shared) as connection:
            return [row.id for row in await jobs_sql.claim_offered(connection, name, 1000)]

    async def setup() -> list[int]:
        async with connected_async(shared) as connection:
            return await offered_job(connection, "job_a", "owner", 30)

    async def restart(name: str) -> dict[int, str | None]:
        async with connected_async(shared) as connection:
            await jobs_sql.claim_unclaimed(connection, name)
            return await claims(connection)

    ids = anyio.run(setup)
    first = anyio.run(claim_all, "h1")
    connection = connect(shared)
    try:
        # Each also has a call in flight for the fleet's cache, which ends with it.
        for name in ("h1", "h3"):
            connection.execute("INSERT INTO cache_flights (key, daemon, started_at, until) "
                               "VALUES (?, ?, 0, 1e12)", (name.encode(), name))
        register(connection, member)
        shown = {daemon["name"]: daemon["requests_claimed"]
                 for daemon in fleet_report(connection)}
        leave(connection, member)  # a clean stop
        after_stop = anyio.run(claim_all, "h2")
        # h2 restarts under its name: the lines of others' jobs it had claimed are offered.
        after_restart = anyio.run(restart, "h2")
        # h3 claims them, then dies: the daemon that takes it over offers them again.
        third = anyio.run(claim_all, "h3")
        register(connection, Member("h3", "host", 3, "test", 0.0))
        taken = ledger_sql.take_over(connection, 1e12, ["h3"], "h4")
        last = anyio.run(claim_all, "h4")
        flights = connection.execute("SELECT daemon FROM cache_flights").fetchall()
    finally:
        connection.close()
    assert sorted(first) == sorted(ids)
    assert shown == {"h1": 30}  # status shows the work each daemon claimed
    assert sorted(after_stop) == sorted(ids)
    assert set(after_restart.values()) == {None}
    assert sorted(third) == sorted(ids)
    assert taken.daemons == ["h3"]
    assert sorted(last) == sorted(ids)
    assert flights == []


def test_a_restarting_owner_claims_back_its_offered_lines_before_routing_them(
        shared: StoreLocation) -> None:
    async def main() -> tuple[dict[int, Any], list[int]]:
        async with connected_async(shared) as connection:
            ids = await offered_job(connection, "job_a", "owner", 10)
            helped = [row.id for row in await jobs_sql.claim_offered(connection, "h1", 3)]
            await jobs_sql.claim_unclaimed(connection, "owner")
            routable = [row.id async for page in jobs_sql.routable_pages(
                connection, "job_a", claimer="owner") for row in page]
            owners = await claims(connection)
            return {i: owners[i] for i in ids}, [i for i in routable if i in helped]

    owners, routed_helped = anyio.run(main)
    assert sorted(owners.values(), key=str).count("owner") == 7
    assert sorted(who for who in owners.values() if who != "owner") == ["h1"] * 3
    assert routed_helped == []  # the helper's lines are its to send, not routed again
