"""The ``llmspool sim`` command line as an operator meets it: help, config, latency, stopping."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
import openai
import pytest

from tests.support.waiting import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.sim.conftest import RunningSim

    RunSim = Callable[..., subprocess.CompletedProcess[str]]
    PopenSim = Callable[..., subprocess.Popen[str]]


def test_help_explains_each_flag(run_sim: RunSim) -> None:
    result = run_sim("--help")
    assert result.returncode == 0
    for words in ("--host", "--port", "--config", "127.0.0.1", "8089", "free", "[sim]",
                  "LLMSPOOL_CONFIG", "OpenAI", "/_sim/faults", "listening on"):  # fmt: skip
        assert words in result.stdout, words


@pytest.mark.parametrize(
    ("text", "key"),
    [('[sim]\nlatency = "quick"\n', "sim.latency"), ("[sim]\nspeed = 0\n", "sim.speed")],
)
def test_bad_config_value_exits_2_naming_the_key(
    tmp_path: Path, run_sim: RunSim, text: str, key: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run_sim("--port", "0", "--config", str(config))
    assert result.returncode == 2
    assert key in result.stderr
    assert result.stdout == ""


def test_bad_fault_in_config_names_the_rule_key(tmp_path: Path, run_sim: RunSim) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[sim]\n[[sim.faults]]\nkind = "status"\nprobability = 3\n')
    result = run_sim("--port", "0", "--config", str(config))
    assert result.returncode == 2
    assert "sim.faults[0].probability" in result.stderr


def test_missing_config_file_and_bad_port_are_reported(run_sim: RunSim) -> None:
    missing = run_sim("--port", "0", "--config", "/nonexistent/llmspool.toml")
    assert missing.returncode == 2
    assert "/nonexistent/llmspool.toml" in missing.stderr
    bad_port = run_sim("--port", "70000")
    assert bad_port.returncode == 2
    assert "port" in bad_port.stderr


def test_fixed_latency_is_honoured(start_sim: Callable[..., RunningSim]) -> None:
    running = start_sim('[sim]\nlatency = "200ms"\n')
    client = running.client()
    started = time.monotonic()
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    client.embeddings.create(model="text-embedding-3-small", input="x", encoding_format="float")
    assert time.monotonic() - started >= 0.2


def test_per_token_latency_paces_the_stream(start_sim: Callable[..., RunningSim]) -> None:
    running = start_sim('[sim]\nlatency_per_token = "50ms"\noutput_tokens = 8\n')
    client = running.client()
    started = time.monotonic()
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True
    )
    arrivals = [
        time.monotonic() - started
        for chunk in stream
        if chunk.choices and chunk.choices[0].delta.content
    ]
    assert len(arrivals) == 8
    # Each token arrives as it is made, not all at once at the end.
    assert arrivals[0] < 0.25
    assert arrivals[-1] - arrivals[0] >= 0.3


def test_config_from_environment_and_other_tables_ignored(
    tmp_path: Path, popen_sim: PopenSim
) -> None:
    config = tmp_path / "llmspool.toml"
    config.write_text(
        '[daemon]\nsocket = "/run/x.sock"\nunknown_daemon_key = 1\n\n'
        '[sim]\nmodels = ["only-model"]\noutput_tokens = 3\n'
    )
    process = popen_sim("--port", "0", LLMSPOOL_CONFIG=str(config))
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("llmspool sim listening on http://127.0.0.1:")
        url = line.strip().rsplit(" ", 1)[1]
        with httpx2.Client(base_url=url) as http:
            models = http.get(url + "/models").json()
            answer = http.post(
                url + "/chat/completions",
                json={"model": "only-model", "messages": [{"role": "user", "content": "x"}]},
            ).json()
        assert [model["id"] for model in models["data"]] == ["only-model"]
        assert answer["usage"]["completion_tokens"] == 3
    finally:
        process.terminate()
        process.communicate(timeout=10)
    assert process.returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly_on_signal_even_with_requests_in_flight(
    start_sim: Callable[..., RunningSim], sig: int
) -> None:
    running = start_sim(None)
    running.set_faults({"kind": "hang"})
    outcome: list[BaseException] = []

    def hung_request() -> None:
        try:
            running.client(timeout=30).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "x"}]
            )
        except openai.OpenAIError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=hung_request)
    thread.start()
    wait_for(
        lambda: running.stats()["requests"]["in_flight"] >= 1,
        timeout=5,
        what="the request to reach the sim",
    )
    started = time.monotonic()
    assert running.stop(sig) == 0
    assert time.monotonic() - started < 8
    thread.join(10)
    assert outcome
    assert isinstance(outcome[0], openai.APIConnectionError)
    assert "Traceback" not in running.stderr()
