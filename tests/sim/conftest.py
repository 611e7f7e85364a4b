"""Fixtures that run ``python -m llmspool.sim`` as a real process on a free TCP port.

``sim`` is one simulator shared by the session (defaults, no latency) with its faults cleared,
flex and rate limits back to their configured behaviour and stats reset before each test;
``start_sim`` starts a private one from a TOML text.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
URL_PREFIX = "llmspool sim listening on "


def sim_env(**extra: str) -> dict[str, str]:
    """The environment for a sim process: the repo's packages importable even if not installed."""
    env = dict(os.environ)
    paths = [str(REPO / "daemon"), str(REPO / "plugins")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("LLMSPOOL_CONFIG", None)
    env.update(extra)
    return env


@dataclass
class RunningSim:
    """A simulator process and the ways tests talk to it."""

    url: str
    process: subprocess.Popen[str]
    stderr_path: Path

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def client(self, *, strict: bool = True, **options: Any) -> openai.OpenAI:
        """The official client, by default validating every answer against its pydantic types.

        (Strict mode validates before the SDK decodes base64 embeddings, its default
        encoding: embeddings without ``encoding_format="float"`` need ``strict=False``.)
        """
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", 10.0)
        return openai.OpenAI(
            base_url=self.url, api_key="sk-test", _strict_response_validation=strict, **options
        )

    def http(self) -> httpx2.Client:
        return httpx2.Client(base_url=self.root, timeout=10.0)

    def stats(self) -> dict[str, Any]:
        with self.http() as http:
            response = http.get("/_sim/stats")
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

    def set_faults(self, rules: Any) -> dict[str, Any]:
        with self.http() as http:
            response = http.post("/_sim/faults", json=rules)
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

    def flex(self, command: dict[str, Any] | None = None) -> dict[str, Any]:
        """``GET /_sim/flex``, or ``POST`` it ``command`` first; the state it answers."""
        with self.http() as http:
            if command is None:
                response = http.get("/_sim/flex")
            else:
                response = http.post("/_sim/flex", json=command)
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

    def ratelimits(self, command: dict[str, Any] | None = None) -> dict[str, Any]:
        """``GET /_sim/ratelimits``, or ``POST`` it ``command`` first; the state it answers."""
        with self.http() as http:
            if command is None:
                response = http.get("/_sim/ratelimits")
            else:
                response = http.post("/_sim/ratelimits", json=command)
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

    def reset(self) -> None:
        with self.http() as http:
            http.delete("/_sim/faults").raise_for_status()
            http.post("/_sim/flex", json={"unavailable": None}).raise_for_status()
            http.post("/_sim/ratelimits", json={"reset": True}).raise_for_status()
            http.post("/_sim/stats/reset").raise_for_status()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the process and wait for it; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def launch(directory: Path, config_text: str | None, *args: str) -> RunningSim:
    """Start a simulator and wait for its URL line."""
    command = [sys.executable, "-m", "llmspool.sim", "--port", "0", *args]
    if config_text is not None:
        config_path = directory / "llmspool.toml"
        config_path.write_text(config_text)
        command += ["--config", str(config_path)]
    stderr_path = directory / "sim.stderr"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=sim_env()
        )
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    line = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            line = process.stdout.readline()
            break
        if process.poll() is not None:
            break
    if not line.startswith(URL_PREFIX):
        process.kill()
        process.wait()
        raise AssertionError(
            f"sim did not start: stdout {line!r}, stderr {stderr_path.read_text()!r}"
        )
    return RunningSim(
        url=line.strip().removeprefix(URL_PREFIX), process=process, stderr_path=stderr_path
    )


@pytest.fixture
def run_sim() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m llmspool.sim ARGS`` to completion (for --help, bad config...)."""

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "llmspool.sim", *args],
            capture_output=True,
            text=True,
            env=sim_env(**env),
            timeout=30,
            check=False,
        )

    return run


@pytest.fixture
def popen_sim() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``python -m llmspool.sim ARGS`` with extra environment; killed at the end if alive."""
    processes: list[subprocess.Popen[str]] = []

    def popen(*args: str, **env: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmspool.sim", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=sim_env(**env),
        )
        processes.append(process)
        return process

    yield popen
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.fixture(scope="session")
def shared_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSim]:
    running = launch(tmp_path_factory.mktemp("sim"), None)
    yield running
    assert running.stop() == 0
    # Faults are on purpose: none of them may make the simulator itself log an error.
    assert "Traceback" not in running.stderr()
    assert "ERROR" not in running.stderr()


@pytest.fixture
def sim(shared_sim: RunningSim) -> RunningSim:
    """The shared simulator with no faults and zeroed stats."""
    shared_sim.reset()
    return shared_sim


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[Callable[..., RunningSim]]:
    """Start private simulators from a TOML text (``None``: no config file); stopped at the end."""
    started: list[RunningSim] = []
    counter = 0

    def start(config_text: str | None = None, *args: str) -> RunningSim:
        nonlocal counter
        counter += 1
        directory = tmp_path / f"sim{counter}"
        directory.mkdir()
        running = launch(directory, config_text, *args)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
