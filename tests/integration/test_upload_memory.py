"""Hostile uploads cost no memory: a 1 GB chunked upload (refused past ``[jobs]
max_upload_size``), 100 MB of bad JSONL lines, a run of malformed 5 MB bodies, and 30 MB
bodies of tiny JSON values (refused past ``[daemon] max_json_values``) each raise the daemon's
RSS by at most 64 MiB above idle while they last, and leave nothing behind."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from tests.support.processes import (
    Daemon,
    Sim,
    UnixHTTPConnection,
    start_daemon,
    tokenizer_loaded,
    unix_request,
)
from tests.support.waiting import wait_for

MIB = 1 << 20
ALLOWED = 64 * MIB
GOOD = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def rss(daemon: Daemon) -> int:
    for line in Path(f"/proc/{daemon.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PeakRss:
    """The highest RSS of the daemon seen while the block runs (sampled every 10 ms)."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss(self._daemon))
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()


def post_stream(daemon: Daemon, path: str, chunks: Iterator[bytes],
                content_type: str) -> int | None:
    """POST a chunked body; the status, or None if the daemon closed the connection first."""
    connection = UnixHTTPConnection(daemon.socket_path, timeout=120)
    try:
        connection.request("POST", path, body=chunks, encode_chunked=True,
                           headers={"content-type": content_type,
                                    "transfer-encoding": "chunked"})
        return connection.getresponse().status
    except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
        return None
    finally:
        connection.close()


def test_uploads_and_bad_bodies_cost_no_memory(tmp_path: Path, sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url, process=True)
    try:
        # Idle is measured with the tokenizer in memory: loaded late on a busy machine, it
        # once counted against the malformed bodies' peak and failed the test.
        wait_for(lambda: tokenizer_loaded(daemon), timeout=60, what="the tokenizer")
        for _ in range(3):  # warm: imports, pools
            assert unix_request(daemon.socket_path, "POST", "/v1/chat/completions", GOOD,
                                {"content-type": "application/json"})[0] == 200
        time.sleep(1.0)
        idle = rss(daemon)

        line = b'{"custom_id": "x", "not": "a batch line"}\n' * (MIB // 42)
        with PeakRss(daemon) as big:
            status = post_stream(daemon, "/v1/jobs?deadline=1h", (line for _ in range(1024)),
                                 "application/jsonl")
        assert status in (413, None)
        with PeakRss(daemon) as bad_lines:
            status = post_stream(daemon, "/v1/jobs?deadline=1h", (line for _ in range(100)),
                                 "application/jsonl")
        assert status == 400
        # Parsed (600,000 values, under the limit) until the JSON breaks off.
        malformed = b'{"model": "gpt-4o-mini", "messages": [' + b"12345678," * (5 * MIB // 9)
        with PeakRss(daemon) as bodies:
            for _ in range(30):
                status, _answer = unix_request(daemon.socket_path, "POST",
                                               "/v1/chat/completions", malformed,
                                               {"content-type": "application/json"})
                assert status == 400
        # Valid JSON, under [daemon] max_body_size, and 7 million values: parsed, one took
        # 600 MiB. A chat request, a JSON job, and a JSONL line each.
        tiny = b"{}," * (7 * MIB)
        heavy = [
            ("/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": [' + tiny + b"{}]}",
             "application/json"),
            ("/v1/jobs", b'{"deadline": "1h", "requests": [' + tiny + b"{}]}",
             "application/json"),
            ("/v1/jobs?deadline=1h", b'{"custom_id": "x", "tags": [' + tiny[:3 * MIB] + b"{}]}\n",
             "application/jsonl"),
        ]
        with PeakRss(daemon) as tiny_values:
            for path, body, content_type in heavy:
                status, answer = unix_request(daemon.socket_path, "POST", path, body,
                                              {"content-type": content_type})
                assert status in (400, 413), answer
                assert "too_many_json_values" in str(answer), answer
        time.sleep(0.5)
        after = rss(daemon)
        assert unix_request(daemon.socket_path, "POST", "/v1/chat/completions", GOOD,
                            {"content-type": "application/json"})[0] == 200
    finally:
        daemon.terminate()
    figures = {"idle MiB": idle / MIB, "1 GB upload peak": big.peak / MIB,
               "100 MB bad lines peak": bad_lines.peak / MIB,
               "malformed bodies peak": bodies.peak / MIB,
               "tiny values peak": tiny_values.peak / MIB, "after": after / MIB}
    print(figures)  # shown with pytest -s
    assert big.peak - idle <= ALLOWED, figures
    assert bad_lines.peak - idle <= ALLOWED, figures
    assert bodies.peak - idle <= ALLOWED, figures
    assert tiny_values.peak - idle <= ALLOWED, figures
    assert after - idle <= ALLOWED // 4, figures


def multipart_chunks(megabytes: int, boundary: str) -> Iterator[bytes]:
    yield (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
           f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
           'filename="big.jsonl"\r\n\r\n').encode()
    line = b'{"custom_id": "x", "method": "POST"}\n' * (MIB // 37)
    for _ in range(megabytes):
        yield line
    yield f"\r\n--{boundary}--\r\n".encode()


def test_a_200_mb_batch_file_streams_to_disk_and_back(tmp_path: Path, sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url, config_toml='[files]\nmax_size = "200MiB"\n',
                          process=True)
    try:
        for _ in range(3):
            assert unix_request(daemon.socket_path, "POST", "/v1/chat/completions", GOOD,
                                {"content-type": "application/json"})[0] == 200
        time.sleep(1.0)
        idle = rss(daemon)
        boundary = "big-upload"
        kind = f"multipart/form-data; boundary={boundary}"
        with PeakRss(daemon) as refused:
            status = post_stream(daemon, "/v1/files", multipart_chunks(300, boundary), kind)
        assert status in (413, None)
        assert list((daemon.state_dir / "files").iterdir()) == []  # nothing half-stored
        with PeakRss(daemon) as stored:
            connection = UnixHTTPConnection(daemon.socket_path, timeout=120)
            connection.request("POST", "/v1/files", body=multipart_chunks(199, boundary),
                               encode_chunked=True, headers={"content-type": kind})
            answer = orjson.loads(connection.getresponse().read())
            connection.close()
        assert answer["bytes"] == 199 * (MIB // 37) * 37, answer
        with PeakRss(daemon) as downloaded:
            connection = UnixHTTPConnection(daemon.socket_path, timeout=120)
            connection.request("GET", f"/v1/files/{answer['id']}/content")
            response = connection.getresponse()
            size = 0
            while chunk := response.read(MIB):
                size += len(chunk)
            connection.close()
        assert size == answer["bytes"]
    finally:
        daemon.terminate()
    figures = {"idle MiB": idle / MIB, "300 MB refused peak": refused.peak / MIB,
               "199 MiB stored peak": stored.peak / MIB,
               "download peak": downloaded.peak / MIB}
    print(figures)
    for peak in (refused.peak, stored.peak, downloaded.peak):
        assert peak - idle <= ALLOWED, figures
