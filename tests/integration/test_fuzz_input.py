"""No input makes the daemon answer 5xx: generated request bodies with a wrong value in every
field of chat, responses, embeddings and jobs, and odd values in every llmspool header and
query parameter, through the real socket to a real daemon in front of the simulator. Each gets
an answer below 500 in OpenAI's error shape (or a success), no traceback reaches the log, and a
normal request still works after them all. Bounded in examples, so it runs in CI.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.processes import (
    Daemon,
    Sim,
    start_daemon,
    start_sim,
    unix_exchange,
)

EXAMPLES = int(os.environ.get("LLMSPOOL_FUZZ_EXAMPLES", "120"))  # more to hunt bugs
JSON = {"content-type": "application/json"}
BASES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "gpt-4o-mini", "max_tokens": 5,
                             "messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 5},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "hi"},
}
# The fields each endpoint reads (or passes on), besides the base's own.
FIELDS: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": (
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "n", "stream", "stream_options", "service_tier", "seed", "stop", "tools",
        "tool_choice", "response_format", "user", "metadata", "logprobs", "presence_penalty",
        "store", "reasoning_effort", "prompt_cache_key", "safety_identifier"),
    "/v1/responses": (
        "model", "input", "instructions", "max_output_tokens", "temperature", "stream",
        "service_tier", "tools", "text", "reasoning", "metadata", "store", "background",
        "previous_response_id", "truncation"),
    "/v1/embeddings": ("model", "input", "dimensions", "encoding_format", "user"),
}
HEADERS = ("x-llmspool-deadline", "x-llmspool-cache", "x-llmspool-operation",
           "x-llmspool-session", "x-llmspool-tier", "traceparent")
JOB_FIELDS = ("requests", "deadline", "operation", "tags", "on_error", "on_short_deadline")
QUERIES = ("/v1/ledger?by={}", "/v1/ledger?since={}", "/v1/ledger?limit={}",
           "/v1/ledger?until={}", "/v1/ledger?format={}", "/v1/ledger?all_users={}",
           "/v1/jobs?limit={}", "/v1/jobs/{}", "/v1/jobs/{}/results?wait=0",
           "/v1/jobs?deadline={}", "/v1/jobs/job_x/results?wait={}",
           "/v1/files?limit={}", "/v1/files?order={}", "/v1/files?after={}",
           "/v1/files?purpose={}", "/v1/files/{}", "/v1/files/{}/content",
           "/v1/batches?limit={}", "/v1/batches?after={}", "/v1/batches/{}")
BATCH_FIELDS = ("input_file_id", "endpoint", "completion_window", "metadata",
                "output_expires_after")
FORM_FIELDS = ("purpose", "expires_after[anchor]", "expires_after[seconds]", "file")

# JSON values of every type, small and odd: what a confused or hostile client sends.
leaves = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, -1, 1, 2**31, 10**6]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["", "auto", "flex", "priority", "batch", "standard", "default", "user",
                     "system", "-1", "1e309", "gpt-4o-mini", "openai/", "\x00", "24h"]),
)
values = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)
header_text = st.text(alphabet=string.printable.strip() + " ", max_size=30)
query_text = st.text(alphabet=string.ascii_letters + string.digits + "-_.,:%+", max_size=20)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp("fuzz")
    sim: Sim = start_sim(work)
    daemon = start_daemon(work, sim.url, config_toml='[batch]\nenabled = false\n')
    try:
        yield daemon
    finally:
        daemon.terminate()
        sim.terminate()


def assert_clean(status: int, answer: Any, what: str) -> None:
    assert status < 500, f"{what} -> {status}: {answer!r}"[:2000]
    if status >= 400:
        assert isinstance(answer, dict) and isinstance(answer.get("error"), dict), \
            f"{what} -> {status}: not OpenAI's error shape: {answer!r}"[:2000]
        assert answer["error"].get("message"), answer


def send(daemon: Daemon, method: str, path: str, body: bytes | None,
         headers: dict[str, str]) -> tuple[int, Any]:
    status, answer, _headers = unix_exchange(daemon.socket_path, method, path, body, headers)
    return status, answer


FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data())
def test_a_wrong_value_in_any_field_gets_a_4xx(fuzzed: Daemon, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(sorted(BASES)))
    body = dict(BASES[path])
    for name in data.draw(st.lists(st.sampled_from(FIELDS[path]), min_size=1, max_size=3,
                                   unique=True)):
        body[name] = data.draw(values)
    headers = dict(JSON)
    for name in data.draw(st.lists(st.sampled_from(HEADERS), max_size=2, unique=True)):
        headers[name] = data.draw(header_text).strip() or "x"
    status, answer = send(fuzzed, "POST", path, orjson.dumps(body), headers)
    assert_clean(status, answer, f"POST {path} {body} {headers}")


@FUZZ
@given(data=st.data())
def test_a_wrong_value_in_a_job_gets_a_4xx(fuzzed: Daemon, data: st.DataObject) -> None:
    line: dict[str, Any] = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                            "body": dict(BASES["/v1/chat/completions"])}
    for name in data.draw(st.lists(st.sampled_from(("custom_id", "method", "url", "body")),
                                   max_size=2, unique=True)):
        line[name] = data.draw(values)
    job: dict[str, Any] = {"requests": [line], "deadline": "12m"}
    for name in data.draw(st.lists(st.sampled_from(JOB_FIELDS), max_size=2, unique=True)):
        job[name] = data.draw(values)
    status, answer = send(fuzzed, "POST", "/v1/jobs", orjson.dumps(job), JSON)
    assert_clean(status, answer, f"POST /v1/jobs {job}")
    jsonl = orjson.dumps(line) + b"\n" + data.draw(st.binary(max_size=40))
    query = data.draw(query_text)
    status, answer = send(fuzzed, "POST", f"/v1/jobs?deadline=12m&on_error={query}", jsonl,
                          {"content-type": "application/jsonl"})
    assert_clean(status, answer, f"POST /v1/jobs (JSONL) {jsonl!r}")


def form(fields: dict[str, bytes], filename: str, boundary: str = "fuzz") -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
             f'{"; filename=" + repr(filename) if name == "file" else ""}\r\n\r\n'.encode()
             + value + b"\r\n" for name, value in fields.items()]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


@FUZZ
@given(data=st.data())
def test_a_wrong_value_in_a_file_or_batch_gets_a_4xx(fuzzed: Daemon, data: st.DataObject
                                                     ) -> None:
    line: dict[str, Any] = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                            "body": dict(BASES["/v1/chat/completions"])}
    for name in data.draw(st.lists(st.sampled_from(("custom_id", "method", "url", "body")),
                                   max_size=2, unique=True)):
        line[name] = data.draw(values)
    fields = {"purpose": b"batch",
              "file": orjson.dumps(line) + b"\n" + data.draw(st.binary(max_size=40))}
    for name in data.draw(st.lists(st.sampled_from(FORM_FIELDS), max_size=2, unique=True)):
        fields[name] = data.draw(st.binary(max_size=30))
    filename = data.draw(st.sampled_from(["in.jsonl", "in.txt", "", "a\"b.jsonl"]))
    boundary = data.draw(st.sampled_from(["fuzz", "fuzz", "other", ""]))
    body = form(fields, filename)
    if data.draw(st.booleans()):
        body = body[:data.draw(st.integers(min_value=0, max_value=len(body)))]
    status, file = send(fuzzed, "POST", "/v1/files", body,
                        {"content-type": f"multipart/form-data; boundary={boundary}"})
    assert_clean(status, file, f"POST /v1/files {body!r}")
    batch: dict[str, Any] = {"input_file_id": file.get("id", "file-x"),
                             "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    for name in data.draw(st.lists(st.sampled_from(BATCH_FIELDS), max_size=2, unique=True)):
        batch[name] = data.draw(values)
    headers = dict(JSON)
    for name in data.draw(st.lists(st.sampled_from(HEADERS), max_size=2, unique=True)):
        headers[name] = data.draw(header_text).strip() or "x"
    status, answer = send(fuzzed, "POST", "/v1/batches", orjson.dumps(batch), headers)
    assert_clean(status, answer, f"POST /v1/batches {batch} {headers}")
    if status == 200:
        status, answer = send(fuzzed, "POST", f"/v1/batches/{answer['id']}/cancel", b"", {})
        assert_clean(status, answer, "cancel")


@FUZZ
@given(template=st.sampled_from(QUERIES), value=query_text)
def test_odd_query_parameters_get_a_4xx(fuzzed: Daemon, template: str, value: str) -> None:
    path = template.format(value)
    status, answer = send(fuzzed, "GET", path, None, {})
    assert_clean(status, answer, f"GET {path}")


def test_the_fuzzed_daemon_is_unharmed(fuzzed: Daemon) -> None:
    """Runs last in this module: after every example above, a normal call is served and no
    traceback (nor an unexpected error) reached the log."""
    status, answer = send(fuzzed, "POST", "/v1/chat/completions",
                          orjson.dumps(BASES["/v1/chat/completions"]), JSON)
    assert status == 200, answer
    log = fuzzed.log()
    assert "Traceback" not in log and "unexpected error" not in log, log[-4000:]
