"""The Batch API control plane of ``OpenAIProvider``: files and batches through the ``openai`` SDK.

``OpenAIBatches`` implements the batch half of ``llmspool.core.provider.BatchProvider``; the
provider delegates to it. Every SDK exception is mapped at this boundary (``_errors.sdk_errors``)
and every batch object is read with ``batch_objects.remote_batch`` from the JSON the upstream sent
(the SDK's models are built without validation, so ``to_dict`` gives that JSON back as it came).

Large files never sit in memory. An upload hands the SDK an open file object: the SDK passes it
to httpx2 untouched (``openai._files._async_transform_file`` reads only ``PathLike`` inputs into
bytes), and httpx2's ``MultipartStream`` sends it in 64 KiB reads with a Content-Length taken
from ``fstat`` (``httpx2._multipart.FileField``). A download writes the streamed body chunk by
chunk to ``NAME.part`` and renames it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

import anyio
import httpx2
import openai
from llmspool.plugin_api import (
    BadUpstreamAnswer,
    BatchCapabilities,
    BatchFiles,
    BatchSubmission,
    Endpoint,
    ProviderConfig,
    RemoteBatch,
)

from llmspool_openai._errors import sdk_errors
from llmspool_openai.batch_objects import INTENT_KEY, remote_batch

TRANSFER_TIMEOUT_FLOOR = 600.0
"""Seconds, the least read/write timeout of an upload or a download (see ``transfer_timeout``)."""

BATCH_LIST_PAGE = 100  # the API's maximum page size for GET /batches

CAPABILITIES = BatchCapabilities(
    # OpenAI's published limits: 50,000 requests and 200 MB per input file, and at most
    # 50,000 embedding inputs across a batch's requests.
    max_lines=50_000, max_bytes=200 * 1024 * 1024, max_embedding_inputs=50_000,
    uploads_input=True, finds_by_metadata=True,
    endpoints=frozenset({Endpoint.RESPONSES, Endpoint.CHAT, Endpoint.EMBEDDINGS}),
)

_BatchEndpoint = Literal["/v1/responses", "/v1/chat/completions", "/v1/embeddings"]
_BATCH_ENDPOINTS: dict[Endpoint, _BatchEndpoint] = {
    Endpoint.RESPONSES: "/v1/responses",
    Endpoint.CHAT: "/v1/chat/completions",
    Endpoint.EMBEDDINGS: "/v1/embeddings",
}


def control_plane_client(
    config: ProviderConfig, api_key: str, *, http_client: httpx2.AsyncClient | None = None,
    organization: str = "", project: str = "",
) -> openai.AsyncOpenAI:
    """The SDK client of one provider's control plane.

    ``max_retries=0`` because the daemon owns its retry policy (the SDK would retry 429s,
    ``insufficient_quota`` included). ``http_client`` lets tests watch the traffic.
    ``organization`` and ``project`` ("": not sent) are the provider's keys of those names.
    """
    return openai.AsyncOpenAI(
        api_key=api_key or "unset",  # the SDK refuses an empty key; some local servers need none
        # None leaves the SDK's own defaults ($OPENAI_ORG_ID, $OPENAI_PROJECT_ID) as they were.
        organization=organization or None,
        project=project or None,
        base_url=config.base_url.rstrip("/"),
        max_retries=0,
        timeout=httpx2.Timeout(config.timeout, connect=config.connect_timeout),
        http_client=http_client,
    )


def transfer_timeout(config: ProviderConfig) -> httpx2.Timeout:
    """The timeout of a file upload or download: ``max(config.timeout, 600 s)`` per operation.

    httpx2 timeouts bound each socket operation, not the whole call, so a slow upload that keeps
    moving is never cut. What takes long is the silence around a big body: OpenAI stores and
    checks an input file of up to 200 MB before it answers the upload, and may take as long to
    start sending a large output file. ``[providers.NAME] timeout`` is tuned for single calls
    (an operator may set it to 30 s), which must not make every large transfer fail.
    """
    return httpx2.Timeout(
        max(config.timeout, TRANSFER_TIMEOUT_FLOOR), connect=config.connect_timeout
    )


class OpenAIBatches:
    """Files and batches of one OpenAI-compatible provider (``llmspool.core.provider.BatchApi``)."""

    batch_capabilities = CAPABILITIES

    def __init__(
        self, sdk: openai.AsyncOpenAI, provider: str, *, transfer_timeout: httpx2.Timeout
    ) -> None:
        self._sdk = sdk
        self.name = provider
        self._transfer_timeout = transfer_timeout

    async def upload_batch_file(self, path: Path, filename: str) -> str:
        # Blocking open and reads are deliberate: httpx2 reads the file object synchronously in
        # 64 KiB chunks from the page cache (microseconds each); a thread hop per chunk would
        # cost more than it saves.
        with sdk_errors(self.name), path.open("rb") as body:
            # A (name, file object) tuple, not a Path: the SDK reads a Path whole into memory.
            uploaded = await self._sdk.files.create(
                file=(filename, body), purpose="batch", timeout=self._transfer_timeout
            )
        return _file_id(self.name, _document(uploaded))

    async def find_batch_file(self, filename: str) -> str | None:
        with sdk_errors(self.name):
            # Newest first, so a name uploaded twice (a retried upload) gives the latest copy;
            # the SDK's async iteration fetches every page.
            async for item in self._sdk.files.list(purpose="batch", order="desc"):
                document = _document(item)
                if not isinstance(document, dict):
                    raise _bad(self.name, "an entry of the file list is not a JSON object")
                if (
                    document.get("filename") == filename
                    # Some OpenAI-compatible servers ignore the purpose filter.
                    and document.get("purpose", "batch") == "batch"
                    # A file the upstream could not process cannot feed a batch: upload again.
                    and document.get("status") != "error"
                ):
                    return _file_id(self.name, document)
        return None

    async def create_batch(self, submission: BatchSubmission) -> RemoteBatch:
        if submission.input_file_id is None:
            raise RuntimeError("an OpenAI batch is created from an uploaded input file")
        with sdk_errors(self.name):
            batch = await self._sdk.batches.create(
                input_file_id=submission.input_file_id,
                endpoint=_BATCH_ENDPOINTS[submission.endpoint],
                completion_window="24h",
                metadata={INTENT_KEY: submission.intent},
            )
        return remote_batch(self.name, _document(batch))

    async def retrieve_batch(self, batch_id: str) -> RemoteBatch:
        with sdk_errors(self.name):
            batch = await self._sdk.batches.retrieve(batch_id)
        return remote_batch(self.name, _document(batch))

    async def cancel_batch(self, batch_id: str) -> RemoteBatch:
        with sdk_errors(self.name):
            batch = await self._sdk.batches.cancel(batch_id)
        return remote_batch(self.name, _document(batch))

    async def find_batch(self, submission: BatchSubmission) -> RemoteBatch | None:
        """The newest batch whose ``metadata`` carries the submission's intent."""
        with sdk_errors(self.name):
            # GET /batches lists newest first: the first match is the newest one, and once a
            # batch is older than ``submitted_after`` no later page can hold a match.
            async for item in self._sdk.batches.list(limit=BATCH_LIST_PAGE):
                batch = remote_batch(self.name, _document(item))
                if batch.created_at < submission.submitted_after:
                    return None
                if batch.intent == submission.intent:
                    return batch
        return None

    async def download_results(self, batch: RemoteBatch, files: BatchFiles) -> int:
        """OpenAI's output and error files are already the daemon's result lines: each is
        downloaded as it is (one already on disk is not fetched again)."""
        written = 0
        for file_id, path in ((batch.output_file_id, files.output),
                              (batch.error_file_id, files.errors)):
            if file_id is not None and not await anyio.Path(path).exists():
                written += await self.download_file(file_id, path)
        return written

    async def delete_batch_files(self, batch: RemoteBatch) -> None:
        for file_id in (batch.input_file_id, batch.output_file_id, batch.error_file_id):
            if file_id is not None:
                await self.delete_file(file_id)

    async def download_file(self, file_id: str, destination: Path) -> int:
        partial = destination.with_suffix(destination.suffix + ".part")
        written = 0
        try:
            with sdk_errors(self.name):
                async with self._sdk.files.with_streaming_response.content(
                    file_id, timeout=self._transfer_timeout
                ) as response:
                    # Blocking writes, as for the upload: buffered, to the page cache.
                    with partial.open("wb") as sink:
                        async for chunk in response.iter_bytes():
                            sink.write(chunk)
                            written += len(chunk)
                        sink.flush()
                        # Durable before the rename, so a crash cannot leave ``destination``
                        # renamed but empty; fsync of a large file is slow: off the event loop.
                        await anyio.to_thread.run_sync(os.fsync, sink.fileno())
            os.replace(partial, destination)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return written

    async def delete_file(self, file_id: str) -> None:
        # A 404 means the file is gone, which is what was asked. The answer's ``deleted`` flag
        # is not checked: a file left behind costs only storage, and purpose=batch files
        # expire after 30 days anyway.
        with sdk_errors(self.name), contextlib.suppress(openai.NotFoundError):
            await self._sdk.files.delete(file_id)


def _document(answer: object) -> object:
    """The JSON object an SDK model was built from (anything else is passed on for checking)."""
    if isinstance(answer, openai.BaseModel):
        # The SDK builds models from the answer without validating it; to_dict (exclude_unset)
        # gives back the fields the upstream sent, with the values it sent.
        return answer.to_dict(warnings=False)
    return answer  # a non-JSON answer comes back from the SDK as text


def _file_id(provider: str, document: object) -> str:
    file_id = document.get("id") if isinstance(document, dict) else None
    if not isinstance(file_id, str) or not file_id:
        raise _bad(provider, f"a file object has id {file_id!r}, not a non-empty string")
    return file_id


def _bad(provider: str, what: str) -> BadUpstreamAnswer:
    return BadUpstreamAnswer(f"{provider} answered a file object we cannot read: {what}",
                             code="upstream_shape")
