"""The real daemon under the systemd protocols: socket activation, READY, WATCHDOG, STOPPING.

What an operator relies on when llmspool runs from llmspool.service/.socket:

- socket-activated (``LISTEN_FDS``), it serves HTTP on the fd it was given, creates no socket
  of its own, and leaves the socket unit's file in place when it exits;
- it says ``READY=1`` only when it answers requests, pings ``WATCHDOG=1`` at half of
  ``WATCHDOG_USEC``, all from the main process (``NotifyAccess=main``);
- while it migrates its store at start, it says so (``STATUS``) and asks for more time to
  start (``EXTEND_TIMEOUT_USEC``), since a migration over a big ledger can outlast the default;
- on SIGTERM it says ``STOPPING=1``, exits 0 within the stop timeout, and removes its socket.

Each test runs ``python -m llmspool daemon`` in a child process with its own state directory;
the provider is never contacted. Every child is killed on the way out, whatever happens.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from llmspool.store.backend import DATABASE_NAME
from llmspool.store.database import migrations

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
DAEMON = [sys.executable, "-m", "llmspool", "daemon"]
START_TIMEOUT = 30.0  # from exec to READY=1 / first answer, on a slow CI machine
STOP_TIMEOUT = 10.0  # from SIGTERM to exit with nothing in flight


# --- HTTP over a Unix socket ------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` speaking HTTP/1.1 over an AF_UNIX stream socket."""

    def __init__(self, socket_path: str, *, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def unix_get(socket_path: Path, target: str, *, timeout: float = 10.0) -> Answer:
    """GET ``target`` over the socket at ``socket_path``; the whole answer."""
    conn = UnixHTTPConnection(str(socket_path), timeout=timeout)
    try:
        conn.request("GET", target, headers={"Accept": "application/json"})
        response = conn.getresponse()
        return Answer(response.status, response.getheader("content-type", ""), response.read())
    finally:
        conn.close()


def assert_healthy(answer: Answer) -> None:
    assert answer.status == 200, answer
    assert answer.content_type.startswith("application/json"), answer
    assert isinstance(json.loads(answer.body), dict), answer


# --- sd_notify receiver -----------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    sender_pid: int | None
    assignments: dict[str, str]
    received_at: float


class NotifyReceiver:
    """A real NOTIFY_SOCKET: a bound datagram socket that records who sent what, and when."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # systemd checks the sender's pid for NotifyAccess=main; so do we.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.seen: list[Notification] = []

    def close(self) -> None:
        self.sock.close()

    def _receive(self, timeout: float) -> Notification | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return None
        pid = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("iII", payload[:12])
        lines = data.decode().split("\n")
        assignments = dict(line.split("=", 1) for line in lines if "=" in line)
        note = Notification(pid, assignments, time.monotonic())
        self.seen.append(note)
        return note

    def wait_for(
        self, key: str, value: str, *, timeout: float, proc: subprocess.Popen[bytes]
    ) -> Notification:
        """The first new message with ``key=value``; fails if the daemon exits first."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            note = self._receive(min(left, 0.2))
            if note is not None and note.assignments.get(key) == value:
                return note
            if note is None and proc.poll() is not None:
                # Drain what it sent before exiting, then give up.
                while (note := self._receive(0.01)) is not None:
                    if note.assignments.get(key) == value:
                        return note
                pytest.fail(f"daemon exited ({proc.returncode}) without sending {key}={value}")
        pytest.fail(f"no {key}={value} within {timeout} s; got {self.messages()}")

    def collect(self, seconds: float) -> list[Notification]:
        """Everything that arrives in the next ``seconds``."""
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            note = self._receive(left)
            if note is not None:
                got.append(note)
        return got

    def messages(self) -> list[dict[str, str]]:
        return [note.assignments for note in self.seen]


# --- running the daemon -----------------------------------------------------------------


def test_a_migration_at_start_is_said_and_asks_systemd_for_time(short_dir: Path) -> None:
    # A migration that rewrites a table of the ledger takes ~1.5 s a million entries: on a
    # busy daemon's ledger, longer than systemd's 90 s to start. The daemon says what it is
    # doing (STATUS) and asks for more time (EXTEND_TIMEOUT_USEC) before READY=1.
    env = daemon_env(short_dir)
    store = sqlite3.connect(Path(env["LLMSPOOL_STATE_DIR"]) / DATABASE_NAME,
                            isolation_level=None)
    known = migrations()
    for version, _name, sql in known[:-1]:  # a store one migration behind
        store.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version={version};\nCOMMIT;")
    store.close()
    receiver = NotifyReceiver(short_dir / "notify.sock")
    env["NOTIFY_SOCKET"] = str(receiver.path)
    log = short_dir / "daemon.log"
    try:
        with running(DAEMON, env, log) as proc:
            receiver.wait_for("READY", "1", timeout=START_TIMEOUT, proc=proc)
            proc.send_signal(signal.SIGTERM)
            receiver.wait_for("STOPPING", "1", timeout=STOP_TIMEOUT, proc=proc)
            proc.wait(timeout=STOP_TIMEOUT)
    finally:
        receiver.close()
    before_ready = receiver.messages()[:next(
        index for index, note in enumerate(receiver.messages()) if note.get("READY") == "1")]
    assert {"EXTEND_TIMEOUT_USEC": "30000000"} in before_ready, receiver.messages()
    assert any(f"migrating the store (1 migration(s): {known[-1][1]})" in note.get("STATUS", "")
               for note in before_ready), receiver.messages()
    with sqlite3.connect(Path(env["LLMSPOOL_STATE_DIR"]) / DATABASE_NAME) as migrated:
        assert migrated.execute("PRAGMA user_version").fetchone() == (len(known),)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: AF_UNIX paths are limited to 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="llsd-", dir="/tmp") as name:
        yield Path(name)


def daemon_env(base: Path) -> dict[str, str]:
    """The daemon's environment: its own state and socket, a key, an upstream never called."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LISTEN_", "NOTIFY_SOCKET", "WATCHDOG_", "LLMSPOOL_", "OPENAI_"))
    }
    state_dir = base / "state"
    state_dir.mkdir()  # as StateDirectory= would
    pythonpath = [str(REPO / "daemon"), str(REPO / "plugins")]
    if inherited.get("PYTHONPATH"):
        pythonpath.append(inherited["PYTHONPATH"])
    return {
        **inherited,
        "LLMSPOOL_STATE_DIR": str(state_dir),
        "LLMSPOOL_SOCKET": str(base / "s.sock"),
        "OPENAI_API_KEY": "sk-test",
        # Port 9 (discard) on loopback: nothing answers, and these tests send no work.
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "OTEL_SDK_DISABLED": "true",
        "PYTHONPATH": os.pathsep.join(pythonpath),
        "PYTHONUNBUFFERED": "1",
    }


@contextlib.contextmanager
def running(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The process, with stdout and stderr in ``log``; killed on the way out if still alive."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def log_of(log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n--- daemon output ---\n" + text[-4000:]


def terminate(proc: subprocess.Popen[bytes], log: Path) -> int:
    """SIGTERM and the exit status; fails if the daemon outlives the stop timeout."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"daemon still running {STOP_TIMEOUT} s after SIGTERM" + log_of(log))


def is_listening(path: Path) -> bool:
    """Whether a stream socket bound at ``path`` listens, read from ``/proc/net/unix``.

    The file appears at ``bind()``; until ``listen()`` a connect is refused. Reading the
    kernel's table, rather than trying to connect, makes no connection that a socket-activated
    daemon would have to accept.
    """
    listening_flag = 0x10000  # __SO_ACCEPTCON
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == str(path) and int(fields[3], 16) & listening_flag:
            return True
    return False


def wait_for_listener(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not is_listening(path):
        if proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before {path} listened" + log_of(log))
        if time.monotonic() > deadline:
            pytest.fail(f"nothing listened on {path} within {timeout} s" + log_of(log))
        time.sleep(0.02)


# --- the tests --------------------------------------------------------------------------


def socket_activate() -> str:
    found = shutil.which("systemd-socket-activate")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-socket-activate is missing: `apt-get install systemd`")
        pytest.skip("systemd-socket-activate is not installed")
    return found


def test_socket_activated_daemon_serves_on_the_passed_fd(short_dir: Path) -> None:
    activated = short_dir / "act.sock"
    env = daemon_env(short_dir)
    own_socket = Path(env["LLMSPOOL_SOCKET"])
    log = short_dir / "daemon.log"
    passed = [
        "LLMSPOOL_STATE_DIR",
        "LLMSPOOL_SOCKET",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OTEL_SDK_DISABLED",
        "PYTHONPATH",
        "PYTHONUNBUFFERED",
    ]
    argv = [socket_activate(), "-l", str(activated)]
    for name in passed:
        argv += ["-E", name]
    argv += DAEMON

    with running(argv, env, log) as proc:
        # The socket's file appears at bind(), a moment before listen(): a connect in between
        # is refused.
        wait_for_listener(activated, proc, log, timeout=10)
        # The first connection makes systemd-socket-activate exec the daemon; the request
        # waits in the listen backlog until the daemon accepts on fd 3.
        try:
            first = unix_get(activated, "/healthz", timeout=START_TIMEOUT)
            second = unix_get(activated, "/healthz", timeout=10)
        except OSError as exc:
            pytest.fail(f"GET /healthz on the activated socket failed: {exc!r}" + log_of(log))
        assert_healthy(first)
        assert_healthy(second)
        assert not own_socket.exists(), (
            "socket-activated, the daemon must not create its own socket" + log_of(log)
        )

        status = terminate(proc, log)

    assert status == 0, f"exit status {status} after SIGTERM" + log_of(log)
    # The socket file belongs to the socket unit: removing it would leave clients with
    # "No such file" until someone restarts llmspool.socket.
    assert activated.exists(), "the daemon removed the socket systemd passed it" + log_of(log)


def test_ready_watchdog_and_stopping_over_a_real_notify_socket(short_dir: Path) -> None:
    receiver = NotifyReceiver(short_dir / "notify.sock")
    env = daemon_env(short_dir)
    env["NOTIFY_SOCKET"] = str(receiver.path)
    env["WATCHDOG_USEC"] = "400000"  # a ping every 0.2 s
    own_socket = Path(env["LLMSPOOL_SOCKET"])
    log = short_dir / "daemon.log"

    try:
        with running(DAEMON, env, log) as proc:
            ready = receiver.wait_for("READY", "1", timeout=START_TIMEOUT, proc=proc)
            # READY means serving: no retry, no grace period.
            try:
                answer = unix_get(own_socket, "/healthz", timeout=5)
            except OSError as exc:
                pytest.fail(f"READY=1 was sent but GET /healthz failed: {exc!r}" + log_of(log))
            assert_healthy(answer)
            assert ready.sender_pid == proc.pid, (
                f"READY=1 came from pid {ready.sender_pid}, not the main process {proc.pid}; "
                "NotifyAccess=main would drop it"
            )

            window = receiver.collect(1.5)
            pings = [n for n in window if n.assignments.get("WATCHDOG") == "1"]
            assert len(pings) >= 2, f"{len(pings)} WATCHDOG=1 in 1.5 s at WATCHDOG_USEC=400000"
            assert {n.sender_pid for n in pings} == {proc.pid}

            proc.send_signal(signal.SIGTERM)
            stopping = receiver.wait_for("STOPPING", "1", timeout=STOP_TIMEOUT, proc=proc)
            assert stopping.sender_pid == proc.pid
            try:
                status = proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"daemon still running {STOP_TIMEOUT} s after SIGTERM" + log_of(log))
    finally:
        receiver.close()

    assert status == 0, f"exit status {status} after SIGTERM" + log_of(log)
    assert not own_socket.exists(), "the daemon left its socket file behind" + log_of(log)
    # Nothing claims readiness after it said it was stopping.
    after_stop = receiver.seen[receiver.seen.index(stopping) + 1 :]
    assert all("READY" not in n.assignments for n in after_stop), receiver.messages()
