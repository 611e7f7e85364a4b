"""Every request the OpenAI plugin sends must pass Steady's validation against OpenAI's spec:
chat completions (plain, streamed, with service_tier), responses and embeddings, both as the
plugin sends them directly (with an ``X-Client-Request-Id``) and as the daemon rewrites them on
the way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from llmspool.core.calls import Endpoint, Tier
from llmspool.core.config.sections import ProviderConfig
from llmspool.core.provider import ProviderSettings, UpstreamRequest
from llmspool_openai import OpenAIProvider

from tests.support.processes import openai_client, start_daemon, unix_request

pytestmark = pytest.mark.conformance

CHAT_MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a spool."},
]
REQUESTS: list[tuple[Endpoint, dict[str, Any]]] = [
    (Endpoint.CHAT, {"model": "gpt-4o-mini", "messages": CHAT_MESSAGES}),
    (Endpoint.CHAT, {"model": "gpt-4o-mini", "messages": CHAT_MESSAGES, "max_tokens": 20,
                     "temperature": 0}),
    (Endpoint.CHAT, {"model": "gpt-4o-mini", "messages": CHAT_MESSAGES, "stream": True,
                     "stream_options": {"include_usage": True}}),
    (Endpoint.CHAT, {"model": "gpt-5-mini", "messages": CHAT_MESSAGES, "service_tier": "flex",
                     "max_completion_tokens": 50}),
    (Endpoint.CHAT, {"model": "gpt-5-mini", "messages": CHAT_MESSAGES, "service_tier": "default",
                     "stream": True, "stream_options": {"include_usage": True}}),
    (Endpoint.RESPONSES, {"model": "gpt-5-mini", "input": "Name a spool."}),
    (Endpoint.RESPONSES, {"model": "gpt-5-mini", "input": [{"role": "user", "content": "Hi"}],
                          "stream": True, "service_tier": "flex", "max_output_tokens": 64}),
    (Endpoint.EMBEDDINGS, {"model": "text-embedding-3-small", "input": "spool"}),
    (Endpoint.EMBEDDINGS, {"model": "text-embedding-3-large", "input": ["a", "b"],
                           "encoding_format": "base64", "dimensions": 256}),
]


async def _send_all(base_url: str, requests: list[tuple[Endpoint, dict[str, Any]]]) -> list[
    tuple[int, str | None, str]
]:
    settings = ProviderSettings("openai", ProviderConfig(base_url=base_url), "sk-test")
    results = []
    async with OpenAIProvider(settings) as provider:
        for index, (endpoint, body) in enumerate(requests):
            # With the daemon's request id, as the dispatcher sends them (X-Client-Request-Id).
            request = UpstreamRequest(
                endpoint=endpoint, model=body["model"], body=orjson.dumps(body),
                stream=bool(body.get("stream")), tier=Tier.STANDARD, timeout=30,
                request_id=f"llmspool-conformance-{index}",
            )
            async with provider.send(request) as response:
                await response.read()
                errors = " | ".join(
                    v for k, v in sorted(response.headers.items())
                    if k.startswith("x-steady-error-") and k.endswith("-message")
                )
                results.append(
                    (response.status, response.headers.get("x-steady-request-valid"), errors)
                )
    return results


@pytest.mark.parametrize(("endpoint", "body"), REQUESTS,
                         ids=[f"{e.name.lower()}-{i}" for i, (e, _b) in enumerate(REQUESTS)])
def test_plugin_requests_are_valid(
    steady_url: str, endpoint: Endpoint, body: dict[str, Any]
) -> None:
    [(status, valid, errors)] = anyio.run(_send_all, steady_url, [(endpoint, body)])
    assert valid == "true", errors
    assert status == 200


def test_the_check_catches_an_invalid_request(steady_url: str) -> None:
    # (Not an invalid service_tier: the plugin writes the tier the daemon chose over it.)
    bad = {"model": "gpt-4o-mini", "messages": CHAT_MESSAGES, "reasoning_effort": "warp"}
    [(status, valid, errors)] = anyio.run(_send_all, steady_url, [(Endpoint.CHAT, bad)])
    assert valid == "false" and status == 400
    assert "reasoning_effort" in errors or "allowed values" in errors, errors


def test_the_plugin_writes_the_chosen_tier_over_the_clients(steady_url: str) -> None:
    body = {"model": "gpt-5-mini", "messages": CHAT_MESSAGES, "service_tier": "warp"}
    [(status, valid, _errors)] = anyio.run(_send_all, steady_url, [(Endpoint.CHAT, body)])
    assert (status, valid) == (200, "true")  # sent as "default": the standard tier


def test_control_plane_model_listing_is_valid(steady_url: str) -> None:
    async def list_models() -> list[str]:
        settings = ProviderSettings("openai", ProviderConfig(base_url=steady_url), "sk-test")
        async with OpenAIProvider(settings) as provider:
            return await provider.list_models()

    assert isinstance(anyio.run(list_models), list)


def test_requests_rewritten_by_the_daemon_are_valid(steady_url: str, tmp_path: Path) -> None:
    # Through the daemon, Steady's 400 for an invalid request would reach the client: a 200
    # means the bytes the daemon sent (model prefix stripped, include_usage added) validated.
    daemon = start_daemon(tmp_path, steady_url)
    try:
        client = openai_client(daemon.socket_path)
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=CHAT_MESSAGES)
        client.chat.completions.create(model="gpt-5-mini", messages=CHAT_MESSAGES,
                                       service_tier="flex")
        client.responses.create(model="gpt-5-mini", input="hi")
        client.embeddings.create(model="text-embedding-3-small", input="hi")
        # Streamed requests: Steady answers them with plain JSON, so check the status only.
        for body in (
            {"model": "gpt-4o-mini", "messages": CHAT_MESSAGES, "stream": True},
            {"model": "gpt-5-mini", "input": "hi", "stream": True},
        ):
            path = "/v1/chat/completions" if "messages" in body else "/v1/responses"
            status, answer = unix_request(daemon.socket_path, "POST", path, orjson.dumps(body),
                                          {"content-type": "application/json"})
            assert status == 200, answer
        status, answer = unix_request(
            daemon.socket_path, "POST", "/v1/chat/completions",
            orjson.dumps({"model": "gpt-4o-mini", "messages": "not a list"}),
            {"content-type": "application/json"},
        )
        assert status == 400, "Steady should have refused this one through the daemon"
    finally:
        daemon.terminate()
