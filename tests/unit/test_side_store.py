"""The store's side tables on each backend (SQLite, PostgreSQL), with the same assertions: the
Files and Batches API objects (``store/api_files.py``), scores (``store/feedback.py``),
captured pairs (``store/captures.py``) and the front door's writer (``store/writer.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import orjson
import pytest
from llmspool.core.states import BatchStatus
from llmspool.store import api_files as sql
from llmspool.store.api_files import BatchRow, FileRow
from llmspool.store.backend import StoreLocation
from llmspool.store.captures import (
    CapturedPair,
    delete_expired_captures,
    insert_capture,
    read_captures,
    set_capture_operations,
)
from llmspool.store.connect import connected_async
from llmspool.store.connections import AsyncConnection, Connection
from llmspool.store.feedback import find_answer, find_job_line, quality_by, record_feedback
from llmspool.store.records import Viewer
from llmspool.store.writer import SideWriter

_T = TypeVar("_T")
ALICE, BOB = 1001, 1002
ADMIN = Viewer(None, admin=True)


def on_store(location: StoreLocation, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
    async def main() -> _T:
        async with connected_async(location) as connection:
            return await work(connection)

    return anyio.run(main)


def _file(number: int, uid: int | None, purpose: str = "batch") -> FileRow:
    return FileRow(f"file-{number:02d}", uid, f"f{number}.jsonl", purpose, 10 * number,
                   1000.0 + number, 5000.0 + number)


def _batch(number: int, uid: int | None, job_id: str | None = None) -> BatchRow:
    return BatchRow(
        id=f"batch_{number:02d}", uid=uid, job_id=job_id, input_file_id="file-01",
        endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"team": "ml"} if number % 2 else None, created_at=1000.0 + number,
        expires_at=90000.0, deadline_at=None, failed_at=None, errors=None, cancelling_at=None,
        finished_at=None, final_status=None, output_file_id=None, error_file_id=None,
        request_counts=None, usage=None)


# --- files and batches -------------------------------------------------------------------


def test_files_are_seen_by_their_owner_and_paged_in_the_order_made(
        store_location: StoreLocation) -> None:
    async def work(db: AsyncConnection) -> None:
        for number, uid in ((1, ALICE), (2, BOB), (3, ALICE), (4, None), (5, ALICE)):
            await sql.insert_file(db, _file(number, uid, "batch_output" if number == 3
                                             else "batch"))
        alice = Viewer(ALICE)
        assert await sql.get_file(db, "file-01", alice) == _file(1, ALICE)
        assert await sql.get_file(db, "file-02", alice) is None  # Bob's
        assert await sql.get_file(db, "file-02", ADMIN) == _file(2, BOB)
        assert (await sql.get_file(db, "file-04", Viewer(None))) == _file(4, None)

        async def ids(viewer: Viewer, **options: Any) -> list[str]:
            rows = await sql.list_files(db, viewer, **{"purpose": None, "limit": 10,
                                                       "ascending": False, "after": None,
                                                       **options})
            return [row.id for row in rows]

        assert await ids(alice) == ["file-05", "file-03", "file-01"]
        assert await ids(alice, ascending=True) == ["file-01", "file-03", "file-05"]
        assert await ids(alice, limit=1) == ["file-05", "file-03"]  # limit + 1: more exist
        assert await ids(alice, after="file-05") == ["file-03", "file-01"]
        assert await ids(alice, ascending=True, after="file-01") == ["file-03", "file-05"]
        assert await ids(alice, purpose="batch") == ["file-05", "file-01"]
        assert await ids(ADMIN) == ["file-05", "file-04", "file-03", "file-02", "file-01"]
        assert await ids(ADMIN, after="file-unknown") == []

        assert sorted(await sql.expired_files(db, 5003.5)) == ["file-01", "file-02",
                                                               "file-03"]
        await sql.delete_file(db, "file-02")
        assert await sql.all_file_ids(db) == {"file-01", "file-03", "file-04", "file-05"}

    on_store(store_location, work)


def test_batches_keep_their_json_and_their_end(store_location: StoreLocation) -> None:
    async def work(db: AsyncConnection) -> None:
        for number, uid, job in ((1, ALICE, "job_1"), (2, BOB, "job_2"), (3, ALICE, None),
                                 (4, ALICE, "job_4")):
            await sql.insert_batch(db, _batch(number, uid, job))
        alice = Viewer(ALICE)
        assert await sql.get_batch(db, "batch_01", alice) == _batch(1, ALICE, "job_1")
        assert await sql.get_batch(db, "batch_02", alice) is None
        listed = await sql.list_batches(db, alice, limit=10, after=None)
        assert [row.id for row in listed] == ["batch_04", "batch_03", "batch_01"]
        assert [row.id for row in await sql.list_batches(db, alice, limit=1,
                                                         after="batch_04")] == [
            "batch_03", "batch_01"]
        assert [row.id for row in await sql.open_batches(db)] == ["batch_01", "batch_02",
                                                                  "batch_04"]

        await sql.set_cancelling(db, "batch_01", 2000.0)
        await sql.set_cancelling(db, "batch_01", 2500.0)  # the first moment stays
        output = FileRow("file-out", ALICE, "batch_01_output.jsonl", "batch_output", 7,
                         3000.0, 9000.0)
        usage = {"input_tokens": 3, "output_tokens": 4}
        await sql.finalize_batch(db, "batch_01", status=BatchStatus.CANCELLED,
                                 finished_at=2600.0, output=output, error=None,
                                 counts={"total": 2, "completed": 1, "failed": 0},
                                 usage=usage)
        ended = await sql.get_batch(db, "batch_01", alice)
        assert ended is not None
        assert (ended.cancelling_at, ended.final_status, ended.finished_at,
                ended.output_file_id, ended.error_file_id, ended.usage) == (
            2000.0, BatchStatus.CANCELLED, 2600.0, "file-out", None, usage)
        assert ended.request_counts == {"total": 2, "completed": 1, "failed": 0}
        assert await sql.get_file(db, "file-out", alice) == output
        assert [row.id for row in await sql.open_batches(db)] == ["batch_02", "batch_04"]

        errors = [{"code": "batch_lost", "message": "gone", "param": None, "line": None}]
        await sql.fail_batch(db, "batch_02", 2700.0, errors)
        failed = await sql.get_batch(db, "batch_02", ADMIN)
        assert failed is not None and (failed.failed_at, failed.errors) == (2700.0, errors)

        # Old enough and over (finalized, or never a job): the sweep's to delete.
        old = await sql.batches_created_before(db, 1003.5)
        assert sorted(row.id for row in old) == ["batch_01", "batch_03"]
        await sql.delete_batch(db, "batch_03")
        assert await sql.get_batch(db, "batch_03", ADMIN) is None

    on_store(store_location, work)


def _add_job(connection: Connection, job_id: str, uid: int | None,
             lines: list[tuple[str, str, dict[str, Any] | None]], *,
             operation: str | None = "support", finished_at: float = 1772409600.5) -> None:
    """A job whose lines are (custom id, state, result)."""
    connection.execute(
        "INSERT INTO jobs (id, created_at, deadline_at, operation, uid, status, total) "
        "VALUES (?, 1000.0, 9000.0, ?, ?, 'completed', ?)",
        (job_id, operation, uid, len(lines)))
    connection.executemany(
        "INSERT INTO job_requests (job_id, line, custom_id, endpoint, provider, model, body, "
        "deadline_at, state, tier, result, finished_at) VALUES (?, ?, ?, "
        "'/v1/embeddings', 'openai', 'gpt-5-mini', ?, 9000.0, ?, 'batch', ?, ?)",
        [(job_id, line, custom_id, b"{}", state,
          None if result is None else orjson.dumps(result), finished_at)
         for line, (custom_id, state, result) in enumerate(lines, 1)])


def _answer(custom_id: str, usage: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": f"batch_req_{custom_id}", "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": "r",
                         "body": {"id": f"chatcmpl-{custom_id}", "usage": usage}},
            "error": None, **extra}


def test_result_lines_and_usage_of_a_job(store_connection: Connection,
                                         store_location: StoreLocation) -> None:
    failed = {"id": "batch_req_q3", "custom_id": "q3", "response": None,
              "error": {"code": "x", "message": "no"}, "late": True}
    _add_job(store_connection, "job_1", ALICE, [
        ("q1", "succeeded", _answer("q1", {
            "prompt_tokens": 10, "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2}}, cache="hit")),
        ("q2", "succeeded", _answer("q2", {  # the responses API's names
            "input_tokens": 7, "output_tokens": 3,
            "input_tokens_details": {"cached_tokens": 1},
            "output_tokens_details": {"reasoning_tokens": None}}, late=True)),
        ("q3", "failed", failed),
        ("q4", "queued", None),
        ("q5", "succeeded", _answer("q5", {})),
    ])

    async def work(db: AsyncConnection) -> tuple[list[tuple[bool, bytes]], dict[str, Any]]:
        lines = [line async for line in sql.iter_result_lines(db, "job_1")]
        return lines, await sql.job_usage(db, "job_1")

    lines, usage = on_store(store_location, work)
    assert [(succeeded, orjson.loads(line)) for succeeded, line in lines] == [
        (True, _answer("q1", {"prompt_tokens": 10, "completion_tokens": 5,
                              "prompt_tokens_details": {"cached_tokens": 4},
                              "completion_tokens_details": {"reasoning_tokens": 2}})),
        (True, _answer("q2", {"input_tokens": 7, "output_tokens": 3,
                              "input_tokens_details": {"cached_tokens": 1},
                              "output_tokens_details": {"reasoning_tokens": None}})),
        (False, {key: value for key, value in failed.items() if key != "late"}),
        (True, _answer("q5", {})),
    ]
    assert all(b" " not in line and b"\n" not in line for _ok, line in lines)
    assert usage == {"input_tokens": 17, "input_tokens_details": {"cached_tokens": 5},
                     "output_tokens": 8, "output_tokens_details": {"reasoning_tokens": 2},
                     "total_tokens": 25}


# --- feedback ----------------------------------------------------------------------------


def _ledger_entry(connection: Connection, request_id: str, response_id: str | None,
                  uid: int | None, *, day: str = "2026-03-01", status: int = 200,
                  model: str = "gpt-5") -> None:
    connection.execute(
        "INSERT INTO ledger_entries (request_id, day, started_at, finished_at, provider, "
        "model, endpoint, tier, operation, uid, status, input_tokens, cached_input_tokens, "
        "output_tokens, reasoning_tokens, usage_estimated, response_id) VALUES "
        "(?, ?, 0, 0, 'openai', ?, '/v1/chat/completions', 'standard', 'support', ?, ?, "
        "1, 0, 1, 0, 0, ?)", (request_id, day, model, uid, status, response_id))


def test_answers_are_found_for_those_who_may_see_them(store_connection: Connection) -> None:
    db = store_connection
    _ledger_entry(db, "e1", "chatcmpl-a", ALICE)
    _ledger_entry(db, "e2", "chatcmpl-a", BOB)  # the same id, another user's call
    _ledger_entry(db, "e3", "chatcmpl-failed", ALICE, status=500)
    found = find_answer(db, "chatcmpl-a", Viewer(BOB))
    assert found is not None and (found.uid, found.day, found.model, found.tier,
                                  found.operation) == (BOB, "2026-03-01", "gpt-5", "standard",
                                                       "support")
    assert find_answer(db, "chatcmpl-a", ADMIN) is not None
    assert find_answer(db, "chatcmpl-a", Viewer(7)) is None
    assert find_answer(db, "chatcmpl-failed", Viewer(ALICE)) is None

    _add_job(db, "job_1", ALICE, [("q1", "succeeded", _answer("q1", {})),
                                  ("q2", "succeeded", {"id": "x", "response": {"body": {}}}),
                                  ("q3", "failed", None)],
             finished_at=1772409600.5)  # 2026-03-02 00:00:00.5 UTC
    line = find_job_line(db, "job_1", "q1", Viewer(ALICE))
    assert line is not None and (line.answer_key, line.response_id, line.day, line.tier,
                                 line.uid) == ("chatcmpl-q1", "chatcmpl-q1", "2026-03-02",
                                               "batch", ALICE)
    no_id = find_job_line(db, "job_1", "q2", ADMIN)
    assert no_id is not None and (no_id.answer_key, no_id.response_id) == (
        "job:job_1:q2", None)
    assert find_job_line(db, "job_1", "q1", Viewer(BOB)) is None
    assert find_job_line(db, "job_1", "q3", ADMIN) is None


def test_a_later_score_replaces_the_earlier_and_quality_is_summed(
        store_connection: Connection, store_location: StoreLocation) -> None:
    db = store_connection
    for number, (uid, day, model) in enumerate(((ALICE, "2026-03-01", "gpt-5"),
                                                (ALICE, "2026-03-02", "gpt-5"),
                                                (BOB, "2026-03-02", "gpt-5-mini"),
                                                (None, "2026-03-02", "gpt-5-mini"))):
        _ledger_entry(db, f"e{number}", f"chatcmpl-{number}", uid, day=day, model=model)
    scores = [(0, 0.2), (0, 0.9), (1, 0.4), (2, 0.5), (3, 1.0)]  # chatcmpl-0 scored twice
    for number, score in scores:
        answer = find_answer(db, f"chatcmpl-{number}", ADMIN)
        assert answer is not None
        record_feedback(db, answer, score=score, label="ok" if score > 0.5 else None,
                        comment=None, scorer_uid=ALICE, now=2000.0 + score)
    rows = db.execute("SELECT answer_key, uid, score, label, created_at FROM feedback "
                      "ORDER BY answer_key").fetchall()
    assert [tuple(row) for row in rows] == [
        ("chatcmpl-0", ALICE, 0.9, "ok", 2000.9), ("chatcmpl-1", ALICE, 0.4, None, 2000.4),
        ("chatcmpl-2", BOB, 0.5, None, 2000.5), ("chatcmpl-3", -1, 1.0, "ok", 2001.0)]

    async def work(connection: AsyncConnection) -> list[Any]:
        return [
            await quality_by(connection, ["model"], since_day=None, until_day=None,
                             everyone=True, uid=None, good=0.5),
            await quality_by(connection, ["day", "user"], since_day="2026-03-02",
                             until_day=None, everyone=True, uid=None, good=0.5),
            await quality_by(connection, [], since_day=None, until_day="2026-03-01",
                             everyone=False, uid=ALICE, good=0.5),
            await quality_by(connection, ["source"], since_day=None, until_day=None,
                             everyone=True, uid=None, good=0.5),
        ]

    by_model, by_day_user, alice_first_day, by_source = on_store(store_location, work)
    assert by_model == {("gpt-5",): (2, pytest.approx(1.3), 1),
                        ("gpt-5-mini",): (2, 1.5, 2), (): (4, pytest.approx(2.8), 3)}
    assert by_day_user == {("2026-03-02", ALICE): (1, 0.4, 0), ("2026-03-02", BOB): (1, 0.5, 1),
                           ("2026-03-02", -1): (1, 1.0, 1), (): (3, pytest.approx(1.9), 2)}
    assert alice_first_day == {(): (1, 0.9, 1)}
    assert by_source is None  # scores have no saving source


# --- captures ----------------------------------------------------------------------------


def _pair(number: int, uid: int | None, *, operation: str = "support",
          created_at: float | None = None) -> CapturedPair:
    at = 100.0 + number if created_at is None else created_at
    return CapturedPair(f"chatcmpl-{number:02d}", uid, operation, "openai", "gpt-5",
                        f'[{{"role":"user","content":"q{number}"}}]', None,
                        f'{{"role":"assistant","content":"a{number}"}}', at, at + 1000.0)


def test_captures_are_read_a_page_at_a_time_oldest_first(store_connection: Connection) -> None:
    db = store_connection
    set_capture_operations(db, {"support": 60.0, "old": 5.0})
    set_capture_operations(db, {"support": 30.0})  # the last start's list replaces it
    assert [tuple(row) for row in db.execute(
        "SELECT operation, retention FROM capture_operations").fetchall()] == [
        ("support", 30.0)]
    # Pairs 5 and 6 were made in the same instant: ordered by response id.
    for number, uid in ((1, ALICE), (2, BOB), (3, ALICE), (4, None), (6, ALICE), (5, ALICE)):
        insert_capture(db, _pair(number, uid, created_at=150.0 if number >= 5 else None))
    insert_capture(db, _pair(1, BOB))  # a response id already kept is kept once
    insert_capture(db, _pair(7, ALICE, operation="other"))

    def ids(viewer: Viewer, **options: Any) -> list[str]:
        settings: dict[str, Any] = {"since": None, "min_score": None, "now": 0.0, **options}
        return [row[0] for row in read_captures(db, "support", viewer, **settings)]

    everything = ["chatcmpl-01", "chatcmpl-02", "chatcmpl-03", "chatcmpl-04", "chatcmpl-05",
                  "chatcmpl-06"]
    assert ids(ADMIN) == everything
    for page in (1, 2, 4, 6, 100):
        assert ids(ADMIN, page=page) == everything
    assert ids(Viewer(ALICE), page=2) == ["chatcmpl-01", "chatcmpl-03", "chatcmpl-05",
                                          "chatcmpl-06"]
    assert ids(Viewer(None)) == ["chatcmpl-04"]
    assert ids(ADMIN, since=103.0, page=1) == ["chatcmpl-03", "chatcmpl-04", "chatcmpl-05",
                                               "chatcmpl-06"]
    assert ids(ADMIN, now=1102.5) == ["chatcmpl-03", "chatcmpl-04", "chatcmpl-05",
                                      "chatcmpl-06"]
    first = next(read_captures(db, "support", ADMIN, since=None, min_score=None, now=0.0))
    assert first == ("chatcmpl-01", '[{"role":"user","content":"q1"}]', None,
                     '{"role":"assistant","content":"a1"}')

    _ledger_entry(db, "e3", "chatcmpl-03", ALICE)
    answer = find_answer(db, "chatcmpl-03", ADMIN)
    assert answer is not None
    record_feedback(db, answer, score=0.8, label=None, comment=None, scorer_uid=None, now=1.0)
    assert ids(ADMIN, min_score=0.7) == ["chatcmpl-03"]
    assert ids(ADMIN, min_score=0.9) == []

    assert delete_expired_captures(db, 1102.5) == 2
    assert ids(ADMIN) == everything[2:]


# --- the front door's writer -------------------------------------------------------------


def test_the_side_writer_commits_or_rolls_back_whole(store_location: StoreLocation) -> None:
    def write(connection: Connection, pairs: list[CapturedPair], fail: bool) -> int:
        for pair in pairs:
            insert_capture(connection, pair)
        if fail:
            raise RuntimeError("after the writes")
        return len(pairs)

    def count(connection: Connection) -> int:
        return int(connection.execute("SELECT COUNT(*) FROM captures").fetchone()[0])

    async def main() -> tuple[int, int, int]:
        writer = SideWriter(store_location)
        try:
            written = await writer.run(write, [_pair(1, ALICE), _pair(2, None)], False)
            with pytest.raises(RuntimeError, match="after the writes"):
                await writer.run(write, [_pair(3, ALICE)], True)
            return written, await writer.run(count), await writer.run(count)
        finally:
            writer.close()

    assert anyio.run(main) == (2, 2, 2)
