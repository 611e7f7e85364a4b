"""The OpenAI plugin's Batch API control plane against a scripted local server (aiohttp.web on
127.0.0.1, started and stopped by each test).

Mostly the error mapping at the plugin's boundary: an HTTP error answer (429, 500, 404) becomes
``UpstreamError`` with the upstream's status, raw body and retry headers; a hung answer
``UpstreamUnreachable`` 504 ``upstream_timeout``; a refused connection ``UpstreamUnreachable``
502 ``upstream_unreachable``; an answer that is not a batch ``BadUpstreamAnswer``. Also what only
a scripted server can show: pagination of the two searches, the download's all-or-nothing
file, and that an upload streams from disk instead of reading the file into memory.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson
import pytest
from aiohttp import BodyPartReader, web
from llmspool.core.calls import Endpoint
from llmspool.core.config.sections import ProviderConfig
from llmspool.core.errors import BadUpstreamAnswer, UpstreamError, UpstreamUnreachable
from llmspool.core.provider import BatchSubmission, ProviderSettings
from llmspool_openai import OpenAIProvider
from llmspool_openai.batches import OpenAIBatches, control_plane_client

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TIMEOUT = 0.5  # seconds: every client timeout here, so a hung answer fails fast


@dataclass
class Upstream:
    """A scripted upstream: ``routes`` answer ``(method, path under /v1)``; ``seen`` logs the
    requests as ``(method, path, query)``; hung handlers wait on ``release``."""

    routes: Mapping[tuple[str, str], Handler]
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.removeprefix("/v1")
        self.seen.append((request.method, path, dict(request.query)))
        handler = self.routes.get((request.method, path))
        if handler is None:
            return web.json_response({"error": {"message": f"unscripted {path}"}}, status=418)
        return await handler(request)


@asynccontextmanager
async def serve(routes: Mapping[tuple[str, str], Handler]) -> AsyncIterator[tuple[str, Upstream]]:
    """Start a scripted upstream; yields its base URL (ending in /v1) and the script."""
    upstream = Upstream(routes)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.dispatch)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1", upstream
    finally:
        upstream.release.set()
        await runner.cleanup()


@asynccontextmanager
async def plugin(base_url: str) -> AsyncIterator[OpenAIBatches]:
    """The plugin's control plane, as the provider builds it, with short timeouts."""
    config = ProviderConfig(base_url=base_url, timeout=TIMEOUT, connect_timeout=TIMEOUT)
    sdk = control_plane_client(config, "sk-test")
    try:
        yield OpenAIBatches(sdk, "openai", transfer_timeout=httpx2.Timeout(TIMEOUT))
    finally:
        await sdk.close()


def answer(status: int, body: bytes, headers: dict[str, str] | None = None,
           content_type: str = "application/json") -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type=content_type,
                            headers=headers or {})
    return handle


def submission(intent: str, *, file_id: str = "file-in", since: float = 0.0) -> BatchSubmission:
    """The batch the daemon would create for ``intent`` (the input path is never read)."""
    return BatchSubmission(intent, Endpoint.CHAT, "gpt-4o-mini", 1, Path("unused.jsonl"),
                           file_id, submitted_after=since)


def batch_json(batch_id: str, created_at: float, metadata: dict[str, str] | None = None,
               status: str = "in_progress") -> dict[str, Any]:
    return {
        "id": batch_id, "object": "batch", "endpoint": "/v1/chat/completions",
        "input_file_id": "file-in", "completion_window": "24h", "status": status,
        "created_at": created_at, "request_counts": {"total": 3, "completed": 1, "failed": 0},
        "metadata": metadata or {},
    }


def run(test: Callable[[], Awaitable[None]]) -> None:
    anyio.run(test)


# --- HTTP error answers -> UpstreamError -----------------------------------------------------

RATE_LIMITED = orjson.dumps({"error": {
    "message": "Rate limit reached for requests", "type": "requests",
    "param": None, "code": "rate_limit_exceeded",
}})


def test_a_429_is_an_upstream_error_with_its_body_and_retry_headers() -> None:
    headers = {"retry-after": "7", "retry-after-ms": "6500", "x-request-id": "req_abc123",
               "x-ratelimit-remaining-requests": "0"}

    async def test() -> None:
        routes = {("GET", "/batches/batch_1"): answer(429, RATE_LIMITED, headers)}
        async with serve(routes) as (url, _), plugin(url) as batches:
            with pytest.raises(UpstreamError) as caught:
                await batches.retrieve_batch("batch_1")
        error = caught.value
        assert error.status == 429
        assert error.code == "rate_limit_exceeded"
        assert error.raw_body == RATE_LIMITED
        assert error.body() == RATE_LIMITED  # passed through as the provider sent it
        assert error.provider == "openai"
        assert error.upstream_headers == {
            "retry-after": "7", "retry-after-ms": "6500", "x-request-id": "req_abc123",
        }

    run(test)


def test_a_500_with_a_body_that_is_not_json_is_an_upstream_error() -> None:
    async def test() -> None:
        routes = {("POST", "/batches"): answer(500, b"upstream exploded",
                                               content_type="text/plain")}
        async with serve(routes) as (url, _), plugin(url) as batches:
            with pytest.raises(UpstreamError) as caught:
                await batches.create_batch(submission("i", file_id="file-in"))
        error = caught.value
        assert error.status == 500
        assert error.raw_body == b"upstream exploded"
        assert error.upstream_headers == {}
        assert b"openai answered HTTP 500" in error.body()  # rewritten in OpenAI's shape

    run(test)


NOT_FOUND = orjson.dumps({"error": {
    "message": "No batch found with id 'batch_gone'.", "type": "invalid_request_error",
    "param": None, "code": None,
}})


@pytest.mark.parametrize("call", ["retrieve", "cancel", "download"])
def test_a_404_is_an_upstream_error(call: str, tmp_path: Path) -> None:
    destination = tmp_path / "out.jsonl"

    async def test() -> None:
        routes = {
            ("GET", "/batches/batch_gone"): answer(404, NOT_FOUND),
            ("POST", "/batches/batch_gone/cancel"): answer(404, NOT_FOUND),
            ("GET", "/files/file-gone/content"): answer(404, NOT_FOUND),
        }
        async with serve(routes) as (url, _), plugin(url) as batches:
            with pytest.raises(UpstreamError) as caught:
                if call == "retrieve":
                    await batches.retrieve_batch("batch_gone")
                elif call == "cancel":
                    await batches.cancel_batch("batch_gone")
                else:
                    await batches.download_file("file-gone", destination)
        assert caught.value.status == 404
        assert caught.value.type == "invalid_request_error"
        assert caught.value.raw_body == NOT_FOUND

    run(test)
    assert list(tmp_path.iterdir()) == []  # neither the destination nor its .part


def test_deleting_a_file_that_is_gone_is_fine_but_other_errors_are_not() -> None:
    async def test() -> None:
        routes = {
            ("DELETE", "/files/file-gone"): answer(404, NOT_FOUND),
            ("DELETE", "/files/file-busy"): answer(500, b'{"error": {"message": "busy"}}'),
        }
        async with serve(routes) as (url, upstream), plugin(url) as batches:
            await batches.delete_file("file-gone")
            with pytest.raises(UpstreamError) as caught:
                await batches.delete_file("file-busy")
        assert caught.value.status == 500
        assert [(method, path) for method, path, _ in upstream.seen] == [
            ("DELETE", "/files/file-gone"), ("DELETE", "/files/file-busy"),
        ]

    run(test)


def test_model_listing_maps_errors_too() -> None:
    async def test() -> None:
        routes = {("GET", "/models"): answer(503, b'{"error": {"code": "server_is_overloaded"}}')}
        async with serve(routes) as (url, _):
            config = ProviderConfig(base_url=url, timeout=TIMEOUT)
            async with OpenAIProvider(ProviderSettings("openai", config, "sk-test")) as provider:
                with pytest.raises(UpstreamError) as caught:
                    await provider.list_models()
        assert caught.value.status == 503 and caught.value.code == "server_is_overloaded"

    run(test)


# --- no answer -> UpstreamUnreachable --------------------------------------------------------


def test_a_hung_answer_is_an_upstream_timeout() -> None:
    async def test() -> None:
        async def hang(request: web.Request) -> web.StreamResponse:
            await upstream.release.wait()
            return web.Response(status=200)

        routes = {("GET", "/batches/batch_1"): hang}
        async with serve(routes) as (url, upstream), plugin(url) as batches:
            with pytest.raises(UpstreamUnreachable) as caught:
                await batches.retrieve_batch("batch_1")
        assert caught.value.status == 504
        assert caught.value.code == "upstream_timeout"

    run(test)


def test_a_download_that_stalls_mid_body_times_out_and_leaves_no_file(tmp_path: Path) -> None:
    destination = tmp_path / "out.jsonl"

    async def test() -> None:
        async def stall(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"content-type": "application/octet-stream"})
            await response.prepare(request)
            await response.write(b'{"custom_id": "req-0", "response": {"status_code": 200}}\n')
            await upstream.release.wait()
            return response

        routes = {("GET", "/files/file-out/content"): stall}
        async with serve(routes) as (url, upstream), plugin(url) as batches:
            with pytest.raises(UpstreamUnreachable) as caught:
                await batches.download_file("file-out", destination)
        assert caught.value.status == 504 and caught.value.code == "upstream_timeout"

    run(test)
    assert list(tmp_path.iterdir()) == []


def test_a_refused_connection_is_upstream_unreachable() -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def test() -> None:
        async with plugin(f"http://127.0.0.1:{port}/v1") as batches:
            with pytest.raises(UpstreamUnreachable) as caught:
                await batches.find_batch(submission("i"))
        assert caught.value.status == 502
        assert caught.value.code == "upstream_unreachable"

    run(test)


# --- answers that are not what the API promises -> BadUpstreamAnswer -------------------------


@pytest.mark.parametrize(("body", "content_type", "named"), [
    (orjson.dumps({**batch_json("batch_1", 1.0), "status": "done"}), "application/json",
     "status"),
    (orjson.dumps({k: v for k, v in batch_json("batch_1", 1.0).items() if k != "id"}),
     "application/json", "'id'"),
    (b"{not json", "application/json", "not JSON"),
    (b"<html>gateway</html>", "text/html", "not a JSON object"),
])
def test_an_answer_that_is_not_a_batch_is_a_bad_upstream_answer(
    body: bytes, content_type: str, named: str
) -> None:
    async def test() -> None:
        routes = {("GET", "/batches/batch_1"): answer(200, body, content_type=content_type)}
        async with serve(routes) as (url, _), plugin(url) as batches:
            with pytest.raises(BadUpstreamAnswer) as caught:
                await batches.retrieve_batch("batch_1")
        assert named in caught.value.message
        assert caught.value.code == "upstream_shape"

    run(test)


def test_an_upload_answered_without_a_file_id_is_a_bad_upstream_answer(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"custom_id": "a"}\n')

    async def test() -> None:
        routes = {("POST", "/files"): answer(200, b'{"object": "file", "bytes": 19}')}
        async with serve(routes) as (url, _), plugin(url) as batches:
            with pytest.raises(BadUpstreamAnswer, match="id None"):
                await batches.upload_batch_file(source, "in.jsonl")

    run(test)


# --- pagination ------------------------------------------------------------------------------


def batch_pages(pages: dict[str | None, tuple[list[dict[str, Any]], bool]]) -> Handler:
    """GET /batches answering the page after the ``after`` cursor."""
    async def handle(request: web.Request) -> web.StreamResponse:
        data, has_more = pages[request.query.get("after")]
        return web.json_response({"object": "list", "data": data, "has_more": has_more})
    return handle


BATCH_PAGES: dict[str | None, tuple[list[dict[str, Any]], bool]] = {
    None: ([batch_json("b5", 500, {"llmspool_intent": "other"}), batch_json("b4", 400)], True),
    "b4": ([batch_json("b3", 300, {"llmspool_intent": "want"}),
            batch_json("b2", 200, {"llmspool_intent": "want"})], True),
    "b2": ([batch_json("b1", 100, {"llmspool_intent": "old"})], False),
}


@pytest.mark.parametrize(("value", "created_after", "found", "cursors"), [
    ("want", 150.0, "b3", [None, "b4"]),  # the newest match, on the second page
    ("missing", 250.0, None, [None, "b4"]),  # b2 is older than created_after: stop there
    ("missing", 0.0, None, [None, "b4", "b2"]),  # every page, to the last
])
def test_find_batch_pages_newest_first_down_to_created_after(
    value: str, created_after: float, found: str | None, cursors: list[str | None]
) -> None:
    async def test() -> None:
        routes = {("GET", "/batches"): batch_pages(BATCH_PAGES)}
        async with serve(routes) as (url, upstream), plugin(url) as batches:
            batch = await batches.find_batch(submission(value, since=created_after))
        assert (batch.id if batch else None) == found
        assert [query.get("after") for _, _, query in upstream.seen] == cursors
        assert all(query["limit"] == "100" for _, _, query in upstream.seen)

    run(test)


def test_find_batch_file_looks_through_every_page() -> None:
    def file_json(file_id: str, filename: str, status: str = "processed") -> dict[str, Any]:
        return {"id": file_id, "object": "file", "bytes": 10, "created_at": 1,
                "filename": filename, "purpose": "batch", "status": status}

    pages = {
        None: [file_json("file-9", "other.jsonl")],
        "file-9": [file_json("file-8", "want.jsonl", status="error"),
                   file_json("file-7", "want.jsonl")],
    }

    async def files(request: web.Request) -> web.StreamResponse:
        after = request.query.get("after")
        return web.json_response({"object": "list", "data": pages[after],
                                  "has_more": after is None})

    async def test() -> None:
        async with serve({("GET", "/files"): files}) as (url, upstream), plugin(url) as batches:
            assert await batches.find_batch_file("want.jsonl") == "file-7"
            assert await batches.find_batch_file("absent.jsonl") is None
        for _, _, query in upstream.seen:
            assert query["purpose"] == "batch" and query["order"] == "desc"

    run(test)


# --- transfers -------------------------------------------------------------------------------


def test_a_download_is_written_whole_and_replaces_the_destination(tmp_path: Path) -> None:
    destination = tmp_path / "out.jsonl"
    destination.write_bytes(b"stale\n")
    lines = [b'{"custom_id": "req-%d", "response": {"status_code": 200}}\n' % n
             for n in range(2000)]

    async def content(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "application/octet-stream"})
        await response.prepare(request)
        for start in range(0, len(lines), 500):
            await response.write(b"".join(lines[start:start + 500]))
        await response.write_eof()
        return response

    async def test() -> None:
        routes = {("GET", "/files/file-out/content"): content}
        async with serve(routes) as (url, _), plugin(url) as batches:
            written = await batches.download_file("file-out", destination)
        assert written == sum(map(len, lines))

    run(test)
    assert destination.read_bytes() == b"".join(lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_an_upload_streams_the_file_from_disk(tmp_path: Path) -> None:
    # 20 MB, as the daemon's benchmark uploads: reading it whole would allocate 20 MB at once.
    size = 20 * 1024 * 1024
    source = tmp_path / "big.jsonl"
    line = b'{"custom_id": "req", "method": "POST", "url": "/v1/embeddings", "body": {}}\n'
    with source.open("wb") as sink:
        sink.write(line * (size // len(line)))
    size = source.stat().st_size
    received: dict[str, Any] = {}

    async def upload(request: web.Request) -> web.StreamResponse:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "file":
                received["filename"] = part.filename
                received["content_type"] = part.headers.get("content-type")
                count = 0
                while chunk := await part.read_chunk():
                    count += len(chunk)
                received["bytes"] = count
            else:
                received[str(part.name)] = (await part.read()).decode()
        received["content_length"] = request.content_length
        return web.json_response({"id": "file-up", "object": "file", "bytes": received["bytes"],
                                  "created_at": 1, "filename": "x", "purpose": "batch"})

    async def test() -> None:
        async with serve({("POST", "/files"): upload}) as (url, _), plugin(url) as batches:
            tracemalloc.start()
            try:
                file_id = await batches.upload_batch_file(source, "llmspool-intent-9.jsonl")
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        assert file_id == "file-up"
        # Client and server both run in this process, in 64 KiB chunks: a few MB at most.
        assert peak < size // 4, f"peak {peak / 1e6:.1f} MB while uploading {size / 1e6:.0f} MB"

    run(test)
    assert received["bytes"] == size
    assert received["filename"] == "llmspool-intent-9.jsonl"
    assert received["purpose"] == "batch"
    # A known length (from fstat), not chunked transfer encoding.
    assert received["content_length"] is not None and received["content_length"] > size
    assert os.path.exists(source)
