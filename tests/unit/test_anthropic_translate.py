"""The Anthropic plugin's translations, as properties over random conversations and answers:
OpenAI requests -> Anthropic params (roles alternate, system extracted, tool calls and results
paired, text kept); Anthropic messages -> chat completions (the daemon's ``usage_of`` reads
Anthropic's counts back, finish reasons, tool arguments); Anthropic streams cut anywhere ->
OpenAI chunks that say the same, as the daemon's ``SseMeter`` reads them. Plus the error and
rate-limit header mappings, fed to the daemon's own readers."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llmspool.core.calls import Usage
from llmspool.core.errors import InvalidRequest, UpstreamError
from llmspool.core.wire import SseMeter, finish_reasons_of, usage_of
from llmspool.resilience.failures import FailureClass, classify
from llmspool.resilience.limits import RateLimits
from llmspool.resilience.ratelimit_headers import retry_pause
from llmspool_anthropic.answers import FINISH_REASONS, openai_completion, openai_error
from llmspool_anthropic.ratelimits import go_duration, openai_ratelimit_headers
from llmspool_anthropic.stream import ChunkTranslator
from llmspool_anthropic.translate import anthropic_params

# -- strategies -----------------------------------------------------------------------------

texts = st.text(min_size=1, max_size=30)  # unicode: cuts inside characters are exercised
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8,
)
tool_inputs = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
names = st.from_regex(r"[a-z_]{1,12}", fullmatch=True)


@st.composite
def user_messages(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        return {"role": "user", "content": draw(texts)}
    parts: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["text", "text", "data", "https"]))
        if kind == "text":
            parts.append({"type": "text", "text": draw(texts)})
        elif kind == "data":
            parts.append({"type": "image_url",
                          "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}})
        else:
            parts.append({"type": "image_url", "image_url": {"url": "https://x.test/a.png"}})
    return {"role": "user", "content": parts}


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """System messages, then user turns, assistant turns (text and/or tool calls) and the tool
    results answering each tool call; consecutive same-role messages happen too."""
    messages: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 2))):
        role = draw(st.sampled_from(["system", "developer"]))
        messages.append({"role": role, "content": draw(texts)})
    calls = 0
    for _ in range(draw(st.integers(1, 6))):
        step = draw(st.sampled_from(["user", "user", "assistant", "tools"]))
        if step == "user":
            messages.append(draw(user_messages()))
            continue
        content = draw(st.none() | texts)
        tool_calls = []
        if step == "tools" or content is None:
            for _ in range(draw(st.integers(1, 3))):
                calls += 1
                tool_calls.append({
                    "id": f"call_{calls}", "type": "function",
                    "function": {"name": draw(names),
                                 "arguments": orjson.dumps(draw(tool_inputs)).decode()}})
        assistant: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            assistant["tool_calls"] = tool_calls
        messages.append(assistant)
        messages.extend({"role": "tool", "tool_call_id": call["id"], "content": draw(texts)}
                        for call in tool_calls)
    return messages


@st.composite
def anthropic_messages(draw: st.DrawFn) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for index in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            content.append({"type": "text", "text": draw(texts)})
        else:
            content.append({"type": "tool_use", "id": f"toolu_{index}", "name": draw(names),
                            "input": draw(tool_inputs)})
    usage: dict[str, Any] = {"input_tokens": draw(st.integers(0, 10_000)),
                             "output_tokens": draw(st.integers(0, 5_000))}
    for key in ("cache_read_input_tokens", "cache_creation_input_tokens"):
        value = draw(st.none() | st.integers(0, 100_000))
        if value is not None:
            usage[key] = value
    return {
        "id": "msg_" + draw(st.from_regex(r"[A-Za-z0-9]{6}", fullmatch=True)),
        "type": "message", "role": "assistant", "model": "claude-test-1",
        "content": content,
        "stop_reason": draw(st.sampled_from(sorted(FINISH_REASONS))),
        "stop_sequence": None,
        "usage": usage,
    }


def expected_usage(message: dict[str, Any]) -> Usage:
    usage = message["usage"]
    read = usage.get("cache_read_input_tokens", 0)
    write = usage.get("cache_creation_input_tokens", 0)
    return Usage(usage["input_tokens"] + read + write, read, usage["output_tokens"], 0,
                 cache_write_tokens=write)


# -- requests -------------------------------------------------------------------------------


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(conversations())
def test_conversations_translate_to_alternating_turns(messages: list[dict[str, Any]]) -> None:
    params = anthropic_params({"model": "claude-x", "messages": messages},
                              default_max_tokens=77)
    turns = params["messages"]
    assert params["max_tokens"] == 77 and params["model"] == "claude-x"
    assert all(turn["role"] in ("user", "assistant") for turn in turns)
    assert all(a["role"] != b["role"] for a, b in itertools.pairwise(turns))
    # System and developer messages become `system`, in order, and nothing else does.
    system_texts = [m["content"] for m in messages if m["role"] in ("system", "developer")]
    system = params.get("system")
    if not system_texts:
        assert system is None
    elif len(system_texts) == 1:
        assert system == system_texts[0]
    else:
        assert [block["text"] for block in system] == system_texts
    blocks = [(turn["role"], block) for turn in turns for block in turn["content"]]
    # Every tool call is a tool_use with its arguments as input, and its result a tool_result
    # that comes first in its user turn.
    uses = {b["id"]: b for role, b in blocks if b["type"] == "tool_use" and role == "assistant"}
    results = {b["tool_use_id"]: b for role, b in blocks
               if b["type"] == "tool_result" and role == "user"}
    for message in messages:
        for call in message.get("tool_calls") or ():
            assert uses[call["id"]]["name"] == call["function"]["name"]
            assert uses[call["id"]]["input"] == orjson.loads(call["function"]["arguments"])
        if message["role"] == "tool":
            assert results[message["tool_call_id"]]["content"] == message["content"]
    for turn in turns:
        kinds = [block["type"] == "tool_result" for block in turn["content"]]
        assert kinds == sorted(kinds, reverse=True)
    # The text of user and assistant messages is all there, in order.
    said = []
    for message in messages:
        content = message["content"]
        if message["role"] in ("user", "assistant") and isinstance(content, str) and content:
            said.append((message["role"], content))
        elif message["role"] == "user" and isinstance(content, list):
            said += [("user", part["text"]) for part in content if part["type"] == "text"]
    got = [(role, b["text"]) for role, b in blocks if b["type"] == "text"]
    assert got == said


def test_parameters_map_to_anthropics() -> None:
    body = {
        "model": "claude-x", "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 50, "temperature": 0.5, "top_p": 0.9, "stop": "END",
        "stream": True, "stream_options": {"include_usage": True}, "user": "u-1",
        "service_tier": "default", "parallel_tool_calls": False, "seed": 3,
        "tools": [{"type": "function", "function": {
            "name": "get", "description": "gets", "parameters": {"type": "object"}}}],
        "tool_choice": "required",
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object"}}},
    }
    params = anthropic_params(body, default_max_tokens=4096)
    assert params == {
        "model": "claude-x", "messages": [{"role": "user",
                                           "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 50, "temperature": 0.5, "top_p": 0.9, "stop_sequences": ["END"],
        "stream": True, "metadata": {"user_id": "u-1"},
        "tools": [{"name": "get", "description": "gets", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    }
    choices = {"auto": {"type": "auto"}, "none": {"type": "none"},
               "required": {"type": "any"}}
    for choice, expected in choices.items():
        assert anthropic_params({**body, "tool_choice": choice, "parallel_tool_calls": True},
                                default_max_tokens=1)["tool_choice"] == expected
    named = {"type": "function", "function": {"name": "get"}}
    assert anthropic_params({**body, "tool_choice": named}, default_max_tokens=1)[
        "tool_choice"] == {"type": "tool", "name": "get", "disable_parallel_tool_use": True}
    image = anthropic_params({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/i.png"}}]}]},
        default_max_tokens=1)["messages"][0]["content"]
    assert image == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                     "data": "AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/i.png"}}]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"audio": {"voice": "x"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"functions": []}, "functions"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"temperature": 1.5}, "temperature"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
         "messages[0].tool_calls[0].function.arguments"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
    ],
)
def test_what_cannot_be_translated_is_refused_naming_the_parameter(
    extra: dict[str, Any], param: str
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(InvalidRequest) as caught:
        anthropic_params(body, default_max_tokens=1)
    assert caught.value.param == param and caught.value.status == 400
    # Zero penalties and n=1 are what many clients send by default: accepted.
    anthropic_params({"messages": [{"role": "user", "content": "hi"}], "n": 1,
                      "presence_penalty": 0}, default_max_tokens=1)


# -- answers --------------------------------------------------------------------------------


@settings(max_examples=200)
@given(anthropic_messages())
def test_messages_translate_to_chat_completions(message: dict[str, Any]) -> None:
    completion = openai_completion(message, created=1)
    assert usage_of(completion) == expected_usage(message)
    assert finish_reasons_of(completion) == [FINISH_REASONS[message["stop_reason"]]]
    assert completion["id"] == message["id"] and completion["model"] == message["model"]
    reply = completion["choices"][0]["message"]
    text = "".join(b["text"] for b in message["content"] if b["type"] == "text")
    assert reply["content"] == (text or None)
    uses = [b for b in message["content"] if b["type"] == "tool_use"]
    calls = reply.get("tool_calls", [])
    assert [c["id"] for c in calls] == [u["id"] for u in uses]
    assert [c["function"]["name"] for c in calls] == [u["name"] for u in uses]
    assert [orjson.loads(c["function"]["arguments"]) for c in calls] == [u["input"]
                                                                         for u in uses]


def render_sse(message: dict[str, Any], draw: st.DrawFn, *, crlf: bool) -> bytes:
    """``message`` as Anthropic streams it, text and tool input cut into random fragments."""
    events: list[tuple[str, dict[str, Any]]] = []
    usage = message["usage"]
    start_usage = {**usage, "output_tokens": min(1, usage["output_tokens"])}
    events.append(("message_start", {"type": "message_start", "message": {
        **message, "content": [], "stop_reason": None, "usage": start_usage}}))
    events.append(("ping", {"type": "ping"}))
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(("content_block_start", {"type": "content_block_start",
                                                   "index": index,
                                                   "content_block": {"type": "text",
                                                                     "text": ""}}))
            deltas = [{"type": "text_delta", "text": piece}
                      for piece in _pieces(block["text"], draw)]
        else:
            events.append(("content_block_start", {"type": "content_block_start",
                                                   "index": index, "content_block": {
                                                       "type": "tool_use", "id": block["id"],
                                                       "name": block["name"], "input": {}}}))
            deltas = [{"type": "input_json_delta", "partial_json": piece}
                      for piece in _pieces(orjson.dumps(block["input"]).decode(), draw)]
        events += [("content_block_delta", {"type": "content_block_delta", "index": index,
                                             "delta": delta}) for delta in deltas]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": message["stop_reason"],
                                               "stop_sequence": None},
                                     "usage": {"output_tokens": usage["output_tokens"]}}))
    events.append(("message_stop", {"type": "message_stop"}))
    newline = "\r\n" if crlf else "\n"
    return "".join(f"event: {name}{newline}data: {orjson.dumps(data).decode()}{newline}{newline}"
                   for name, data in events).encode()


def _pieces(text: str, draw: st.DrawFn) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=3)))
    bounds = [0, *[c for c in cuts if c < len(text)], len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b]]


def _no_cuts(strategy: st.SearchStrategy[Any]) -> Any:
    return set()


def _cut(raw: bytes, draw: st.DrawFn) -> list[bytes]:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(raw) - 1)), max_size=40)))
    bounds = [0, *cuts, len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]


def _events(raw: bytes) -> list[bytes]:
    return [event[len(b"data: "):] for event in raw.split(b"\n\n") if event]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(anthropic_messages(), st.data())
def test_streams_translate_to_chunks_whatever_the_cuts(message: dict[str, Any],
                                                       data: st.DataObject) -> None:
    raw = render_sse(message, data.draw, crlf=data.draw(st.booleans()))
    translator = ChunkTranslator(include_usage=True, created=1)
    meter = SseMeter()
    out = b""
    for piece in _cut(raw, data.draw):
        out += meter.feed(translator.feed(piece))
    out += meter.feed(translator.flush()) + meter.flush()
    assert translator.finished
    events = _events(out)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == message["id"]
               for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    text = "".join(b["text"] for b in message["content"] if b["type"] == "text")
    assert "".join(d.get("content") or "" for d in deltas) == text
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        for call in delta.get("tool_calls", ()):
            seen = calls.setdefault(call["index"], {"arguments": ""})
            if "id" in call:
                seen["id"], seen["name"] = call["id"], call["function"]["name"]
            seen["arguments"] += call["function"]["arguments"]
    uses = [b for b in message["content"] if b["type"] == "tool_use"]
    assert sorted(calls) == list(range(len(uses)))
    for index, use in enumerate(uses):
        assert calls[index]["id"] == use["id"] and calls[index]["name"] == use["name"]
        assert orjson.loads(calls[index]["arguments"]) == use["input"]
    completion = openai_completion(message, created=1)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == completion["usage"]
    finish = completion["choices"][0]["finish_reason"]
    assert chunks[-2]["choices"][0]["finish_reason"] == finish
    # The daemon's own reader of streams sees the same usage and finish reasons.
    assert meter.usage == usage_of(completion) == expected_usage(message)
    assert meter.finish_reasons == [finish]
    assert meter.response_id == message["id"]


def test_a_stream_without_usage_asked_ends_without_the_usage_chunk() -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
               "content": [{"type": "text", "text": "hi"}], "stop_reason": "max_tokens",
               "usage": {"input_tokens": 3, "output_tokens": 1}}
    raw = render_sse(message, _no_cuts, crlf=False)
    translator = ChunkTranslator(include_usage=False)
    events = _events(translator.feed(raw) + translator.flush())
    assert events[-1] == b"[DONE]"
    assert orjson.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    assert all(b'"usage"' not in event for event in events)


def test_an_error_event_becomes_an_openai_error_event_and_a_cut_stream_says_so() -> None:
    translator = ChunkTranslator(include_usage=True)
    start = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
             b'"model":"m","content":[],"usage":{"input_tokens":1,"output_tokens":0}}}\n\n')
    error = (b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
             b'"message":"Overloaded"}}\n\n')
    events = _events(translator.feed(start + error) + translator.flush())
    assert orjson.loads(events[-1]) == {"error": {"message": "Overloaded", "type": "server_error",
                                                  "param": None, "code": "overloaded"}}
    assert translator.finished and b"[DONE]" not in events
    cut = ChunkTranslator(include_usage=True)
    events = _events(cut.feed(start) + cut.flush())
    assert orjson.loads(events[-1])["error"]["code"] == "stream_incomplete"


# -- errors ---------------------------------------------------------------------------------


def _anthropic_error(kind: str, message: str, **extra: Any) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message, **extra},
                         "request_id": "req_1"})


@pytest.mark.parametrize(
    ("status", "kind", "message", "expected_status", "expected_class"),
    [
        (400, "invalid_request_error", "messages: field required", 400, FailureClass.PERMANENT),
        (401, "authentication_error", "invalid x-api-key", 401, FailureClass.PERMANENT),
        (403, "permission_error", "no access", 403, FailureClass.PERMANENT),
        (404, "not_found_error", "model: claude-nope", 404, FailureClass.PERMANENT),
        (413, "request_too_large", "Request exceeds the maximum size", 413,
         FailureClass.PERMANENT),
        (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate "
         "limit", 429, FailureClass.RATE_LIMITED),
        (500, "api_error", "Internal server error", 500, FailureClass.TRANSIENT),
        (529, "overloaded_error", "Overloaded", 503, FailureClass.TRANSIENT),
        (402, "billing_error", "There is an issue with your payment method", 429,
         FailureClass.PERMANENT),
        (400, "invalid_request_error", "Your credit balance is too low to access the Anthropic "
         "API. Please go to Plans & Billing to upgrade or purchase credits.", 429,
         FailureClass.PERMANENT),
    ],
)
def test_anthropic_errors_reach_the_daemon_as_openai_errors_it_classifies(
    status: int, kind: str, message: str, expected_status: int, expected_class: FailureClass
) -> None:
    out_status, body = openai_error(status, _anthropic_error(kind, message))
    assert out_status == expected_status
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["message"] == message and body["error"]["param"] is None
    error = UpstreamError("claude", out_status, orjson.dumps(body))
    assert error.message == message
    assert classify(error).kind is expected_class


def test_quota_errors_carry_the_codes_the_daemon_treats_as_quota() -> None:
    _, credit = openai_error(400, _anthropic_error("invalid_request_error",
                                                   "Your credit balance is too low"))
    assert credit["error"]["code"] == "credit_balance_exhausted"
    status, spend = openai_error(429, _anthropic_error(
        "rate_limit_error", "You have reached your monthly limit",
        details={"error_code": "enforced_spend_limit_reached"}))
    assert (status, spend["error"]["code"]) == (429, "organization_spend_limit_exceeded")
    _, long_prompt = openai_error(400, _anthropic_error(
        "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"))
    assert long_prompt["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b"", b'{"error": "x"}',
                                  b"[1]", {"type": "error"}])
def test_an_unreadable_error_body_is_a_502_saying_what_came(body: Any) -> None:
    status, out = openai_error(503, body)
    assert status == 502 and out["error"]["code"] == "upstream_shape"
    assert "HTTP 503" in out["error"]["message"]
    assert classify(UpstreamError("claude", status, orjson.dumps(out))).kind \
        is FailureClass.TRANSIENT


# -- rate-limit headers ---------------------------------------------------------------------

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def _at(seconds: float) -> str:
    return (NOW + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def test_go_durations() -> None:
    assert [go_duration(s) for s in (0, 0.0004, 12.5, 63, 3605.25, -4)] == [
        "0s", "0s", "12.5s", "1m3s", "1h0m5.25s", "0s"]


def test_rate_limit_headers_map_to_the_ones_the_limiter_reads() -> None:
    anthropic = {
        "Anthropic-RateLimit-Requests-Limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": _at(12.5),
        "anthropic-ratelimit-tokens-limit": "90000",
        "anthropic-ratelimit-tokens-remaining": "80000",
        "anthropic-ratelimit-tokens-reset": _at(63),
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "1",
        "anthropic-ratelimit-input-tokens-reset": _at(1),
        "request-id": "req_1",
    }
    mapped = openai_ratelimit_headers(anthropic, now=NOW.timestamp())
    assert mapped == {
        "x-ratelimit-limit-requests": "50", "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "12.5s",
        "x-ratelimit-limit-tokens": "90000", "x-ratelimit-remaining-tokens": "80000",
        "x-ratelimit-reset-tokens": "1m3s",
    }
    # A 429 without retry-after: the limiter waits for the empty bucket's reset.
    assert retry_pause(mapped) == pytest.approx(12.5)
    with_retry = openai_ratelimit_headers({**anthropic, "retry-after": "7"},
                                          now=NOW.timestamp())
    assert retry_pause(with_retry) == 7.0
    # The limiter learns the limits from them.
    limits = RateLimits({}, clock=lambda: 0.0)
    limits.observe("claude", "m", mapped)
    state = limits.snapshot()["claude/m"]
    assert (state["rpm"], state["tpm"]) == (50, 90000)
    assert state["requests_available"] == 0


def test_the_input_tokens_family_stands_in_when_alone() -> None:
    mapped = openai_ratelimit_headers({
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-input-tokens-reset": "not a time",
    }, now=NOW.timestamp())
    assert mapped == {"x-ratelimit-limit-tokens": "40000",
                      "x-ratelimit-remaining-tokens": "39000"}
