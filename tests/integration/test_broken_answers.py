"""Answers that break after the provider began them are billed, because the provider bills them:
an answer reset mid-body (the call is retried; the broken attempt has its own entry), and a
stream cut after a few events (billed for the prompt and the events it sent). Checked against
the simulator's own log of what it billed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.support.processes import (
    UNLIMITED_SIM,
    Daemon,
    Sim,
    openai_client,
    start_daemon,
    start_sim,
    unix_exchange,
)

MESSAGES = [{"role": "user", "content": "tell me a story about a lighthouse keeper"}]
FAST_RETRIES = '[retry]\nbackoff_min = "20ms"\nbackoff_max = "100ms"\n'


@pytest.fixture
def stack(tmp_path: Path) -> Any:
    sim = start_sim(tmp_path, UNLIMITED_SIM)
    daemon = start_daemon(tmp_path, sim.url, config_toml=FAST_RETRIES)
    try:
        yield sim, daemon
    finally:
        daemon.terminate()
        sim.terminate()


def entries(daemon: Daemon) -> list[dict[str, Any]]:
    status, ledger = daemon.get("/v1/ledger?limit=20")
    assert status == 200, ledger
    return list(reversed(ledger["entries"]))  # oldest first


def billed_by_sim(sim: Sim) -> list[dict[str, Any]]:
    return list(sim.request("GET", "/_sim/requests")["data"])


def test_an_answer_reset_mid_body_is_billed_and_its_retry_too(stack: Any) -> None:
    sim, daemon = stack
    sim.set_faults({"kind": "reset_midway", "count": 1})
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 40})
    status, answer, _headers = unix_exchange(daemon.socket_path, "POST", "/v1/chat/completions",
                                             body, {"content-type": "application/json"})
    assert status == 200, answer  # the retry answered
    logged = billed_by_sim(sim)
    assert [call["complete"] for call in logged] == [False, True]
    call_id = logged[1]["request_id"]
    assert logged[0]["request_id"] == call_id  # one call, two attempts
    broken, whole = entries(daemon)
    assert whole["request_id"] == call_id and whole["flag"] is None
    assert whole["output_tokens"] == answer["usage"]["completion_tokens"]
    # The broken attempt: its own entry, billed at what the call reserved (its prompt and
    # the 40 tokens it allowed), flagged as a guess.
    assert broken["request_id"] == f"{call_id}~1"
    assert broken["flag"] == "broken_answer" and broken["usage_estimated"] is True
    assert broken["output_tokens"] == 40 and broken["input_tokens"] > 0
    assert broken["cost_usd"] > 0
    _, report = daemon.get("/v1/status")
    assert report["ledger"]["calls_today"] == 2
    assert report["ledger"]["calls_reserved"] == 0


def test_a_stream_cut_midway_is_billed_for_what_it_sent(stack: Any) -> None:
    sim, daemon = stack
    sim.set_faults({"kind": "stream_cut", "after_chunks": 4, "count": 1})
    client = openai_client(daemon.socket_path)
    received = 0
    with pytest.raises(openai.APIError):
        for _chunk in client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_tokens=30, stream=True):
            received += 1
    assert received >= 1  # it had begun: a stream is never retried once the client saw it
    (logged,) = billed_by_sim(sim)
    assert logged["complete"] is False and 0 < logged["output_tokens"] < 30
    (entry,) = entries(daemon)
    assert entry["request_id"] == logged["request_id"]
    assert entry["flag"] == "broken_answer" and entry["usage_estimated"] is True
    # About a token an event: what the provider generated before the cut, give or take the
    # role-only first event.
    assert abs(entry["output_tokens"] - logged["output_tokens"]) <= 1
    assert entry["input_tokens"] > 0  # the prompt is billed too (estimated)
    assert entry["cost_usd"] > 0
