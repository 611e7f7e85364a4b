"""The client's pure parts: building requests, reading answers, pacing a wait, writing results."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from llmspool.cli.job_results import copy_atomically
from llmspool.cli.job_views import exit_status, relative
from llmspool.client import (
    DaemonNotRunning,
    RequestFailed,
    Spool,
    SpoolError,
    Submission,
    SyncSpool,
    build_requests,
    deadline_text,
    error_from_response,
    finished_count,
    is_failed,
    jsonl_query,
    single_result,
    submit_payload,
)
from llmspool.client.plans import _WaitClock

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def ok_line(custom_id: str, body: Any = None) -> dict[str, Any]:
    return {"id": "batch_req_1", "custom_id": custom_id, "error": None,
            "response": {"status_code": 200, "request_id": "r", "body": body or {"x": 1}}}


# --- building requests ---------------------------------------------------------------------------


def test_a_bare_body_becomes_one_item_for_the_endpoint() -> None:
    submission = build_requests(BODY)
    assert submission == Submission(
        [{"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions",
          "body": BODY}],
        single=True,
    )
    embedding = build_requests({"model": "text-embedding-3-small", "input": "x"},
                               endpoint="/v1/embeddings")
    assert embedding.items[0]["url"] == "/v1/embeddings"


def test_a_batch_item_is_kept_with_method_post_by_default() -> None:
    item = {"custom_id": "mine", "url": "/v1/responses", "body": {"model": "m", "input": "x"}}
    submission = build_requests(item)
    assert submission.single
    assert submission.items == [{**item, "method": "POST"}]
    assert next(iter(submission.items[0])) == "custom_id", "custom_id leads, as in Batch files"


def test_a_list_mixes_bodies_and_items_numbered_by_position() -> None:
    requests = [
        BODY,
        {"custom_id": "named", "url": "/v1/chat/completions", "body": BODY},
        {"url": "/v1/chat/completions", "body": BODY, "method": "POST"},
    ]
    submission = build_requests(iter(requests))
    assert not submission.single
    assert [item["custom_id"] for item in submission.items] == ["request-1", "named", "request-3"]
    assert all(item["method"] == "POST" and item["body"] == BODY for item in submission.items)
    assert build_requests([BODY]).single is False, "a list of one is still a list"


def test_the_callers_dicts_are_not_changed() -> None:
    item = {"url": "/v1/chat/completions", "body": BODY}
    build_requests([item])
    assert item == {"url": "/v1/chat/completions", "body": BODY}


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ([], ValueError),
        ({"messages": []}, ValueError),
        ([BODY, "not a dict"], TypeError),
        ("a string", TypeError),
    ],
)
def test_what_is_not_a_request_is_refused_before_sending(
    given: Any, error: type[Exception],
) -> None:
    with pytest.raises(error):
        build_requests(given)


def test_deadlines_become_what_the_daemon_reads() -> None:
    assert deadline_text("6h") == "6h"
    assert deadline_text(" 1h30m ") == "1h30m"
    assert deadline_text(90) == "90s"
    assert deadline_text(0.2) == "1s"
    assert deadline_text(timedelta(hours=6)) == "6h"
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert deadline_text(moment) == "2030-01-02T03:04:05+00:00"
    assert datetime.fromisoformat(deadline_text(datetime(2030, 1, 2, 3, 4))).tzinfo is not None
    for wrong in (0, -5, "", True):
        with pytest.raises(ValueError):
            deadline_text(wrong)


def test_json_body_and_jsonl_query_carry_the_same_options() -> None:
    submission = build_requests(BODY)
    payload = submit_payload(submission, deadline="6h", operation="evals", tags={"k": "v"},
                             on_error="skip")
    assert payload == {"requests": submission.items, "deadline": "6h", "operation": "evals",
                       "tags": {"k": "v"}, "on_error": "skip"}
    assert "operation" not in submit_payload(submission, deadline="1h")
    assert jsonl_query(deadline="6h", operation="evals", tags={"k": "v", "p": "x y"},
                       on_error="skip") == [
        ("deadline", "6h"), ("operation", "evals"), ("on_error", "skip"),
        ("tag.k", "v"), ("tag.p", "x y"),
    ]
    assert jsonl_query(deadline=None) == [("on_error", "reject")]


# --- reading answers -----------------------------------------------------------------------------


def test_openai_shaped_errors_keep_their_details_and_bad_lines() -> None:
    body = (b'{"error": {"message": "2 bad lines", "type": "invalid_request_error", '
            b'"param": null, "code": "invalid_jsonl", '
            b'"lines": [{"line": 2, "custom_id": null, "message": "not valid JSON"}]}}')
    error = error_from_response(400, body, {"retry-after": "3"})
    assert (error.message, error.status, error.code) == ("2 bad lines", 400, "invalid_jsonl")
    assert error.type == "invalid_request_error"
    assert error.lines == [{"line": 2, "custom_id": None, "message": "not valid JSON"}]
    assert error.retry_after == 3.0


def test_an_error_without_openais_shape_still_says_what_came_back() -> None:
    error = error_from_response(502, b"<html>bad gateway</html>", {})
    assert "502" in error.message and "bad gateway" in error.message
    assert error.lines is None and error.code is None


def test_a_one_request_result_is_its_body() -> None:
    assert single_result([ok_line("request-1", {"object": "chat.completion"})], {}) == {
        "object": "chat.completion"
    }


@pytest.mark.parametrize(
    ("line", "status_code", "code"),
    [
        ({"custom_id": "a", "response": None,
          "error": {"code": "upstream_timeout", "message": "no answer in 600 s"}},
         None, "upstream_timeout"),
        ({"custom_id": "a", "error": None,
          "response": {"status_code": 400, "request_id": "r",
                       "body": {"error": {"code": "invalid_value", "message": "bad max_tokens"}}}},
         400, "invalid_value"),
    ],
)
def test_a_failed_request_raises_with_its_status_and_error(
    line: dict[str, Any], status_code: int | None, code: str,
) -> None:
    assert is_failed(line)
    with pytest.raises(RequestFailed) as raised:
        single_result([line], {})
    assert raised.value.status_code == status_code
    assert raised.value.code == code
    assert raised.value.custom_id == "a"
    assert isinstance(raised.value, SpoolError)


def test_a_job_cancelled_before_its_request_ran_has_no_result() -> None:
    with pytest.raises(RequestFailed, match="cancelled without a result"):
        single_result([], {"id": "job_1", "status": "cancelled"})


def test_finished_counts_every_way_of_finishing() -> None:
    job = {"counts": {"total": 9, "queued": 2, "running": 1, "succeeded": 3, "failed": 2,
                      "cancelled": 1}}
    assert finished_count(job) == 6
    assert finished_count({}) == 0
    assert not is_failed(ok_line("x"))


# --- pacing a wait -------------------------------------------------------------------------------


def test_the_wait_clock_long_polls_within_the_timeout_then_gives_up() -> None:
    assert _WaitClock("job_1", None, 600).next_round({}) == (600, 0.0)
    assert _WaitClock("job_1", 30.5, 600).next_round({})[0] == 30
    assert _WaitClock("job_1", None, 1).next_round({}) == (0, 1.0), "progress: sleep, ask"
    assert _WaitClock("job_1", None, 0.001).next_round({}) == (0, 0.1), "but not too often"
    short_poll, pause = _WaitClock("job_1", 0.5, 600).next_round({})
    assert short_poll == 0 and 0 < pause <= 0.5
    spent = _WaitClock("job_1", 0.01, 600)
    time.sleep(0.02)
    with pytest.raises(TimeoutError, match=r"job_1 did not finish within 0.01 s \(status in_pr"):
        spent.next_round({"status": "in_progress", "counts": {"total": 3}})


def test_a_daemon_that_answers_long_polls_early_gets_backoff_not_a_busy_loop() -> None:
    clock = _WaitClock("job_1", None, 600)
    pauses = [clock.pause_after(10, 0.001) for _ in range(8)]
    assert pauses[0] > 0
    assert pauses == sorted(pauses) and pauses[-1] == 2.0
    assert clock.pause_after(10, 9.0) == 0.0, "a real long poll resets the backoff"
    assert clock.pause_after(10, 0.001) == pauses[0]


# --- reaching the daemon -------------------------------------------------------------------------


def test_no_socket_means_a_clear_error_naming_where_the_client_looked(tmp_path: Path) -> None:
    socket = str(tmp_path / "missing.sock")
    with SyncSpool(socket) as spool, pytest.raises(DaemonNotRunning) as raised:
        spool.jobs()
    assert raised.value.socket == socket
    assert f"{socket} does not exist" in raised.value.message


def test_a_stale_socket_file_is_reported_as_nothing_answering(tmp_path: Path) -> None:
    import socket as sockets

    path = tmp_path / "stale.sock"
    listener = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    listener.bind(str(path))
    listener.close()  # the file stays; nobody listens

    async def main() -> None:
        async with Spool(str(path)) as spool:
            await spool.job("job_1").status()

    with pytest.raises(DaemonNotRunning, match="nothing answers at"):
        anyio.run(main)


def test_the_socket_comes_from_the_environment_like_the_cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("LLMSPOOL_SOCKET", str(tmp_path / "env.sock"))
    with SyncSpool() as spool:
        assert spool.socket == str(tmp_path / "env.sock")
    with SyncSpool(str(tmp_path / "flag.sock")) as spool:
        assert spool.socket == str(tmp_path / "flag.sock")


# --- the CLI's helpers ---------------------------------------------------------------------------


def test_results_land_atomically_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"old\n")
    assert copy_atomically(iter([b'{"a": 1}\n{"a"', b": 2}\n"]), target) == 2
    assert target.read_bytes() == b'{"a": 1}\n{"a": 2}\n'

    def broken() -> Iterator[bytes]:
        yield b'{"half": '
        raise SpoolError("lost the connection")

    with pytest.raises(SpoolError):
        copy_atomically(broken(), target)
    assert target.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_wait_exit_statuses() -> None:
    assert exit_status({"status": "completed", "counts": {"failed": 0}}) == 0
    assert exit_status({"status": "completed", "counts": {"failed": 2}}) == 1
    assert exit_status({"status": "cancelled", "counts": {"failed": 0}}) == 3


def test_relative_times_read_at_a_glance() -> None:
    assert relative(1000 + 6 * 3600 - 60, 1000) == "in 5h 59m"
    assert relative(1000 - 182, 1000) == "3m 2s ago"
    assert relative(1000, 1000) == "0s ago"
    assert relative(None, 1000) == "-"
