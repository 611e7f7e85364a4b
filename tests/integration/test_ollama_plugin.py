"""The Ollama provider plugin, end to end: a real daemon with an OpenAI provider and an Ollama
provider, each in front of its own ``llmspool sim`` (one in ``flavor = "ollama"``), and the
official ``openai`` client on the daemon's Unix socket. Then the provider object itself, against
the simulator and against a scripted HTTP server, for what the daemon cannot show: connection
reuse, the dropped ``service_tier``, the error mapping, unreachable and timed-out upstreams.

The Ollama models are priced at zero in the test's price table: a local model costs nothing per
token, and that is a known price, not an unknown one (``[budgets] unknown_model = "ceiling"``
would bill each call at the ceiling instead).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import openai
import orjson
import pytest
from aiohttp import web
from llmspool.core.calls import Endpoint, Tier
from llmspool.core.config.sections import ProviderConfig
from llmspool.core.errors import BadUpstreamAnswer, UpstreamError, UpstreamUnreachable
from llmspool.core.provider import Provider, ProviderSettings, UpstreamRequest
from llmspool_ollama import OllamaProvider
from llmspool_ollama.provider import openai_base_url
from llmspool_openai import OpenAIProvider

from tests.support.processes import (
    Daemon,
    Sim,
    openai_client,
    start_daemon,
    start_sim,
)

MESSAGES: list[Any] = [{"role": "user", "content": "Why is the sky blue?"}]
OLLAMA_PRICES = """
# Local models: no per-token cost.
[ollama."llama3.2".standard]
input = 0
output = 0

[ollama."mistral".standard]
input = 0
output = 0

[ollama."nomic-embed-text".standard]
input = 0
"""


@dataclass
class Stack:
    daemon: Daemon
    openai_sim: Sim
    ollama_sim: Sim

    def reset(self) -> None:
        for sim in (self.openai_sim, self.ollama_sim):
            sim.clear_faults()
            sim.request("POST", "/_sim/stats/reset")

    def stop(self) -> None:
        self.daemon.terminate()
        self.openai_sim.terminate()
        self.ollama_sim.terminate()


def start_stack(root: Path) -> Stack:
    """Two simulators (OpenAI, Ollama) and a daemon with a provider for each."""
    for name in ("openai", "ollama", "daemon"):
        (root / name).mkdir()
    openai_sim = start_sim(root / "openai")
    ollama_sim = start_sim(root / "ollama", '[sim]\nflavor = "ollama"\n')
    pricing = root / "pricing.toml"
    bundled = resources.files("llmspool").joinpath("defaults/pricing.toml").read_text()
    pricing.write_text(bundled + OLLAMA_PRICES)
    config = (
        f'[pricing]\nfile = "{pricing}"\n\n'
        "[providers.openai]\n\n"  # base_url from OPENAI_BASE_URL: the OpenAI simulator
        "[providers.ollama]\n"
        'plugin = "ollama"\n'
        # Ollama's usual address, without /v1 (as its docs give it): the plugin adds /v1.
        f'base_url = "{ollama_sim.base}"\n'
        'api_key_env = ""\n'
        'models = ["llama3.2", "mistral", "nomic-embed-text"]\n'
    )
    daemon = start_daemon(root / "daemon", openai_sim.url, config_toml=config)
    return Stack(daemon, openai_sim, ollama_sim)


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("ollama-stack"))
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def stack(shared_stack: Stack) -> Stack:
    shared_stack.reset()
    return shared_stack


def requests_by_model(sim: Sim) -> dict[str, int]:
    result: dict[str, int] = sim.stats()["requests"]["by_model"]
    return result


# -- Through the daemon --------------------------------------------------------------------------


def test_prefixed_and_plain_names_are_answered_by_ollama_at_no_cost(stack: Stack) -> None:
    client = openai_client(stack.daemon.socket_path)
    for model in ("ollama/llama3.2", "llama3.2"):
        raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
        completion = raw.parse()
        assert completion.system_fingerprint == "fp_ollama"
        assert completion.model == "llama3.2"
        assert completion.choices[0].message.content
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 16
        assert float(raw.headers["x-llmspool-cost-usd"]) == 0
    assert requests_by_model(stack.ollama_sim) == {"llama3.2": 2}
    assert requests_by_model(stack.openai_sim) == {}


def test_openai_models_still_go_to_openai(stack: Stack) -> None:
    client = openai_client(stack.daemon.socket_path)
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.service_tier == "default"
    assert completion.system_fingerprint != "fp_ollama"
    assert requests_by_model(stack.openai_sim) == {"gpt-4o-mini": 1}
    assert requests_by_model(stack.ollama_sim) == {}


def test_streamed_chat_through_ollama(stack: Stack) -> None:
    client = openai_client(stack.daemon.socket_path)
    stream = client.chat.completions.create(
        model="ollama/llama3.2",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text
    assert {chunk.system_fingerprint for chunk in chunks} == {"fp_ollama"}
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == 16
    stats = stack.ollama_sim.stats()
    assert stats["streams"]["total"] == 1
    assert stats["requests"]["by_model"] == {"llama3.2": 1}


def test_embeddings_through_ollama(stack: Stack) -> None:
    client = openai_client(stack.daemon.socket_path)
    answer = client.embeddings.create(
        model="ollama/nomic-embed-text", input=["spool", "printer"], encoding_format="float"
    )
    assert [len(item.embedding) for item in answer.data] == [768, 768]
    assert answer.usage.prompt_tokens > 0


def test_model_ollama_has_not_pulled_is_an_openai_shaped_404(stack: Stack) -> None:
    client = openai_client(stack.daemon.socket_path)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="ollama/mistral", messages=MESSAGES)
    error = caught.value
    assert error.status_code == 404
    assert error.body == {
        "message": 'model "mistral" not found, try pulling it first',
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
    assert "try pulling it first" in error.message
    # It did reach Ollama, which said so in its own words.
    assert stack.ollama_sim.stats()["requests"]["by_status"] == {"404": 1}


def test_busy_ollama_is_a_503_server_is_overloaded(tmp_path: Path) -> None:
    # Its own stack: whatever the daemon does about a busy upstream (retries, a breaker)
    # stays out of the other tests. Ten faults: enough to outlast any retries.
    stack = start_stack(tmp_path)
    try:
        stack.ollama_sim.set_faults({"kind": "status", "status": 503, "count": 10})
        client = openai_client(stack.daemon.socket_path)
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="ollama/llama3.2", messages=MESSAGES)
        error = caught.value
        assert error.status_code == 503
        assert error.code == "server_is_overloaded"
        assert error.type == "server_error"
        assert "server busy, please try again" in error.message
    finally:
        stack.stop()


# -- The provider itself -------------------------------------------------------------------------


def settings(base_url: str, name: str = "ollama", **config: Any) -> ProviderSettings:
    plugin = "openai" if name == "openai" else "ollama"
    return ProviderSettings(
        name, ProviderConfig(plugin=plugin, base_url=base_url, api_key_env="", **config), ""
    )


def chat_request(
    body: dict[str, Any] | bytes | None = None, timeout: float = 10
) -> UpstreamRequest:
    if body is None:
        body = {"model": "llama3.2", "messages": MESSAGES}
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return UpstreamRequest(
        endpoint=Endpoint.CHAT, model="llama3.2", body=raw, stream=False, tier=Tier.STANDARD,
        timeout=timeout,
    )  # fmt: skip


async def sequential_calls(provider: Any, count: int, model: str) -> dict[str, int]:
    request = chat_request({"model": model, "messages": MESSAGES})
    async with provider:
        for _ in range(count):
            async with provider.send(request) as response:
                assert response.status == 200
                assert orjson.loads(await response.read())["choices"]
        stats: dict[str, int] = provider.connection_stats()
        return stats


def test_ollama_provider_reuses_its_connections(shared_stack: Stack) -> None:
    provider = OllamaProvider(settings(shared_stack.ollama_sim.url))
    assert isinstance(provider, Provider)
    assert provider.connection_stats() == {"requests": 0, "reused": 0}
    stats = anyio.run(sequential_calls, provider, 20, "llama3.2")
    assert stats["requests"] == 20
    assert stats["reused"] >= 19


def test_openai_provider_counts_reuse_too(shared_stack: Stack) -> None:
    provider = OpenAIProvider(settings(shared_stack.openai_sim.url, name="openai"))
    stats = anyio.run(sequential_calls, provider, 20, "gpt-4o-mini")
    assert stats["requests"] == 20
    assert stats["reused"] >= 19


def test_list_models_reads_the_openai_list(shared_stack: Stack) -> None:
    async def run() -> list[str]:
        async with OllamaProvider(settings(shared_stack.ollama_sim.url)) as provider:
            return await provider.list_models()

    assert anyio.run(run) == ["llama3.2", "nomic-embed-text"]


@dataclass
class Scripted:
    """A scripted upstream on 127.0.0.1: answers what ``answer`` says, records what it got."""

    url: str = ""
    answer: Callable[[web.Request], web.StreamResponse] = field(
        default=lambda _request: web.json_response({"choices": [{"index": 0}]})
    )
    delay: float = 0.0
    received: list[bytes] = field(default_factory=list)


@asynccontextmanager
async def scripted_upstream() -> AsyncIterator[Scripted]:
    scripted = Scripted()

    async def handle(request: web.Request) -> web.StreamResponse:
        scripted.received.append(await request.read())
        if scripted.delay:
            await anyio.sleep(scripted.delay)
        return scripted.answer(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    scripted.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield scripted
    finally:
        await runner.cleanup()


def test_service_tier_is_dropped_and_other_bodies_go_out_untouched() -> None:
    with_tier = {"model": "llama3.2", "messages": MESSAGES, "service_tier": "flex", "seed": 7}
    # "service_tier" inside a message is the user's text, not a setting.
    quoted = b'{"model":"llama3.2","messages":[{"role":"user","content":"\\"service_tier\\""}]}'
    plain = b'{"model": "llama3.2",  "messages": []}'  # spacing kept: not re-encoded

    async def run() -> list[bytes]:
        async with scripted_upstream() as upstream, OllamaProvider(settings(upstream.url)) as p:
            for body in (with_tier, quoted, plain):
                async with p.send(chat_request(body)) as response:
                    assert response.status == 200
            return upstream.received

    sent_with_tier, sent_quoted, sent_plain = anyio.run(run)
    assert orjson.loads(sent_with_tier) == {"model": "llama3.2", "messages": MESSAGES, "seed": 7}
    assert sent_quoted == quoted
    assert sent_plain == plain


LONG_TEXT = "x" * 2000


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected"),
    [
        (404, {"error": 'model "qwen3" not found, try pulling it first'}, "application/json",
         ('model "qwen3" not found, try pulling it first', "invalid_request_error",
          "model_not_found")),
        (400, {"error": "invalid message format"}, "application/json",
         ("invalid message format", "invalid_request_error", None)),
        (503, {"error": "server busy, please try again.  maximum pending requests exceeded"},
         "application/json",
         ("server busy, please try again.  maximum pending requests exceeded", "server_error",
          "server_is_overloaded")),
        (500, {"error": "llama runner process has terminated"}, "application/json",
         ("llama runner process has terminated", "server_error", None)),
        (404, "404 page not found", "text/plain",
         ("404 page not found", "invalid_request_error", "model_not_found")),
        (401, "Unauthorized", "text/plain", ("Unauthorized", "upstream_error", None)),
        (502, LONG_TEXT, "text/html", ("x" * 500, "upstream_error", None)),
    ],
)  # fmt: skip
def test_ollama_errors_read_in_openai_shape(
    status: int, body: Any, content_type: str, expected: tuple[str, str, str | None]
) -> None:
    raw = body.encode() if isinstance(body, str) else orjson.dumps(body)

    async def run() -> bytes:
        async with scripted_upstream() as upstream, OllamaProvider(settings(upstream.url)) as p:
            upstream.answer = lambda _request: web.Response(
                status=status, body=raw, content_type=content_type
            )
            async with p.send(chat_request()) as response:
                assert response.status == status
                return await response.read()

    message, error_type, code = expected
    assert orjson.loads(anyio.run(run)) == {
        "error": {"message": message, "type": error_type, "param": None, "code": code}
    }


def test_openai_shaped_errors_pass_through_unchanged() -> None:
    raw = orjson.dumps({"error": {"message": "no", "type": "x", "param": "model", "code": "y"}})

    async def run() -> bytes:
        async with scripted_upstream() as upstream, OllamaProvider(settings(upstream.url)) as p:
            upstream.answer = lambda _request: web.Response(
                status=404, body=raw, content_type="application/json"
            )
            async with p.send(chat_request()) as response:
                return await response.read()

    assert anyio.run(run) == raw


def test_list_models_errors() -> None:
    async def run(answer: web.StreamResponse) -> BaseException:
        async with scripted_upstream() as upstream, OllamaProvider(settings(upstream.url)) as p:
            upstream.answer = lambda _request: answer
            try:
                await p.list_models()
            except (UpstreamError, BadUpstreamAnswer) as exc:
                return exc
        raise AssertionError("list_models did not fail")

    busy = anyio.run(run, web.json_response({"error": "server busy"}, status=503))
    assert isinstance(busy, UpstreamError)
    assert (busy.status, busy.code, busy.message) == (503, "server_is_overloaded", "server busy")
    garbage = anyio.run(run, web.Response(text="<html>hello</html>"))
    assert isinstance(garbage, BadUpstreamAnswer)
    assert garbage.code == "upstream_shape"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_no_ollama_listening_is_unreachable() -> None:
    async def run() -> UpstreamUnreachable:
        url = f"http://127.0.0.1:{closed_port()}/v1"
        async with OllamaProvider(settings(url)) as provider:
            with pytest.raises(UpstreamUnreachable) as caught:
                async with provider.send(chat_request()):
                    pass
            with pytest.raises(UpstreamUnreachable):
                await provider.list_models()
            assert provider.connection_stats() == {"requests": 0, "reused": 0}
            return caught.value

    error = anyio.run(run)
    assert (error.status, error.code) == (502, "upstream_unreachable")
    assert "ollama serve" in error.message


@pytest.mark.parametrize(("given", "used"), [
    ("http://127.0.0.1:11434", "http://127.0.0.1:11434/v1"),
    ("http://127.0.0.1:11434/", "http://127.0.0.1:11434/v1"),
    ("http://127.0.0.1:11434/v1/", "http://127.0.0.1:11434/v1"),
    ("http://gpu-box:8080/ollama/v1", "http://gpu-box:8080/ollama/v1"),
])
def test_a_base_url_without_a_path_means_the_openai_compatible_api(given: str,
                                                                   used: str) -> None:
    assert openai_base_url(given) == used
