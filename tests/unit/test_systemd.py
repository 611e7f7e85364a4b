"""llmspool.core.systemd against real sockets: a bound NOTIFY_SOCKET, real passed fds.

Socket activation is exercised in child processes so that fd 3 of the pytest process is
never touched: once through ``systemd-socket-activate`` itself, once by a child that puts
sockets at fds 3, 4 the way systemd does.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import llmspool
import pytest
from llmspool.core.systemd import Notifier, listen_fds, listen_fds_with_names, run_watchdog

pytestmark = pytest.mark.timeout(30)

PACKAGE_ROOT = str(Path(llmspool.__file__).resolve().parent.parent)
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: AF_UNIX paths are limited to 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="llsd-", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
def receiver(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A real datagram socket bound on the filesystem, and the NOTIFY_SOCKET value for it."""
    path = short_dir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def pending(sock: socket.socket) -> list[str]:
    """Every datagram already queued, without waiting."""
    messages: list[str] = []
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2.0)
    return messages


# --- Notifier ---------------------------------------------------------------------------


def test_messages_arrive_as_datagrams(receiver: tuple[socket.socket, str]) -> None:
    sock, address = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert notifier.enabled

    notifier.ready()
    assert receive(sock) == "READY=1"
    notifier.ready(status="serving on /run/llmspool/llmspool.sock")
    assert receive(sock) == "READY=1\nSTATUS=serving on /run/llmspool/llmspool.sock"
    notifier.status("3 open batches")
    assert receive(sock) == "STATUS=3 open batches"
    notifier.watchdog()
    assert receive(sock) == "WATCHDOG=1"
    notifier.extend_timeout(2.5)
    assert receive(sock) == "EXTEND_TIMEOUT_USEC=2500000"
    notifier.stopping()
    assert receive(sock) == "STOPPING=1"
    notifier.close()


def test_reloading_carries_the_monotonic_clock(receiver: tuple[socket.socket, str]) -> None:
    sock, address = receiver
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    with Notifier.from_env({"NOTIFY_SOCKET": address}) as notifier:
        notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    lines = receive(sock).split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_a_status_cannot_inject_other_assignments(receiver: tuple[socket.socket, str]) -> None:
    sock, address = receiver
    Notifier.from_env({"NOTIFY_SOCKET": address}).status("draining\nREADY=1")
    assert receive(sock) == "STATUS=draining READY=1"


def test_abstract_namespace_address() -> None:
    name = f"llmspool-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        notifier.watchdog()
        assert receive(sock) == "READY=1"
        assert receive(sock) == "WATCHDOG=1"
        notifier.close()
    finally:
        sock.close()


def test_without_notify_socket_everything_is_a_no_op(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_env({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    notifier.ready("x")
    notifier.reloading()
    notifier.status("x")
    notifier.watchdog()
    notifier.extend_timeout(1)
    notifier.stopping()
    notifier.close()
    # Pinging nowhere is pointless, so there is no watchdog either.
    assert notifier.watchdog_interval() is None
    assert caplog.records == []


def test_from_env_reads_os_environ(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, address = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier.from_env()
    notifier.ready()
    assert receive(sock) == "READY=1"
    assert notifier.watchdog_interval() == 2.0
    notifier.close()


def test_a_notify_socket_pointing_nowhere_never_raises_and_warns_once(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llmspool.core.systemd")
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(short_dir / "nobody-listens.sock")})
    assert notifier.enabled
    notifier.ready()
    notifier.watchdog()
    notifier.stopping()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "NOTIFY_SOCKET" in warnings[0].getMessage()
    notifier.close()


def test_an_abstract_address_nobody_bound_never_raises() -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": f"@llmspool-nobody-{uuid.uuid4().hex}"})
    notifier.ready()
    notifier.watchdog()
    notifier.close()


def test_an_unusable_notify_socket_value_is_ignored() -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "relative/path.sock"})
    assert not notifier.enabled
    notifier.ready()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": ""}, 0.2),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify", **env})
    assert notifier.watchdog_interval() == expected


# --- run_watchdog -----------------------------------------------------------------------


def test_run_watchdog_pings_at_half_the_timeout(receiver: tuple[socket.socket, str]) -> None:
    sock, address = receiver
    # 200 ms timeout: a ping every 100 ms, about 6 in 0.55 s (the first at once).
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(run_watchdog, notifier)
            await anyio.sleep(0.55)
            tg.cancel_scope.cancel()

    anyio.run(main)
    pings = pending(sock)
    assert set(pings) == {"WATCHDOG=1"}
    assert 3 <= len(pings) <= 8, pings
    # Cancelled means stopped: nothing more arrives.
    time.sleep(0.25)
    assert pending(sock) == []
    notifier.close()


def test_run_watchdog_returns_at_once_without_a_watchdog(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, address = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})

    async def main() -> None:
        with anyio.fail_after(1):
            async with anyio.create_task_group() as tg:
                await tg.start(run_watchdog, notifier)
            # The task group exits only because run_watchdog returned by itself.

    anyio.run(main)
    assert pending(sock) == []
    notifier.close()


# --- listen_fds -------------------------------------------------------------------------


def test_not_socket_activated(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert listen_fds() == []


def test_fds_meant_for_another_process_are_not_taken_and_not_inherited() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "PATH": "/bin"}
    assert listen_fds(env) == []
    assert env == {"PATH": "/bin"}


def test_malformed_variables_are_ignored_and_removed() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "two"}
    assert listen_fds_with_names(env) == []
    assert env == {}


def run_child(code: str, *, env: dict[str, str] | None = None) -> dict[str, object]:
    child_env = {**(env or os.environ), "PYTHONPATH": PACKAGE_ROOT}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


# Runs in the child: describes what listen_fds() returned.
REPORT_CODE = textwrap.dedent(
    """
    import json, os, socket
    from llmspool.core.systemd import listen_fds_with_names

    def describe(name, sock):
        return {
            "name": name,
            "fd": sock.fileno(),
            "family": sock.family.name,
            "type": sock.type.name,
            "address": sock.getsockname() if sock.family == socket.AF_UNIX else None,
            "inheritable": os.get_inheritable(sock.fileno()),
        }

    def report(taken, **extra):
        left = {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")}
        print(json.dumps({"sockets": [describe(n, s) for n, s in taken], "env": left, **extra}))
    """
)

# Runs in a child that lays out fds itself: holds fds 3 and 4 so that the sockets it makes
# land elsewhere and dup2 really moves them there.
HOLD_FDS_CODE = textwrap.dedent(
    """
    placeholders = [os.open(os.devnull, os.O_RDONLY) for _ in range(2)]
    assert placeholders == [3, 4], placeholders
    """
)


def test_listen_fds_puts_fds_3_and_4_to_use(short_dir: Path) -> None:
    """A child lays out fds 3, 4 as systemd does, then calls listen_fds()."""
    stream_path = short_dir / "api.sock"
    code = (
        REPORT_CODE
        + HOLD_FDS_CODE
        + textwrap.dedent(
            f"""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind({str(stream_path)!r})
        listener.listen()
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        os.dup2(listener.fileno(), 3)  # dup2 makes them inheritable, as systemd leaves them
        os.dup2(left.fileno(), 4)
        listener.close(); left.close()
        os.environ.update(
            LISTEN_PID=str(os.getpid()), LISTEN_FDS="2", LISTEN_FDNAMES="api:events"
        )
        taken = listen_fds_with_names()

        # The stream socket is the real listener: a client gets through.
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect({str(stream_path)!r})
        conn, _ = taken[0][1].accept()
        client.sendall(b"ping")
        got = conn.recv(4)
        # The datagram socket is the real socketpair end.
        right.send(b"pong")
        got_dgram = taken[1][1].recv(4)
        report(taken, received=got.decode(), received_dgram=got_dgram.decode())
        """
        )
    )
    report = run_child(code)
    assert report["env"] == {}
    assert report["received"] == "ping"
    assert report["received_dgram"] == "pong"
    assert report["sockets"] == [
        {
            "name": "api",
            "fd": 3,
            "family": "AF_UNIX",
            "type": "SOCK_STREAM",
            "address": str(stream_path),
            "inheritable": False,
        },
        {
            "name": "events",
            "fd": 4,
            "family": "AF_UNIX",
            "type": "SOCK_DGRAM",
            "address": "",
            "inheritable": False,
        },
    ]


def test_listen_fds_without_names_and_with_a_tcp_socket() -> None:
    code = (
        REPORT_CODE
        + HOLD_FDS_CODE
        + textwrap.dedent(
            """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        os.dup2(listener.fileno(), 3)
        listener.close()
        os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
        report(listen_fds_with_names())
        """
        )
    )
    report = run_child(code)
    sockets = report["sockets"]
    assert isinstance(sockets, list)
    assert [(s["name"], s["fd"], s["family"], s["type"]) for s in sockets] == [
        ("unknown", 3, "AF_INET", "SOCK_STREAM")
    ]


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate is not installed")
def test_listen_fds_under_systemd_socket_activate(short_dir: Path) -> None:
    """The real thing: systemd-socket-activate listens, then execs our script on a connection."""
    assert SOCKET_ACTIVATE is not None
    path = short_dir / "act.sock"
    script = short_dir / "child.py"
    script.write_text(
        REPORT_CODE
        + textwrap.dedent(
            """
            taken = listen_fds_with_names()
            conn, _ = taken[0][1].accept()
            conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\\n")
            conn.close()
            report(taken)
            """
        )
    )
    proc = subprocess.Popen(
        [
            SOCKET_ACTIVATE,
            "-l",
            str(path),
            "--fdname=front",
            "-E",
            f"PYTHONPATH={PACKAGE_ROOT}",
            sys.executable,
            str(script),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(15)
            # The path appears at bind(), a moment before listen(): refused until then.
            while True:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "systemd-socket-activate never listened"
                try:
                    client.connect(str(path))
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    time.sleep(0.02)
            greeting = json.loads(client.makefile("rb").readline())
        stdout, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0, stderr
    report = json.loads(stdout.strip().splitlines()[-1])
    # systemd-socket-activate execs the child, so LISTEN_PID matched the very process.
    assert greeting["pid"] == proc.pid
    assert report["env"] == {}
    assert report["sockets"] == [
        {
            "name": "front",
            "fd": 3,
            "family": "AF_UNIX",
            "type": "SOCK_STREAM",
            "address": str(path),
            "inheritable": False,
        }
    ]
