"""The Anthropic provider against a fake Anthropic on a real socket: it authenticates with
``x-api-key`` and ``anthropic-version``, posts translated params to ``/messages``, hands the
daemon OpenAI-shaped answers, streams, errors and rate-limit headers, refuses what it cannot
send without calling upstream, lists every page of models, and is registered as a plugin."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
import pytest
from aiohttp import web
from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.core.config.sections import ProviderConfig
from llmspool.core.errors import UpstreamError, UpstreamUnreachable
from llmspool.core.plugins import load_provider_specs, provider_config_keys
from llmspool.core.provider import ProviderSettings, UpstreamRequest, provider_capabilities
from llmspool.core.wire import SseMeter, usage_of
from llmspool_anthropic.provider import AnthropicProvider

MESSAGE = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test-1",
    "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 4, "cache_read_input_tokens": 20,
              "cache_creation_input_tokens": 0},
}
HEADERS = {"request-id": "req_abc", "anthropic-ratelimit-requests-limit": "50",
           "anthropic-ratelimit-requests-remaining": "49",
           "anthropic-ratelimit-requests-reset": "2099-01-01T00:00:00Z"}
SSE = b"".join(
    f"event: {event['type']}\ndata: {orjson.dumps(event).decode()}\n\n".encode()
    for event in [
        {"type": "message_start", "message": {**MESSAGE, "content": [],
                                              "usage": {"input_tokens": 10,
                                                        "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "lo"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"output_tokens": 4}},
        {"type": "message_stop"},
    ]
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def fake_anthropic(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


def provider_at(url: str) -> AnthropicProvider:
    config = ProviderConfig(plugin="anthropic", base_url=url,
                            options={"default_max_tokens": 99})
    return AnthropicProvider(ProviderSettings("claude", config, "sk-ant-test"))


def chat(body: dict[str, Any], *, endpoint: Endpoint = Endpoint.CHAT) -> UpstreamRequest:
    return UpstreamRequest(endpoint, "claude-test", orjson.dumps(body), bool(body.get("stream")),
                           Tier.STANDARD, 5.0, request_id="r-1")


HELLO = {"model": "anthropic/claude-test", "messages": [{"role": "user", "content": "Hi"}],
         "service_tier": "default"}


def test_a_chat_completion_goes_out_as_a_message_and_comes_back_openai_shaped() -> None:
    seen: list[tuple[str, dict[str, str], Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, dict(request.headers), await request.json()))
        return web.json_response(MESSAGE, headers=HEADERS)

    async def main() -> tuple[int, dict[str, str], bytes]:
        async with fake_anthropic(handler) as url, provider_at(url) as provider, \
                provider.send(chat(HELLO)) as answer:
            return answer.status, dict(answer.headers), await answer.read()

    status, headers, body = anyio.run(main)
    [(path, sent_headers, params)] = seen
    assert path == "/v1/messages"
    assert sent_headers["x-api-key"] == "sk-ant-test"
    assert sent_headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in sent_headers
    assert params == {"model": "claude-test", "max_tokens": 99,
                      "messages": [{"role": "user", "content": [{"type": "text",
                                                                 "text": "Hi"}]}]}
    assert status == 200
    assert headers["x-request-id"] == "req_abc"
    assert headers["x-ratelimit-limit-requests"] == "50"
    assert headers["x-ratelimit-remaining-requests"] == "49"
    completion = orjson.loads(body)
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == "Hello"
    assert usage_of(completion) == Usage(30, 20, 4, 0, cache_write_tokens=0)


def test_a_stream_comes_back_as_chunks() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for at in range(0, len(SSE), 7):  # cut anywhere
            await response.write(SSE[at:at + 7])
        await response.write_eof()
        return response

    async def main() -> bytes:
        body = {**HELLO, "stream": True, "stream_options": {"include_usage": True}}
        meter = SseMeter()
        out = b""
        async with fake_anthropic(handler) as url, provider_at(url) as provider, \
                provider.send(chat(body)) as answer:
            assert answer.headers["content-type"] == "text/event-stream"
            async for chunk in answer.iter_chunks():
                out += meter.feed(chunk)
        assert meter.usage == Usage(10, 0, 4, 0)
        assert meter.finish_reasons == ["stop"]
        return out + meter.flush()

    out = anyio.run(main)
    assert out.endswith(b"data: [DONE]\n\n")
    contents = [orjson.loads(event[6:])["choices"][0]["delta"].get("content")
                for event in out.split(b"\n\n")[:-2] if b'"delta"' in event]
    assert "".join(c or "" for c in contents) == "Hello"


@pytest.mark.parametrize(
    ("upstream_status", "error", "status", "code"),
    [
        (529, {"type": "overloaded_error", "message": "Overloaded"}, 503, "overloaded"),
        (400, {"type": "invalid_request_error",
               "message": "Your credit balance is too low to access the Anthropic API."},
         429, "credit_balance_exhausted"),
        (429, {"type": "rate_limit_error", "message": "slow down"}, 429, "rate_limit_exceeded"),
    ],
)
def test_error_answers_reach_the_daemon_in_openai_shape(
    upstream_status: int, error: dict[str, str], status: int, code: str
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"type": "error", "error": error}, status=upstream_status,
                                 headers={**HEADERS, "retry-after": "3"})

    async def main() -> tuple[int, dict[str, str], bytes]:
        async with fake_anthropic(handler) as url, provider_at(url) as provider, \
                provider.send(chat({**HELLO, "stream": True})) as answer:
            return answer.status, dict(answer.headers), await answer.read()

    got_status, headers, body = anyio.run(main)
    assert got_status == status and headers["retry-after"] == "3"
    parsed = orjson.loads(body)["error"]
    assert parsed["code"] == code and parsed["message"] == error["message"]


@pytest.mark.parametrize(
    ("body", "endpoint", "param"),
    [
        ({**HELLO, "n": 3}, Endpoint.CHAT, "n"),
        ({"model": "m", "input": "hi"}, Endpoint.RESPONSES, None),
        ({"model": "m", "input": "hi"}, Endpoint.EMBEDDINGS, None),
    ],
)
def test_what_cannot_be_sent_is_refused_without_calling_upstream(
    body: dict[str, Any], endpoint: Endpoint, param: str | None
) -> None:
    calls: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        return web.json_response(MESSAGE)

    async def main() -> tuple[int, bytes]:
        async with fake_anthropic(handler) as url, provider_at(url) as provider, \
                provider.send(chat(body, endpoint=endpoint)) as answer:
            return answer.status, await answer.read()

    status, raw = anyio.run(main)
    error = orjson.loads(raw)["error"]
    assert status == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param
    if param is None:
        assert "'claude'" in error["message"] and endpoint.value in error["message"]
    assert calls == []


def test_models_are_listed_page_after_page() -> None:
    pages = {None: (["claude-a", "claude-b"], True), "claude-b": (["claude-c"], False)}
    queries: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        queries.append(dict(request.query))
        ids, more = pages[request.query.get("after_id")]
        return web.json_response({"data": [{"id": i, "type": "model"} for i in ids],
                                  "has_more": more, "first_id": ids[0], "last_id": ids[-1]})

    async def main() -> list[str]:
        async with fake_anthropic(handler) as url, provider_at(url) as provider:
            return await provider.list_models()

    assert anyio.run(main) == ["claude-a", "claude-b", "claude-c"]
    assert queries == [{"limit": "1000"}, {"limit": "1000", "after_id": "claude-b"}]


def test_a_models_error_is_an_upstream_error_and_no_answer_is_unreachable() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"type": "error", "error": {
            "type": "authentication_error", "message": "invalid x-api-key"}}, status=401)

    async def main() -> None:
        async with fake_anthropic(handler) as url, provider_at(url) as provider:
            with pytest.raises(UpstreamError) as caught:
                await provider.list_models()
            assert caught.value.status == 401 and caught.value.code == "invalid_api_key"
        async with provider_at(url) as gone:  # the server has stopped
            with pytest.raises(UpstreamUnreachable):
                async with gone.send(chat(HELLO)):
                    pass

    anyio.run(main)


def test_the_plugin_is_registered_with_its_keys_and_capabilities() -> None:
    specs = load_provider_specs()
    assert provider_capabilities(specs["anthropic"].factory) == ("chat", "streaming", "batch")
    keys = {key.name: key.default for key in provider_config_keys()["anthropic"]}
    assert keys == {"base_url": "https://api.anthropic.com/v1",
                    "anthropic_version": "2023-06-01", "default_max_tokens": 4096}
