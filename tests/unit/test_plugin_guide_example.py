"""The complete example provider in docs/plugins.md works as the guide says: its code block,
extracted from the page and run as a module, registers through ``load_provider_specs``, reports
the capabilities the guide claims, declares its key, and sends calls (an answer, an error answer
with its headers, the model list, an unreachable upstream) to a local aiohttp server."""

from __future__ import annotations

import re
import socket
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from aiohttp import web
from llmspool.core.calls import Endpoint, Tier
from llmspool.core.config.sections import ProviderConfig
from llmspool.core.errors import UpstreamUnreachable
from llmspool.core.plugins import load_provider_specs
from llmspool.core.provider import (
    BatchProvider,
    Provider,
    ProviderSettings,
    UpstreamRequest,
    provider_capabilities,
)

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
MARKER = "# myprovider.py: a complete provider plugin"
CHAT = {"object": "chat.completion", "id": "chatcmpl-1", "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "hello"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def example_module() -> types.ModuleType:
    """The guide's example, run as a module of its own."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    [source] = [block for block in blocks if block.startswith(MARKER)]
    module = types.ModuleType("guide_example")
    exec(compile(source, str(GUIDE), "exec"), module.__dict__)  # our own docs, run on purpose
    return module


def test_the_example_registers_and_reports_its_capabilities() -> None:
    module = example_module()
    specs = load_provider_specs(extra_plugins=[module])
    spec = specs["forward"]
    assert spec.factory is module.ForwardProvider
    assert [key.name for key in spec.keys] == ["user_agent"]
    assert spec.package is None  # not installed: a test's plugin
    # Chat and embeddings, streamed answers, no tier beyond standard, no Batch API.
    assert provider_capabilities(spec.factory) == ("chat", "embeddings", "streaming")
    # The built-in plugins still load beside it.
    assert {"openai", "ollama"} <= set(specs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_the_example_sends_calls_through_a_local_server() -> None:
    module = example_module()
    factory = load_provider_specs(extra_plugins=[module])["forward"].factory
    seen: list[tuple[str, Mapping[str, str], bytes]] = []

    async def upstream(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append((request.path, request.headers.copy(), body))
        if request.path == "/v1/models":
            return web.json_response({"object": "list", "data": [{"id": "m"}, {"id": "e"}]})
        if orjson.loads(body).get("model") == "busy":
            return web.json_response(
                {"error": {"message": "slow down", "type": "requests",
                           "param": None, "code": "rate_limit_exceeded"}},
                status=429,
                headers={"retry-after": "2", "x-ratelimit-remaining-requests": "0"})
        return web.json_response(CHAT, headers={"x-ratelimit-limit-requests": "500"})

    results: dict[str, Any] = {}

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", upstream)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        try:
            config = ProviderConfig(plugin="forward", base_url=url,
                                    options={"user_agent": "guide-test/1"})
            provider = factory(ProviderSettings("mine", config, "sk-test"))
            assert isinstance(provider, Provider)
            assert not isinstance(provider, BatchProvider)
            async with provider:
                body = orjson.dumps({"model": "m", "messages": [{"role": "user",
                                                                  "content": "hi"}]})
                request = UpstreamRequest(Endpoint.CHAT, "m", body, False, Tier.STANDARD, 5.0,
                                          request_id="req-1")
                async with provider.send(request) as answer:
                    results["status"] = answer.status
                    results["limit"] = answer.headers.get("x-ratelimit-limit-requests")
                    results["answer"] = orjson.loads(await answer.read())
                busy = UpstreamRequest(Endpoint.CHAT, "busy",
                                       orjson.dumps({"model": "busy", "messages": []}),
                                       False, Tier.STANDARD, 5.0)
                async with provider.send(busy) as answer:
                    results["busy"] = (answer.status, answer.headers.get("retry-after"),
                                       orjson.loads(await answer.read())["error"]["code"])
                results["models"] = await provider.list_models()
        finally:
            await runner.cleanup()

        # Nothing listens on this port: no answer becomes UpstreamUnreachable.
        config = ProviderConfig(plugin="forward", base_url=f"http://127.0.0.1:{free_port()}/v1")
        async with factory(ProviderSettings("gone", config, "")) as gone:
            request = UpstreamRequest(Endpoint.CHAT, "m", b"{}", False, Tier.STANDARD, 5.0)
            with pytest.raises(UpstreamUnreachable) as caught:
                async with gone.send(request):
                    pass
            results["unreachable"] = (caught.value.status, caught.value.code)

    anyio.run(main)
    assert results["status"] == 200
    assert results["answer"] == CHAT
    assert results["limit"] == "500"
    assert results["busy"] == (429, "2", "rate_limit_exceeded")
    assert results["models"] == ["m", "e"]
    assert results["unreachable"] == (502, "upstream_unreachable")
    path, headers, body = seen[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert headers["User-Agent"] == "guide-test/1"  # the declared key, read with option()
    assert orjson.loads(body)["messages"][0]["content"] == "hi"
    assert seen[-1][0] == "/v1/models"
