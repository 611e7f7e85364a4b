"""The simulator's request log (``GET /_sim/requests``) as a crash test reads it: every call it
billed, under its ``X-Client-Request-Id``, with the tokens billed, whole or cut; nothing for the
calls it refused; ``since`` and the bound; batch lines by ``custom_id``. And the OpenAI plugin
sending the daemon's request id in that header."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
import openai
import orjson
import pytest
from llmspool.core.calls import Endpoint, Tier
from llmspool.core.config.sections import ProviderConfig
from llmspool.core.errors import ConfigError
from llmspool.core.provider import ProviderSettings, UpstreamRequest
from llmspool.sim.config import SimConfig
from llmspool.sim.request_log import RequestLog
from llmspool_openai.provider import OpenAIProvider, client_request_id_headers

from tests.support.waiting import wait_for

if TYPE_CHECKING:
    from tests.sim.conftest import RunningSim

    StartSim = Callable[..., RunningSim]

CHAT = "/v1/chat/completions"
MODEL = "gpt-4o"
FLEX_MODEL = "gpt-5-mini"
MESSAGES: list[Any] = [{"role": "user", "content": "name a spool"}]
ENTRY_KEYS = {
    "seq",
    "request_id",
    "endpoint",
    "model",
    "tier",
    "stream",
    "input_tokens",
    "output_tokens",
    "complete",
    "batch_id",
    "time",
}


def requests_log(sim: RunningSim, **query: Any) -> dict[str, Any]:
    with sim.http() as http:
        response = http.get("/_sim/requests", params=query)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
    assert set(result) == {"object", "data", "dropped", "has_more"}
    assert result["object"] == "list"
    for entry in result["data"]:
        assert set(entry) == ENTRY_KEYS
    return result


def entries(sim: RunningSim, **query: Any) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = requests_log(sim, **query)["data"]
    return data


def with_id(request_id: str) -> dict[str, Any]:
    return {"extra_headers": {"X-Client-Request-Id": request_id}}


def chat(client: openai.OpenAI, request_id: str | None = None, **extra: Any) -> Any:
    options: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, **extra}
    if request_id is not None:
        options.update(with_id(request_id))
    return client.chat.completions.create(**options)


def test_a_chat_call_is_logged_under_its_client_request_id_with_its_usage(
    sim: RunningSim,
) -> None:
    completion = chat(sim.client(), "llmspool-req-1", max_tokens=7)
    [entry] = entries(sim)
    assert completion.usage is not None
    assert entry["request_id"] == "llmspool-req-1"
    assert entry["endpoint"] == CHAT
    assert entry["model"] == MODEL
    assert entry["tier"] == "standard"
    assert entry["stream"] is False
    assert entry["complete"] is True
    assert entry["batch_id"] is None
    assert entry["input_tokens"] == completion.usage.prompt_tokens
    assert entry["output_tokens"] == completion.usage.completion_tokens == 7
    assert abs(entry["time"] - time.time()) < 60


def test_a_call_without_the_header_is_logged_with_no_id(sim: RunningSim) -> None:
    chat(sim.client())
    [entry] = entries(sim)
    assert entry["request_id"] is None


def test_a_streamed_call_is_logged_with_the_usage_it_reported(sim: RunningSim) -> None:
    chunks = list(
        chat(
            sim.client(),
            "stream-1",
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=9,
        )
    )
    usage = chunks[-1].usage
    [entry] = entries(sim)
    assert entry["request_id"] == "stream-1"
    assert entry["stream"] is True
    assert entry["complete"] is True
    assert entry["input_tokens"] == usage.prompt_tokens
    assert entry["output_tokens"] == usage.completion_tokens == 9


def test_responses_embeddings_and_tiers_are_logged(sim: RunningSim) -> None:
    client = sim.client(strict=False)
    response = client.responses.create(
        model=FLEX_MODEL, input="hi", service_tier="flex", **with_id("resp-1")
    )
    streamed = list(
        client.responses.create(
            model=MODEL, input="hi", stream=True, max_output_tokens=5, **with_id("resp-2")
        )
    )
    embedding = client.embeddings.create(
        model="text-embedding-3-small", input=["a spool", "a queue"], **with_id("emb-1")
    )
    chat(client, "prio-1", service_tier="priority")
    logged = {entry["request_id"]: entry for entry in entries(sim)}
    assert set(logged) == {"resp-1", "resp-2", "emb-1", "prio-1"}
    assert response.usage is not None
    assert logged["resp-1"]["tier"] == "flex"
    assert logged["resp-1"]["endpoint"] == "/v1/responses"
    assert logged["resp-1"]["output_tokens"] == response.usage.output_tokens
    final = streamed[-1].response  # type: ignore[union-attr]
    assert logged["resp-2"]["complete"] is True
    assert logged["resp-2"]["output_tokens"] == final.usage.output_tokens == 5
    assert logged["emb-1"]["tier"] == "standard"
    assert logged["emb-1"]["endpoint"] == "/v1/embeddings"
    assert logged["emb-1"]["input_tokens"] == embedding.usage.prompt_tokens
    assert logged["emb-1"]["output_tokens"] == 0
    assert logged["prio-1"]["tier"] == "priority"
    # Exactly what the stats count as served, and their tokens.
    stats = sim.stats()
    assert sum(stats["requests"]["by_tier"].values()) + 1 == len(logged)  # embeddings: no tier
    assert stats["tokens"] == {
        "input": sum(entry["input_tokens"] for entry in logged.values()),
        "output": sum(entry["output_tokens"] for entry in logged.values()),
    }


def test_a_stream_cut_by_a_fault_is_logged_incomplete_with_the_tokens_sent(
    sim: RunningSim,
) -> None:
    # The role chunk, then four tokens; the fifth never goes out.
    sim.set_faults({"kind": "stream_cut", "after_chunks": 5, "count": 1})
    received: list[Any] = []
    with pytest.raises((httpx2.TransportError, openai.APIConnectionError)):
        received.extend(chat(sim.client(), "cut-1", stream=True, max_tokens=12))
    assert len(received) == 5
    [entry] = entries(sim)
    assert entry["request_id"] == "cut-1"
    assert entry["complete"] is False
    assert entry["output_tokens"] == 4
    assert entry["input_tokens"] > 0


def test_a_reset_midway_is_logged_incomplete(sim: RunningSim) -> None:
    sim.set_faults({"kind": "reset_midway", "count": 2})
    with pytest.raises(openai.APIConnectionError):
        chat(sim.client(), "reset-whole", max_tokens=6)
    with pytest.raises((httpx2.TransportError, openai.APIConnectionError)):
        list(chat(sim.client(), "reset-stream", stream=True, max_tokens=6))
    logged = {entry["request_id"]: entry for entry in entries(sim)}
    # A whole answer was generated before it was cut: all of it is billed. A stream cut in its
    # first event had generated nothing yet.
    assert logged["reset-whole"]["complete"] is False
    assert logged["reset-whole"]["output_tokens"] == 6
    assert logged["reset-stream"]["complete"] is False
    assert logged["reset-stream"]["output_tokens"] == 0


def test_refused_calls_are_not_logged(sim: RunningSim) -> None:
    client = sim.client()
    sim.flex({"unavailable": True})
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client, "flex-refused", model=FLEX_MODEL, service_tier="flex")
    assert caught.value.code == "resource_unavailable"
    sim.flex({"unavailable": None})
    sim.set_faults(
        [
            {"kind": "rate_limit", "count": 1},
            {"kind": "status", "status": 503, "count": 1},
            {"kind": "drop", "count": 1},
        ]
    )
    with pytest.raises(openai.RateLimitError):
        chat(client, "rate-limited")
    with pytest.raises(openai.InternalServerError):
        chat(client, "unavailable")
    with pytest.raises(openai.APIConnectionError):
        chat(client, "dropped")
    with pytest.raises(openai.BadRequestError):
        chat(client, "bad", max_tokens=-1)
    chat(client, "served")
    assert [entry["request_id"] for entry in entries(sim)] == ["served"]


def test_since_returns_only_later_entries_and_limit_pages(sim: RunningSim) -> None:
    client = sim.client()
    for index in range(5):
        chat(client, f"page-{index}")
    everything = entries(sim)
    seqs = [entry["seq"] for entry in everything]
    assert seqs == list(range(seqs[0], seqs[0] + 5))
    later = entries(sim, since=seqs[1])
    assert [entry["request_id"] for entry in later] == ["page-2", "page-3", "page-4"]
    assert entries(sim, since=seqs[-1]) == []
    page = requests_log(sim, since=seqs[0], limit=2)
    assert [entry["request_id"] for entry in page["data"]] == ["page-1", "page-2"]
    assert page["has_more"] is True
    assert requests_log(sim, since=seqs[2], limit=2)["has_more"] is False
    with sim.http() as http:
        for query in ({"since": "-1"}, {"since": "soon"}, {"limit": "0"}):
            response = http.get("/_sim/requests", params=query)
            assert response.status_code == 400, query
            assert response.json()["error"]["param"] in query


def test_reset_empties_the_log_and_seq_goes_on(sim: RunningSim) -> None:
    chat(sim.client(), "before")
    [before] = entries(sim)
    with sim.http() as http:
        http.post("/_sim/stats/reset").raise_for_status()
    assert requests_log(sim) == {"object": "list", "data": [], "dropped": 0, "has_more": False}
    chat(sim.client(), "after")
    [after] = entries(sim, since=before["seq"])
    assert after["seq"] > before["seq"]
    # Reading the log is a control request: the stats do not see it.
    assert sim.stats()["requests"]["total"] == 1


def test_the_bound_keeps_the_newest_and_counts_the_dropped(start_sim: StartSim) -> None:
    running = start_sim("[sim]\nrequest_log_size = 3\n")
    client = running.client()
    for index in range(5):
        chat(client, f"bound-{index}")
    log = requests_log(running)
    assert [entry["request_id"] for entry in log["data"]] == ["bound-2", "bound-3", "bound-4"]
    assert [entry["seq"] for entry in log["data"]] == [3, 4, 5]
    assert log["dropped"] == 2
    # Asking from before the oldest kept entry gives what is left.
    assert [entry["seq"] for entry in entries(running, since=1)] == [3, 4, 5]


def test_a_completed_batch_logs_its_answered_lines_by_custom_id(start_sim: StartSim) -> None:
    running = start_sim('[sim.batch]\nturnaround = "0s"\nerror_custom_ids = ["line-bad"]\n')
    client = running.client()
    lines = [
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": CHAT,
            "body": {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 3 + index},
        }
        for index, custom_id in enumerate(["line-a", "line-b", "line-bad"])
    ]
    content = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    file_id = client.files.create(file=("in.jsonl", content), purpose="batch").id
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    batch = wait_for(
        lambda: (done := client.batches.retrieve(batch.id)).status == "completed" and done,
        every=0.05,
        what="the batch to complete",
    )
    assert batch.output_file_id is not None
    output = [
        orjson.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()
    ]
    usage = {line["custom_id"]: line["response"]["body"]["usage"] for line in output}
    logged = {entry["request_id"]: entry for entry in entries(running)}
    assert set(logged) == set(usage) == {"line-a", "line-b"}
    for custom_id, entry in logged.items():
        assert entry["tier"] == "batch"
        assert entry["complete"] is True
        assert entry["batch_id"] == batch.id
        assert entry["endpoint"] == CHAT
        assert entry["model"] == "gpt-4o-mini"
        assert entry["input_tokens"] == usage[custom_id]["prompt_tokens"]
        assert entry["output_tokens"] == usage[custom_id]["completion_tokens"]


def test_the_log_is_logged_when_read_even_with_no_batch_call_since(start_sim: StartSim) -> None:
    # The batch ends by the clock: reading the log plays it, as any Batch API call would.
    # A turnaround long enough that the first read surely comes before it, even under load.
    running = start_sim('[sim.batch]\nturnaround = "1s"\n')
    client = running.client()
    line = {
        "custom_id": "only",
        "method": "POST",
        "url": CHAT,
        "body": {"model": "gpt-4o-mini", "messages": MESSAGES},
    }
    file_id = client.files.create(file=("in.jsonl", orjson.dumps(line)), purpose="batch").id
    client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    assert entries(running) == []
    # Each read plays the batch's clock: the turnaround must pass before it logs.
    logged = wait_for(lambda: entries(running), every=0.05, what="the batch's line in the log")
    assert [entry["request_id"] for entry in logged] == ["only"]


def test_request_log_unit_bound_zero_keeps_nothing() -> None:
    log = RequestLog(0)
    log.add(
        request_id="x",
        endpoint=CHAT,
        model=MODEL,
        tier="standard",
        stream=False,
        input_tokens=1,
        output_tokens=1,
        complete=True,
    )
    assert len(log) == 0
    assert log.to_json()["dropped"] == 1


# -- the OpenAI plugin sends the daemon's request id ------------------------------------------


def test_client_request_id_header_rules() -> None:
    assert client_request_id_headers("req-1") == {"X-Client-Request-Id": "req-1"}
    assert client_request_id_headers("a" * 512) == {"X-Client-Request-Id": "a" * 512}
    for bad in (None, "", "a" * 513, "réq", "two\r\nlines"):
        assert client_request_id_headers(bad) is None, bad


async def _send_through_plugin(base_url: str, request_ids: list[str | None]) -> None:
    settings = ProviderSettings("openai", ProviderConfig(base_url=base_url), "sk-test")
    async with OpenAIProvider(settings) as provider:
        for index, request_id in enumerate(request_ids):
            stream = index % 2 == 1
            body = {"model": MODEL, "messages": MESSAGES, "stream": stream}
            request = UpstreamRequest(
                endpoint=Endpoint.CHAT,
                model=MODEL,
                body=orjson.dumps(body),
                stream=stream,
                tier=Tier.STANDARD,
                timeout=10,
                request_id=request_id,
            )
            async with provider.send(request) as response:
                assert response.status == 200
                await response.read()


def test_the_openai_plugin_sends_the_request_id_upstream(sim: RunningSim) -> None:
    too_long = "x" * 513
    anyio.run(_send_through_plugin, sim.url, ["daemon-req-1", "daemon-req-2", None, too_long])
    logged = entries(sim)
    assert [entry["request_id"] for entry in logged] == ["daemon-req-1", "daemon-req-2", None, None]
    assert [entry["stream"] for entry in logged] == [False, True, False, True]


def test_request_log_size_is_read_and_checked() -> None:
    assert SimConfig().request_log_size == 100_000
    assert SimConfig.from_table({"request_log_size": 0}).request_log_size == 0
    config = SimConfig.from_table({"request_log_size": 5})
    assert SimConfig.from_table(config.to_table()) == config
    for bad in (-1, "many", True, 10_000_001):
        with pytest.raises(ConfigError) as caught:
            SimConfig.from_table({"request_log_size": bad})
        assert caught.value.key == "sim.request_log_size"
