"""The Batch API pipeline's store, on each backend (``store_location``): a batch's row from
intent to finished, the lines it carries and gives back, its input file, its results stored
once with their ledger entries, the turnarounds the planner learns, and the pending batches a
new identical call may wait for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from llmspool.cache.pending import PendingBatches
from llmspool.core.calls import Endpoint, Tier
from llmspool.core.pricing import price_table_from_mapping
from llmspool.core.states import BatchState, RequestState
from llmspool.policy.billing import PriceBook
from llmspool.store import batches as batch_sql
from llmspool.store.backend import StoreLocation
from llmspool.store.batch_files import write_input_file
from llmspool.store.batch_results import ResultMapper, store_batch_chunk
from llmspool.store.connect import connected_async
from llmspool.store.connections import Connection
from llmspool.store.records import BatchCandidate, BatchChunk, RequeuedLine

PROVIDER, MODEL = "acme", "chat"
BOOK = PriceBook.from_table(price_table_from_mapping({PROVIDER: {MODEL: {
    "standard": {"input": 2, "output": 8}, "batch": {"input": 1, "output": 4}}}}), source="test")
BODIES = [b'{"model":"chat","messages":[{"role":"user","content":"%d"}]}' % n
          for n in (1, 2, 3)]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
DEADLINE = 10_000.0


def add_job(connection: Connection, job_id: str = "j1", *, cache_key: bytes | None = None
            ) -> list[int]:
    """A job of three queued chat lines; returns their request ids."""
    connection.execute(
        "INSERT INTO jobs (id, created_at, deadline_at, operation, tags, uid, status, total, "
        "traceparent) VALUES (?, 100.0, ?, 'summarise', '{}', 1000, 'in_progress', 3, ?)",
        (job_id, DEADLINE, TRACEPARENT))
    connection.executemany(
        "INSERT INTO job_requests (job_id, line, custom_id, endpoint, provider, model, body, "
        "deadline_at, state, cache_key, cache_ttl) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', "
        "?, ?)",
        [(job_id, n, f"c{n}", Endpoint.CHAT.value, PROVIDER, MODEL, body, DEADLINE,
          cache_key if n == 1 else None, 60.0 if cache_key and n == 1 else None)
         for n, body in enumerate(BODIES, start=1)])
    return [int(row[0]) for row in connection.execute(
        "SELECT id FROM job_requests WHERE job_id = ? ORDER BY id", (job_id,))]


def candidates(ids: list[int], job_id: str = "j1") -> list[BatchCandidate]:
    return [BatchCandidate(i, job_id, PROVIDER, Endpoint.CHAT, MODEL, DEADLINE, 60)
            for i in ids]


def open_one(connection: Connection, ids: list[int], intent: str = "100-a") -> batch_sql.BatchRow:
    batch = batch_sql.open_batch(connection, intent, candidates(ids), [TRACEPARENT], 200.0)
    assert batch is not None
    return batch


def column(connection: Connection, sql: str, *params: Any) -> list[Any]:
    return [row[0] for row in connection.execute(sql, params)]


def test_a_batch_is_opened_with_the_lines_still_waiting(store_connection: Connection) -> None:
    ids = add_job(store_connection)
    store_connection.execute("UPDATE job_requests SET state = 'cancelled' WHERE id = ?",
                             (ids[2],))

    reserve = batch_sql.lines_to_reserve(store_connection, ids)
    assert reserve == [(i, "j1", f"c{n}", BODIES[n - 1], "summarise", 1000)
                       for n, i in enumerate(ids[:2], start=1)]
    batch = open_one(store_connection, ids)

    size = len(BODIES[0]) + len(BODIES[1])
    assert (batch.state, batch.lines, batch.bytes, batch.tokens) == (
        BatchState.INTENT, 2, size, size // 4)
    assert column(store_connection, "SELECT batch_id FROM job_requests ORDER BY id") == [
        batch.id, batch.id, None]
    [stored] = batch_sql.open_batches(store_connection)
    assert stored == batch
    assert stored.traceparents == [TRACEPARENT]
    assert batch_sql.lines_to_reserve(store_connection, ids) == []  # in a batch now


def test_a_batch_of_nothing_waiting_leaves_no_row(store_connection: Connection) -> None:
    ids = add_job(store_connection)
    store_connection.execute("UPDATE job_requests SET state = 'cancelled'")

    assert batch_sql.open_batch(store_connection, "100-a", candidates(ids), [], 200.0) is None
    assert column(store_connection, "SELECT COUNT(*) FROM batches") == [0]
    # The next batch gets a key of its own.
    store_connection.execute("UPDATE job_requests SET state = 'queued'")
    assert open_one(store_connection, ids, "100-b").lines == 3


def test_each_step_of_a_batch_is_recorded(store_connection: Connection) -> None:
    ids = add_job(store_connection)
    batch = open_one(store_connection, ids)
    batch_sql.mark_uploaded(store_connection, batch, "file-1")
    batch_sql.mark_submitted(store_connection, batch, "batch-1", "validating", 300.0)
    batch_sql.record_poll(store_connection, batch, "in_progress", 2, 1, 400.5)
    batch_sql.mark_cancel_requested(store_connection, batch, 450.0)

    [stored] = batch_sql.open_batches(store_connection, batch.id)
    assert stored == batch
    assert (stored.state, stored.input_file_id, stored.remote_id, stored.remote_status,
            stored.completed, stored.failed, stored.submitted_at, stored.polled_at,
            stored.cancel_requested_at) == (BatchState.SUBMITTED, "file-1", "batch-1",
                                            "in_progress", 2, 1, 300.0, 400.5, 450.0)
    assert isinstance(stored.deadline_at, float) and isinstance(stored.lines, int)
    assert batch_sql.open_batches(store_connection, batch.id + 1) == []

    assert batch_sql.enqueued_tokens(store_connection, PROVIDER, MODEL) == batch.tokens
    assert batch_sql.enqueued_tokens(store_connection, PROVIDER, "other") == 0
    batch_sql.record_poll(store_connection, batch, "completed", 3, 0, 500.0)
    assert batch_sql.enqueued_tokens(store_connection, PROVIDER, MODEL) == 0

    assert batch_sql.remote_ids_since(store_connection, PROVIDER, 150.0) == {"batch-1"}
    assert batch_sql.remote_ids_since(store_connection, PROVIDER, 250.0) == frozenset()
    assert batch_sql.remote_ids_since(store_connection, "other", 0.0) == frozenset()


def test_lines_given_back_and_the_batch_finished(store_connection: Connection) -> None:
    ids = add_job(store_connection)
    batch = open_one(store_connection, ids)

    given = batch_sql.release_lines(store_connection, batch, [ids[1]], 300.0,
                                    charge_attempt=True, escalated=True)
    assert given == [RequeuedLine(DEADLINE, ids[1], "j1", 1)]
    assert batch.escalated_at == 300.0
    assert column(store_connection, "SELECT attempts FROM job_requests ORDER BY id") == [0, 1, 0]
    assert column(store_connection, "SELECT batch_id FROM job_requests ORDER BY id") == [
        batch.id, None, batch.id]

    # What is charged, then the rest, in the order of the lines.
    requeued = batch_sql.finish_batch(store_connection, batch, {ids[2]: True, ids[1]: True},
                                      "expired", 400.0)
    assert requeued == [RequeuedLine(DEADLINE, ids[2], "j1", 1),
                        RequeuedLine(DEADLINE, ids[0], "j1", 0)]
    assert batch.state == BatchState.FINISHED
    assert batch_sql.open_batches(store_connection) == []
    assert store_connection.execute(
        "SELECT state, note, finished_at, escalated_at FROM batches").fetchone() == (
        "finished", "expired", 400.0, 300.0)
    assert column(store_connection, "SELECT status FROM jobs") == ["in_progress"]  # still owed


def test_an_empty_batch_is_dropped(store_connection: Connection) -> None:
    batch = open_one(store_connection, add_job(store_connection))
    batch_sql.drop_empty_batch(store_connection, batch, "nothing left to send", 300.0)
    assert batch.state == BatchState.FINISHED
    assert batch_sql.open_batches(store_connection) == []
    assert column(store_connection, "SELECT note FROM batches") == ["nothing left to send"]


def test_the_input_file_has_the_lines_in_order(store_connection: Connection,
                                               tmp_path: Path) -> None:
    ids = add_job(store_connection)
    batch = open_one(store_connection, list(reversed(ids)))
    path = tmp_path / "in.jsonl"

    assert write_input_file(store_connection, batch, path) == 3
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [line["custom_id"] for line in lines] == [f"r{i}" for i in ids]
    assert [line["body"] for line in lines] == [orjson.loads(body) for body in BODIES]
    assert {line["url"] for line in lines} == {Endpoint.CHAT.value}


def _answer(request_id: int) -> dict[str, Any]:
    return {"id": f"resp-{request_id}", "custom_id": f"r{request_id}", "response": {
        "status_code": 200, "request_id": "x", "body": {
            "id": f"chatcmpl-{request_id}", "object": "chat.completion", "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}}},
        "error": None}


def test_results_are_stored_once_with_their_entries(store_connection: Connection,
                                                    tmp_path: Path) -> None:
    ids = add_job(store_connection)
    batch = open_one(store_connection, ids)
    batch_sql.mark_submitted(store_connection, batch, "batch-1", "in_progress", 300.0)
    store_connection.executemany(
        "INSERT INTO reservations (request_id, kind, reserved_at, provider, model, endpoint, "
        "tier, estimate_picodollars, line_id) VALUES (?, 'line', 250.0, ?, ?, ?, 'batch', 9, ?)",
        [(f"line:{i}", PROVIDER, MODEL, Endpoint.CHAT.value, i) for i in ids])
    output = tmp_path / "out.jsonl"
    refused = {"id": "resp-x", "custom_id": f"r{ids[1]}", "error": None, "response": {
        "status_code": 400, "body": {"error": {"message": "no", "type": "invalid_request"}}}}
    output.write_bytes(orjson.dumps(_answer(ids[0])) + b"\n" + orjson.dumps(refused) + b"\n")
    chunks: list[BatchChunk] = []

    def commit(chunk: BatchChunk) -> Any:
        chunks.append(chunk)
        return store_batch_chunk(store_connection, chunk)

    mapper = ResultMapper(store_connection, batch, BOOK, 500.0, commit=commit)
    assert mapper.line_ids() == ids
    mapper.feed(output)
    report = mapper.finish("completed")

    assert (report.succeeded, report.failed, len(report.billed)) == (1, 1, 1)
    assert report.requeued == [RequeuedLine(DEADLINE, ids[2], "j1", 0)]  # no answer: again
    cost = 1000 * 1_000_000 + 500 * 4_000_000  # batch prices, picodollars per token
    assert [(o.request_id, o.state, o.cost_picodollars) for o in report.outcomes] == [
        (ids[0], RequestState.SUCCEEDED, cost), (ids[1], RequestState.FAILED, None)]
    rows = store_connection.execute(
        "SELECT state, tier, cost_picodollars, attempts, result FROM job_requests "
        "ORDER BY id").fetchall()
    assert [tuple(row[:4]) for row in rows] == [
        ("succeeded", Tier.BATCH.value, cost, 1), ("failed", None, None, 1),
        ("queued", None, None, 0)]
    assert orjson.loads(bytes(rows[0][4]))["response"]["body"]["id"] == f"chatcmpl-{ids[0]}"
    assert store_connection.execute(
        "SELECT request_id, tier, cost_picodollars, input_tokens, output_tokens "
        "FROM ledger_entries").fetchall() == [(f"j1.{ids[0]}.b{batch.id}", "batch", cost,
                                               1000, 500)]
    assert column(store_connection, "SELECT request_id FROM reservations") == [f"line:{ids[2]}"]

    # The same chunk again (a crash before the poller knew): nothing is stored twice.
    again = store_batch_chunk(store_connection, chunks[0])
    assert (again.outcomes, again.billed, again.paid_twice) == ([], [], 0)
    assert column(store_connection, "SELECT COUNT(*) FROM ledger_entries") == [1]


def test_a_job_completes_when_a_chunk_answers_its_last_line(store_connection: Connection
                                                            ) -> None:
    ids = add_job(store_connection)
    batch = open_one(store_connection, ids)
    results = [(i, RequestState.FAILED, b'{"error":{}}', None, None, 1) for i in ids]
    stored = store_batch_chunk(store_connection, BatchChunk(
        batch.id, results, [], {i: ("j1", True) for i in ids}, 600.0))

    assert [o.request_id for o in stored.outcomes] == ids
    assert store_connection.execute("SELECT status, finished_at FROM jobs").fetchone() == (
        "completed", 600.0)


def test_turnarounds_of_completed_batches_oldest_first(store_location: StoreLocation,
                                                       store_connection: Connection) -> None:
    ids = add_job(store_connection)
    for n, (note, took) in enumerate([("completed", 60.0), ("expired", 5.0),
                                      ("completed", 90.5)]):
        batch = open_one(store_connection, [ids[n]], f"100-{n}")
        batch_sql.mark_submitted(store_connection, batch, f"b{n}", "completed", 1000.0)
        batch_sql.drop_empty_batch(store_connection, batch, note, 1000.0 + took)

    async def read(limit: int) -> list[Any]:
        async with connected_async(store_location, read_only=True) as connection:
            return await batch_sql.batch_turnarounds(connection, limit)

    key = (PROVIDER, MODEL, Tier.BATCH)
    assert anyio.run(read, 200) == [(key, 60.0), (key, 90.5)]
    assert anyio.run(read, 1) == [(key, 90.5)]


class _Planner:
    def batch_expected(self, provider: str, model: str) -> float:
        return 100.0

    def need(self, provider: str, model: str, tier: Tier) -> float:
        return 30.0


def test_a_call_may_wait_for_a_pending_batch(store_location: StoreLocation,
                                             store_connection: Connection) -> None:
    key = b"\x00key\xff"
    ids = add_job(store_connection, cache_key=key)
    pending = PendingBatches(store_location, _Planner())  # type: ignore[arg-type]
    try:
        assert pending.expected_end(key) is None  # not in a batch yet
        batch = open_one(store_connection, ids)
        assert pending.expected_end(key) == 200.0 + 100.0  # from its creation
        batch_sql.mark_submitted(store_connection, batch, "batch-1", "in_progress", 250.0)
        assert pending.expected_end(key) == 250.0 + 100.0  # from its submission
        assert pending.expected_end(b"other") is None
        assert pending.give_up_at(PROVIDER, MODEL, 1000.0) == 970.0
        batch_sql.drop_empty_batch(store_connection, batch, "completed", 400.0)
        assert pending.expected_end(key) is None
    finally:
        pending.close()


def test_pending_batches_never_write(store_location: StoreLocation) -> None:
    pending = PendingBatches(store_location, _Planner())  # type: ignore[arg-type]
    try:
        with pytest.raises(Exception, match=r"(?i)read.?only"):
            pending._connection.execute("DELETE FROM batches")
    finally:
        pending.close()
