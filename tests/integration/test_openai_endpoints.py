"""The OpenAI-compatible endpoints, end to end: official client -> Unix socket -> daemon ->
OpenAI plugin -> ``llmspool sim`` over TCP, and the cost the ledger recorded for each call."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import orjson
import pytest
from llmspool.core.calls import Tier, Usage
from llmspool.core.pricing import load_price_table, usd

from tests.support.processes import (
    Daemon,
    Sim,
    openai_client,
    python_command,
    start_daemon,
    start_sim,
)

PRICES = load_price_table()


def expected_cost(model: str, usage: Usage, tier: Tier = Tier.STANDARD) -> float:
    price = PRICES.price("openai", model, tier)
    assert price is not None
    return usd(price.cost(usage))


def ledger_entry(daemon: Daemon, request_id: str) -> dict[str, object]:
    status, body = daemon.get("/v1/ledger?limit=50")
    assert status == 200
    matching = [e for e in body["entries"] if e["request_id"] == request_id]
    assert matching, f"no ledger entry for {request_id}: {body}"
    return matching[0]


def test_chat_completion_is_answered_and_costed(daemon: Daemon) -> None:
    client = openai_client(daemon.socket_path)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say something about spools."}],
        max_tokens=12,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    usage = Usage(completion.usage.prompt_tokens, 0, completion.usage.completion_tokens)
    cost = expected_cost("gpt-4o-mini", usage)
    assert float(raw.headers["x-llmspool-cost-usd"]) == pytest.approx(cost, rel=1e-9)
    assert raw.headers["x-llmspool-tier"] == "standard"

    entry = ledger_entry(daemon, raw.headers["x-llmspool-request-id"])
    assert entry["model"] == "gpt-4o-mini"
    assert entry["input_tokens"] == completion.usage.prompt_tokens
    assert entry["output_tokens"] == completion.usage.completion_tokens
    assert entry["cost_usd"] == pytest.approx(cost, rel=1e-9)
    assert entry["uid"] is not None  # the caller was identified from the socket


def test_streamed_chat_arrives_chunk_by_chunk_without_the_usage_chunk(
    tmp_path: Path,
) -> None:
    # 40 tokens at 50 ms each: a buffering proxy would deliver everything after ~2 s.
    sim = start_sim(tmp_path, '[sim]\nlatency_per_token = "50ms"\n')
    daemon = start_daemon(tmp_path, sim.url)
    try:
        client = openai_client(daemon.socket_path)
        started = time.monotonic()
        arrivals: list[float] = []
        texts: list[str] = []
        with client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "stream please"}],
            max_tokens=40,
            stream=True,
        ) as stream:
            for chunk in stream:
                arrivals.append(time.monotonic() - started)
                assert chunk.choices, "the client did not ask for the usage chunk"
                texts.append(chunk.choices[0].delta.content or "")
        assert len(arrivals) >= 10
        assert arrivals[0] < arrivals[-1] / 3, f"chunks were buffered: {arrivals[:3]}..."
        assert "".join(texts).strip()

        # The daemon asked for usage itself, so the call is still costed exactly.
        status, ledger = daemon.get("/v1/ledger?limit=1")
        assert status == 200
        entry = ledger["entries"][0]
        assert entry["output_tokens"] == 40
        assert entry["usage_estimated"] is False
        assert entry["cost_usd"] > 0
    finally:
        daemon.terminate()
        sim.terminate()


def test_streamed_chat_keeps_the_usage_chunk_a_client_asked_for(daemon: Daemon) -> None:
    client = openai_client(daemon.socket_path)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "count"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_responses_plain_and_streamed(daemon: Daemon) -> None:
    client = openai_client(daemon.socket_path)
    response = client.responses.create(
        model="gpt-5-mini", input="Hello there", max_output_tokens=20
    )
    assert response.output_text
    assert response.usage is not None and response.usage.output_tokens > 0

    events = list(client.responses.create(model="gpt-5-mini", input="Hi", stream=True))
    assert events[-1].type == "response.completed"
    assert any(e.type == "response.output_text.delta" for e in events)

    _status, ledger = daemon.get("/v1/ledger?limit=2")
    assert [e["endpoint"] for e in ledger["entries"]] == ["/v1/responses"] * 2
    assert all(e["cost_usd"] > 0 and not e["usage_estimated"] for e in ledger["entries"])


def test_embeddings_and_models(daemon: Daemon) -> None:
    client = openai_client(daemon.socket_path)
    result = client.embeddings.create(model="text-embedding-3-small", input=["a", "b c"])
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    entry = ledger_entry(daemon, daemon.get("/v1/ledger?limit=1")[1]["entries"][0]["request_id"])
    usage = Usage(result.usage.prompt_tokens, 0, 0)
    assert entry["cost_usd"] == pytest.approx(expected_cost("text-embedding-3-small", usage))

    models = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "gpt-5", "text-embedding-3-large"} <= models
    assert client.models.retrieve("openai/gpt-4o").id == "gpt-4o"


def test_service_tier_is_billed_as_served(daemon: Daemon) -> None:
    client = openai_client(daemon.socket_path)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-5-mini",
        messages=[{"role": "user", "content": "cheap please"}],
        service_tier="flex",
        max_completion_tokens=10,
    )
    completion = raw.parse()
    assert completion.service_tier == "flex"
    assert raw.headers["x-llmspool-tier"] == "flex"
    assert completion.usage is not None
    usage = Usage(completion.usage.prompt_tokens, 0, completion.usage.completion_tokens)
    assert float(raw.headers["x-llmspool-cost-usd"]) == pytest.approx(
        expected_cost("gpt-5-mini", usage, Tier.FLEX)
    )


def test_provider_prefixed_model_is_routed_and_rewritten(daemon: Daemon, sim: Sim) -> None:
    client = openai_client(daemon.socket_path)
    completion = client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.model == "gpt-4o-mini"  # the sim saw the upstream name
    assert sim.stats()["requests"]["by_model"].get("gpt-4o-mini", 0) >= 1


def test_curl_over_the_unix_socket(daemon: Daemon) -> None:
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    result = subprocess.run(
        ["curl", "-sS", "--unix-socket", str(daemon.socket_path),
         "-H", "content-type: application/json", "--data-binary", body.decode(),
         "http://localhost/v1/chat/completions"],
        capture_output=True, check=True, timeout=30,
    )
    answer = orjson.loads(result.stdout)
    assert answer["object"] == "chat.completion"
    health = subprocess.run(
        ["curl", "-sS", "--unix-socket", str(daemon.socket_path), "http://localhost/healthz"],
        capture_output=True, check=True, timeout=30,
    )
    assert orjson.loads(health.stdout)["status"] == "ok"


def test_status_reports_calls_and_spend(daemon: Daemon) -> None:
    client = openai_client(daemon.socket_path)
    for _ in range(3):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    status, report = daemon.get("/v1/status")
    assert status == 200
    assert report["queue"]["admitted"] == 3
    assert report["dispatcher"]["served_by_tier"] == {"standard": 3}
    assert report["ledger"]["calls_today"] == 3
    assert report["ledger"]["spend_today_usd"] > 0

    shown = subprocess.run(
        python_command("status", "--socket", str(daemon.socket_path)),
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    assert "spend today" in shown and "served on standard" in shown
