"""Every Batch API control-plane call of the OpenAI plugin must pass Steady's validation against
OpenAI's spec: upload, file search, create (with metadata), retrieve, cancel, batch search,
download and delete.

Steady answers with examples it generates from the spec, which need not read as a batch the
daemon can use; so validity is not inferred from a call's success but read from each answer's
``x-steady-request-valid`` header, recorded by an httpx2 event hook on the SDK's HTTP client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio
import httpx2
import openai
import orjson
import pytest
from llmspool.core.calls import Endpoint
from llmspool.core.config.sections import ProviderConfig
from llmspool.core.errors import BadUpstreamAnswer
from llmspool.core.provider import BatchProvider, BatchSubmission, ProviderSettings
from llmspool.core.remote_batch import RemoteBatch
from llmspool_openai import OpenAIProvider
from llmspool_openai.batches import OpenAIBatches, control_plane_client, transfer_timeout

pytestmark = pytest.mark.conformance

T = TypeVar("T")


@dataclass(frozen=True)
class Exchange:
    """One request and what Steady said of it."""

    method: str
    matched_path: str | None  # the spec's path template Steady matched, e.g. /batches/{batch_id}
    status: int
    valid: str | None
    errors: str


@dataclass
class Recorder:
    exchanges: list[Exchange] = field(default_factory=list)

    async def __call__(self, response: httpx2.Response) -> None:
        errors = " | ".join(
            value for name, value in sorted(response.headers.items())
            if name.startswith("x-steady-error-") and name.endswith("-message")
        )
        self.exchanges.append(Exchange(
            method=response.request.method,
            matched_path=response.headers.get("x-steady-matched-path"),
            status=response.status_code,
            valid=response.headers.get("x-steady-request-valid"),
            errors=errors,
        ))


@asynccontextmanager
async def watched_sdk(steady_url: str, recorder: Recorder) -> AsyncIterator[openai.AsyncOpenAI]:
    """The control-plane client the provider builds, with the recorder on its HTTP client."""
    config = ProviderConfig(base_url=steady_url)
    http_client = openai.DefaultAsyncHttpxClient(event_hooks={"response": [recorder]})
    sdk = control_plane_client(config, "sk-test", http_client=http_client)
    try:
        yield sdk
    finally:
        await sdk.close()


async def tolerant(call: Awaitable[T]) -> T | None:
    """The call's result, or None when Steady's generated answer does not read as a batch."""
    try:
        return await call
    except BadUpstreamAnswer:
        return None


def write_batch_input(path: Path) -> None:
    lines = [
        {"custom_id": f"req-{n}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "max_tokens": 20,
                  "messages": [{"role": "user", "content": f"Say {n}."}]}}
        for n in range(3)
    ]
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))


EXPECTED_CALLS = [
    ("POST", "/files"),
    ("GET", "/files"),
    ("POST", "/batches"),
    ("GET", "/batches/{batch_id}"),
    ("POST", "/batches/{batch_id}/cancel"),
    ("GET", "/batches"),
    ("GET", "/files/{file_id}/content"),
    ("DELETE", "/files/{file_id}"),
]


def test_every_batch_control_plane_call_is_valid(steady_url: str, tmp_path: Path) -> None:
    recorder = Recorder()
    source = tmp_path / "input.jsonl"
    write_batch_input(source)
    destination = tmp_path / "output.jsonl"

    async def run() -> None:
        async with watched_sdk(steady_url, recorder) as sdk:
            batches = OpenAIBatches(
                sdk, "openai", transfer_timeout=transfer_timeout(ProviderConfig())
            )
            file_id = await batches.upload_batch_file(source, "llmspool-intent-1.jsonl")
            assert file_id
            found = await batches.find_batch_file("llmspool-intent-1.jsonl")
            assert found is None or isinstance(found, str)
            submission = BatchSubmission("intent-1", Endpoint.CHAT, "gpt-4o-mini", 1, source,
                                         file_id, submitted_after=0.0)
            created = await tolerant(batches.create_batch(submission))
            batch_id = created.id if created is not None else "batch_abc123"
            for answer in (await tolerant(batches.retrieve_batch(batch_id)),
                           await tolerant(batches.cancel_batch(batch_id)),
                           await tolerant(batches.find_batch(submission))):
                assert answer is None or isinstance(answer, RemoteBatch)
            written = await batches.download_file("file-abc123", destination)
            assert destination.stat().st_size == written
            await batches.delete_file(file_id)

    anyio.run(run)
    assert [(e.method, e.matched_path) for e in recorder.exchanges] == EXPECTED_CALLS
    for exchange in recorder.exchanges:
        assert exchange.valid == "true", (exchange.method, exchange.matched_path, exchange.errors)
        assert exchange.status == 200, exchange
    assert not destination.with_suffix(".jsonl.part").exists()


def test_the_recorder_sees_an_invalid_request(steady_url: str) -> None:
    # The check above is only worth something if an invalid request shows up as invalid.
    recorder = Recorder()

    async def run() -> None:
        async with watched_sdk(steady_url, recorder) as sdk:
            with pytest.raises(openai.BadRequestError):
                await sdk.batches.create(
                    input_file_id="file-abc123", endpoint="/v1/chat/completions",
                    completion_window="48h",  # type: ignore[arg-type]
                )

    anyio.run(run)
    [exchange] = recorder.exchanges
    assert exchange.valid == "false" and exchange.status == 400
    assert "completion_window" in exchange.errors or "allowed values" in exchange.errors


def test_the_provider_is_a_batch_provider_and_delegates(steady_url: str, tmp_path: Path) -> None:
    # Through the provider itself: Steady answers an invalid request with a 400, which the
    # provider would raise as UpstreamError, so plain success means the requests were valid.
    source = tmp_path / "input.jsonl"
    write_batch_input(source)

    async def run() -> None:
        settings = ProviderSettings("openai", ProviderConfig(base_url=steady_url), "sk-test")
        async with OpenAIProvider(settings) as provider:
            assert isinstance(provider, BatchProvider)
            assert await provider.upload_batch_file(source, "llmspool-intent-2.jsonl")
            batch = await tolerant(provider.retrieve_batch("batch_abc123"))
            assert batch is None or isinstance(batch, RemoteBatch)
            await provider.delete_file("file-abc123")

    anyio.run(run)
