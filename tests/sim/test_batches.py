"""The simulator's Files and Batch APIs as a client sees them: uploads, the batch lifecycle by
the clock, result files joined by custom_id, validation failures with line numbers, line faults,
expiry, cancel, the enqueued-token cap, pagination, stats and the /_sim/batch control.

Most tests drive a real sim process with the official client; the ones about exact timing
(which lines a cancel or an expiry leaves finished) drive ``BatchRegistry`` with a fake clock.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import httpx2
import openai
import orjson
import pytest
import tomli_w
from llmspool.core.errors import ApiError, ConfigError
from llmspool.sim.app import build_app
from llmspool.sim.batch_config import BatchSettings, line_draw
from llmspool.sim.batches import BatchRegistry, token_limit_message
from llmspool.sim.config import SimConfig
from llmspool.sim.files import StoredFile
from llmspool.sim.stats import SimStats
from llmspool_openai.batch_objects import remote_batch

from tests.sim.test_spec_shapes import SPEC, problems
from tests.support import waiting

if TYPE_CHECKING:
    from tests.sim.conftest import RunningSim

    StartSim = Callable[..., RunningSim]

CHAT: Final = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
CANCELLED_ERROR = {"code": "batch_cancelled", "message": "This request was cancelled."}
EXPIRED_ERROR = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}


# -- helpers ----------------------------------------------------------------------------------


def chat_line(custom_id: str, model: str = MODEL, text: str | None = None) -> dict[str, Any]:
    content = text if text is not None else f"say something about {custom_id}"
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": model, "messages": [{"role": "user", "content": content}]},
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines
    )


def upload(client: openai.OpenAI, lines: list[Any], name: str = "input.jsonl") -> str:
    return client.files.create(file=(name, jsonl(lines)), purpose="batch").id


def submit(
    client: openai.OpenAI,
    lines: list[Any],
    endpoint: str = CHAT,
    metadata: dict[str, str] | None = None,
) -> Any:
    return client.batches.create(
        input_file_id=upload(client, lines),
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata=metadata,
    )


def wait_for(client: openai.OpenAI, batch_id: str, status: str, timeout: float = 10.0) -> Any:
    """The batch, once it has reached ``status``."""
    return waiting.wait_for(
        lambda: (batch := client.batches.retrieve(batch_id)).status == status and batch,
        timeout=timeout,
        every=0.05,
        what=f"batch {batch_id} to be {status}",
    )


def read_lines(client: openai.OpenAI, file_id: str | None) -> dict[str, Any]:
    """A result file's lines by custom_id (empty for no file)."""
    if file_id is None:
        return {}
    text = client.files.content(file_id).text
    lines = [json.loads(line) for line in text.splitlines()]
    by_id = {line["custom_id"]: line for line in lines}
    assert len(by_id) == len(lines), "a custom_id appears twice"
    return by_id


def batch_settings(sim: RunningSim, changes: dict[str, Any] | None = None) -> httpx2.Response:
    with sim.http() as http:
        if changes is None:
            return http.get("/_sim/batch")
        return http.post("/_sim/batch", json=changes)


def configure(sim: RunningSim, **changes: Any) -> dict[str, Any]:
    response = batch_settings(sim, changes)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


@pytest.fixture
def bsim(sim: RunningSim) -> Iterator[RunningSim]:
    """The shared sim with the configured batch settings, restored afterwards too."""
    configure(sim, reset=True)
    yield sim
    configure(sim, reset=True)


def raw_batch(sim: RunningSim, batch_id: str) -> dict[str, Any]:
    with sim.http() as http:
        response = http.get(f"/v1/batches/{batch_id}")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def assert_error_shape(response: httpx2.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


# -- the lifecycle ----------------------------------------------------------------------------


def test_a_batch_runs_to_completed_with_every_answer_and_its_usage(bsim: RunningSim) -> None:
    configure(bsim, validating="300ms", turnaround="500ms", finalizing="300ms")
    client = bsim.client()
    lines = [chat_line(f"req-{i}") for i in range(6)]
    created = submit(client, lines, metadata={"llmspool_intent": "intent-1"})
    assert created.status == "validating"
    assert created.request_counts is not None and created.request_counts.total == 0
    assert created.metadata == {"llmspool_intent": "intent-1"}
    assert created.expires_at == created.created_at + 24 * 3600

    seen: list[str] = []

    def completed() -> bool:
        document = raw_batch(bsim, created.id)
        # Every state must be one the daemon can read.
        remote = remote_batch("openai", document)
        assert remote.intent == "intent-1"
        assert remote.completed + remote.failed <= remote.total
        if not seen or seen[-1] != document["status"]:
            seen.append(document["status"])
        return seen[-1] == "completed"

    # Polled often enough to see each state, which lasts 300 ms at least.
    waiting.wait_for(completed, timeout=10, every=0.05, what="the batch to complete")
    assert seen == ["validating", "in_progress", "finalizing", "completed"]

    batch = client.batches.retrieve(created.id)
    assert batch.model == MODEL
    assert batch.errors is None
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (6, 6)
    assert batch.request_counts.failed == 0
    assert batch.error_file_id is None
    assert batch.in_progress_at is not None and batch.finalizing_at is not None
    assert batch.completed_at is not None
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.completed_at - batch.created_at <= 3

    output = read_lines(client, batch.output_file_id)
    assert sorted(output) == sorted(line["custom_id"] for line in lines)
    input_tokens = output_tokens = 0
    for custom_id, line in output.items():
        assert line["id"].startswith("batch_req_")
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"].startswith("req_")
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["model"] == MODEL
        input_tokens += body["usage"]["prompt_tokens"]
        output_tokens += body["usage"]["completion_tokens"]
        # The answer is the one the endpoint itself gives to the same request.
        direct = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"say something about {custom_id}"}]
        )
        assert body["choices"][0]["message"]["content"] == direct.choices[0].message.content
        assert body["usage"]["prompt_tokens"] == direct.usage.prompt_tokens  # type: ignore[union-attr]
    assert batch.usage is not None
    assert batch.usage.input_tokens == input_tokens > 0
    assert batch.usage.output_tokens == output_tokens == 6 * 16
    assert batch.usage.total_tokens == input_tokens + output_tokens
    output_file = client.files.retrieve(batch.output_file_id)  # type: ignore[arg-type]
    assert output_file.purpose == "batch_output"
    assert output_file.bytes == len(client.files.content(output_file.id).content)


@pytest.mark.parametrize(
    ("endpoint", "body", "object_type"),
    [
        ("/v1/responses", {"model": "gpt-5-mini", "input": "hello there"}, "response"),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]}, "list"),
    ],
)
def test_responses_and_embeddings_batches(
    bsim: RunningSim, endpoint: str, body: dict[str, Any], object_type: str
) -> None:
    configure(bsim, turnaround="0s")
    client = bsim.client()
    lines = [
        {"custom_id": f"x{i}", "method": "POST", "url": endpoint, "body": body} for i in range(3)
    ]
    batch = wait_for(client, submit(client, lines, endpoint).id, "completed")
    output = read_lines(client, batch.output_file_id)
    assert sorted(output) == ["x0", "x1", "x2"]
    for line in output.values():
        answer = line["response"]["body"]
        assert answer["object"] == object_type
        assert answer["usage"]["input_tokens" if object_type == "response" else "prompt_tokens"]
    assert batch.usage.input_tokens > 0
    assert (batch.usage.output_tokens > 0) == (object_type == "response")


def test_result_files_and_batches_match_the_spec(bsim: RunningSim) -> None:
    yaml = pytest.importorskip("yaml")
    if not SPEC.exists():
        pytest.skip(f"{SPEC} not found")
    with SPEC.open() as file:
        schemas = yaml.load(file, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))[
            "components"
        ]["schemas"]

    def check(value: Any, name: str) -> None:
        # OpenAI sends null for unset batch fields that the spec types as plain strings.
        if isinstance(value, dict) and name == "Batch":
            value = {key: item for key, item in value.items() if item is not None}
        found = problems(value, {"$ref": f"#/components/schemas/{name}"}, schemas, name)
        assert not found, "\n".join(found)

    configure(bsim, turnaround="0s", error_custom_ids=["b"])
    client = bsim.client()
    batch = wait_for(client, submit(client, [chat_line("a"), chat_line("b")]).id, "completed")
    with bsim.http() as http:
        check(http.get(f"/v1/batches/{batch.id}").json(), "Batch")
        listed = http.get("/v1/batches", params={"limit": 1}).json()
        listed["data"] = [{k: v for k, v in b.items() if v is not None} for b in listed["data"]]
        check(listed, "ListBatchesResponse")
        check(http.get(f"/v1/files/{batch.output_file_id}").json(), "OpenAIFile")
        check(http.get("/v1/files").json(), "ListFilesResponse")
        check(http.delete(f"/v1/files/{batch.error_file_id}").json(), "DeleteFileResponse")
        check(http.get("/v1/batches/batch_nope").json(), "ErrorResponse")
    output = read_lines(client, batch.output_file_id)["a"]
    check(output["response"]["body"], "CreateChatCompletionResponse")


# -- validation -------------------------------------------------------------------------------


def test_a_bad_input_file_fails_validation_with_line_numbers(bsim: RunningSim) -> None:
    client = bsim.client()
    bad_url = {**chat_line("e"), "url": "/v1/embeddings"}
    bad_method = {**chat_line("f"), "method": "GET"}
    no_model = {**chat_line("g"), "body": {"messages": []}}
    lines = [
        chat_line("a"),
        b'{"custom_id": "b", "method": ',
        chat_line("a"),
        chat_line("d", model="gpt-4o"),
        bad_url,
        bad_method,
        no_model,
        b"",  # blank lines are skipped, but numbered
        chat_line("h"),
    ]
    batch = wait_for(client, submit(client, lines).id, "failed")
    assert batch.errors is not None and batch.errors.data is not None
    found = [(error.line, error.code, error.param) for error in batch.errors.data]
    assert found == [
        (2, "invalid_json_line", None),
        (3, "duplicate_custom_id", "custom_id"),
        (4, "mismatched_model", "body.model"),
        (5, "invalid_url", "url"),
        (6, "invalid_method", "method"),
        (7, "missing_required_parameter", "body.model"),
    ]
    assert all(error.message for error in batch.errors.data)
    assert batch.failed_at is not None and batch.in_progress_at is None
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.request_counts.total == 0
    remote = remote_batch("openai", raw_batch(bsim, batch.id))
    assert remote.errors[0].line == 2 and remote.errors[0].code == "invalid_json_line"
    # Nothing ran.
    assert bsim.stats()["batches"]["lines_processed"] == 0


def test_an_empty_or_oversized_file_fails_as_a_whole(bsim: RunningSim) -> None:
    client = bsim.client()
    empty = client.files.create(file=("empty.jsonl", b"\n"), purpose="batch")
    batch = client.batches.create(input_file_id=empty.id, endpoint=CHAT, completion_window="24h")
    batch = wait_for(client, batch.id, "failed")
    assert [(e.code, e.line) for e in batch.errors.data] == [("empty_file", None)]
    line = orjson.dumps(chat_line("x"))
    many = b"".join(line.replace(b'"x"', f'"{i}"'.encode()) + b"\n" for i in range(50_001))
    big = client.files.create(file=("many.jsonl", many), purpose="batch")
    batch = wait_for(
        client,
        client.batches.create(input_file_id=big.id, endpoint=CHAT, completion_window="24h").id,
        "failed",
    )
    assert [(e.code, e.line) for e in batch.errors.data] == [("too_many_requests", None)]
    assert "50000" in batch.errors.data[0].message


def test_fail_validation_fails_batches_until_switched_off(bsim: RunningSim) -> None:
    client = bsim.client()
    settings = configure(bsim, turnaround="0s", fail_validation="invalid_request")
    assert settings["fail_validation"] == "invalid_request"
    failed = wait_for(client, submit(client, [chat_line("a")]).id, "failed")
    assert [(e.code, e.line) for e in failed.errors.data] == [("invalid_request", None)]
    configure(bsim, fail_validation="")
    assert wait_for(client, submit(client, [chat_line("a")]).id, "completed")


def test_a_request_the_endpoint_refuses_is_an_http_error_line(bsim: RunningSim) -> None:
    configure(bsim, turnaround="0s")
    client = bsim.client()
    no_messages = {**chat_line("b"), "body": {"model": MODEL}}
    unknown_model = {**chat_line("c"), "body": {"model": "gpt-nope", "messages": []}}
    batch = wait_for(client, submit(client, [chat_line("a"), no_messages]).id, "completed")
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    errors = read_lines(client, batch.error_file_id)
    assert errors["b"]["error"] is None
    assert errors["b"]["response"]["status_code"] == 400
    assert errors["b"]["response"]["body"]["error"]["param"] == "messages"
    batch = wait_for(client, submit(client, [unknown_model]).id, "completed")
    assert batch.output_file_id is None
    line = read_lines(client, batch.error_file_id)["c"]
    assert line["response"]["status_code"] == 404
    assert line["response"]["body"]["error"]["code"] == "model_not_found"


# -- line faults ------------------------------------------------------------------------------


def test_error_custom_ids_get_http_500_lines_in_the_error_file(bsim: RunningSim) -> None:
    configure(bsim, turnaround="0s", error_custom_ids=["b", "d"])
    client = bsim.client()
    lines = [chat_line(name) for name in "abcde"]
    batch = wait_for(client, submit(client, lines).id, "completed")
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 2)
    output = read_lines(client, batch.output_file_id)
    errors = read_lines(client, batch.error_file_id)
    assert sorted(output) == ["a", "c", "e"]
    assert sorted(errors) == ["b", "d"]
    for line in errors.values():
        assert line["error"] is None
        assert line["response"]["status_code"] == 500
        assert line["response"]["body"]["error"]["type"] == "server_error"
    # Failed lines are not billed.
    answered = sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output.values())
    assert batch.usage.input_tokens == answered


def test_line_rates_hit_the_lines_that_line_draw_predicts(bsim: RunningSim) -> None:
    configure(bsim, turnaround="0s", line_failure_rate=0.2, line_error_rate=0.3)
    client = bsim.client()
    names = [f"line-{i}" for i in range(60)]
    batch = wait_for(client, submit(client, [chat_line(n) for n in names]).id, "completed")
    draws = {name: line_draw(0, name) for name in names}  # the shared sim runs with seed 0
    expect_failed = {n for n, d in draws.items() if d < 0.2}
    expect_500 = {n for n, d in draws.items() if 0.2 <= d < 0.5}
    assert expect_failed and expect_500  # the draw must make this test able to fail
    errors = read_lines(client, batch.error_file_id)
    failures = {n for n, line in errors.items() if line["response"] is None}
    http_500 = {n for n, line in errors.items() if line["response"] is not None}
    assert failures == expect_failed
    assert http_500 == expect_500
    for name in failures:
        assert errors[name]["error"]["code"] == "server_error"
        assert errors[name]["error"]["message"]
    assert set(read_lines(client, batch.output_file_id)) == set(names) - failures - http_500
    assert batch.request_counts.failed == len(failures) + len(http_500)


def test_error_custom_ids_win_over_the_failure_rate(bsim: RunningSim) -> None:
    configure(bsim, turnaround="0s", line_failure_rate=1.0, error_custom_ids=["b"])
    client = bsim.client()
    batch = wait_for(client, submit(client, [chat_line("a"), chat_line("b")]).id, "completed")
    errors = read_lines(client, batch.error_file_id)
    assert errors["a"]["response"] is None and errors["a"]["error"]["code"] == "server_error"
    assert errors["b"]["response"]["status_code"] == 500


# -- expiry and cancel ------------------------------------------------------------------------


def test_an_expired_batch_keeps_its_finished_share(bsim: RunningSim) -> None:
    configure(bsim, turnaround="30s", expire_after="1s", expire_partial=0.3)
    client = bsim.client()
    names = [f"n{i}" for i in range(10)]
    created = submit(client, [chat_line(n) for n in names])
    assert created.expires_at == created.created_at + 1
    assert client.batches.retrieve(created.id).status == "in_progress"
    batch = wait_for(client, created.id, "expired", timeout=5)
    assert batch.expired_at is not None and batch.completed_at is None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 7)
    # The first lines of the file are the ones that finished.
    assert sorted(read_lines(client, batch.output_file_id)) == names[:3]
    errors = read_lines(client, batch.error_file_id)
    assert sorted(errors) == sorted(names[3:])
    for line in errors.values():
        assert line["response"] is None
        assert line["error"] == EXPIRED_ERROR
    assert batch.usage.output_tokens == 3 * 16


def test_cancel_takes_the_delay_and_keeps_what_finished(bsim: RunningSim) -> None:
    configure(bsim, turnaround="2s", cancel_delay="500ms")
    client = bsim.client()
    names = [f"c{i:02}" for i in range(40)]
    created = submit(client, [chat_line(n) for n in names])
    # Lines finish one by one over the turnaround: cancel once some have, well before the end.
    waiting.wait_for(
        lambda: client.batches.retrieve(created.id).request_counts.completed >= 8,
        every=0.05,
        what="some lines to finish",
    )
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None and cancelling.cancelled_at is None
    assert cancelling.request_counts is not None
    done = cancelling.request_counts.completed
    assert 5 <= done <= 35  # part of the turnaround had passed, not all of it
    # Cancelling again changes nothing; lines stop finishing while cancelling. Nothing to wait
    # for here: 200 ms must pass in which 4 more lines would have finished if they had not.
    time.sleep(0.2)
    again = client.batches.cancel(created.id)
    assert again.request_counts is not None
    assert again.status == "cancelling" and again.request_counts.completed == done
    batch = wait_for(client, created.id, "cancelled", timeout=5)
    assert batch.cancelled_at is not None
    assert batch.cancelled_at - batch.cancelling_at in (0, 1)
    assert batch.completed_at is None and batch.finalizing_at is None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (done, 40 - done)
    assert sorted(read_lines(client, batch.output_file_id)) == names[:done]
    errors = read_lines(client, batch.error_file_id)
    assert sorted(errors) == names[done:]
    assert all(line["error"] == CANCELLED_ERROR for line in errors.values())
    assert bsim.stats()["batches"]["cancel_requests"] == 2
    configure(bsim, turnaround="0s")  # a completed batch, without waiting out 2 s for it
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.cancel(wait_for(client, submit(client, [chat_line("z")]).id, "completed").id)
    assert "completed" in caught.value.message


def test_a_batch_cancelled_while_validating_runs_nothing(bsim: RunningSim) -> None:
    configure(bsim, validating="30s", cancel_delay="0s")
    client = bsim.client()
    created = submit(client, [chat_line("a"), chat_line("b")])
    client.batches.cancel(created.id)
    batch = wait_for(client, created.id, "cancelled")
    assert batch.in_progress_at is None
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.request_counts.total == 0
    assert bsim.stats()["batches"]["lines_processed"] == 0


# -- the enqueued-token cap -------------------------------------------------------------------


def test_enqueued_token_limit_fails_a_batch_that_would_pass_it(start_sim: StartSim) -> None:
    running = start_sim('[sim.batch]\nturnaround = "60s"\ncancel_delay = "0s"\n')
    client = running.client()
    text = "count these tokens " * 10
    prompt_tokens = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}]
    ).usage.prompt_tokens  # type: ignore[union-attr]
    lines = [chat_line(f"t{i}", text=text) for i in range(10)]
    limit = 15 * prompt_tokens  # room for one batch of 10 lines, not two
    configure(running, enqueued_token_limit=limit)
    first = submit(client, lines)
    assert wait_for(client, first.id, "in_progress")
    second = wait_for(client, submit(client, lines).id, "failed")
    assert second.errors is not None and second.errors.data is not None
    error = second.errors.data[0]
    assert error.code == "token_limit_exceeded" and error.line is None
    assert error.message == (
        f"Enqueued token limit reached for {MODEL} in organization org-sim. Limit: {limit} "
        "enqueued tokens. Please try again once some in_progress batches have been completed."
    )
    # The cap is per model...
    other = [chat_line(f"o{i}", model="gpt-4o", text=text) for i in range(10)]
    assert wait_for(client, submit(client, other).id, "in_progress")
    # ...and a batch that ends gives its tokens back.
    client.batches.cancel(first.id)
    wait_for(client, first.id, "cancelled")
    assert wait_for(client, submit(client, lines).id, "in_progress")


# -- lists, files and bad requests ------------------------------------------------------------


def test_batches_list_newest_first_in_pages(start_sim: StartSim) -> None:
    running = start_sim('[sim.batch]\nturnaround = "0s"\n')
    client = running.client()
    ids = [submit(client, [chat_line("a")]).id for _ in range(5)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == [ids[4], ids[3]]
    assert page.has_more is True
    with running.http() as http:
        raw = http.get("/v1/batches", params={"limit": 2, "after": ids[3]}).json()
        assert [b["id"] for b in raw["data"]] == [ids[2], ids[1]]
        assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (ids[2], ids[1], True)
        last = http.get("/v1/batches", params={"limit": 2, "after": ids[1]}).json()
        assert [b["id"] for b in last["data"]] == [ids[0]] and last["has_more"] is False
        assert len(http.get("/v1/batches").json()["data"]) == 5  # default limit 20
        for bad in ("0", "101", "ten"):
            assert_error_shape(http.get("/v1/batches", params={"limit": bad}), 400, "limit")
        assert_error_shape(http.get("/v1/batches", params={"after": "batch_x"}), 400, "after")
    # The client's auto-pagination walks all of them, newest first.
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]


def test_files_upload_list_content_and_delete(start_sim: StartSim) -> None:
    running = start_sim()
    client = running.client()
    payloads = [jsonl([chat_line(f"f{i}")]) for i in range(3)]
    files = [client.files.create(file=(f"f{i}.jsonl", p), purpose="batch") for i, p in
             enumerate(payloads)]  # fmt: skip
    other = client.files.create(file=("notes.txt", b"hello"), purpose="user_data")
    assert files[0].id.startswith("file-") and files[0].bytes == len(payloads[0])
    assert (files[0].filename, files[0].purpose) == ("f0.jsonl", "batch")
    assert files[0].expires_at == files[0].created_at + 30 * 86400  # OpenAI's default
    assert other.expires_at is None
    assert files[0].status == "processed"
    assert client.files.retrieve(files[1].id) == files[1]
    assert client.files.content(files[2].id).content == payloads[2]
    # Newest first by default; a purpose filter; pages in either order.
    assert [f.id for f in client.files.list()] == [other.id, *[f.id for f in files[::-1]]]
    assert [f.id for f in client.files.list(purpose="batch")] == [f.id for f in files[::-1]]
    with running.http() as http:
        page = http.get("/v1/files", params={"order": "asc", "limit": 2}).json()
        assert [f["id"] for f in page["data"]] == [files[0].id, files[1].id]
        assert page["has_more"] is True and page["last_id"] == files[1].id
        rest = http.get(
            "/v1/files", params={"order": "asc", "limit": 2, "after": files[1].id}
        ).json()
        assert [f["id"] for f in rest["data"]] == [files[2].id, other.id]
        assert rest["has_more"] is False
        assert_error_shape(http.get("/v1/files", params={"order": "up"}), 400, "order")
        assert_error_shape(http.get("/v1/files", params={"limit": "10001"}), 400, "limit")
        deleted = http.delete(f"/v1/files/{files[0].id}")
        assert deleted.json() == {"id": files[0].id, "object": "file", "deleted": True}
        for gone in (
            http.get(f"/v1/files/{files[0].id}"),
            http.get(f"/v1/files/{files[0].id}/content"),
            http.delete(f"/v1/files/{files[0].id}"),
        ):
            assert assert_error_shape(gone, 404, "file_id")["code"] == "file_not_found"
        assert http.get(f"/v1/files/{files[1].id}/other").status_code == 404
    assert running.stats()["batches"]["files_uploaded"] == 4


def test_bad_uploads_are_refused(sim: RunningSim) -> None:
    client = sim.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("input.csv", b"a,b\n"), purpose="batch")
    assert caught.value.code == "invalid_file_format"
    with sim.http() as http:
        files = {"file": ("a.jsonl", b"{}\n")}
        assert_error_shape(http.post("/v1/files", files=files), 400, "purpose")
        assert_error_shape(
            http.post("/v1/files", files=files, data={"purpose": "fun"}), 400, "purpose"
        )
        only_purpose = {"purpose": (None, b"batch")}
        assert_error_shape(http.post("/v1/files", files=only_purpose), 400, "file")
        error = assert_error_shape(http.post("/v1/files", json={"purpose": "batch"}), 400, None)
        assert "multipart/form-data" in error["message"]
        truncated = http.post(
            "/v1/files",
            content=b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch',
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert_error_shape(truncated, 400, None)
    assert sim.stats()["batches"]["files_uploaded"] == 0


def test_bad_batch_requests_are_refused_in_openai_shape(bsim: RunningSim) -> None:
    client = bsim.client()
    file_id = upload(client, [chat_line("a")])
    notes = client.files.create(file=("notes.txt", b"hi"), purpose="user_data").id
    good = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
    with bsim.http() as http:

        def create(**changes: Any) -> httpx2.Response:
            body = {k: v for k, v in {**good, **changes}.items() if v is not None}
            return http.post("/v1/batches", json=body)

        unknown = assert_error_shape(create(input_file_id="file-nope"), 404, "input_file_id")
        assert unknown["code"] == "file_not_found"
        assert_error_shape(create(input_file_id=notes), 400, "input_file_id")
        assert_error_shape(create(input_file_id=None), 400, "input_file_id")
        assert_error_shape(create(endpoint="/v1/completions"), 400, "endpoint")
        assert_error_shape(create(completion_window="48h"), 400, "completion_window")
        too_many = {f"k{i}": "v" for i in range(17)}
        assert_error_shape(create(metadata=too_many), 400, "metadata")
        assert_error_shape(create(metadata={"k": 1}), 400, "metadata.k")
        assert_error_shape(create(priority="high"), 400, "priority")
        missing = assert_error_shape(http.get("/v1/batches/batch_nope"), 404, None)
        assert missing["code"] == "batch_not_found"
        assert http.post("/v1/batches/batch_nope/cancel").status_code == 404
        assert http.delete("/v1/batches").status_code == 405
        assert create(metadata={f"k{i}": "v" for i in range(16)}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    assert bsim.stats()["batches"]["created"] == 1


# -- stats and control ------------------------------------------------------------------------


def test_stats_count_batches_by_intent_and_status(start_sim: StartSim) -> None:
    running = start_sim('[sim.batch]\nturnaround = "0s"\n')
    client = running.client()
    for intent in ("i-1", "i-2", "i-1"):
        submit(client, [chat_line("a"), chat_line("b")], metadata={"llmspool_intent": intent})
    submit(client, [chat_line("a")])
    failed = submit(client, [b"not json"])
    wait_for(client, failed.id, "failed")
    stats = running.stats()["batches"]
    assert stats["created"] == 5
    assert stats["intents"] == {"i-1": 2, "i-2": 1}
    assert stats["by_status"] == {"completed": 4, "failed": 1}
    assert stats["files_uploaded"] == 5
    assert stats["lines_processed"] == 7
    assert stats["tokens"]["output"] == 7 * 16
    assert running.stats()["requests"]["by_path"]["/v1/batches/{batch_id}"] == 1
    with running.http() as http:
        reset = http.post("/_sim/stats/reset").json()["batches"]
    assert reset["created"] == 0 and reset["intents"] == {} and reset["lines_processed"] == 0
    # What exists now is not history: the current statuses stay.
    assert reset["by_status"] == {"completed": 4, "failed": 1}


def test_batch_control_shows_validates_and_resets_settings(bsim: RunningSim) -> None:
    defaults = batch_settings(bsim).json()
    assert defaults == BatchSettings().to_table()
    assert defaults["turnaround"] == "2s" and defaults["error_custom_ids"] == []
    changed = configure(bsim, turnaround="5m", error_custom_ids=["x"], enqueued_token_limit=9)
    assert changed == {
        **defaults,
        "turnaround": "5m",
        "error_custom_ids": ["x"],
        "enqueued_token_limit": 9,
    }
    refused: list[tuple[dict[str, Any], str]] = [
        ({"turnaround": "soon"}, "turnaround"),
        ({"expire_partial": 2}, "expire_partial"),
        ({"line_error_rate": 0.6, "line_failure_rate": 0.6}, "line_error_rate"),
        ({"error_custom_ids": "x"}, "error_custom_ids"),
        ({"enqueued_token_limit": -1}, "enqueued_token_limit"),
        ({"turnround": "1s"}, "turnround"),
        ({"reset": False}, "reset"),
    ]
    for bad, key in refused:
        response = batch_settings(bsim, bad)
        assert assert_error_shape(response, 400, key)["code"] == "invalid_value"
        assert key in response.json()["error"]["message"]
    assert batch_settings(bsim).json() == changed  # a refused change changes nothing
    assert configure(bsim, reset=True, validating="1s") == {**defaults, "validating": "1s"}
    assert configure(bsim, reset=True) == defaults


def test_batches_keep_the_settings_they_were_created_with(bsim: RunningSim) -> None:
    configure(bsim, turnaround="30s")
    client = bsim.client()
    slow = submit(client, [chat_line("a")])
    configure(bsim, turnaround="0s")
    fast = submit(client, [chat_line("a")])
    assert wait_for(client, fast.id, "completed")
    assert client.batches.retrieve(slow.id).status == "in_progress"


# -- config -----------------------------------------------------------------------------------


def test_batch_settings_round_trip_through_the_sim_table() -> None:
    table = {
        "validating": "1.5s",
        "turnaround": "10m",
        "turnaround_p99": "2h",
        "finalizing": "250ms",
        "expire_after": "1h",
        "expire_partial": 0.25,
        "cancel_delay": "0s",
        "line_error_rate": 0.1,
        "line_failure_rate": 0.05,
        "error_custom_ids": ["a", "b"],
        "enqueued_token_limit": 90_000,
        "fail_validation": "token_limit_exceeded",
    }
    config = SimConfig.from_table({"batch": table})
    assert config.batch == BatchSettings(
        validating=1.5,
        turnaround=600.0,
        turnaround_p99=7200.0,
        finalizing=0.25,
        expire_after=3600.0,
        expire_partial=0.25,
        cancel_delay=0.0,
        line_error_rate=0.1,
        line_failure_rate=0.05,
        error_custom_ids=("a", "b"),
        enqueued_token_limit=90_000,
        fail_validation="token_limit_exceeded",
    )
    assert config.to_table()["batch"] == table
    text = tomli_w.dumps({"sim": config.to_table()})
    assert "[sim.batch]" in text
    assert SimConfig.from_table(tomllib.loads(text)["sim"]) == config
    assert SimConfig.from_table({}).batch == BatchSettings()


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"batch": "fast"}, "sim.batch"),
        ({"batch": {"turnaround": "soon"}}, "sim.batch.turnaround"),
        ({"batch": {"validating": -1}}, "sim.batch.validating"),
        ({"batch": {"expire_after": "0s"}}, "sim.batch.expire_after"),
        ({"batch": {"expire_partial": 1.5}}, "sim.batch.expire_partial"),
        ({"batch": {"line_failure_rate": True}}, "sim.batch.line_failure_rate"),
        ({"batch": {"error_custom_ids": ["a", ""]}}, "sim.batch.error_custom_ids[1]"),
        ({"batch": {"enqueued_token_limit": 1.5}}, "sim.batch.enqueued_token_limit"),
        ({"batch": {"fail_validation": 3}}, "sim.batch.fail_validation"),
        ({"batch": {"speed": 3}}, "sim.batch.speed"),
    ],
)
def test_bad_batch_settings_name_their_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SimConfig.from_table(table)
    assert caught.value.key == key


def test_a_bad_batch_setting_in_the_config_file_stops_the_sim(
    run_sim: Callable[..., Any], tmp_path: Any
) -> None:
    config = tmp_path / "llmspool.toml"
    config.write_text('[sim.batch]\ncancel_delay = "later"\n')
    result = run_sim("--config", str(config), "--port", "0")
    assert result.returncode == 2
    assert "sim.batch.cancel_delay" in result.stderr


# -- exact timing, with a fake clock ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def registry(settings: BatchSettings, clock: Clock) -> BatchRegistry:
    app = build_app(SimConfig())
    return BatchRegistry(
        files=app.files, makers=app.makers, stats=SimStats(), settings=settings, seed=0,
        clock=clock,
    )  # fmt: skip


def add_input(reg: BatchRegistry, count: int, model: str = MODEL) -> str:
    content = jsonl([chat_line(f"r{i}", model=model) for i in range(count)])
    stored = StoredFile(id=f"file-{id(content)}", filename="in.jsonl", purpose="batch",
                        created_at=0, content=content)  # fmt: skip
    return reg.files.add(stored).id


def create(reg: BatchRegistry, count: int, model: str = MODEL) -> str:
    payload = {"input_file_id": add_input(reg, count, model), "endpoint": CHAT,
               "completion_window": "24h"}  # fmt: skip
    batch_id: str = reg.create(payload)["id"]
    return batch_id


def file_ids(reg: BatchRegistry, file_id: str | None) -> list[str]:
    if file_id is None:
        return []
    content = reg.files.get(file_id).content
    return [orjson.loads(line)["custom_id"] for line in content.splitlines()]


def test_lines_finish_evenly_over_the_turnaround() -> None:
    clock = Clock()
    reg = registry(BatchSettings(validating=2, turnaround=10, finalizing=3), clock)
    batch_id = create(reg, 20)
    for elapsed, status, completed in [
        (1.9, "validating", 0),
        (2.0, "in_progress", 0),
        (4.0, "in_progress", 4),
        (7.0, "in_progress", 10),
        (11.99, "in_progress", 19),
        (12.0, "finalizing", 20),
        (14.9, "finalizing", 20),
        (15.0, "completed", 20),
    ]:
        clock.now = 1_000_000.0 + elapsed
        batch = reg.retrieve(batch_id)
        assert (batch["status"], batch["request_counts"]["completed"]) == (status, completed), (
            elapsed
        )
    assert batch["completed_at"] == 1_000_015


def test_a_cancel_keeps_exactly_the_lines_finished_by_then() -> None:
    clock = Clock()
    reg = registry(BatchSettings(turnaround=10, cancel_delay=5), clock)
    batch_id = create(reg, 20)
    clock.now += 2.5
    assert reg.cancel(batch_id)["request_counts"] == {"total": 20, "completed": 5, "failed": 0}
    clock.now += 4.9
    assert reg.retrieve(batch_id)["status"] == "cancelling"
    clock.now += 0.1
    batch = reg.retrieve(batch_id)
    assert batch["status"] == "cancelled"
    assert batch["cancelled_at"] - batch["cancelling_at"] == 5
    assert file_ids(reg, batch["output_file_id"]) == [f"r{i}" for i in range(5)]
    assert file_ids(reg, batch["error_file_id"]) == [f"r{i}" for i in range(5, 20)]


def test_expiry_counts_from_creation_and_is_polled_lazily() -> None:
    clock = Clock()
    reg = registry(BatchSettings(validating=1, turnaround=100, expire_after=30,
                                 expire_partial=0.5), clock)  # fmt: skip
    batch_id = create(reg, 10)
    clock.now += 500  # nobody polled in between: the story is the same
    batch = reg.retrieve(batch_id)
    assert batch["status"] == "expired"
    assert batch["expired_at"] == 1_000_030
    assert batch["in_progress_at"] == 1_000_001
    assert file_ids(reg, batch["output_file_id"]) == [f"r{i}" for i in range(5)]


def test_the_token_cap_admits_batches_in_the_order_they_validate() -> None:
    clock = Clock()
    # Each line's prompt is 6 tokens ("say something about rN": 22 characters, 4 per token).
    reg = registry(BatchSettings(validating=5, turnaround=100, enqueued_token_limit=100), clock)
    first = create(reg, 10)
    clock.now += 1
    second = create(reg, 10)
    clock.now += 10
    assert reg.retrieve(first)["status"] == "in_progress"
    failed = reg.retrieve(second)
    assert failed["status"] == "failed"
    assert failed["failed_at"] == 1_000_006
    assert failed["errors"]["data"][0]["message"] == token_limit_message(MODEL, 100)


def test_a_line_error_is_an_api_error_body() -> None:
    # The body of an HTTP 500 line is the error shape OpenAI answers.
    clock = Clock()
    reg = registry(BatchSettings(turnaround=0, error_custom_ids=("r1",)), clock)
    batch = reg.retrieve(create(reg, 2))
    line = orjson.loads(reg.files.get(batch["error_file_id"]).content)
    assert line["response"]["body"] == orjson.loads(
        ApiError("The server had an error while processing your request. Sorry about that!").body()
    )
