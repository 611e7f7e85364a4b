"""Bad input over the socket: each case gets a clear 4xx in OpenAI's error shape, and the
daemon keeps serving (a normal request succeeds after every one of them)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

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
JSON = {"content-type": "application/json"}
GOOD = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def assert_still_serving(daemon: Daemon) -> None:
    status, body = unix_request(daemon.socket_path, "POST", CHAT, GOOD, JSON)
    assert status == 200, body
    assert body["object"] == "chat.completion"


def dispatcher_status(daemon: Daemon) -> dict[str, Any]:
    return daemon.get("/v1/status")[1]["dispatcher"]  # type: ignore[no-any-return]


def assert_openai_error(body: object, *, param: str | None = None) -> dict[str, object]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code", "param"),
    [
        ("POST", CHAT, b"{not json", JSON, 400, "invalid_json", None),
        ("POST", CHAT, b"[1, 2]", JSON, 400, "invalid_json", None),
        ("POST", CHAT, GOOD, {"content-type": "text/plain"}, 415, "unsupported_content_type", None),
        ("POST", "/v1/nothing-here", GOOD, JSON, 404, "unknown_url", None),
        ("GET", CHAT, None, {}, 405, "method_not_allowed", None),
        ("POST", CHAT, orjson.dumps({"messages": []}), JSON, 400, "missing_required_parameter",
         "model"),
        ("POST", CHAT, orjson.dumps({"model": 5, "messages": []}), JSON, 400, "invalid_type",
         "model"),
        ("POST", CHAT, orjson.dumps({"model": "gpt-4o-mini"}), JSON, 400,
         "missing_required_parameter", "messages"),
        ("POST", CHAT, orjson.dumps({"model": "no-such-model", "messages": []}), JSON, 404,
         "model_not_found", "model"),
        ("POST", CHAT, orjson.dumps({"model": "nowhere/gpt-4o", "messages": []}), JSON, 404,
         "model_not_found", "model"),
        ("POST", CHAT, orjson.dumps({"model": "gpt-4o-mini", "messages": [], "stream": "yes"}),
         JSON, 400, "invalid_type", "stream"),
        ("POST", "/v1/embeddings", orjson.dumps({"model": "text-embedding-3-small"}), JSON, 400,
         "missing_required_parameter", "input"),
    ],
)
def test_bad_request_gets_a_clear_error_and_the_daemon_keeps_serving(
    daemon: Daemon,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    code: str,
    param: str | None,
) -> None:
    got_status, got = unix_request(daemon.socket_path, method, path, body, headers)
    assert got_status == status, got
    error = assert_openai_error(got, param=param)
    assert error["code"] == code
    assert_still_serving(daemon)


def test_body_over_the_limit_is_refused_with_the_limit_named(tmp_path: Path, sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url, config_toml='[daemon]\nmax_body_size = "4KiB"\n')
    try:
        big = orjson.dumps({"model": "gpt-4o-mini",
                            "messages": [{"role": "user", "content": "x" * 5000}]})
        status, body = unix_request(daemon.socket_path, "POST", CHAT, big, JSON)
        assert status == 413
        error = assert_openai_error(body)
        assert "4096" in str(error["message"]) and "max_body_size" in str(error["message"])
        # Chunked, with no content-length to refuse early: still cut off at the limit.
        connection_body = b"".join(
            f"{len(part):x}\r\n".encode() + part + b"\r\n"
            for part in (big[:3000], big[3000:])
        ) + b"0\r\n\r\n"
        raw = _raw_http(
            daemon.socket_path,
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n" + connection_body,
        )
        assert raw.startswith(b"HTTP/1.1 413")
        assert_still_serving(daemon)
    finally:
        daemon.terminate()


def test_a_body_of_too_many_json_values_is_refused_before_it_is_parsed(
    tmp_path: Path, sim: Sim,
) -> None:
    """``[daemon] max_json_values`` bounds what a body may cost parsed: a chat request, a JSON
    job, and each line of a JSONL job; a long text body under it is served as before."""
    daemon = start_daemon(tmp_path, sim.url, config_toml="[daemon]\nmax_json_values = 1000\n")
    try:
        many = orjson.dumps({"model": "gpt-4o-mini",
                             "messages": [{"role": "user", "content": "hi"}] * 400})
        status, body = unix_request(daemon.socket_path, "POST", CHAT, many, JSON)
        assert status == 413, body
        error = assert_openai_error(body)
        assert error["code"] == "too_many_json_values"
        assert "1,000" in str(error["message"]) and "max_json_values" in str(error["message"])
        # 45 KB of text with a few hundred commas is no more values than a short prompt.
        text = ("A long prompt" * 10 + ", ") * 300
        status, body = unix_request(daemon.socket_path, "POST", CHAT, orjson.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}), JSON)
        assert status == 200, body

        item = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        status, body = unix_request(daemon.socket_path, "POST", "/v1/jobs", orjson.dumps(
            {"deadline": "1h", "requests": [item] * 300}), JSON)
        assert status == 413, body
        error = assert_openai_error(body)
        assert error["code"] == "too_many_json_values"
        assert "application/jsonl" in str(error["message"])

        line = {"custom_id": "a", "method": "POST", "url": CHAT, "body": item}
        heavy = {**line, "custom_id": "b",
                 "body": {**item, "messages": item["messages"] * 400}}
        jsonl = b"".join(orjson.dumps(entry) + b"\n" for entry in (line, heavy))
        status, body = unix_request(daemon.socket_path, "POST", "/v1/jobs?deadline=1h", jsonl,
                                    {"content-type": "application/jsonl"})
        assert status == 400, body
        [refused] = body["error"]["lines"]
        assert refused["line"] == 2 and refused["code"] == "too_many_json_values", refused
        assert_still_serving(daemon)
    finally:
        daemon.terminate()


def test_sdk_sees_its_usual_exceptions(daemon: Daemon) -> None:
    client = openai_client(daemon.socket_path)
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="gpt-0", messages=[{"role": "user", "content": "x"}])
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o-mini", messages="not a list")  # type: ignore[arg-type]


def test_client_that_vanishes_mid_request_does_not_hurt(daemon: Daemon) -> None:
    # Half a request, then gone; then a request with headers only; then garbage bytes.
    for junk in (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 500\r\n\r\n{\"mo",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(daemon.socket_path))
            sock.sendall(junk)
    assert_still_serving(daemon)


def test_a_client_that_leaves_before_its_answer_is_no_error(tmp_path: Path) -> None:
    # The upstream takes half a second: each client sends its whole request (plain, or a
    # stream) and leaves before the answer. Its call is stopped; nothing is logged as an error.
    sim = start_sim(tmp_path, '[sim]\nlatency = "500ms"\n')
    daemon = start_daemon(tmp_path, sim.url)
    try:
        sent = 0
        for body in (GOOD, orjson.dumps({**orjson.loads(GOOD), "stream": True})):
            for _ in range(3):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(str(daemon.socket_path))
                    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                                 b"content-type: application/json\r\ncontent-length: %d"
                                 b"\r\n\r\n%s" % (len(body), body))
                    sent += 1
                    wait_for(lambda sent=sent: sim.stats()["requests"]["total"] >= sent,
                             what="the call at the upstream")
        # Every call stopped, none still waiting on the upstream: what was to log is logged.
        wait_for(lambda: dispatcher_status(daemon)["aborted_by_client"] == 6
                 and dispatcher_status(daemon)["in_flight"] == 0, what="the calls to stop")
        assert_still_serving(daemon)
        log = daemon.log()
        assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    finally:
        daemon.terminate()
        sim.terminate()


def _raw_http(path: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def test_unknown_provider_plugin_refuses_to_start(tmp_path: Path, sim: Sim) -> None:
    with pytest.raises(RuntimeError, match=r"providers\.local\.plugin.*no plugin provides 'nope'"):
        daemon = start_daemon(tmp_path, sim.url,
                              config_toml='[providers.local]\nplugin = "nope"\n', process=True)
        daemon.terminate()
