"""Resilience through the real daemon, its OpenAI plugin and the simulator's fault injection:
retries (attempt counts, waits honoured, what is never retried), timeouts named, a client that
leaves, the circuit breaker's transitions and recovery, failover to Ollama, and the retry
budget holding a retry storm down."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.support.processes import (
    Daemon,
    Sim,
    openai_client,
    python_command,
    start_daemon,
    start_sim,
    unix_exchange,
)
from tests.support.waiting import wait_for

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
FAST_RETRIES = '[retry]\nbackoff_min = "20ms"\nbackoff_max = "100ms"\n'


def chat(daemon: Daemon, model: str = "gpt-4o-mini",
         **extra: object) -> tuple[int, Any, dict[str, str]]:
    body = orjson.dumps({"model": model, "messages": MESSAGES, **extra})
    return unix_exchange(daemon.socket_path, "POST", CHAT, body,
                         {"content-type": "application/json"})


def upstream_calls(sim: Sim) -> int:
    return int(sim.stats()["requests"]["by_path"].get(CHAT, 0))


def dispatcher_status(daemon: Daemon) -> dict[str, Any]:
    status, body = daemon.get("/v1/status")
    assert status == 200
    return body["dispatcher"]  # type: ignore[no-any-return]


@pytest.fixture
def fast_daemon(tmp_path: Path, sim: Sim) -> Iterator[Daemon]:
    started = start_daemon(tmp_path, sim.url, config_toml=FAST_RETRIES)
    try:
        yield started
    finally:
        started.terminate()


def test_a_5xx_burst_is_retried_and_answered(fast_daemon: Daemon, sim: Sim) -> None:
    sim.set_faults({"kind": "status", "status": 503, "count": 2})
    status, body, _headers = chat(fast_daemon)
    assert status == 200 and body["choices"]
    assert upstream_calls(sim) == 3
    assert dispatcher_status(fast_daemon)["retries"]["retries"] == 2


def test_a_429_storm_waits_what_the_provider_asks(fast_daemon: Daemon, sim: Sim) -> None:
    sim.set_faults({"kind": "rate_limit", "count": 2, "retry_after": "400ms"})
    started = time.monotonic()
    status, _body, _headers = chat(fast_daemon)
    elapsed = time.monotonic() - started
    assert status == 200
    assert upstream_calls(sim) == 3
    assert elapsed >= 0.8  # two waits of retry-after-ms 400, not the 20 ms backoff


def test_insufficient_quota_is_sent_once_and_reaches_the_client(fast_daemon: Daemon,
                                                                sim: Sim) -> None:
    sim.set_faults({"kind": "quota", "count": 5})
    client = openai_client(fast_daemon.socket_path, max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.code == "insufficient_quota"
    assert upstream_calls(sim) == 1


def test_a_request_the_provider_refuses_gives_its_rate_limit_tokens_back(
        fast_daemon: Daemon, sim: Sim) -> None:
    # The simulator's limit is 30M tokens a minute, and it refuses max_tokens over 1M (400).
    assert chat(fast_daemon)[0] == 200  # the daemon learns the limit from the headers
    started = time.monotonic()
    for asked in (25_000_000, 20_000_000):
        status, body, _headers = chat(fast_daemon, max_tokens=asked)
        assert status == 400 and body["error"]["param"] == "max_tokens", body
    # Kept, the first charge left 5M tokens: the second request waited 30 s for the refill.
    assert time.monotonic() - started < 10
    limits = dispatcher_status(fast_daemon)["rate_limits"]["openai/gpt-4o-mini"]
    assert limits["tpm"] == 30_000_000
    assert limits["tokens_available"] > 29_000_000
    assert chat(fast_daemon)[0] == 200
    assert upstream_calls(sim) == 4


def test_answers_of_megabytes_leave_the_providers_connection_usable(
        fast_daemon: Daemon, sim: Sim) -> None:
    # A million output tokens: the simulator's answer is some 4 MB of JSON. The second call
    # used to wait forever on the kept-alive connection the first one left paused.
    for _ in range(3):
        status, body, _headers = chat(fast_daemon, max_tokens=1_000_000)
        assert status == 200, body
        assert body["usage"]["completion_tokens"] == 1_000_000
    assert dispatcher_status(fast_daemon)["connections"]["openai"]["reused"] >= 2


def test_a_connection_reset_is_retried(fast_daemon: Daemon, sim: Sim) -> None:
    sim.set_faults({"kind": "drop", "count": 1})
    status, _body, _headers = chat(fast_daemon)
    assert status == 200
    assert upstream_calls(sim) == 2


def test_a_kept_alive_connection_closed_as_a_call_goes_out_is_sent_again_at_once(
        tmp_path: Path, sim: Sim) -> None:
    # The call after the first goes out on the first's kept-alive connection, and the server
    # cuts it off unanswered: what its idle timeout running out as the connection is reused
    # looks like. It is sent again at once on a new connection (a backoff is 5 s here), and the
    # breaker, which one failure would open here, does not count it: a server's idle timeout
    # is not its health. A burst that reused connections the simulator was closing opened the
    # breaker for a minute (bench_latency, 2026-12-05).
    daemon = start_daemon(tmp_path, sim.url, config_toml=(
        '[retry]\nbackoff_min = "5s"\nbackoff_max = "5s"\n[breaker]\nfailures = 1\n'))
    try:
        for round_number in range(3):
            assert chat(daemon)[0] == 200  # its connection is kept alive
            sim.set_faults({"kind": "drop", "count": 1})
            started = time.monotonic()
            assert chat(daemon)[0] == 200, round_number
            elapsed = time.monotonic() - started
            assert elapsed < 2.0, f"the cut-off call waited a backoff: {elapsed:.2f} s"
        assert upstream_calls(sim) == 9
        assert breaker_state(daemon) == "closed"
        assert dispatcher_status(daemon)["breaker_transitions"] == []
    finally:
        daemon.terminate()


def test_attempts_share_the_request_timeout_of_a_hung_upstream(tmp_path: Path,
                                                               sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url, config_toml=(
        FAST_RETRIES + '[providers.openai]\ntimeout = "2s"\n'))
    try:
        sim.set_faults({"kind": "hang"})  # every attempt hangs
        started = time.monotonic()
        status, body, _headers = chat(daemon)
        waited = time.monotonic() - started
        assert status == 504, body
        assert waited < 2.0 + 1.0, f"the caller waited {waited:.1f}s for a 2s timeout"
        error = body["error"]
        assert error["code"] == "deadline_exceeded"
        assert "timeout = 2s, which its attempts share" in error["message"]
        assert "attempt 1:" in error["message"]
    finally:
        daemon.terminate()


def test_a_deadline_shorter_than_the_timeout_bounds_the_wait(tmp_path: Path, sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url, config_toml=(
        FAST_RETRIES + '[providers.openai]\ntimeout = "10s"\n'))
    try:
        sim.set_faults({"kind": "hang"})
        started = time.monotonic()
        body = orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES})
        status, answer, _headers = unix_exchange(
            daemon.socket_path, "POST", CHAT, body,
            {"content-type": "application/json", "x-llmspool-deadline": "3s"})
        waited = time.monotonic() - started
        assert status == 504, answer
        assert waited < 3.0 + 1.0, f"the caller waited {waited:.1f}s for a 3s deadline"
        assert answer["error"]["code"] == "deadline_exceeded"
        assert "its deadline" in answer["error"]["message"]
    finally:
        daemon.terminate()


def stream_cut_short(tmp_path: Path, pace: str, providers_toml: str, max_tokens: int
                     ) -> tuple[str, int, float, int]:
    """A streamed call to a sim sending a token every ``pace``, through a daemon with
    ``providers_toml`` under ``[providers.openai]``, that must fail: the error the client saw,
    the chunks it had before, the seconds it took, and the calls the sim saw."""
    sim = start_sim(tmp_path, f'[sim]\nlatency_per_token = "{pace}"\n')
    daemon = start_daemon(tmp_path, sim.url,
                          config_toml="[providers.openai]\n" + providers_toml)
    try:
        client = openai_client(daemon.socket_path)
        started = time.monotonic()
        received = 0
        with pytest.raises(openai.APIError) as caught:
            for _chunk in client.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, max_tokens=max_tokens,
                    stream=True):
                received += 1
        return str(caught.value), received, time.monotonic() - started, upstream_calls(sim)
    finally:
        daemon.terminate()
        sim.terminate()


def test_a_stream_that_goes_quiet_ends_with_the_idle_timeout_named(tmp_path: Path) -> None:
    error, _received, took, calls = stream_cut_short(
        tmp_path, "3s", 'stream_idle_timeout = "500ms"\n', max_tokens=5)
    assert took < 2.5
    assert "stream_idle_timeout" in error
    assert calls == 1  # begun: never sent twice


def test_a_stream_that_keeps_talking_past_its_timeout_ends_with_the_timeout_named(
        tmp_path: Path) -> None:
    # A chunk every 300 ms never trips the idle limit; the 1 s time limit ends the stream.
    error, received, took, calls = stream_cut_short(
        tmp_path, "300ms", 'timeout = "1s"\nstream_idle_timeout = "800ms"\n', max_tokens=40)
    assert took < 2.5  # not the 12 s the whole answer would take
    assert received >= 2  # it was streaming when the limit ran out
    assert "did not finish within" in error
    assert "stream_idle_timeout" not in error
    assert calls == 1  # begun: never sent twice


def test_a_client_that_leaves_before_its_answer_cancels_the_upstream_call(
        tmp_path: Path) -> None:
    sim = start_sim(tmp_path, '[sim]\nlatency = "5s"\n')
    daemon = start_daemon(tmp_path, sim.url)
    try:
        body = orjson.dumps({"model": "gpt-4o-mini", "messages": MESSAGES})
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(daemon.socket_path))
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                b"application/json\r\ncontent-length: " + str(len(body)).encode()
                + b"\r\n\r\n" + body)
            # Until the upstream has the call (admission, a durable reservation, comes first).
            wait_for(lambda: sim.stats()["requests"]["in_flight"] > 0, timeout=5,
                     what="the call at the upstream")
        # Well before the 5 s answer.
        wait_for(lambda: dispatcher_status(daemon)["in_flight"] == 0, timeout=2.5,
                 what="the upstream call to be cancelled")
        assert dispatcher_status(daemon)["aborted_by_client"] == 1
        # The sim saw the call dropped (its answer would take 5 s).
        wait_for(lambda: sim.stats()["requests"]["client_closed"] == 1, timeout=2.5,
                 what="the sim to see the call dropped")
    finally:
        daemon.terminate()
        sim.terminate()


BREAKER = '[breaker]\nfailures = 3\ncooldown = "1s"\n[retry]\nmax_attempts = 1\n'


def breaker_state(daemon: Daemon, provider: str = "openai") -> str:
    for breaker in dispatcher_status(daemon)["breakers"]:
        if breaker["provider"] == provider and breaker["tier"] == "standard":
            return str(breaker["state"])
    return "closed"


def wait_out_the_cooldown(daemon: Daemon) -> None:
    """Until the open breaker's cooldown (1 s: the behaviour under test is about time) is over,
    as /v1/status tells it. ``retry_after_s`` is rounded to 0.1 s: once it reads 0, under
    0.05 s are left, so the wait ends 0.05 s after the first 0."""
    first_zero: list[float] = []

    def over() -> bool:
        [breaker] = [b for b in dispatcher_status(daemon)["breakers"]
                     if b["provider"] == "openai" and b["tier"] == "standard"]
        assert breaker["state"] == "open", breaker
        if breaker["retry_after_s"] > 0:
            return False
        first_zero[:] = first_zero or [time.monotonic()]
        return time.monotonic() - first_zero[0] >= 0.05

    wait_for(over, timeout=5, every=0.01, what="the breaker's cooldown")


def test_with_nothing_to_fail_over_to_an_open_breaker_answers_503_with_retry_after(
        tmp_path: Path, sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url, config_toml=BREAKER)
    try:
        sim.set_faults({"kind": "status", "status": 500})
        assert [chat(daemon)[0] for _ in range(3)] == [500, 500, 500]
        assert breaker_state(daemon) == "open"
        # Asked at once: the cooldown is short, and `llmspool status` (a process) may outlast
        # it on a loaded machine, after which the next call would be the half-open probe.
        status, body, headers = chat(daemon)
        shown = subprocess.run(python_command("status", "--socket", str(daemon.socket_path)),
                               capture_output=True, text=True, timeout=30, check=True).stdout
        assert "circuit breakers" in shown and "open" in shown and "500" in shown
        assert status == 503 and body["error"]["code"] == "circuit_open"
        assert "[failover]" in body["error"]["message"]
        assert int(headers["retry-after"]) >= 1
        assert upstream_calls(sim) == 3  # the refused call was never sent
        sim.clear_faults()
        wait_out_the_cooldown(daemon)  # the next call is the probe, and it heals the breaker
        assert chat(daemon)[0] == 200
        assert breaker_state(daemon) == "closed"
        moves = [(m["from"], m["to"]) for m in dispatcher_status(daemon)["breaker_transitions"]]
        assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    finally:
        daemon.terminate()


def test_deferred_requests_wait_out_an_open_breaker_instead_of_failing(
        tmp_path: Path, sim: Sim) -> None:
    # Three failures open the breaker; its probes fail three more times (a 1 s cooldown each),
    # so for seconds every job request is refused with circuit_open. A refusal is not an
    # attempt ([jobs] max_attempts = 3): each request waits while its deadline allows.
    daemon = start_daemon(tmp_path, sim.url,
                          config_toml=BREAKER + "[batch]\nenabled = false\n")
    try:
        sim.set_faults({"kind": "status", "status": 500, "count": 6})
        assert [chat(daemon)[0] for _ in range(3)] == [500, 500, 500]
        assert breaker_state(daemon) == "open"
        lines = b"".join(orjson.dumps({
            "custom_id": f"q{i}", "method": "POST", "url": CHAT,
            "body": {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 5},
        }) + b"\n" for i in range(20))
        status, job = unix_exchange(daemon.socket_path, "POST", "/v1/jobs?deadline=2m", lines,
                                    {"content-type": "application/jsonl"})[:2]
        assert status == 202, job

        def finished() -> dict[str, Any] | None:
            _, job_now, _ = unix_exchange(daemon.socket_path, "GET", f"/v1/jobs/{job['id']}")
            return job_now if job_now["status"] != "in_progress" else None

        done = wait_for(finished, timeout=60, every=0.2, what="the job to finish")
        assert done["counts"]["succeeded"] == 20, done
        refusals = dispatcher_status(daemon)["failed"]
        assert refusals > 3, "the breaker never refused a job request: nothing was tested"
    finally:
        daemon.terminate()


def test_an_open_breaker_fails_over_to_ollama_then_heals(tmp_path: Path, sim: Sim) -> None:
    (tmp_path / "ollama").mkdir()
    ollama = start_sim(tmp_path / "ollama", '[sim]\nflavor = "ollama"\n')
    config = BREAKER + (
        f'[providers.openai]\n[providers.ollama]\nbase_url = "{ollama.url}"\n'
        'models = ["llama3.2"]\n'
        '[failover]\nopenai = "ollama"\n[failover.models]\n"gpt-4o-mini" = "llama3.2"\n')
    daemon = start_daemon(tmp_path, sim.url, config_toml=config)
    try:
        sim.set_faults({"kind": "status", "status": 502})
        assert [chat(daemon)[0] for _ in range(3)] == [502, 502, 502]
        status, body, headers = chat(daemon)
        assert status == 200, body
        assert headers["x-llmspool-failover"] == "openai -> ollama"
        assert headers["x-llmspool-model"] == "llama3.2"
        assert body["model"].startswith("llama3.2")
        assert "service_tier" not in body  # Ollama's answer, passed through
        assert upstream_calls(ollama) == 1 and upstream_calls(sim) == 3
        # The official client gets the stand-in's answer too, streamed.
        client = openai_client(daemon.socket_path)
        events = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                     stream=True))
        assert events and events[0].model.startswith("llama3.2")
        assert dispatcher_status(daemon)["failed_over"] == 2
        sim.clear_faults()
        wait_out_the_cooldown(daemon)
        status, body, headers = chat(daemon)
        assert status == 200 and "x-llmspool-failover" not in headers
        assert breaker_state(daemon) == "closed"
        _status, ledger = daemon.get("/v1/ledger?limit=10")
        providers = [entry["provider"] for entry in ledger["entries"]
                     if entry["status"] == 200]
        assert providers.count("ollama") == 2 and providers.count("openai") == 1
    finally:
        daemon.terminate()
        ollama.terminate()


def test_a_retry_storm_stays_inside_the_retry_budget(tmp_path: Path, sim: Sim) -> None:
    offered = 100
    daemon = start_daemon(tmp_path, sim.url, config_toml=(
        '[retry]\nbackoff_min = "1ms"\nbackoff_max = "5ms"\nbudget_fraction = 0.1\n'
        'budget_min_retries = 2\n'
        '[breaker]\nfailures = 100000\nmin_calls = 100000\n'))
    try:
        sim.set_faults({"kind": "status", "status": 503, "probability": 0.5})
        statuses = [chat(daemon)[0] for _ in range(offered)]
        attempts = upstream_calls(sim)
        assert attempts <= offered * 1.1 + 2
        retries = dispatcher_status(daemon)["retries"]
        assert retries["budgets"]["openai"]["denied"] > 0  # the budget did the holding back
        assert statuses.count(200) >= offered * 0.5  # and the retries it allowed helped
    finally:
        daemon.terminate()
