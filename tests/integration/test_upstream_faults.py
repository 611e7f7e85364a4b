"""Upstream misbehaviour reaches the client clearly, and never takes the daemon down: errors
that outlast the retries pass through with their status and body, lost connections and
timeouts become 502/504,
a stream cut upstream ends with an error event, and a client that leaves mid-stream stops the
upstream call."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import openai
import orjson
import pytest

from tests.support.processes import (
    Daemon,
    Sim,
    openai_client,
    start_daemon,
    start_sim,
    unix_request,
)
from tests.support.waiting import wait_for

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


def chat(daemon: Daemon, **extra: object) -> tuple[int, object]:
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, **extra})
    headers = {"content-type": "application/json"}
    return unix_request(daemon.socket_path, "POST", CHAT, body, headers)


def test_upstream_5xx_passes_through_then_service_resumes(daemon: Daemon, sim: Sim) -> None:
    sim.set_faults({"kind": "status", "status": 503, "count": 3})  # every attempt fails
    client = openai_client(daemon.socket_path)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert caught.value.body and isinstance(caught.value.body, dict)
    # The next call is answered: the fault was spent, the daemon is fine.
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices


def test_rate_limit_keeps_its_retry_after(daemon: Daemon, sim: Sim) -> None:
    sim.set_faults({"kind": "rate_limit", "count": 3, "retry_after": "100ms"})
    client = openai_client(daemon.socket_path)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    headers = caught.value.response.headers
    assert "retry-after" in headers
    assert caught.value.code == "rate_limit_exceeded"


def test_dropped_connection_is_a_502_that_names_the_provider(daemon: Daemon, sim: Sim) -> None:
    sim.set_faults({"kind": "drop", "count": 3})
    status, body = chat(daemon)
    assert status == 502
    assert isinstance(body, dict) and "openai" in body["error"]["message"]
    assert chat(daemon)[0] == 200


def test_hung_upstream_times_out_with_the_timeout_named(tmp_path: Path, sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url, config_toml=(
        '[providers.openai]\ntimeout = "1s"\n[retry]\nmax_attempts = 1\n'))
    try:
        sim.set_faults({"kind": "hang", "count": 1})
        started = time.monotonic()
        status, body = chat(daemon)
        assert status == 504
        assert time.monotonic() - started < 10
        assert isinstance(body, dict) and body["error"]["code"] == "deadline_exceeded"
        assert "request timeout ([providers.openai] timeout = 1s)" in body["error"]["message"]
        assert chat(daemon)[0] == 200
    finally:
        daemon.terminate()


def test_stream_cut_upstream_ends_with_an_error_event(daemon: Daemon, sim: Sim) -> None:
    sim.set_faults({"kind": "stream_cut", "count": 1, "after_chunks": 2})
    client = openai_client(daemon.socket_path)
    received: list[object] = []
    with pytest.raises(openai.APIError):  # the SDK raises on the error event
        received.extend(client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=20, stream=True
        ))
    assert len(received) >= 1
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices


def test_client_leaving_mid_stream_stops_the_upstream_call(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, '[sim]\nlatency_per_token = "100ms"\n')
    daemon = start_daemon(tmp_path, sim.url)
    try:
        body = orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
                             "max_tokens": 200})
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(daemon.socket_path))
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
                b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            first = sock.recv(4096)
            assert first.startswith(b"HTTP/1.1 200")
            assert sim.stats()["streams"]["open"] == 1
        # 200 tokens at 100 ms would take 20 s; the upstream stream must close well before.
        wait_for(lambda: sim.stats()["streams"]["open"] == 0, timeout=10,
                 what="the upstream stream to close")
        stats = sim.stats()
        assert stats["streams"]["open"] == 0
        assert stats["requests"]["client_closed"] == 1  # the sim saw its client go away
        _status, ledger = daemon.get("/v1/ledger?limit=1")
        assert ledger["entries"][0]["status"] == 499
        assert ledger["entries"][0]["usage_estimated"] is True
        assert chat(daemon)[0] == 200
    finally:
        daemon.terminate()
        sim.terminate()


def test_unreachable_upstream_is_a_502(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = start_daemon(tmp_path, f"http://127.0.0.1:{port}/v1")
    try:
        status, body = chat(daemon)
        assert status == 502
        assert isinstance(body, dict) and body["error"]["code"] == "upstream_unreachable"
    finally:
        daemon.terminate()
