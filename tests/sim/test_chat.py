"""Chat completions through the official client: shapes, usage, streaming, tiers, errors."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

if TYPE_CHECKING:
    from tests.sim.conftest import RunningSim

PROMPT = "Say something about print spoolers, please."


def estimated_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def test_plain_chat_completion_has_openai_shape_and_consistent_usage(sim: RunningSim) -> None:
    completion = sim.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
    )
    assert isinstance(completion, ChatCompletion)
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.refusal is None
    assert choice.finish_reason == "stop"
    content = choice.message.content
    assert content
    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens == 16 == estimated_tokens(content)
    assert usage.prompt_tokens == estimated_tokens(PROMPT)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert completion.service_tier == "default"
    assert completion.system_fingerprint


def test_max_tokens_sets_length_and_finish_reason(sim: RunningSim) -> None:
    client = sim.client()
    for param in ("max_tokens", "max_completion_tokens"):
        options: dict[str, Any] = {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": PROMPT}],
            param: 40,
        }
        completion: ChatCompletion = client.chat.completions.create(**options)
        content = completion.choices[0].message.content or ""
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 40 == estimated_tokens(content)


def test_same_prompt_same_answer_other_prompt_other_answer(sim: RunningSim) -> None:
    client = sim.client()

    def ask(prompt: str) -> str:
        completion = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": prompt}]
        )
        return completion.choices[0].message.content or ""

    assert ask("first prompt") == ask("first prompt")
    assert ask("first prompt") != ask("a rather different prompt")


def test_prompt_tokens_count_every_message_and_text_part(sim: RunningSim) -> None:
    system, part_a, part_b = "You are terse.", "Look at this: ", "what is it?"
    completion = sim.client().chat.completions.create(
        model="gpt-4.1",
        messages=[
            {"role": "system", "content": system},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": part_a},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    {"type": "text", "text": part_b},
                ],
            },
        ],
    )
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == estimated_tokens(system + part_a + part_b)


def test_n_choices_bill_every_choice(sim: RunningSim) -> None:
    completion = sim.client().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], n=3, max_tokens=5
    )
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 15


@pytest.mark.parametrize(
    ("asked", "served"),
    [
        (None, "default"),
        ("auto", "default"),
        ("default", "default"),
        ("flex", "flex"),
        ("priority", "priority"),
        ("scale", "scale"),
        ("fast", "priority"),
    ],
)
def test_service_tier_is_echoed(sim: RunningSim, asked: str | None, served: str) -> None:
    options: dict[str, Any] = {
        "model": "gpt-5-mini",
        "messages": [{"role": "user", "content": "hi"}],
    }
    if asked is not None:
        options["service_tier"] = asked
    completion: ChatCompletion = sim.client().chat.completions.create(**options)
    assert completion.service_tier == served
    assert sim.stats()["requests"]["by_tier"] == {served: 1}


def test_stream_sends_one_delta_per_token_then_done(sim: RunningSim) -> None:
    client = sim.client()
    plain = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], max_tokens=12
    )
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=12,
            stream=True,
        )
    )
    assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [chunk.choices[0].delta.content for chunk in chunks[1:-1]]
    assert len(deltas) == 12
    assert "".join(d or "" for d in deltas) == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.service_tier == "default" for chunk in chunks)
    stats = sim.stats()
    assert stats["streams"] == {"open": 0, "total": 1}


def test_stream_with_include_usage_ends_with_a_usage_chunk(sim: RunningSim) -> None:
    chunks = list(
        sim.client().chat.completions.create(
            model="gpt-5-mini",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
            service_tier="flex",
        )
    )
    *content_chunks, last = chunks
    assert last.choices == []
    assert last.usage is not None
    text = "".join(chunk.choices[0].delta.content or "" for chunk in content_chunks)
    assert last.usage.completion_tokens == 16 == estimated_tokens(text)
    assert last.usage.prompt_tokens == estimated_tokens(PROMPT)
    assert all(chunk.usage is None for chunk in content_chunks)
    assert last.service_tier == "flex"


def test_stream_wire_format_is_sse_data_lines_ending_in_done(sim: RunningSim) -> None:
    with (
        sim.http() as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "x"}],
                "stream": True,
            },
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    events = body.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    assert all(event.startswith("data: {") for event in events[:-2])


def test_every_answer_has_request_id_and_ratelimit_headers(sim: RunningSim) -> None:
    # The buckets refill continuously: at these limits by less than one request (0.1/s) and a
    # few tokens (10/s) between two calls, so each call shows in what remains.
    sim.ratelimits({"requests": 6, "tokens": 600})
    client = sim.client()
    first = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    second = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    for raw in (first, second):
        assert raw.headers["x-request-id"].startswith("req_")
        for name in ("limit", "remaining", "reset"):
            for kind in ("requests", "tokens"):
                assert raw.headers[f"x-ratelimit-{name}-{kind}"]
        assert raw.headers["x-ratelimit-reset-requests"][-1] == "s"
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert int(second.headers["x-ratelimit-remaining-requests"]) == (
        int(first.headers["x-ratelimit-remaining-requests"]) - 1
    )
    assert int(second.headers["x-ratelimit-remaining-tokens"]) < int(
        first.headers["x-ratelimit-remaining-tokens"]
    )
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert caught.value.response.headers["x-request-id"].startswith("req_")
    assert "x-ratelimit-remaining-requests" in caught.value.response.headers


def test_unknown_model_is_404_model_not_found(sim: RunningSim) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sim.client().chat.completions.create(
            model="gpt-3", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_found"
    assert caught.value.type == "invalid_request_error"
    assert "gpt-3" in caught.value.message


def test_embedding_model_cannot_chat(sim: RunningSim) -> None:
    with pytest.raises(openai.NotFoundError):
        sim.client().chat.completions.create(
            model="text-embedding-3-small", messages=[{"role": "user", "content": "hi"}]
        )


HI: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "gpt-4o"}, "messages"),
        ({"model": "gpt-4o", "messages": []}, "messages"),
        ({"model": "gpt-4o", "messages": ["hi"]}, "messages[0]"),
        ({**HI, "max_tokens": 0}, "max_tokens"),
        ({**HI, "max_completion_tokens": "lots"}, "max_completion_tokens"),
        ({**HI, "service_tier": "cheap"}, "service_tier"),
        ({**HI, "stream": "yes"}, "stream"),
        ({**HI, "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_bad_requests_are_400_naming_the_param(
    sim: RunningSim, body: dict[str, Any], param: str
) -> None:
    with sim.http() as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert response.headers["x-request-id"].startswith("req_")


def test_malformed_json_is_400(sim: RunningSim) -> None:
    with sim.http() as http:
        response = http.post(
            "/v1/chat/completions",
            content=b'{"model": "gpt-4o", ',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "parse the JSON body" in response.json()["error"]["message"]


def test_unknown_path_and_wrong_method(sim: RunningSim) -> None:
    with sim.http() as http:
        missing = http.post("/v1/chat/completion", json={})
        wrong = http.get("/v1/chat/completions")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Invalid URL (POST /v1/chat/completion)"
    assert wrong.status_code == 405
    assert wrong.json()["error"]["type"] == "invalid_request_error"


def test_stats_count_each_request_exactly(sim: RunningSim) -> None:
    client = sim.client()
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    client.chat.completions.create(
        model="o3", messages=[{"role": "user", "content": "x"}], service_tier="flex"
    )
    with sim.http() as http:
        http.post("/v1/chat/completions", content=b"not json")
    requests = sim.stats()["requests"]
    assert requests["total"] == 5
    assert requests["by_path"] == {"/v1/chat/completions": 5}
    assert requests["by_model"] == {"gpt-4o": 3, "o3": 1}
    assert requests["by_tier"] == {"default": 3, "flex": 1}
    assert requests["by_status"] == {"200": 4, "400": 1}
    assert requests["in_flight"] == 0


def test_http_client_sees_plain_json(sim: RunningSim) -> None:
    # The daemon forwards bytes with its own client: the body must be plain JSON it can parse.
    with httpx2.Client(base_url=sim.url) as http:
        response = http.post(
            "/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
        )
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.json()["usage"]["total_tokens"] > 0
