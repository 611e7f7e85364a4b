"""``llmspool sim`` impersonating Anthropic (``[sim] flavor = "anthropic"``), as a client sees it
through the official ``anthropic`` SDK and plain HTTP: the Messages API (answers, checks, tool
use, streaming, prompt caching), Anthropic's errors and rate-limit headers, faults, the model
listing, and the Message Batches API on the simulator's batch clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from jsonschema import Draft202012Validator
from llmspool.sim.config import ANTHROPIC_MODELS, SimConfig

from tests.sim.conftest import RunningSim, launch
from tests.support.waiting import wait_for

MODEL = "claude-sonnet-4-5"
HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
HELLO: list[Any] = [{"role": "user", "content": "Why is the sky blue?"}]
WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
}
TIME_TOOL: dict[str, Any] = {
    "name": "get_time",
    "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def shared_anthropic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSim]:
    running = launch(tmp_path_factory.mktemp("anthropic"), '[sim]\nflavor = "anthropic"\n')
    yield running
    assert running.stop() == 0
    assert "Traceback" not in running.stderr()
    assert "ERROR" not in running.stderr()


@pytest.fixture
def asim(shared_anthropic: RunningSim) -> RunningSim:
    """The Anthropic-flavoured simulator, reset: no faults, stats, limits and batch settings
    back to the configured ones."""
    shared_anthropic.reset()
    with shared_anthropic.http() as http:
        http.post("/_sim/batch", json={"reset": True}).raise_for_status()
    return shared_anthropic


def client(sim: RunningSim) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.root, api_key="sk-ant-test", max_retries=0, timeout=10)


def post(sim: RunningSim, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    with sim.http() as http:
        return http.post(path, json=body, headers=HEADERS if headers is None else headers)


def get(sim: RunningSim, path: str, **params: Any) -> httpx2.Response:
    with sim.http() as http:
        return http.get(path, headers=HEADERS, params=params)


def set_batch(sim: RunningSim, **settings: Any) -> None:
    with sim.http() as http:
        http.post("/_sim/batch", json=settings).raise_for_status()


def events(response: httpx2.Response) -> list[tuple[str, dict[str, Any]]]:
    """The (name, data) of each server-sent event, checking each has both lines."""
    found: list[tuple[str, dict[str, Any]]] = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        name = name_line.removeprefix("event: ")
        data = orjson.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        found.append((name, data))
    return found


# -- messages --------------------------------------------------------------------------------


def test_a_message_has_anthropics_shape_usage_and_headers(asim: RunningSim) -> None:
    raw = client(asim).messages.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=HELLO
    )
    message = raw.parse()
    assert message.id.startswith("msg_")
    assert message.type == "message" and message.role == "assistant"
    assert message.model == MODEL
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert [block.type for block in message.content] == ["text"]
    assert message.usage.output_tokens == 16  # [sim] output_tokens
    assert message.usage.input_tokens > 0
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.service_tier == "standard"
    headers = raw.headers
    assert headers["request-id"].startswith("req_")
    assert not [name for name in headers if name.startswith(("x-ratelimit-", "openai-"))]
    assert "x-request-id" not in headers
    # The same prompt gets the same answer.
    again = client(asim).messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert again.content == message.content
    stats = asim.stats()
    assert stats["requests"]["by_path"] == {"/v1/messages": 2}
    assert stats["requests"]["by_model"] == {MODEL: 2}


def test_max_tokens_and_stop_sequences_end_the_text(asim: RunningSim) -> None:
    sdk = client(asim)
    cut = sdk.messages.create(model=MODEL, max_tokens=5, messages=HELLO)
    assert cut.stop_reason == "max_tokens"
    assert cut.usage.output_tokens == 5
    whole = sdk.messages.create(model=MODEL, max_tokens=1000, messages=HELLO)
    text = whole.content[0].text
    word = text.split()[3]
    stopped = sdk.messages.create(
        model=MODEL, max_tokens=1000, messages=HELLO, stop_sequences=["zzz", word]
    )
    assert stopped.stop_reason == "stop_sequence"
    assert stopped.stop_sequence == word
    kept = stopped.content[0].text
    assert text.startswith(kept) and word not in kept
    assert stopped.usage.output_tokens < whole.usage.output_tokens


def test_count_tokens_counts_the_prompt(asim: RunningSim) -> None:
    sdk = client(asim)
    counted = sdk.messages.count_tokens(model=MODEL, messages=HELLO, system="Be brief.")
    message = sdk.messages.create(model=MODEL, max_tokens=10, messages=HELLO, system="Be brief.")
    assert counted.input_tokens == message.usage.input_tokens


TEXT_BLOCK = {"type": "text", "text": "hi"}
BAD_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"max_tokens": 10, "messages": HELLO}, "model: Field required"),
    ({"model": 3, "max_tokens": 10, "messages": HELLO}, "model: Input should be a valid string"),
    ({"model": MODEL, "messages": HELLO}, "max_tokens: Field required"),
    ({"model": MODEL, "max_tokens": 0, "messages": HELLO}, "max_tokens: Input should be greater"),
    ({"model": MODEL, "max_tokens": "9", "messages": HELLO}, "max_tokens: Input should be a valid"),
    ({"model": MODEL, "max_tokens": 10**6, "messages": HELLO}, "maximum allowed number of output"),
    ({"model": MODEL, "max_tokens": 10}, "messages: Field required"),
    ({"model": MODEL, "max_tokens": 10, "messages": []}, "messages: at least one message"),
    (
        {"model": MODEL, "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]},
        "messages.0.role: Input should be 'user' or 'assistant'",
    ),
    (
        {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": ""}]},
        "messages.0: all messages must have non-empty content",
    ),
    (
        {
            "model": MODEL,
            "max_tokens": 10,
            "messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}],
        },
        "messages.0.content.0.type: Input tag 'video'",
    ),
    (
        {
            "model": MODEL,
            "max_tokens": 10,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/bmp", "data": "AA"},
                        }
                    ],
                }
            ],
        },
        "messages.0.content.0.image.source.base64.media_type",
    ),
    (
        {
            "model": MODEL,
            "max_tokens": 10,
            "messages": [
                {
                    "role": "user",
                    "content": [{**TEXT_BLOCK, "cache_control": {"type": "permanent"}}],
                }
            ],
        },
        "messages.0.content.0.cache_control.type: Input should be 'ephemeral'",
    ),
    (
        {
            "model": MODEL,
            "max_tokens": 10,
            "messages": [
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]}
            ],
        },
        "unexpected `tool_use_id` found in `tool_result` blocks: toolu_1",
    ),
    (
        {
            "model": MODEL,
            "max_tokens": 10,
            "messages": [
                *HELLO,
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}],
                },
                {"role": "user", "content": "and?"},
            ],
        },
        "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1",
    ),
    ({"model": MODEL, "max_tokens": 10, "messages": HELLO, "system": 5}, "system: Input should"),
    (
        {"model": MODEL, "max_tokens": 10, "messages": HELLO, "system": [{"type": "image"}]},
        "system.0.type: Input should be 'text'",
    ),
    (
        {"model": MODEL, "max_tokens": 10, "messages": HELLO, "tools": [{"name": "f"}]},
        "tools.0.custom.input_schema: Field required",
    ),
    (
        {
            "model": MODEL,
            "max_tokens": 10,
            "messages": HELLO,
            "tools": [{"name": "f", "input_schema": {"type": "array"}}],
        },
        "tools.0.custom.input_schema.type: Input should be 'object'",
    ),
    (
        {
            "model": MODEL,
            "max_tokens": 10,
            "messages": HELLO,
            "tools": [{"name": "bad name!", "input_schema": {"type": "object"}}],
        },
        "tools.0.custom.name: String should match pattern",
    ),
    (
        {
            "model": MODEL,
            "max_tokens": 10,
            "messages": HELLO,
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "tool", "name": "nope"},
        },
        "Tool 'nope' not found in 'tools'",
    ),
    (
        {"model": MODEL, "max_tokens": 10, "messages": HELLO, "tool_choice": {"type": "maybe"}},
        "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
    ),
    (
        {"model": MODEL, "max_tokens": 10, "messages": HELLO, "max_token": 10},
        "max_token: Extra inputs are not permitted",
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD_REQUESTS)
def test_bad_requests_are_400_invalid_request_errors(
    asim: RunningSim, body: dict[str, Any], message: str
) -> None:
    response = post(asim, "/v1/messages", body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert message in error["error"]["message"]
    assert error["request_id"] == response.headers["request-id"]


def test_unknown_model_is_404_and_the_sdk_raises_its_errors(asim: RunningSim) -> None:
    sdk = client(asim)
    with pytest.raises(anthropic.NotFoundError) as raised:
        sdk.messages.create(model="claude-nope", max_tokens=10, messages=HELLO)
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model: claude-nope"},
        "request_id": raised.value.response.headers["request-id"],
    }
    with pytest.raises(anthropic.BadRequestError):
        sdk.messages.create(model=MODEL, max_tokens=0, messages=HELLO)
    assert asim.stats()["requests"]["by_status"] == {"400": 1, "404": 1}


def test_requests_need_an_api_key_and_a_version(asim: RunningSim) -> None:
    body = {"model": MODEL, "max_tokens": 10, "messages": HELLO}
    no_key = post(asim, "/v1/messages", body, headers={"anthropic-version": "2023-06-01"})
    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "authentication_error"
    no_version = post(asim, "/v1/messages", body, headers={"x-api-key": "k"})
    assert no_version.status_code == 400
    assert no_version.json()["error"]["message"] == "anthropic-version: header is required"


# -- tools -----------------------------------------------------------------------------------


def test_tool_use_blocks_have_input_valid_against_their_schema(asim: RunningSim) -> None:
    sdk = client(asim)
    message = sdk.messages.create(
        model=MODEL,
        max_tokens=500,
        messages=[{"role": "user", "content": "Weather and time in Paris?"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
    )
    assert message.stop_reason == "tool_use"
    uses = [block for block in message.content if block.type == "tool_use"]
    assert [use.name for use in uses] == ["get_weather", "get_time"]
    assert len({use.id for use in uses}) == 2 and all(u.id.startswith("toolu_") for u in uses)
    Draft202012Validator(WEATHER_TOOL["input_schema"]).validate(uses[0].input)
    Draft202012Validator(TIME_TOOL["input_schema"]).validate(uses[1].input)
    # Answering the calls gets text: auto does not call tools on tool results.
    follow_up = sdk.messages.create(
        model=MODEL,
        max_tokens=500,
        messages=[
            {"role": "user", "content": "Weather and time in Paris?"},
            {"role": "assistant", "content": message.content},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}
                    for use in uses
                ],
            },
        ],
        tools=[WEATHER_TOOL, TIME_TOOL],
    )
    assert follow_up.stop_reason == "end_turn"
    assert [block.type for block in follow_up.content] == ["text"]


def test_tool_choice_forces_one_tool_or_none(asim: RunningSim) -> None:
    sdk = client(asim)
    tools: Any = [WEATHER_TOOL, TIME_TOOL]
    forced = sdk.messages.create(
        model=MODEL,
        max_tokens=500,
        messages=HELLO,
        tools=tools,
        tool_choice={"type": "tool", "name": "get_time"},
    )
    assert [block.name for block in forced.content if block.type == "tool_use"] == ["get_time"]
    single = sdk.messages.create(
        model=MODEL,
        max_tokens=500,
        messages=HELLO,
        tools=tools,
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    assert [block.type for block in single.content] == ["tool_use"]
    none = sdk.messages.create(
        model=MODEL, max_tokens=500, messages=HELLO, tools=tools, tool_choice={"type": "none"}
    )
    assert none.stop_reason == "end_turn"


# -- streaming -------------------------------------------------------------------------------


def test_a_stream_sends_anthropics_events_in_order(asim: RunningSim) -> None:
    body = {"model": MODEL, "max_tokens": 100, "messages": HELLO}
    whole = post(asim, "/v1/messages", body).json()
    with (
        asim.http() as http,
        http.stream(
            "POST", "/v1/messages", json={**body, "stream": True}, headers=HEADERS
        ) as response,
    ):
        response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    found = events(response)
    names = [name for name, _ in found]
    deltas = names.count("content_block_delta")
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = found[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == whole["usage"]["input_tokens"]
    text = "".join(data["delta"]["text"] for name, data in found if name == "content_block_delta")
    assert text == whole["content"][0]["text"]
    assert deltas == whole["usage"]["output_tokens"]
    final = found[-2][1]
    assert final["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert final["usage"]["output_tokens"] == whole["usage"]["output_tokens"]
    assert asim.stats()["streams"]["total"] == 1


def test_a_streamed_tool_call_sends_its_input_as_partial_json(asim: RunningSim) -> None:
    sdk = client(asim)
    with sdk.messages.stream(
        model=MODEL,
        max_tokens=500,
        messages=HELLO,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
    ) as stream:
        partial = "".join(
            event.delta.partial_json
            for event in stream
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta"
        )
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    use = final.content[0]
    assert use.type == "tool_use"
    assert orjson.loads(partial) == use.input
    Draft202012Validator(WEATHER_TOOL["input_schema"]).validate(use.input)


# -- prompt caching --------------------------------------------------------------------------


def test_cache_control_writes_then_reads_the_prefix(asim: RunningSim) -> None:
    sdk = client(asim)
    manual = "You answer from this manual. " + "Section text. " * 400
    system: Any = [{"type": "text", "text": manual, "cache_control": {"type": "ephemeral"}}]
    first = sdk.messages.create(model=MODEL, max_tokens=10, system=system, messages=HELLO)
    prefix = first.usage.cache_creation_input_tokens
    assert prefix is not None and prefix >= len(manual) // 4
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == prefix
    assert 0 < first.usage.input_tokens < 20  # only the tokens after the breakpoint
    other = [{"role": "user", "content": "And why are sunsets red?"}]
    second = sdk.messages.create(model=MODEL, max_tokens=10, system=system, messages=other)
    assert second.usage.cache_read_input_tokens == prefix
    assert second.usage.cache_creation_input_tokens == 0
    # Another model has another cache; an uncached request reports no cache tokens.
    haiku = sdk.messages.create(
        model="claude-haiku-4-5", max_tokens=10, system=system, messages=HELLO
    )
    assert haiku.usage.cache_creation_input_tokens == prefix
    plain = sdk.messages.create(model=MODEL, max_tokens=10, system=manual, messages=HELLO)
    assert plain.usage.cache_read_input_tokens == 0
    assert plain.usage.input_tokens == first.usage.input_tokens + prefix


def test_a_longer_prefix_reads_the_cached_part_and_writes_the_rest(asim: RunningSim) -> None:
    sdk = client(asim)
    tool = {**WEATHER_TOOL, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    system: Any = [
        {"type": "text", "text": "Long rules. " * 200, "cache_control": {"type": "ephemeral"}}
    ]
    first = sdk.messages.create(
        model=MODEL, max_tokens=10, tools=[tool], messages=HELLO, tool_choice={"type": "none"}
    )
    tools_prefix = first.usage.cache_creation_input_tokens
    assert first.usage.cache_creation is not None
    assert first.usage.cache_creation.ephemeral_1h_input_tokens == tools_prefix
    second = sdk.messages.create(
        model=MODEL,
        max_tokens=10,
        tools=[tool],
        system=system,
        messages=HELLO,
        tool_choice={"type": "none"},
    )
    assert second.usage.cache_read_input_tokens == tools_prefix
    assert (second.usage.cache_creation_input_tokens or 0) > 0


# -- errors, faults, rate limits -------------------------------------------------------------


def test_rate_limit_headers_follow_the_limiter_and_429_has_retry_after(asim: RunningSim) -> None:
    asim.ratelimits({"enforce": True, "requests": 2, "tokens": 100_000})
    body = {"model": MODEL, "max_tokens": 10, "messages": HELLO}
    first = post(asim, "/v1/messages", body)
    assert first.status_code == 200
    headers = first.headers
    assert headers["anthropic-ratelimit-requests-limit"] == "2"
    assert headers["anthropic-ratelimit-requests-remaining"] == "1"
    tokens = 100_000 - first.json()["usage"]["input_tokens"] - 10
    for kind in ("tokens", "input-tokens", "output-tokens"):
        assert headers[f"anthropic-ratelimit-{kind}-limit"] == "100000"
        assert headers[f"anthropic-ratelimit-{kind}-remaining"] == str(tokens)
    reset = datetime.fromisoformat(headers["anthropic-ratelimit-requests-reset"])
    assert reset.tzinfo is not None and reset.timestamp() > time.time()
    assert post(asim, "/v1/messages", body).status_code == 200
    refused = post(asim, "/v1/messages", body)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["anthropic-ratelimit-requests-remaining"] == "0"
    with pytest.raises(anthropic.RateLimitError):
        client(asim).messages.create(model=MODEL, max_tokens=10, messages=HELLO)


def test_a_529_fault_is_an_overloaded_error(asim: RunningSim) -> None:
    asim.set_faults({"kind": "status", "status": 529, "count": 1})
    with pytest.raises(anthropic.OverloadedError) as raised:
        client(asim).messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert raised.value.status_code == 529
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": raised.value.response.headers["request-id"],
    }
    # Spent: the next call is answered.
    client(asim).messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert asim.stats()["faults"]["by_kind"] == {"status": 1}


@pytest.mark.parametrize(
    ("rule", "status", "error_type"),
    [
        ({"kind": "status", "status": 500}, 500, "api_error"),
        ({"kind": "status", "status": 401}, 401, "authentication_error"),
        ({"kind": "status", "status": 403}, 403, "permission_error"),
        ({"kind": "status", "status": 413}, 413, "request_too_large"),
        ({"kind": "status", "status": 429}, 429, "rate_limit_error"),
        ({"kind": "rate_limit", "retry_after": "3s"}, 429, "rate_limit_error"),
        ({"kind": "quota"}, 400, "invalid_request_error"),
    ],
)
def test_fault_errors_take_anthropics_shape(
    asim: RunningSim, rule: dict[str, Any], status: int, error_type: str
) -> None:
    asim.set_faults({**rule, "count": 1})
    response = post(asim, "/v1/messages", {"model": MODEL, "max_tokens": 10, "messages": HELLO})
    assert response.status_code == status
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type
    if status == 429:
        assert response.headers.get_list("retry-after") == (
            ["3"] if rule["kind"] == "rate_limit" else ["1"]
        )


def test_a_stream_cut_with_a_status_ends_in_an_error_event(asim: RunningSim) -> None:
    asim.set_faults({"kind": "stream_cut", "after_chunks": 4, "status": 529, "count": 1})
    body = {"model": MODEL, "max_tokens": 100, "messages": HELLO, "stream": True}
    with (
        asim.http() as http,
        http.stream("POST", "/v1/messages", json=body, headers=HEADERS) as response,
    ):
        response.read()
    assert response.status_code == 200
    found = events(response)
    assert [name for name, _ in found][:3] == ["message_start", "content_block_start", "ping"]
    assert len(found) == 5
    name, data = found[-1]
    assert name == "error"
    assert data["error"] == {"type": "overloaded_error", "message": "Overloaded"}


def test_models_are_listed_in_anthropics_shape_and_openai_routes_are_gone(
    asim: RunningSim,
) -> None:
    page = client(asim).models.list()
    assert [model.id for model in page.data] == list(ANTHROPIC_MODELS)
    assert page.data[0].display_name == "Claude Haiku 4.5"
    assert page.data[0].type == "model"
    raw = get(asim, "/v1/models").json()
    assert raw["has_more"] is False
    assert raw["first_id"] == ANTHROPIC_MODELS[0] and raw["last_id"] == ANTHROPIC_MODELS[-1]
    assert client(asim).models.retrieve(MODEL).display_name == "Claude Sonnet 4.5"
    for path in ("/v1/chat/completions", "/v1/batches", "/v1/files", "/v1/embeddings"):
        response = post(asim, path, {})
        assert response.status_code == 404
        assert response.json()["error"] == {"type": "not_found_error", "message": "Not Found"}


def test_the_flavor_defaults_to_claude_models_which_stay_overridable() -> None:
    assert SimConfig.from_table({"flavor": "anthropic"}).models == ANTHROPIC_MODELS
    custom = SimConfig.from_table({"flavor": "anthropic", "models": ["claude-3-haiku"]})
    assert custom.models == ("claude-3-haiku",)


# -- Message Batches -------------------------------------------------------------------------


def batch_request(custom_id: str, content: str = "Hello", **params: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "params": {
            "model": MODEL,
            "max_tokens": 50,
            "messages": [{"role": "user", "content": content}],
            **params,
        },
    }


def wait_ended(sdk: anthropic.Anthropic, batch_id: str, timeout: float = 10.0) -> Any:
    return wait_for(
        lambda: (batch := sdk.messages.batches.retrieve(batch_id)).processing_status == "ended"
        and batch,
        timeout=timeout,
        every=0.05,
        what=f"batch {batch_id} to end",
    )


def results(sdk: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    return {line.custom_id: line.result for line in sdk.messages.batches.results(batch_id)}


def test_a_batch_runs_to_ended_with_succeeded_and_errored_results(asim: RunningSim) -> None:
    set_batch(asim, turnaround="200ms", error_custom_ids=["r2"])
    sdk = client(asim)
    requests: Any = [
        batch_request("intent-a_r1"),
        batch_request("intent-a_r2"),  # error_custom_ids names its part after the last "_"
        batch_request("intent-b_r3", model="claude-nope"),  # bad params: errored, not refused
        batch_request("plain"),
    ]
    created = sdk.messages.batches.create(requests=requests)
    assert created.id.startswith("msgbatch_")
    assert created.type == "message_batch"
    assert created.processing_status == "in_progress"
    assert created.request_counts.processing == 4
    assert created.request_counts.succeeded == 0
    assert created.results_url is None and created.ended_at is None
    assert (created.expires_at - created.created_at).total_seconds() == pytest.approx(86400)
    ended = wait_ended(sdk, created.id)
    counts = ended.request_counts
    assert (counts.processing, counts.succeeded, counts.errored) == (0, 2, 2)
    assert (counts.canceled, counts.expired) == (0, 0)
    assert ended.ended_at is not None and ended.archived_at is None
    assert ended.results_url == f"{asim.root}/v1/messages/batches/{created.id}/results"
    found = results(sdk, created.id)
    assert set(found) == {"intent-a_r1", "intent-a_r2", "intent-b_r3", "plain"}
    succeeded = found["intent-a_r1"]
    assert succeeded.type == "succeeded"
    assert succeeded.message.usage.service_tier == "batch"
    assert succeeded.message.content[0].type == "text"
    assert found["plain"].type == "succeeded"
    server_error = found["intent-a_r2"]
    assert server_error.type == "errored"
    assert server_error.error.error.type == "api_error"
    bad = found["intent-b_r3"]
    assert bad.type == "errored"
    assert bad.error.error.type == "not_found_error"
    assert bad.error.error.message == "model: claude-nope"
    stats = asim.stats()
    batches = stats["batches"]
    assert batches["created"] == 1
    assert batches["intents"] == {"intent-a": 1, "intent-b": 1}
    assert batches["lines_processed"] == 4
    by_path = stats["requests"]["by_path"]
    assert by_path["/v1/messages/batches"] == 1
    assert "/v1/messages" not in by_path  # batch lines are not direct calls
    assert by_path["/v1/messages/batches/{message_batch_id}"] >= 1
    with asim.http() as http:
        log = http.get("/_sim/requests").json()["data"]
    logged = {entry["request_id"]: entry for entry in log}
    assert set(logged) == {"intent-a_r1", "plain"}
    entry = logged["intent-a_r1"]
    assert entry["tier"] == "batch" and entry["batch_id"] == created.id
    assert entry["endpoint"] == "/v1/messages"
    assert entry["output_tokens"] == succeeded.message.usage.output_tokens


def test_results_before_the_end_are_refused(asim: RunningSim) -> None:
    set_batch(asim, turnaround="1h")
    created = client(asim).messages.batches.create(requests=[batch_request("r1")])
    response = get(asim, f"/v1/messages/batches/{created.id}/results")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert get(asim, "/v1/messages/batches/msgbatch_nope").status_code == 404


def test_a_cancelled_batch_ends_with_canceled_results(asim: RunningSim) -> None:
    set_batch(asim, turnaround="1h", cancel_delay="300ms")
    sdk = client(asim)
    created = sdk.messages.batches.create(
        requests=[batch_request("job_r1"), batch_request("job_r2")]
    )
    canceling = sdk.messages.batches.cancel(created.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    assert sdk.messages.batches.cancel(created.id).processing_status == "canceling"
    ended = wait_ended(sdk, created.id)
    assert ended.request_counts.canceled == 2
    assert {result.type for result in results(sdk, created.id).values()} == {"canceled"}
    stats = asim.stats()["batches"]
    assert stats["cancel_requests"] == 2
    with pytest.raises(anthropic.BadRequestError):
        sdk.messages.batches.cancel(created.id)


def test_an_expired_batch_answers_its_first_share_and_expires_the_rest(asim: RunningSim) -> None:
    set_batch(asim, turnaround="1h", expire_after="300ms", expire_partial=0.5)
    sdk = client(asim)
    ids = [f"x_r{n}" for n in range(4)]
    created = sdk.messages.batches.create(requests=[batch_request(i) for i in ids])
    ended = wait_ended(sdk, created.id)
    counts = ended.request_counts
    assert (counts.succeeded, counts.expired) == (2, 2)
    found = results(sdk, created.id)
    assert [found[i].type for i in ids] == ["succeeded", "succeeded", "expired", "expired"]


def test_batches_list_newest_first_with_cursors_and_ended_ones_delete(asim: RunningSim) -> None:
    set_batch(asim, turnaround="0s")
    sdk = client(asim)
    made = [sdk.messages.batches.create(requests=[batch_request(f"p{n}_r1")]).id for n in range(3)]
    newest = list(reversed(made))
    first = get(asim, "/v1/messages/batches", limit=2).json()
    assert [b["id"] for b in first["data"]] == newest[:2]
    assert first["has_more"] is True
    assert (first["first_id"], first["last_id"]) == (newest[0], newest[1])
    # (Batches of earlier tests are older: the shared simulator keeps them.)
    second = get(asim, "/v1/messages/batches", limit=1, after_id=first["last_id"]).json()
    assert [b["id"] for b in second["data"]] == newest[2:]
    everything = get(asim, "/v1/messages/batches", limit=1000).json()
    assert everything["has_more"] is False
    assert get(asim, "/v1/messages/batches", after_id=everything["last_id"]).json() == {
        "data": [],
        "has_more": False,
        "first_id": None,
        "last_id": None,
    }
    back = get(asim, "/v1/messages/batches", limit=2, before_id=newest[2]).json()
    assert [b["id"] for b in back["data"]] == newest[:2]
    # The SDK's auto-pagination walks the same pages.
    listed = [batch.id for batch in sdk.messages.batches.list(limit=1)]
    assert listed[:3] == newest
    wait_ended(sdk, made[0])
    deleted = sdk.messages.batches.delete(made[0])
    assert (deleted.id, deleted.type) == (made[0], "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.batches.retrieve(made[0])
    set_batch(asim, turnaround="1h")
    running = sdk.messages.batches.create(requests=[batch_request("r1")])
    with pytest.raises(anthropic.BadRequestError):
        sdk.messages.batches.delete(running.id)


BAD_BATCHES: list[tuple[Any, str]] = [
    ({}, "requests: Field required"),
    ({"requests": []}, "requests: List should have at least 1 item"),
    ({"requests": [batch_request("has space")]}, "requests.0.custom_id: String should match"),
    ({"requests": [batch_request("x" * 65)]}, "requests.0.custom_id: String should match"),
    ({"requests": [batch_request("a"), batch_request("a")]}, "requests.1.custom_id: Duplicate"),
    ({"requests": [batch_request("a", stream=True)]}, "requests.0.params.stream"),
    ({"requests": [{"custom_id": "a"}]}, "requests.0.params: Field required"),
    ({"requests": [batch_request("a")], "metadata": {}}, "metadata: Extra inputs"),
]


@pytest.mark.parametrize(("body", "message"), BAD_BATCHES)
def test_bad_batches_are_refused(asim: RunningSim, body: Any, message: str) -> None:
    response = post(asim, "/v1/messages/batches", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert message in response.json()["error"]["message"]
    assert asim.stats()["batches"]["created"] == 0


def test_too_many_requests_and_fail_validation_refuse_the_batch(asim: RunningSim) -> None:
    many = {"requests": [{"custom_id": f"r{n}", "params": {}} for n in range(100_001)]}
    response = post(asim, "/v1/messages/batches", many)
    assert response.status_code == 400
    assert "at most 100000 items" in response.json()["error"]["message"]
    set_batch(asim, fail_validation="invalid_request")
    with pytest.raises(anthropic.BadRequestError):
        client(asim).messages.batches.create(requests=[batch_request("r1")])
    assert asim.stats()["batches"]["created"] == 0


def test_help_documents_the_flavor(run_sim: Any) -> None:
    result = run_sim("--help")
    assert result.returncode == 0
    assert "--flavor anthropic" in result.stdout
    assert "{openai,ollama,anthropic}" in result.stdout
