"""``[daemon] max_bodies_in_memory`` bounds the request bodies the daemon holds at once, across
connections: many large bodies sent together are read a few at a time, each waits unread for
room, one that finds none within ``bodies_wait`` gets 503 with ``retry-after``, and a JSON job
that could never fit gets 413 pointing to the JSONL upload."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from tests.integration.test_upload_memory import PeakRss, rss
from tests.support.processes import (
    Sim,
    python_command,
    start_daemon,
    tokenizer_loaded,
    unix_exchange,
    unix_request,
)
from tests.support.waiting import wait_for

MIB = 1 << 20
CHAT = "/v1/chat/completions"
JSON = {"content-type": "application/json"}


def chat_body(text_bytes: int, model: str = "gpt-4o-mini") -> bytes:
    return orjson.dumps({"model": model, "max_tokens": 4,
                         "messages": [{"role": "user", "content": "x" * text_bytes}]})


def test_large_bodies_sent_together_are_read_a_few_at_a_time(tmp_path: Path, sim: Sim) -> None:
    # 16 clients each send a 24 MiB body at once. Unbounded, the daemon read them all at once,
    # holding each body's chunks, joined bytes and parsed text: +396 MiB at the peak with
    # max_bodies_in_memory = "2GiB", and without bound as clients are added. With 48 MiB, two
    # are read at a time: +72 MiB.
    daemon = start_daemon(tmp_path, sim.url, process=True, config_toml=(
        '[daemon]\nmax_bodies_in_memory = "48MiB"\nbodies_wait = "60s"\n'))
    try:
        wait_for(lambda: tokenizer_loaded(daemon), timeout=60, what="the tokenizer")
        assert unix_request(daemon.socket_path, "POST", CHAT, chat_body(10), JSON)[0] == 200
        time.sleep(0.5)
        idle = rss(daemon)
        # An unknown model: refused right after the body is read and parsed, so what the test
        # measures is the reading, not the upstream call.
        body = chat_body(24 * MIB, model="no-such-model")
        with PeakRss(daemon) as peak, ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(
                lambda _n: unix_request(daemon.socket_path, "POST", CHAT, body, JSON),
                range(16)))
        status = unix_request(daemon.socket_path, "GET", "/v1/status")[1]
    finally:
        daemon.terminate()
    assert [status for status, _answer in answers] == [404] * 16, answers[0]
    bodies = status["request_bodies"]
    assert bodies["bytes_held"] == 0 and bodies["waiting"] == 0, bodies
    assert bodies["waited"] >= 8 and bodies["refused"] == 0, bodies
    grown = (peak.peak - idle) / MIB
    print({"peak above idle MiB": grown})  # shown with pytest -s
    # Two bodies at a time, each about three times its size while read and parsed.
    assert grown <= 192, grown


def send_head_and_part(socket_path: Path, body: bytes, sent: int) -> socket.socket:
    """A client that sends its request's head and the first ``sent`` bytes of ``body``, then
    stalls (the caller sends the rest)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(socket_path))
    client.sendall(
        f"POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n".encode() + body[:sent])
    return client


def read_status(client: socket.socket) -> int:
    client.settimeout(30)
    received = b""
    while b"\r\n" not in received:
        data = client.recv(65536)
        assert data, f"closed before an answer: {received!r}"
        received += data
    return int(received.split(b" ", 2)[1])


def timed_request(socket_path: Path, body: bytes, results: dict[str, Any], key: str) -> None:
    started = time.monotonic()
    status, answer, headers = unix_exchange(socket_path, "POST", CHAT, body, JSON)
    results[key] = (status, answer, headers, time.monotonic() - started)


def bodies_status(daemon: Any) -> dict[str, int]:
    bodies: dict[str, int] = unix_request(daemon.socket_path, "GET", "/v1/status")[1][
        "request_bodies"]
    return bodies


@contextmanager
def budget_held(tmp_path: Path, sim: Sim,
                bodies_wait: str) -> Iterator[tuple[Any, socket.socket, bytes]]:
    """A daemon whose 2 MiB of body budget is all held by one body, whose client has sent half
    of it and stalls: (the daemon, that client, its whole body)."""
    daemon = start_daemon(tmp_path, sim.url, config_toml=(
        '[daemon]\nmax_body_size = "2MiB"\nmax_bodies_in_memory = "2MiB"\n'
        f'bodies_wait = "{bodies_wait}"\n'))
    big = chat_body(2 * MIB - 200)
    holder = send_head_and_part(daemon.socket_path, big, MIB)
    try:
        wait_for(lambda: bodies_status(daemon)["bytes_held"] == len(big), timeout=10,
                 what="the big body to take the budget")
        yield daemon, holder, big
    finally:
        holder.close()
        daemon.terminate()


def test_a_body_waits_for_room_and_is_refused_with_503_when_none_comes(
        tmp_path: Path, sim: Sim) -> None:
    small = chat_body(100)
    results: dict[str, Any] = {}
    with budget_held(tmp_path, sim, "2s") as (daemon, holder, big):
        # The held body has taken the whole budget: a small one waits, then gets 503.
        timed_request(daemon.socket_path, small, results, "refused")
        status, answer, headers, seconds = results["refused"]
        assert status == 503, answer
        assert answer["error"]["code"] == "bodies_memory_full", answer
        assert "max_bodies_in_memory" in answer["error"]["message"], answer
        assert headers["retry-after"] == "1"
        assert 1.5 <= seconds < 10, seconds
        shown = subprocess.run(python_command("status", "--socket", str(daemon.socket_path)),
                               capture_output=True, text=True, timeout=30, check=False)
        assert shown.returncode == 0, shown.stderr
        held = next(line for line in shown.stdout.splitlines() if "bodies in memory" in line)
        assert "2.0 of 2 MiB (0 waiting)" in held, held
        refused = next(line for line in shown.stdout.splitlines() if "bodies memory full" in line)
        assert refused.split()[-2] == "1", refused
        # One that waits while the big body finishes is read as soon as it leaves room.
        waiting = threading.Thread(target=timed_request,
                                   args=(daemon.socket_path, small, results, "waited"))
        waiting.start()
        wait_for(lambda: unix_request(daemon.socket_path, "GET", "/v1/status")[1]
                 ["request_bodies"]["waiting"] == 1, timeout=10, what="a body waiting")
        holder.sendall(big[MIB:])
        assert read_status(holder) == 200
        waiting.join(30)
        status, answer, _headers, _seconds = results["waited"]
        assert status == 200, answer  # within bodies_wait: read once the room came
        bodies = unix_request(daemon.socket_path, "GET", "/v1/status")[1]["request_bodies"]
        assert bodies == {"bytes_held": 0, "limit": 2 * MIB, "waiting": 0, "waited": 2,
                          "refused": 1}, bodies


def test_a_json_job_larger_than_the_budget_is_sent_to_the_jsonl_upload(
        tmp_path: Path, sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url, config_toml=(
        '[daemon]\nmax_body_size = "1MiB"\nmax_bodies_in_memory = "2MiB"\n'))
    line = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "y" * 1000}]}
    request = {"url": CHAT, "body": line}
    job = orjson.dumps({"deadline": "1h", "requests": [request] * 3000})  # ~3 MiB
    try:
        status, answer = unix_request(daemon.socket_path, "POST", "/v1/jobs", job, JSON)
        assert status == 413, answer
        assert answer["error"]["code"] == "body_over_memory_budget", answer
        assert "JSONL" in answer["error"]["message"], answer
        # The same job as a Batch input file (JSONL) goes to disk as it arrives.
        jsonl = b"".join(orjson.dumps({"custom_id": f"r{n}", "method": "POST", "url": CHAT,
                                       "body": line}) + b"\n" for n in range(3000))
        status, answer = unix_request(daemon.socket_path, "POST", "/v1/jobs?deadline=1h", jsonl,
                                      {"content-type": "application/jsonl"})
        assert status in (200, 201, 202), answer
        # A JSON job that fits is read into memory, and gives its room back once answered.
        small_job = orjson.dumps({"deadline": "1h", "requests": [request] * 100})
        status, answer = unix_request(daemon.socket_path, "POST", "/v1/jobs", small_job, JSON)
        assert status in (200, 201, 202), answer
        bodies = unix_request(daemon.socket_path, "GET", "/v1/status")[1]["request_bodies"]
        assert (bodies["bytes_held"], bodies["waited"], bodies["refused"]) == (0, 0, 0), bodies
    finally:
        daemon.terminate()


def send_chunked_head(socket_path: Path, path: str = CHAT) -> socket.socket:
    """A client that starts a chunked request (no declared length); ``send_chunk`` sends on."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(socket_path))
    client.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                   "transfer-encoding: chunked\r\n\r\n".encode())
    return client


def send_chunk(client: socket.socket, data: bytes) -> None:
    """One chunk of a chunked body; ``b""`` ends the body."""
    client.sendall(b"%x\r\n%s\r\n" % (len(data), data))


def test_chunked_bodies_that_wait_for_each_other_refuse_one_at_once(
        tmp_path: Path, sim: Sim) -> None:
    # Two chunked uploads each hold part of the budget, then each needs more than is left.
    # Neither could get it by waiting: both were refused when bodies_wait ran out. Now the
    # second to wait is refused at once, and the first is read and answered.
    kib = 1024
    daemon = start_daemon(tmp_path, sim.url, config_toml=(
        '[daemon]\nmax_body_size = "1MiB"\nmax_bodies_in_memory = "1MiB"\n'
        'bodies_wait = "60s"\n'))
    first_body = chat_body(900 * kib)
    second_body = chat_body(700 * kib)
    first = send_chunked_head(daemon.socket_path)
    second = send_chunked_head(daemon.socket_path)
    try:
        send_chunk(first, first_body[:600 * kib])
        wait_for(lambda: bodies_status(daemon)["bytes_held"] == 600 * kib, timeout=10,
                 what="the first body's part to be read")
        send_chunk(second, second_body[:300 * kib])
        wait_for(lambda: bodies_status(daemon)["bytes_held"] == 900 * kib, timeout=10,
                 what="the second body's part to be read")
        send_chunk(first, first_body[600 * kib:800 * kib])  # 1,100 KiB would not fit
        wait_for(lambda: bodies_status(daemon)["waiting"] == 1, timeout=10,
                 what="the first body to wait for room")
        started = time.monotonic()
        send_chunk(second, second_body[300 * kib:500 * kib])
        assert read_status(second) == 503
        assert time.monotonic() - started < 10  # not bodies_wait's 60 s
        send_chunk(first, first_body[800 * kib:])
        send_chunk(first, b"")
        assert read_status(first) == 200
        wait_for(lambda: bodies_status(daemon)["bytes_held"] == 0, timeout=10,
                 what="the bodies' room to come back")
        bodies = bodies_status(daemon)
        assert (bodies["waiting"], bodies["refused"]) == (0, 1), bodies
    finally:
        first.close()
        second.close()
        daemon.terminate()


def test_a_body_waiting_for_room_past_its_deadline_gets_504_at_the_deadline(
        tmp_path: Path, sim: Sim) -> None:
    # bodies_wait is 30 s; the request's own deadline is 1 s. Once that has passed, the call
    # could only fail: it is answered then, not after bodies_wait.
    with budget_held(tmp_path, sim, "30s") as (daemon, holder, big):
        started = time.monotonic()
        status, answer, _headers = unix_exchange(
            daemon.socket_path, "POST", CHAT, chat_body(100),
            {**JSON, "x-llmspool-deadline": "1s"})
        seconds = time.monotonic() - started
        assert status == 504, answer
        assert answer["error"]["code"] == "deadline_exceeded", answer
        assert "max_bodies_in_memory" in answer["error"]["message"], answer
        assert 0.8 <= seconds < 10, seconds
        assert bodies_status(daemon)["waiting"] == 0
        holder.sendall(big[MIB:])
        assert read_status(holder) == 200


def test_a_chunked_json_job_that_grows_past_the_budget_gets_413_at_once(
        tmp_path: Path, sim: Sim) -> None:
    # With no declared length, the daemon learns the job's size as it reads it: once it is past
    # the whole budget it could never be held, so 413 then, not a wait for room then 503.
    daemon = start_daemon(tmp_path, sim.url, config_toml=(
        '[daemon]\nmax_body_size = "1MiB"\nmax_bodies_in_memory = "2MiB"\n'
        'bodies_wait = "60s"\n'))
    line = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "y" * 1000}]}
    job = orjson.dumps({"deadline": "1h", "requests": [{"url": CHAT, "body": line}] * 3000})
    client = send_chunked_head(daemon.socket_path, "/v1/jobs")
    try:
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the daemon may answer and close before the end
            for offset in range(0, len(job), 256 * 1024):
                send_chunk(client, job[offset:offset + 256 * 1024])
            send_chunk(client, b"")
        assert read_status(client) == 413
        assert time.monotonic() - started < 10  # not bodies_wait's 60 s
        assert bodies_status(daemon)["bytes_held"] == 0
    finally:
        client.close()
        daemon.terminate()
