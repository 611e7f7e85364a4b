"""A connection costs a client as much as it costs the daemon: slow or stalled clients are cut
after ``[daemon] header_timeout``, oversized heads get 431, and at ``max_connections`` the
stalled connections make room for a client that sends its request, through the real socket."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.support.processes import Daemon, Sim, start_daemon, unix_exchange
from tests.support.waiting import wait_for

LIMITS = ('[daemon]\nheader_timeout = "1s"\nkeepalive_timeout = "1s"\nmax_connections = 40\n'
          'max_headers = 50\nmax_header_size = "16KiB"\n')
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nhost: llmspool\r\n"
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture
def limited(tmp_path: Path, sim: Sim) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path, sim.url, config_toml=LIMITS, process=True)
    try:
        yield daemon
    finally:
        daemon.terminate()


def descriptors(daemon: Daemon) -> int:
    return len(os.listdir(f"/proc/{daemon.pid}/fd"))


def ask(daemon: Daemon) -> int:
    status, _answer, _headers = unix_exchange(daemon.socket_path, "POST",
                                              "/v1/chat/completions", BODY,
                                              {"content-type": "application/json"})
    return status


def raw_exchange(daemon: Daemon, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(daemon.socket_path))
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_stalled_clients_are_cut_and_never_crowd_out_a_real_one(limited: Daemon) -> None:
    assert ask(limited) == 200
    baseline = descriptors(limited)
    stalled = []
    for _ in range(150):  # far past max_connections: each sends half a head, then nothing
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(limited.socket_path))
        sock.sendall(HEAD)
        stalled.append(sock)
    started = time.monotonic()
    assert ask(limited) == 200  # room is made for a client that sends its whole request
    assert time.monotonic() - started < 1.0
    # header_timeout (1 s) must pass for the stalled connections to be cut: wait until the
    # daemon holds none of them.
    wait_for(lambda: descriptors(limited) <= baseline + 2, timeout=10,
             what="the stalled connections to be cut")
    answers = []
    for sock in stalled:
        sock.settimeout(1)
        try:
            answers.append(sock.recv(4096))
        except OSError:
            answers.append(b"")
        sock.close()
    assert all(a == b"" or a.startswith(b"HTTP/1.1 408") for a in answers)
    assert sum(a.startswith(b"HTTP/1.1 408") for a in answers) >= 100
    assert descriptors(limited) <= baseline + 2
    assert ask(limited) == 200


def test_oversized_heads_get_431(limited: Daemon) -> None:
    huge = raw_exchange(limited, HEAD + b"x-big: " + b"a" * 20_000 + b"\r\n\r\n")
    many = raw_exchange(limited, HEAD + b"".join(b"x-%d: 1\r\n" % i for i in range(60))
                        + b"\r\n")
    for answer in (huge, many):
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        error = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == "headers_too_large"
    assert "Traceback" not in limited.log()
    assert ask(limited) == 200
