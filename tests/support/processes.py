"""The simulator and the daemon for tests and benchmarks: ``llmspool sim`` on 127.0.0.1,
``llmspool daemon`` on a Unix socket, each waited for until it answers.

By default both run inside the test's process (``llmspool.testing``): the same code on real
sockets, started in a tenth of the time. ``process=True`` starts the real command as a
subprocess instead, for what only a process shows: kill -9 and crash points, signals, exit
codes, the umask, the command line. ``terminate()`` stops either (SIGTERM, then SIGKILL, for a
process).
"""

from __future__ import annotations

import http.client
import os
import select
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from llmspool.core.config_load import load_config
from llmspool.core.crashpoints import ENVIRONMENT_KEY as CRASH_POINTS
from llmspool.sim.cli import load_config as load_sim_config
from llmspool.testing import UnixHTTPConnection, running_daemon, running_sim

START_TIMEOUT = 20.0
UNLIMITED_SIM = "[sim]\nratelimit_requests = 1000000000\nratelimit_tokens = 1000000000000\n"
"""Sim limits far above any load a test offers: the daemon learns the limits the headers
report (10,000 RPM by default) and paces itself to them."""


@dataclass
class Sim:
    url: str  # ends in /v1
    process: subprocess.Popen[bytes] | None = None  # None: served inside this process
    _in_process: ExitStack | None = field(default=None, repr=False)

    def terminate(self, timeout: float = 15.0) -> int:
        """Stop it; the exit status (0 for one inside this process)."""
        if self.process is not None:
            return stop_process(self.process, timeout)
        if self._in_process is not None:
            self._in_process.close()
        return 0

    @property
    def base(self) -> str:
        return self.url.removesuffix("/v1")

    def request(self, method: str, path: str, payload: Any = None) -> Any:
        host_port = self.base.removeprefix("http://")
        host, port = host_port.split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            body = orjson.dumps(payload) if payload is not None else None
            headers = {"content-type": "application/json"} if body else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        return orjson.loads(raw) if raw else None

    def stats(self) -> Any:
        return self.request("GET", "/_sim/stats")

    def set_faults(self, *rules: dict[str, Any]) -> None:
        self.request("POST", "/_sim/faults", {"faults": list(rules)})

    def clear_faults(self) -> None:
        self.request("DELETE", "/_sim/faults")


@dataclass
class Daemon:
    socket_path: Path
    state_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None  # None: running inside this process
    _in_process: ExitStack | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """Its process's id (a daemon started with ``process=True``: what ``/proc`` knows it
        by, for its CPU, memory, files and children)."""
        if self.process is None:
            raise RuntimeError("this daemon runs inside the test's own process; start it "
                               "with process=True to read its process")
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str) -> tuple[int, Any]:
        return unix_request(self.socket_path, "GET", path)

    def terminate(self, timeout: float = 15.0) -> int:
        """Stop it as SIGTERM does; the exit status (0 for a clean stop inside this process,
        which raises if the daemon failed)."""
        if self.process is not None:
            return stop_process(self.process, timeout)
        if self._in_process is not None:
            self._in_process.close()
        return 0


TOKENIZER_LOADED = "token estimates "  # what a daemon logs once its tokenizer is loaded (or not)


def tokenizer_loaded(daemon: Daemon) -> bool:
    """Whether ``daemon`` has loaded its tokenizer (or found none to load). It does so in a
    thread a moment after it is ready: 0.3 s of CPU on an idle machine, much more on a loaded
    one, with the interpreter lock held most of it, and some 15 MiB of memory. A test that
    times calls or measures memory waits for it first."""
    return TOKENIZER_LOADED in daemon.log()


def python_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmspool", *args]


def start_sim(
    tmp_path: Path, config_toml: str = "", extra_args: tuple[str, ...] = (), *,
    process: bool = False,
) -> Sim:
    """The simulator configured by ``config_toml``; a subprocess if ``process`` or given
    command-line ``extra_args``."""
    config = tmp_path / "sim.toml"
    config.write_text(config_toml)
    if not process and not extra_args:
        stack = ExitStack()
        running = stack.enter_context(running_sim(load_sim_config(str(config))))
        return Sim(running.url, None, stack)
    popen = subprocess.Popen(
        [*python_command("sim", "--port", "0", "--config", str(config)), *extra_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert popen.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([popen.stdout], [], [], 0.2)
        if ready:
            line = popen.stdout.readline()
            break
        if popen.poll() is not None:
            break
    text = line.decode().strip()
    if "http://" not in text:
        stop_process(popen)
        stderr = popen.stderr.read().decode() if popen.stderr else ""
        raise RuntimeError(f"llmspool sim did not start: {text!r} {stderr}")
    return Sim(text[text.index("http://"):], popen)


def start_daemon(
    tmp_path: Path,
    upstream_url: str,
    *,
    config_toml: str = "",
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    wait: bool = True,
    socket_path: Path | None = None,
    process: bool = False,
) -> Daemon:
    """A daemon on ``socket_path`` (default ``tmp_path/d.sock``) forwarding to
    ``upstream_url``, started and answering. It runs inside this process unless ``process``
    or what is asked needs one: command-line ``args``, not waiting for it to answer, or armed
    crash points (which SIGKILL the process they are in)."""
    socket_path = socket_path or tmp_path / "d.sock"
    state_dir = tmp_path / "state"
    config = tmp_path / "llmspool.toml"
    config.write_text(config_toml)
    log_path = tmp_path / "daemon.log"
    full_env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "LLMSPOOL_", "OPENAI_"))
    }
    full_env.update(
        LLMSPOOL_SOCKET=str(socket_path),
        LLMSPOOL_STATE_DIR=str(state_dir),
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=upstream_url,
    )
    full_env.update(env or {})
    if not (process or args or not wait or full_env.get(CRASH_POINTS)):
        stack = ExitStack()
        stack.enter_context(running_daemon(
            load_config(str(config), environ=full_env), config_path=str(config),
            environ=full_env, log_path=log_path))
        return Daemon(socket_path, state_dir, log_path, full_env, None, stack)
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            python_command("daemon", "--config", str(config), *args),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    daemon = Daemon(socket_path, state_dir, log_path, full_env, popen)
    if wait:
        wait_until_healthy(daemon)
    return daemon


def wait_until_healthy(daemon: Daemon, timeout: float = START_TIMEOUT) -> None:
    assert daemon.process is not None, "a daemon inside this process answers once started"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            code = daemon.process.returncode
            raise RuntimeError(f"llmspool daemon exited {code}:\n{daemon.log()}")
        if daemon.socket_path.exists():
            try:
                status, _body = daemon.get("/healthz")
                if status == 200:
                    return
            except OSError:
                pass
        time.sleep(0.02)
    daemon.terminate()
    raise RuntimeError(f"llmspool daemon did not answer in {timeout}s:\n{daemon.log()}")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()
    return process.returncode


def unix_request(
    path: Path | str,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """(status, parsed JSON or raw bytes) of one request over the Unix socket."""
    status, answer, _headers = unix_exchange(path, method, url, body, headers)
    return status, answer


def unix_exchange(
    path: Path | str,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """(status, parsed JSON or raw bytes, lower-cased response headers) of one request."""
    connection = UnixHTTPConnection(path)
    try:
        connection.request(method, url, body=body, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        answer_headers = {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()
    try:
        return response.status, orjson.loads(raw), answer_headers
    except orjson.JSONDecodeError:
        return response.status, raw, answer_headers


def openai_client(socket_path: Path | str, **options: Any) -> Any:
    """The official ``openai`` client, talking to the daemon over its Unix socket."""
    import httpx2
    import openai

    return openai.OpenAI(
        base_url="http://localhost/v1",
        api_key="sk-local",
        max_retries=options.pop("max_retries", 0),
        http_client=openai.DefaultHttpxClient(transport=httpx2.HTTPTransport(uds=str(socket_path))),
        **options,
    )
