"""Near-duplicate matching through the real daemon and the simulator's semantic embeddings:
a request worded alike is answered from the cache or shares a call in flight, one of another
shape or meaning is not, and the embeddings it costs are billed and taken off the savings."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.processes import (
    UNLIMITED_SIM,
    Daemon,
    Sim,
    start_daemon,
    start_sim,
    unix_exchange,
)
from tests.support.waiting import wait_for

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
SIMILAR = "[operations.faq]\nsimilar = true\n"


def ask(daemon: Daemon, question: str, operation: str = "faq",
        **extra: Any) -> tuple[int, Any, dict[str, str]]:
    body = {"model": "gpt-4o-mini", "temperature": 0,
            "messages": [{"role": "user", "content": question}], **extra}
    return unix_exchange(daemon.socket_path, "POST", CHAT, orjson.dumps(body),
                         {"content-type": "application/json", "x-llmspool-operation": operation})


def calls(sim: Sim, path: str) -> int:
    return int(sim.stats()["requests"]["by_path"].get(path, 0))


def near_status(daemon: Daemon) -> dict[str, Any]:
    return daemon.get("/v1/status")[1]["cache"]["near_duplicates"]  # type: ignore[no-any-return]


def wait_for_vectors(daemon: Daemon, count: int) -> None:
    wait_for(lambda: near_status(daemon)["vectors"] >= count, timeout=10, what=f"{count} vectors")


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    started = start_sim(tmp_path, UNLIMITED_SIM + 'semantic_embeddings = true\nlatency = "200ms"\n')
    try:
        yield started
    finally:
        started.terminate()


@pytest.fixture
def daemon(tmp_path: Path, sim: Sim) -> Iterator[Daemon]:
    started = start_daemon(tmp_path, sim.url, config_toml=SIMILAR)
    try:
        yield started
    finally:
        started.terminate()


def test_a_request_worded_alike_is_answered_from_the_cache(daemon: Daemon, sim: Sim) -> None:
    status, first, headers = ask(daemon, "What is the capital of France?")
    assert status == 200 and headers["x-llmspool-cache"] == "miss"
    wait_for_vectors(daemon, 1)
    status, second, headers = ask(daemon, "what is the capital of france")
    assert status == 200
    assert headers["x-llmspool-cache"] == "hit"
    assert float(headers["x-llmspool-cache-similarity"]) > 0.95
    assert second == first
    assert calls(sim, CHAT) == 1
    assert calls(sim, EMBEDDINGS) == 2
    assert near_status(daemon)["hits"] == 1


def test_another_meaning_or_shape_is_not_matched(daemon: Daemon, sim: Sim) -> None:
    ask(daemon, "What is the capital of France?")
    wait_for_vectors(daemon, 1)
    assert ask(daemon, "How tall is the Eiffel tower in metres?")[2]["x-llmspool-cache"] == "miss"
    # Same words, but another parameter: another shape, never matched by wording.
    assert ask(daemon, "what is the capital of france", max_tokens=7)[2][
        "x-llmspool-cache"] == "miss"
    # Operations without `similar` match exactly only: no embedding is asked for.
    embeddings_before = calls(sim, EMBEDDINGS)
    assert ask(daemon, "what is the capital of france", operation="other")[2][
        "x-llmspool-cache"] == "miss"
    assert calls(sim, EMBEDDINGS) == embeddings_before
    assert calls(sim, CHAT) == 4


def test_requests_worded_alike_in_flight_share_one_call(daemon: Daemon, sim: Sim) -> None:
    wordings = ["Tell me the capital city of France, please.",
                "tell me the capital city of france please",
                "TELL ME THE CAPITAL CITY OF FRANCE PLEASE!"]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda text: ask(daemon, text), wordings))
    assert all(status == 200 for status, _body, _headers in answers)
    assert sorted(headers["x-llmspool-cache"] for _s, _b, headers in answers) == \
        ["miss", "shared", "shared"]
    assert len({orjson.dumps(body) for _status, body, _headers in answers}) == 1
    assert calls(sim, CHAT) == 1
    assert near_status(daemon)["shared"] == 2


def test_embeddings_are_billed_and_taken_off_the_savings(daemon: Daemon, sim: Sim) -> None:
    _status, _body, first = ask(daemon, "What is the capital of France?")
    wait_for_vectors(daemon, 1)
    ask(daemon, "what is the capital of france")
    status, report = daemon.get("/v1/ledger?by=model,source")
    assert status == 200
    rows = {(row["model"], row["source"]): row for row in report["rows"]}
    embedding = rows["text-embedding-3-small", "cache"]
    assert embedding["requests"] == 2 and embedding["spend_usd"] > 0
    hit = rows["gpt-4o-mini", "cache"]
    assert hit["spend_usd"] == 0
    saved = float(first["x-llmspool-cost-usd"])
    assert hit["saved_usd"] == pytest.approx(saved, rel=1e-6)
    net = report["total"]["saved_by_source"]["cache"]
    assert net == pytest.approx(saved - embedding["spend_usd"], rel=1e-6)
