"""Fault injection as a client sees it: statuses, headers, retries, hangs, drops and cut streams."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx2
import openai
import pytest

from tests.support.waiting import wait_for

if TYPE_CHECKING:
    from tests.sim.conftest import RunningSim

CHAT = "/v1/chat/completions"
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


def chat(client: openai.OpenAI, **extra: Any) -> Any:
    options: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES, **extra}
    return client.chat.completions.create(**options)


def outcome(client: openai.OpenAI, **extra: Any) -> str:
    """``ok`` or the class name of what the client raised."""
    try:
        chat(client, **extra)
    except openai.OpenAIError as exc:
        return type(exc).__name__
    return "ok"


@pytest.mark.parametrize(
    ("status", "error_class", "code"),
    [
        (500, openai.InternalServerError, None),
        (502, openai.InternalServerError, "bad_gateway"),
        (503, openai.InternalServerError, "slow_down"),
        (504, openai.InternalServerError, "timeout"),
        (400, openai.BadRequestError, None),
    ],
)
def test_status_fault_answers_an_openai_shaped_error(
    sim: RunningSim, status: int, error_class: type[openai.APIStatusError], code: str | None
) -> None:
    sim.set_faults({"kind": "status", "status": status, "count": 1})
    with pytest.raises(error_class) as caught:
        chat(sim.client())
    assert caught.value.status_code == status
    assert caught.value.code == code
    body = caught.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}
    assert caught.value.response.headers["x-request-id"].startswith("req_")
    assert outcome(sim.client()) == "ok"
    stats = sim.stats()
    assert stats["faults"] == {"total": 1, "by_kind": {"status": 1}}
    assert stats["requests"]["by_status"] == {str(status): 1, "200": 1}


def test_status_defaults_to_500(sim: RunningSim) -> None:
    active = sim.set_faults({"kind": "status"})
    assert active["faults"][0]["status"] == 500
    assert outcome(sim.client()) == "InternalServerError"


def test_rate_limit_fault_has_retry_headers_and_zero_remaining(sim: RunningSim) -> None:
    sim.set_faults({"kind": "rate_limit", "retry_after": "2s", "count": 1})
    with pytest.raises(openai.RateLimitError) as caught:
        chat(sim.client())
    error = caught.value
    assert error.code == "rate_limit_exceeded"
    headers = error.response.headers
    assert headers["retry-after"] == "2"
    assert headers["retry-after-ms"] == "2000"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "2s"
    assert headers["x-ratelimit-limit-requests"] == "10000"


def test_client_retries_are_counted_and_retry_after_is_honoured(sim: RunningSim) -> None:
    sim.set_faults({"kind": "rate_limit", "retry_after": "300ms", "count": 2})
    started = time.monotonic()
    completion = chat(sim.client(max_retries=2))
    elapsed = time.monotonic() - started
    assert completion.choices[0].message.content
    # Two waits of the hinted 300 ms (retry-after-ms), not the SDK's own shorter backoff.
    assert elapsed >= 0.6
    stats = sim.stats()
    assert stats["requests"]["by_path"] == {CHAT: 3}
    assert stats["requests"]["by_status"] == {"429": 2, "200": 1}
    assert stats["faults"]["by_kind"] == {"rate_limit": 2}


def test_quota_fault_is_insufficient_quota(sim: RunningSim) -> None:
    sim.set_faults({"kind": "quota"})
    with pytest.raises(openai.RateLimitError) as caught:
        chat(sim.client())
    assert caught.value.code == "insufficient_quota"
    assert caught.value.type == "insufficient_quota"
    assert caught.value.status_code == 429


def test_count_hits_exactly_the_next_n_requests(sim: RunningSim) -> None:
    sim.set_faults({"kind": "status", "status": 503, "count": 3})
    client = sim.client()
    results = [outcome(client) for _ in range(5)]
    assert results == ["InternalServerError"] * 3 + ["ok"] * 2
    assert sim.set_faults([])["faults"] == []


def test_count_is_exact_under_concurrency(sim: RunningSim) -> None:
    sim.set_faults({"kind": "status", "count": 7})
    client = sim.client()
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: outcome(client), range(40)))
    assert results.count("InternalServerError") == 7
    assert results.count("ok") == 33
    assert sim.stats()["faults"]["by_kind"] == {"status": 7}


def test_get_faults_shows_what_is_left_and_spent_rules_go(sim: RunningSim) -> None:
    sim.set_faults([{"kind": "status", "count": 2}, {"kind": "slow", "delay": "1ms"}])
    client = sim.client()
    outcome(client)
    with sim.http() as http:
        left = http.get("/_sim/faults").json()["faults"]
        assert [rule["kind"] for rule in left] == ["status", "slow"]
        assert left[0]["count"] == 1
        outcome(client)
        left = http.get("/_sim/faults").json()["faults"]
        assert [rule["kind"] for rule in left] == ["slow"]
        assert left[0]["delay"] == "1ms"
        cleared = http.delete("/_sim/faults").json()
    assert cleared == {"faults": []}


def test_probability_uses_the_seeded_rng(sim: RunningSim) -> None:
    client = sim.client()

    def run(seed: int) -> list[str]:
        sim.set_faults({"faults": [{"kind": "status", "probability": 0.5}], "seed": seed})
        return [outcome(client) for _ in range(60)]

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert first != other
    assert 15 <= first.count("InternalServerError") <= 45
    sim.set_faults({"kind": "status", "probability": 0})
    assert {outcome(client) for _ in range(10)} == {"ok"}


def test_path_model_and_tier_filters(sim: RunningSim) -> None:
    client = sim.client()
    sim.set_faults(
        [
            {"kind": "status", "status": 502, "path": "/v1/embeddings"},
            {"kind": "status", "status": 503, "model": "gpt-4o-mini"},
            {"kind": "rate_limit", "tier": "flex", "code": "resource_unavailable"},
        ]
    )
    assert outcome(client) == "ok"
    assert outcome(client, model="gpt-4o-mini") == "InternalServerError"
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client, model="gpt-5-mini", service_tier="flex")
    assert caught.value.code == "resource_unavailable"
    with pytest.raises(openai.InternalServerError) as embedding_error:
        client.embeddings.create(model="text-embedding-3-small", input="x", encoding_format="float")
    assert embedding_error.value.status_code == 502


def test_slow_fault_adds_its_delay(sim: RunningSim) -> None:
    sim.set_faults({"kind": "slow", "delay": "400ms", "count": 1})
    client = sim.client()
    started = time.monotonic()
    chat(client)
    slow = time.monotonic() - started
    started = time.monotonic()
    chat(client)
    fast = time.monotonic() - started
    assert slow >= 0.4
    assert fast < 0.3


def test_hang_never_answers_and_ends_when_the_client_leaves(sim: RunningSim) -> None:
    sim.set_faults({"kind": "hang", "count": 1})
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        chat(sim.client(timeout=0.5))
    assert time.monotonic() - started < 5
    # The hung request must not linger inside the simulator once its client has gone.
    wait_for(
        lambda: sim.stats()["requests"]["in_flight"] == 0,
        timeout=5,
        every=0.05,
        what="the hung request to end",
    )
    stats = sim.stats()
    assert stats["requests"]["in_flight"] == 0
    assert stats["requests"]["client_closed"] == 1
    assert stats["requests"]["by_status"] == {}
    assert outcome(sim.client()) == "ok"


def test_hang_with_a_bound_ends_in_a_dropped_connection(sim: RunningSim) -> None:
    sim.set_faults({"kind": "hang", "delay": "300ms", "count": 1})
    started = time.monotonic()
    with pytest.raises(openai.APIConnectionError) as caught:
        chat(sim.client(timeout=5))
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert 0.3 <= time.monotonic() - started < 4


def test_drop_closes_the_connection_without_an_answer(sim: RunningSim) -> None:
    sim.set_faults({"kind": "drop", "count": 2})
    with pytest.raises(openai.APIConnectionError) as caught:
        chat(sim.client())
    assert not isinstance(caught.value, openai.APITimeoutError)
    with sim.http() as http, pytest.raises(httpx2.TransportError):
        http.post(CHAT, json={"model": "gpt-4o", "messages": MESSAGES})
    stats = sim.stats()
    assert stats["faults"]["by_kind"] == {"drop": 2}
    assert stats["requests"]["by_status"] == {}
    assert outcome(sim.client()) == "ok"


def test_stream_cut_stops_after_n_chunks(sim: RunningSim) -> None:
    sim.set_faults({"kind": "stream_cut", "after_chunks": 3})
    # A non-streamed request is not what a stream cut is about, and does not use it up.
    assert outcome(sim.client()) == "ok"
    received: list[Any] = []
    with pytest.raises((httpx2.TransportError, openai.APIConnectionError)):
        received.extend(chat(sim.client(), stream=True))
    assert len(received) == 3
    stats = sim.stats()
    assert stats["streams"]["open"] == 0
    assert stats["faults"]["by_kind"] == {"stream_cut": 1}


def test_stream_cut_on_responses_always_misses_the_final_event(sim: RunningSim) -> None:
    sim.set_faults({"kind": "stream_cut", "after_chunks": 1000, "count": 1})
    received: list[str] = []
    with pytest.raises((httpx2.TransportError, openai.APIConnectionError)):
        stream = sim.client().responses.create(model="gpt-4o", input="x", stream=True)
        received.extend(event.type for event in stream)
    assert received
    assert "response.completed" not in received


@pytest.mark.parametrize(
    ("rule", "param"),
    [
        ({"kind": "explode"}, "faults[0].kind"),
        ({"status": 500}, "faults[0].kind"),
        ({"kind": "status", "probability": 2}, "faults[0].probability"),
        ({"kind": "status", "count": 0}, "faults[0].count"),
        ({"kind": "status", "status": 200}, "faults[0].status"),
        ({"kind": "slow", "delay": "soon"}, "faults[0].delay"),
        ({"kind": "status", "after_chunks": 2}, "faults[0].after_chunks"),
        ({"kind": "drop", "colour": "red"}, "faults[0].colour"),
    ],
)
def test_bad_fault_rules_are_refused_naming_the_key(
    sim: RunningSim, rule: dict[str, Any], param: str
) -> None:
    sim.set_faults({"kind": "status", "count": 1})
    with sim.http() as http:
        response = http.post("/_sim/faults", json=rule)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param
        # A refused replacement leaves the active rules as they were.
        assert len(http.get("/_sim/faults").json()["faults"]) == 1


def test_faults_from_config_are_active_at_start(start_sim: Any) -> None:
    running = start_sim(
        """
[sim]
seed = 3

[[sim.faults]]
kind = "status"
status = 503
count = 2
path = "/v1/chat/completions"
"""
    )
    client = running.client()
    assert [outcome(client) for _ in range(3)] == ["InternalServerError"] * 2 + ["ok"]


# -- rules with a path on the Files and Batch APIs --------------------------------------------

BATCH_LINE = (
    b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", '
    b'"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}\n'
)


def upload(client: openai.OpenAI) -> str:
    return client.files.create(file=("in.jsonl", BATCH_LINE), purpose="batch").id


def create_batch(client: openai.OpenAI, file_id: str) -> Any:
    return client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def test_a_rule_without_path_leaves_files_and_batches_alone(sim: RunningSim) -> None:
    sim.set_faults([{"kind": "status", "status": 503}, {"kind": "drop", "method": "POST"}])
    client = sim.client()
    batch = create_batch(client, upload(client))
    assert client.batches.retrieve(batch.id).id == batch.id
    assert sim.stats()["faults"]["total"] == 0
    assert outcome(client) == "InternalServerError"


def test_status_fault_on_file_upload_stores_nothing(sim: RunningSim) -> None:
    sim.set_faults({"kind": "status", "status": 503, "path": "/v1/files", "count": 1})
    client = sim.client()
    with pytest.raises(openai.InternalServerError) as caught:
        upload(client)
    assert caught.value.code == "slow_down"
    assert caught.value.response.headers["x-request-id"].startswith("req_")
    stats = sim.stats()
    assert stats["batches"]["files_uploaded"] == 0
    assert stats["faults"]["by_kind"] == {"status": 1}
    upload(client)
    # A model endpoint does not match a rule about another path.
    sim.set_faults({"kind": "status", "path": "/v1/files"})
    assert outcome(client) == "ok"


def test_a_prefix_rule_hits_every_batch_but_not_the_collection(sim: RunningSim) -> None:
    client = sim.client()
    batch = create_batch(client, upload(client))
    sim.set_faults({"kind": "rate_limit", "retry_after": "1.5s", "path": "/v1/batches/"})
    with pytest.raises(openai.RateLimitError) as caught:
        client.batches.retrieve(batch.id)
    headers = caught.value.response.headers
    assert headers["retry-after"] == "2"
    assert headers["retry-after-ms"] == "1500"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError):
        client.batches.cancel(batch.id)
    assert client.batches.list().data  # /v1/batches itself is not under /v1/batches/
    assert sim.stats()["batches"]["cancel_requests"] == 0


def test_drop_on_batch_create_creates_no_batch(sim: RunningSim) -> None:
    client = sim.client()
    file_id = upload(client)
    sim.set_faults({"kind": "drop", "path": "/v1/batches", "method": "POST", "count": 1})
    client.batches.list()  # a GET is not what the rule is about
    with pytest.raises(openai.APIConnectionError) as caught:
        create_batch(client, file_id)
    assert not isinstance(caught.value, openai.APITimeoutError)
    stats = sim.stats()
    assert stats["batches"]["created"] == 0
    assert stats["faults"]["by_kind"] == {"drop": 1}
    create_batch(client, file_id)


def test_hang_on_file_content_times_the_client_out(sim: RunningSim) -> None:
    client = sim.client()
    file_id = upload(client)
    sim.set_faults({"kind": "hang", "path": "/v1/files/", "count": 1})
    with pytest.raises(openai.APITimeoutError):
        sim.client(timeout=0.3).files.content(file_id)
    assert client.files.content(file_id).content == BATCH_LINE


def test_slow_upload_is_stored_whole_after_the_delay(sim: RunningSim) -> None:
    sim.set_faults({"kind": "slow", "delay": "300ms", "path": "/v1/files", "count": 1})
    client = sim.client()
    started = time.monotonic()
    file_id = upload(client)
    assert time.monotonic() - started >= 0.3
    assert client.files.content(file_id).content == BATCH_LINE
    assert sim.stats()["requests"]["client_closed"] == 0


def test_reset_midway_on_batch_create_cuts_the_answer_of_a_batch_that_exists(
    sim: RunningSim,
) -> None:
    client = sim.client()
    file_id = upload(client)
    sim.set_faults({"kind": "reset_midway", "path": "/v1/batches", "method": "POST"})
    with sim.http() as http:
        body = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        with http.stream("POST", "/v1/batches", json=body) as response:
            assert response.status_code == 200
            with pytest.raises(httpx2.TransportError):
                response.read()
    with pytest.raises(openai.APIConnectionError):
        create_batch(client, file_id)
    # The client saw no answer, yet both batches were created: a retry must not assume not.
    stats = sim.stats()
    assert stats["batches"]["created"] == 2
    assert stats["faults"]["by_kind"] == {"reset_midway": 2}


def test_reset_midway_on_a_completion_sends_part_of_the_answer(sim: RunningSim) -> None:
    sim.set_faults({"kind": "reset_midway", "count": 2})
    with sim.http() as http:
        with http.stream("POST", CHAT, json={"model": "gpt-4o", "messages": MESSAGES}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            received = b""
            with pytest.raises(httpx2.TransportError):
                for chunk in response.iter_raw():
                    received += chunk
            assert received.startswith(b'{"id":"chatcmpl-')
            assert int(response.headers["content-length"]) > len(received)
        stream = {"model": "gpt-4o", "messages": MESSAGES, "stream": True}
        with http.stream("POST", CHAT, json=stream) as response:
            assert response.status_code == 200
            with pytest.raises(httpx2.TransportError):
                response.read()
    assert outcome(sim.client()) == "ok"
    assert sim.stats()["streams"]["open"] == 0


def test_a_bad_method_is_refused_naming_the_key(sim: RunningSim) -> None:
    with sim.http() as http:
        response = http.post("/_sim/faults", json={"kind": "drop", "method": "FETCH"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "faults[0].method"
    assert sim.set_faults({"kind": "drop", "method": "post"})["faults"][0]["method"] == "POST"
