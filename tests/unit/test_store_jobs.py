"""The job keeper's store (``llmspool.store.jobs``), on each backend: a job and its lines go
in whole, are read back for routing and sending, cancelled, completed, counted, streamed as
results in input order, and forgotten after retention."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson
import pytest
from llmspool.core.calls import Endpoint
from llmspool.core.states import JobStatus, RequestState
from llmspool.store import jobs as jobs_sql
from llmspool.store.backend import Backend, StoreLocation
from llmspool.store.connect import connected_async
from llmspool.store.connections import AsyncConnection
from llmspool.store.records import JobLine, NewJob
from llmspool.store.schema import migrate_store

NOW = 1.8e9
Scenario = Callable[[AsyncConnection], Awaitable[Any]]


def run(location: StoreLocation, scenario: Scenario) -> Any:
    async def main() -> Any:
        async with connected_async(location) as connection:
            return await scenario(connection)
    return anyio.run(main)


def chat_line(line: int, body: bytes | None = None, **fields: Any) -> JobLine:
    return JobLine(line, f"c-{line}", Endpoint.CHAT, "openai", "gpt-4o-mini",
                   body or orjson.dumps({"model": "gpt-4o-mini", "n": line}), **fields)


def new_job(job_id: str, lines: list[JobLine], *, created_at: float = NOW,
            deadline_at: float = NOW + 3600) -> NewJob:
    return NewJob(job_id, created_at, deadline_at, "tagging", {"team": "ml"}, 1000, lines,
                  traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")


async def request_ids(connection: AsyncConnection, job_id: str) -> list[int]:
    rows = await connection.execute_fetchall(
        "SELECT id FROM job_requests WHERE job_id = ? ORDER BY line", (job_id,))
    return [int(row[0]) for row in rows]


async def store_result(connection: AsyncConnection, request_id: int, state: str,
                       finished_at: float, tier: str | None = None, cost: int | None = None,
                       ) -> None:
    await connection.execute(
        "UPDATE job_requests SET state = ?, tier = ?, cost_picodollars = ?, "
        "standard_cost_picodollars = ?, finished_at = ?, result = ? WHERE id = ?",
        (state, tier, cost, cost, finished_at, b'{"id":"batch_req_%d"}' % request_id,
         request_id))


def test_a_job_goes_in_whole_and_is_read_back_as_it_was_sent(
        store_location: StoreLocation) -> None:
    # Bytes a text-based transfer could mangle: a backslash, a quote, a tab, non-ASCII.
    odd = orjson.dumps({"model": "gpt-4o-mini", "text": 'a\\b "q"\tc é ✓'})
    lines = [chat_line(1, odd, cache_key=b"\x00\x01key\\", cache_ttl=60.0),
             chat_line(2, routed_from=("anthropic", "claude")),
             *(chat_line(n) for n in range(3, 201))]

    async def scenario(connection: AsyncConnection) -> Any:
        await jobs_sql.insert_job(connection, new_job("job_a", lines))
        ids = await request_ids(connection, "job_a")
        fetched = await jobs_sql.fetch_requests(connection, [ids[1], ids[0], ids[5]])
        stored = await connection.execute_fetchall(
            "SELECT cache_key, cache_ttl, state, deadline_at FROM job_requests "
            "WHERE id = ?", (ids[0],))
        return ids, fetched, list(stored), await jobs_sql.load_jobs(connection)

    ids, fetched, stored, jobs = run(store_location, scenario)
    assert len(ids) == 200
    assert [row.id for row in fetched] == sorted([ids[0], ids[1], ids[5]])
    first, second, sixth = fetched
    assert first.body == odd and isinstance(first.body, bytes)
    assert (first.job_id, first.custom_id, first.endpoint, first.provider, first.model) == (
        "job_a", "c-1", "/v1/chat/completions", "openai", "gpt-4o-mini")
    assert first.deadline_at == NOW + 3600 and first.attempts == 0
    assert first.routed_from is None
    assert second.routed_from == ("anthropic", "claude")
    assert sixth.custom_id == "c-6"
    assert stored == [(b"\x00\x01key\\", 60.0, "queued", NOW + 3600)]
    [job] = jobs
    assert job["id"] == "job_a" and job["status"] is JobStatus.IN_PROGRESS
    assert job["total"] == 200 and job["states"] == {RequestState.QUEUED: 200}
    assert job["tags"] == {"team": "ml"} and job["uid"] == 1000
    assert job["operation"] == "tagging" and job["finished_at"] is None
    assert job["traceparent"].startswith("00-111")
    assert (job["cost"], job["standard"], job["late"]) == (0, 0, 0)


def test_other_tasks_read_on_the_connection_while_a_job_goes_in(
        store_location: StoreLocation) -> None:
    # The job keeper's pump reads on its connection while a submitted job is being inserted.
    lines = [chat_line(n) for n in range(1, 20_001)]

    async def scenario(connection: AsyncConnection) -> Any:
        await jobs_sql.insert_job(connection, new_job("job_first", [chat_line(1)]))
        [first] = await request_ids(connection, "job_first")
        seen: list[int] = []

        async def read() -> None:
            for _ in range(50):
                seen.extend(row.id for row in await jobs_sql.fetch_requests(connection,
                                                                             [first]))
                await anyio.sleep(0)

        async with anyio.create_task_group() as group:
            group.start_soon(jobs_sql.insert_job, connection, new_job("job_big", lines))
            group.start_soon(read)
        return seen, first, await jobs_sql.load_jobs(connection)

    seen, first, jobs = run(store_location, scenario)
    assert seen == [first] * 50
    assert {job["id"]: job["total"] for job in jobs} == {"job_first": 1, "job_big": 20_000}


def test_a_failed_insert_leaves_nothing(store_location: StoreLocation) -> None:
    lines = [chat_line(1), chat_line(2)]
    lines.append(JobLine(3, "c-1", Endpoint.CHAT, "openai", "m", b"{}"))  # a duplicate id

    async def scenario(connection: AsyncConnection) -> Any:
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            await jobs_sql.insert_job(connection, new_job("job_dup", lines))
        assert not connection.in_transaction
        return (await jobs_sql.load_jobs(connection),
                list(await connection.execute_fetchall("SELECT COUNT(*) FROM job_requests")))

    assert run(store_location, scenario) == ([], [(0,)])


def test_routable_lines_come_in_pages_in_line_order_with_their_sizes_and_inputs(
        store_location: StoreLocation) -> None:
    embeddings = [
        orjson.dumps({"model": "e", "input": ["a", "b", "c"]}),
        orjson.dumps({"model": "e", "input": "one text"}),
        orjson.dumps({"model": "e", "input": []}),
        orjson.dumps({"model": "e"}),
    ]
    lines = [JobLine(n + 1, f"e-{n}", Endpoint.EMBEDDINGS, "openai", "e", body,
                     cache_key=b"k%d" % n)
             for n, body in enumerate(embeddings)]
    lines.append(chat_line(5))

    async def scenario(connection: AsyncConnection) -> Any:
        await jobs_sql.insert_job(connection, new_job("job_r", lines))
        ids = await request_ids(connection, "job_r")
        await connection.execute("UPDATE job_requests SET attempts = 2 WHERE id = ?",
                                 (ids[4],))
        pages = [page async for page in jobs_sql.routable_pages(connection, "job_r", page=2)]
        some = await jobs_sql.routable_requests(connection, [ids[4], ids[0]])
        return ids, pages, some

    ids, pages, some = run(store_location, scenario)
    assert [[row.id for row in page] for page in pages] == [ids[0:2], ids[2:4], ids[4:5]]
    rows = [row for page in pages for row in page]
    assert [row.inputs for row in rows] == [3, 1, 1, 1, 1]
    assert [row.size for row in rows] == [len(line.body) for line in lines]
    assert [row.cache_key for row in rows] == [b"k0", b"k1", b"k2", b"k3", None]
    assert rows[4].attempts == 2 and rows[0].attempts == 0
    assert rows[0].endpoint == "/v1/embeddings" and rows[0].deadline_at == NOW + 3600
    assert some == [rows[0], rows[4]]


def test_lines_in_a_batch_or_of_a_job_not_in_progress_are_not_routable(
        store_location: StoreLocation) -> None:
    async def scenario(connection: AsyncConnection) -> Any:
        await jobs_sql.insert_job(connection, new_job("job_b", [chat_line(n)
                                                                for n in range(1, 5)]))
        await jobs_sql.insert_job(connection, new_job("job_c", [chat_line(1)]))
        ids = await request_ids(connection, "job_b")
        await connection.execute(
            "INSERT INTO batches (id, intent, provider, endpoint, model, state, lines, bytes, "
            "tokens, deadline_at, created_at, remote_id, remote_status, completed, failed, "
            "submitted_at) VALUES (7, 'intent-7', 'openai', '/v1/chat/completions', "
            "'gpt-4o-mini', 'submitted', 2, 100, 10, ?, ?, 'batch_up_7', 'in_progress', 1, 0, "
            "?)", (NOW + 3600, NOW, NOW + 5))
        await connection.execute(
            "INSERT INTO batches (id, intent, provider, endpoint, model, state, lines, bytes, "
            "tokens, deadline_at, created_at) VALUES (8, 'intent-8', 'openai', "
            "'/v1/chat/completions', 'gpt-4o-mini', 'intent', 1, 50, 5, ?, ?)",
            (NOW + 3600, NOW))
        await connection.execute(
            "UPDATE job_requests SET batch_id = 7, cache_key = ? WHERE id IN (?, ?)",
            (b"twin", ids[0], ids[1]))
        await connection.execute("UPDATE job_requests SET batch_id = 8 WHERE id = ?",
                                 (ids[2],))
        await jobs_sql.cancel_job(connection, "job_c")
        routable = [row.id async for page in jobs_sql.routable_pages(connection, "job_b")
                    for row in page]
        by_id = await jobs_sql.routable_requests(connection, ids)
        cancelled_job = [page async for page in jobs_sql.routable_pages(connection, "job_c")]
        return (ids, routable, [row.id for row in by_id], cancelled_job,
                await jobs_sql.batched_counts(connection),
                await jobs_sql.batched_twins(connection),
                await jobs_sql.carrying_batches(connection, "job_b"))

    ids, routable, by_id, cancelled_job, counts, twins, carrying = run(store_location,
                                                                        scenario)
    assert routable == by_id == [ids[3]]
    assert cancelled_job == []
    assert counts == {"job_b": 3}
    assert twins == [(b"twin", ids[0], "job_b", NOW + 3600),
                     (b"twin", ids[1], "job_b", NOW + 3600)]
    assert carrying == [
        {"id": "batch_up_7", "provider": "openai", "model": "gpt-4o-mini",
         "status": "in_progress", "lines": 2, "completed": 1, "failed": 0,
         "submitted_at": NOW + 5, "cancelling": False, "requests_of_job": 2},
        {"id": None, "provider": "openai", "model": "gpt-4o-mini",
         "status": "llmspool:intent", "lines": 1, "completed": 0, "failed": 0,
         "submitted_at": None, "cancelling": False, "requests_of_job": 1},
    ]


def test_cancelling_a_job_gives_each_queued_line_an_error_line(
        store_location: StoreLocation, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_sql, "RESULT_CHUNK", 2)
    lines = [chat_line(1), chat_line(2), chat_line(3), chat_line(4), chat_line(5)]
    lines[2] = JobLine(3, 'odd "id"\n\t\x01\\ é ✓ %s ?', Endpoint.CHAT, "openai",
                       "gpt-4o-mini", b"{}")

    async def scenario(connection: AsyncConnection) -> Any:
        await jobs_sql.insert_job(connection, new_job("job_x", lines))
        ids = await request_ids(connection, "job_x")
        await store_result(connection, ids[1], "succeeded", NOW + 10, "standard", 5)
        cancelled = await jobs_sql.cancel_job(connection, "job_x")
        again = await jobs_sql.cancel_job(connection, "job_x")
        results = b"".join([chunk async for chunk in jobs_sql.iter_results(connection,
                                                                           "job_x")])
        return ids, cancelled, again, results, await jobs_sql.load_jobs(connection)

    ids, cancelled, again, results, [job] = run(store_location, scenario)
    assert (cancelled, again) == (4, 0)
    message = "the job was cancelled before this request ran"
    expected = [
        {"id": f"batch_req_{request_id}", "custom_id": custom_id, "response": None,
         "error": {"code": "cancelled", "message": message}}
        for request_id, custom_id in zip(ids, [line.custom_id for line in lines], strict=True)
    ]
    expected[1] = {"id": f"batch_req_{ids[1]}"}
    # Compact JSON, escaped as orjson escapes it, on either backend.
    assert results == b"".join(orjson.dumps(line) + b"\n" for line in expected)
    assert results.startswith(
        b'{"id":"batch_req_%d","custom_id":"c-1","response":null,"error":{"code":"cancelled",'
        b'"message":"the job was cancelled before this request ran"}}\n' % ids[0])
    assert job["status"] is JobStatus.CANCELLED and job["finished_at"] is not None
    assert job["states"] == {RequestState.CANCELLED: 4, RequestState.SUCCEEDED: 1}
    assert job["tiers"] == {"standard": 1} and job["cost"] == 5


def test_results_stream_in_line_order_a_chunk_at_a_time(
        store_location: StoreLocation, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_sql, "RESULT_CHUNK", 3)

    async def scenario(connection: AsyncConnection) -> Any:
        await jobs_sql.insert_job(connection, new_job("job_s", [chat_line(n)
                                                                for n in range(1, 10)]))
        ids = await request_ids(connection, "job_s")
        answered = [ids[n] for n in (0, 1, 2, 4, 5, 6, 7)]  # lines 4 and 9 still queued
        for request_id in reversed(answered):  # stored out of order
            await store_result(connection, request_id, "succeeded", NOW + 1)
        chunks = [chunk async for chunk in jobs_sql.iter_results(connection, "job_s")]
        return answered, chunks

    answered, chunks = run(store_location, scenario)
    assert b"".join(chunks) == b"".join(b'{"id":"batch_req_%d"}\n' % i for i in answered)
    assert len(chunks) == 3 and all(0 < chunk.count(b"\n") <= 3 for chunk in chunks)
    assert chunks[0].count(b"\n") == 3


def test_no_results_yet_stream_nothing(store_location: StoreLocation) -> None:
    async def scenario(connection: AsyncConnection) -> Any:
        await jobs_sql.insert_job(connection, new_job("job_q", [chat_line(1), chat_line(2)]))
        return ([chunk async for chunk in jobs_sql.iter_results(connection, "job_q")],
                [chunk async for chunk in jobs_sql.iter_results(connection, "job_none")])

    assert run(store_location, scenario) == ([], [])


def test_a_job_of_many_pages_gives_postgresql_statistics_to_page_with(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # PostgreSQL only: SQLite pages along the index it is told (INDEXED BY).
    store_location = StoreLocation(Backend.POSTGRESQL, postgres_url)
    anyio.run(migrate_store, store_location)
    monkeypatch.setattr(jobs_sql, "ROUTE_PAGE", 3)

    async def reltuples(connection: AsyncConnection) -> float:
        [(count,)] = await connection.execute_fetchall(
            "SELECT reltuples FROM pg_class WHERE oid = CAST('job_requests' AS regclass)")
        return float(count)

    async def scenario(connection: AsyncConnection) -> Any:
        await jobs_sql.insert_job(connection, new_job("job_small", [chat_line(1)]))
        before = await reltuples(connection)
        await jobs_sql.insert_job(connection, new_job("job_big", [chat_line(n)
                                                                  for n in range(1, 6)]))
        return before, await reltuples(connection)

    before, after = run(store_location, scenario)
    assert before < 0  # never analyzed: a job of one page does not ask for it
    assert after == 6


def test_jobs_with_no_queued_line_left_complete(store_location: StoreLocation) -> None:
    async def scenario(connection: AsyncConnection) -> Any:
        for job_id in ("job_1", "job_2", "job_3"):
            await jobs_sql.insert_job(connection, new_job(job_id, [chat_line(1),
                                                                   chat_line(2)]))
        for job_id in ("job_1", "job_3"):
            for request_id in await request_ids(connection, job_id):
                await store_result(connection, request_id, "failed", NOW + 2)
        first, _second = await request_ids(connection, "job_2")
        await store_result(connection, first, "succeeded", NOW + 2)
        await jobs_sql.complete_finished_jobs(connection, NOW + 3, {"job_3", "job_2"})
        after_some = {job["id"]: (job["status"], job["finished_at"])
                      for job in await jobs_sql.load_jobs(connection)}
        await jobs_sql.complete_finished_jobs(connection, NOW + 4)
        after_all = {job["id"]: (job["status"], job["finished_at"])
                     for job in await jobs_sql.load_jobs(connection)}
        return after_some, after_all

    after_some, after_all = run(store_location, scenario)
    assert after_some == {"job_1": (JobStatus.IN_PROGRESS, None),
                          "job_2": (JobStatus.IN_PROGRESS, None),
                          "job_3": (JobStatus.COMPLETED, NOW + 3)}
    assert after_all == {"job_1": (JobStatus.COMPLETED, NOW + 4),
                         "job_2": (JobStatus.IN_PROGRESS, None),
                         "job_3": (JobStatus.COMPLETED, NOW + 3)}


def test_jobs_load_oldest_first_with_counts_costs_and_late_results(
        store_location: StoreLocation) -> None:
    async def scenario(connection: AsyncConnection) -> Any:
        await jobs_sql.insert_job(connection, new_job("job_new", [chat_line(1)],
                                                      created_at=NOW + 50))
        await jobs_sql.insert_job(connection, new_job(
            "job_old", [chat_line(n) for n in range(1, 6)], deadline_at=NOW + 100))
        ids = await request_ids(connection, "job_old")
        await store_result(connection, ids[0], "succeeded", NOW + 10, "standard", 7)
        await store_result(connection, ids[1], "succeeded", NOW + 200, "flex", 3)  # late
        await store_result(connection, ids[2], "succeeded", NOW + 300, "flex", 3)  # late
        await store_result(connection, ids[3], "failed", NOW + 20)
        return await jobs_sql.load_jobs(connection)

    old, new = run(store_location, scenario)
    assert (old["id"], new["id"]) == ("job_old", "job_new")
    assert old["states"] == {RequestState.SUCCEEDED: 3, RequestState.FAILED: 1,
                             RequestState.QUEUED: 1}
    assert old["tiers"] == {"standard": 1, "flex": 2}
    assert (old["cost"], old["standard"], old["late"]) == (13, 13, 2)
    assert all(isinstance(old[key], int) for key in ("cost", "standard", "late"))
    assert new["states"] == {RequestState.QUEUED: 1} and new["late"] == 0


def test_jobs_finished_before_retention_are_deleted_with_their_lines(
        store_location: StoreLocation) -> None:
    async def scenario(connection: AsyncConnection) -> Any:
        for job_id in ("job_gone", "job_kept", "job_running"):
            await jobs_sql.insert_job(connection, new_job(job_id, [chat_line(1),
                                                                   chat_line(2)]))
        await jobs_sql.cancel_job(connection, "job_gone")
        await jobs_sql.cancel_job(connection, "job_kept")
        await connection.execute("UPDATE jobs SET finished_at = ? WHERE id = ?",
                                 (NOW - 100, "job_gone"))
        await connection.execute("UPDATE jobs SET finished_at = ? WHERE id = ?",
                                 (NOW + 100, "job_kept"))
        deleted = await jobs_sql.delete_jobs_finished_before(connection, NOW)
        left = await connection.execute_fetchall(
            "SELECT job_id, COUNT(*) FROM job_requests GROUP BY job_id ORDER BY job_id")
        return deleted, [job["id"] for job in await jobs_sql.load_jobs(connection)], list(left)

    deleted, jobs, left = run(store_location, scenario)
    assert deleted == 1
    assert sorted(jobs) == ["job_kept", "job_running"]
    assert left == [("job_kept", 2), ("job_running", 2)]
