"""The Anthropic provider plugin, end to end: a real daemon with an OpenAI provider and an
Anthropic provider, each in front of its own ``llmspool sim`` (one in ``flavor = "anthropic"``),
and the official ``openai`` client on the daemon's Unix socket talking to Claude models.

What a user notices: answers, streams and tool calls in OpenAI's shape; the ledger billing
Anthropic's usage at Anthropic's prices (prompt-cache reads and writes included); Anthropic's
errors as OpenAI's, with overload retried and an account out of credit not; Anthropic's
rate-limit headers pacing the daemon. The batch tier is tested with the OpenAI one in
tests/integration/test_batches.py, parametrised over both.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from llmspool.core.calls import Tier
from llmspool.core.pricing import load_price_table

from tests.support.processes import (
    Daemon,
    Sim,
    openai_client,
    start_daemon,
    start_sim,
    unix_exchange,
)
from tests.support.waiting import wait_for

MODEL = "claude-haiku-4-5"
MESSAGES: list[Any] = [{"role": "system", "content": "Answer briefly."},
                       {"role": "user", "content": "Why is the sky blue?"}]
WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@dataclass
class Stack:
    daemon: Daemon
    openai_sim: Sim
    anthropic_sim: Sim

    def reset(self) -> None:
        for sim in (self.openai_sim, self.anthropic_sim):
            sim.clear_faults()
            sim.request("POST", "/_sim/stats/reset")

    def stop(self) -> None:
        self.daemon.terminate()
        self.openai_sim.terminate()
        self.anthropic_sim.terminate()

    def ledger(self) -> list[dict[str, Any]]:
        with sqlite3.connect(self.daemon.state_dir / "llmspool.sqlite3") as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute(
                "SELECT * FROM ledger_entries ORDER BY id")]

    def new_entries(self, before: int, count: int) -> list[dict[str, Any]]:
        """The ``count`` ledger entries after the first ``before``, once the ledger actor has
        written them (it commits in groups, a moment after the answer)."""
        def written() -> list[dict[str, Any]] | None:
            entries = self.ledger()[before:]
            return entries if len(entries) >= count else None

        return wait_for(written, timeout=10, what=f"{count} new ledger entries")


def start_stack(root: Path, daemon_extra: str = "") -> Stack:
    for name in ("openai", "anthropic", "daemon"):
        (root / name).mkdir()
    openai_sim = start_sim(root / "openai")
    anthropic_sim = start_sim(root / "anthropic", '[sim]\nflavor = "anthropic"\n')
    config = (
        "[providers.openai]\n\n"  # base_url from OPENAI_BASE_URL: the OpenAI simulator
        "[providers.anthropic]\n"
        'plugin = "anthropic"\n'
        f'base_url = "{anthropic_sim.url}"\n'
        'api_key_env = "ANTHROPIC_API_KEY"\n' + daemon_extra
    )
    daemon = start_daemon(root / "daemon", openai_sim.url, config_toml=config,
                          env={"ANTHROPIC_API_KEY": "sk-ant-test"})
    return Stack(daemon, openai_sim, anthropic_sim)


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("anthropic-stack"))
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def stack(shared_stack: Stack) -> Stack:
    shared_stack.reset()
    return shared_stack


def direct_calls(sim: Sim, path: str) -> int:
    calls: int = sim.stats()["requests"]["by_path"].get(path, 0)
    return calls


def test_a_claude_model_answers_in_openai_shape_and_is_billed_at_anthropic_prices(
    stack: Stack,
) -> None:
    client = openai_client(stack.daemon.socket_path)
    before = len(stack.ledger())
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=40)
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    assert direct_calls(stack.anthropic_sim, "/v1/messages") == 1
    assert direct_calls(stack.openai_sim, "/v1/chat/completions") == 0
    [entry] = stack.new_entries(before, 1)
    assert (entry["provider"], entry["model"], entry["tier"]) == ("anthropic", MODEL, "standard")
    price = load_price_table().price("anthropic", MODEL, Tier.STANDARD)
    assert price is not None  # picodollars per token
    assert entry["cost_picodollars"] == (answer.usage.prompt_tokens * price.input
                                         + answer.usage.completion_tokens * price.output)


def test_a_stream_arrives_as_openai_chunks_with_the_whole_text(stack: Stack) -> None:
    client = openai_client(stack.daemon.socket_path)
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30,
                                           temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30,
                                                 temperature=0, stream=True))
    assert chunks and all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text  # the client did not ask for usage: no usage-only chunk reaches it
    assert all(chunk.choices for chunk in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] \
        == [whole.choices[0].finish_reason]


def test_tool_calls_go_both_ways(stack: Stack) -> None:
    client = openai_client(stack.daemon.socket_path)
    asked = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model=MODEL, messages=asked, tools=[WEATHER_TOOL],
                                           tool_choice="required", max_tokens=200)
    [call] = first.choices[0].message.tool_calls or []
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert isinstance(orjson.loads(call.function.arguments)["city"], str)
    follow_up = [*asked, first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]
    second = client.chat.completions.create(model=MODEL, messages=follow_up,
                                            tools=[WEATHER_TOOL], max_tokens=40)
    assert second.choices[0].message.content


def test_an_unknown_parameter_is_an_openai_shaped_400_naming_it(stack: Stack) -> None:
    client = openai_client(stack.daemon.socket_path)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
    assert caught.value.status_code == 400
    assert "n" in caught.value.message
    assert direct_calls(stack.anthropic_sim, "/v1/messages") == 0  # refused before sending


def test_overload_is_retried_and_the_answer_arrives(stack: Stack) -> None:
    stack.anthropic_sim.set_faults({"kind": "status", "status": 529, "count": 1})
    client = openai_client(stack.daemon.socket_path)
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10)
    assert answer.choices[0].message.content
    assert direct_calls(stack.anthropic_sim, "/v1/messages") == 2


def test_rate_limit_headers_reach_the_daemons_limiter(stack: Stack) -> None:
    client = openai_client(stack.daemon.socket_path)
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10)
    status, report, _headers = unix_exchange(stack.daemon.socket_path, "GET", "/v1/status")
    assert status == 200
    limits = report["dispatcher"]["rate_limits"][f"anthropic/{MODEL}"]
    # Learned from the anthropic-ratelimit-* headers, as the plugin reports them.
    assert (limits["rpm_source"], limits["tpm_source"]) == ("learned", "learned")
    assert limits["rpm"] > 0 and limits["tpm"] > 0
