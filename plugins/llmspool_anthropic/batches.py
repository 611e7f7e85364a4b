"""Anthropic's Message Batches as the daemon's batch tier: the ``BatchProvider`` half of
``AnthropicProvider``.

What differs from OpenAI's Batch API, and how this module bridges it (facts: docs/anthropic.md):

- **No file upload**: the requests go inline with the create call (``uploads_input`` is False).
  Each line of the daemon's input file is translated to Messages params
  (``translate.anthropic_params``); the request body is streamed from a generator, so a
  batch of 100,000 requests is never held in memory as one document.
- **No metadata, no idempotency key**: the daemon's intent travels in every request's
  ``custom_id`` as ``<intent>_<daemon custom_id>`` (at most 24 + 1 + 21 characters, within
  Anthropic's 64 of ``[A-Za-z0-9_-]``). After a crash, ``find_batch`` lists the recent batches
  (newest first) and takes the one created since the intent, not already on record, holding as
  many requests as the intent; when that batch has ended its results are checked to carry the
  intent. A batch taken wrongly (another daemon on the same key made one of the same size in
  the same minutes, before it ended) cannot mis-bill: ``download_results`` keeps only the
  results whose ``custom_id`` carries this intent, and the lines left without a result are
  sent again.
- **Results** are one JSONL document per batch, in any order, each line
  ``{"custom_id", "result": {"type": "succeeded" | "errored" | "canceled" | "expired", ...}}``;
  they are streamed to disk, then translated in a worker thread to the daemon's result lines
  (``llmspool.core.batch_lines``): answers as OpenAI chat completions, errors as OpenAI error
  bodies with the status their type means, canceled and expired lines as ``batch_cancelled``
  and ``batch_expired``.
- **Statuses**: ``in_progress`` and ``canceling`` are the daemon's ``in_progress`` and
  ``cancelling``; ``ended`` is ``cancelled`` when a cancel was asked for, ``expired`` when
  requests expired, else ``completed``.
- A request the daemon cannot translate (an OpenAI feature Anthropic lacks) is kept out of the
  batch; its 400 answer waits in ``<intent>.refused.jsonl`` beside the input and joins the
  results, so it fails alone, once, as it would have in the batch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
from llmspool.plugin_api import (
    CANCELLED,
    EXPIRED,
    ApiError,
    BadUpstreamAnswer,
    BatchCapabilities,
    BatchFiles,
    BatchSubmission,
    Endpoint,
    RemoteBatch,
    ResultWriter,
    UpstreamError,
    read_input_lines,
    unreachable,
)

from llmspool_anthropic.answers import openai_completion, openai_error
from llmspool_anthropic.translate import anthropic_params

CAPABILITIES = BatchCapabilities(
    # Anthropic: at most 100,000 requests and 256 MB per batch. The bytes limit is the
    # daemon's input file, which translation makes a little larger or smaller: 200 MB leaves
    # room for the difference.
    max_lines=100_000, max_bytes=200 * 1024 * 1024, max_embedding_inputs=None,
    uploads_input=False, finds_by_metadata=False, endpoints=frozenset({Endpoint.CHAT}),
)
TRANSFER_TIMEOUT_FLOOR = 600.0  # seconds: Anthropic may take long to start a large answer
LIST_PAGE = 100  # the most batches one page of the list may hold
STREAM_CHUNK = 64 * 1024

# The HTTP status each error type of an errored batch result stands for (docs/anthropic.md).
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
_STATUSES = {"in_progress": "in_progress", "canceling": "cancelling"}


def tagged(intent: str, custom_id: str) -> str:
    """The ``custom_id`` a request carries upstream: the intent, then the daemon's own."""
    return f"{intent}_{custom_id}"


def untagged(intent: str, upstream_id: str) -> str | None:
    """The daemon's ``custom_id`` in ``upstream_id``, if it carries ``intent`` (None: it does
    not belong to this batch)."""
    prefix = f"{intent}_"
    return upstream_id[len(prefix):] if upstream_id.startswith(prefix) else None


def refused_path(files_input: Path, intent: str) -> Path:
    """Where the answers of the requests kept out of the batch wait for its results."""
    return files_input.with_name(f"{intent}.refused.jsonl")


def remote_batch(provider: str, document: Any) -> RemoteBatch:
    """Read a Message Batch object; raises ``BadUpstreamAnswer`` naming what is wrong."""
    if not isinstance(document, dict):
        raise _bad(provider, "the batch is not a JSON object")
    batch_id = document.get("id")
    if not isinstance(batch_id, str) or not batch_id:
        raise _bad(provider, f"batch id {batch_id!r} is not a non-empty string")
    counts = document.get("request_counts")
    if not isinstance(counts, dict):
        raise _bad(provider, "request_counts is not an object")
    numbers = {}
    for key in ("processing", "succeeded", "errored", "canceled", "expired"):
        value = counts.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _bad(provider, f"request_counts.{key} is {value!r}, not a count")
        numbers[key] = value
    processing = document.get("processing_status")
    if processing == "ended":
        if document.get("cancel_initiated_at"):
            status = "cancelled"
        elif numbers["expired"]:
            status = "expired"
        else:
            status = "completed"
    elif processing in _STATUSES:
        status = _STATUSES[processing]
    else:
        raise _bad(provider, f"processing_status {processing!r} is not in_progress, canceling "
                             "or ended")
    results_url = document.get("results_url")
    if results_url is not None and not isinstance(results_url, str):
        raise _bad(provider, f"results_url {results_url!r} is not a string")
    return RemoteBatch(
        id=batch_id, status=status, created_at=_timestamp(provider, document.get("created_at")),
        endpoint=Endpoint.CHAT.value, output_file_id=results_url or None,
        total=sum(numbers.values()), completed=numbers["succeeded"],
        failed=numbers["errored"] + numbers["expired"] + numbers["canceled"],
    )


def translate_results(raw: Path, files: BatchFiles) -> int:
    """Write the results downloaded to ``raw`` as the daemon's result lines at
    ``files.output`` (whole or absent), with the answers of the refused requests; returns the
    lines written. Runs in a worker thread: a large batch takes seconds."""
    refused = refused_path(files.input, files.intent)
    with ResultWriter(files.output) as writer:
        if refused.exists():
            with refused.open("rb") as lines:
                for line in lines:
                    writer.raw(line)
        with raw.open("rb") as lines:
            for line in lines:
                if line.strip():
                    _translate_result(line, files.intent, writer)
        return writer.commit()


def _translate_result(line: bytes, intent: str, writer: ResultWriter) -> None:
    try:
        document = orjson.loads(line)
        upstream_id = document["custom_id"]
        result = document["result"]
        kind = result["type"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return  # unreadable: its request gets no result and is sent again
    custom_id = untagged(intent, str(upstream_id))
    if custom_id is None:
        return  # not this intent's: see the module docstring
    if kind == "succeeded" and isinstance(result.get("message"), dict):
        message = result["message"]
        writer.answered(custom_id, 200, openai_completion(message),
                        line_id=str(message.get("id") or "") or None)
    elif kind == "errored":
        error = result.get("error")
        inner = error.get("error") if isinstance(error, dict) else None
        error_type = inner.get("type") if isinstance(inner, dict) else None
        status, body = openai_error(ERROR_STATUS.get(str(error_type), 500), error)
        writer.answered(custom_id, status, body)
    elif kind == "canceled":
        writer.not_run(custom_id, CANCELLED, "the batch was cancelled before this request ran")
    elif kind == "expired":
        writer.not_run(custom_id, EXPIRED, "the batch expired before this request ran")


class AnthropicBatches:
    """Message Batches of one ``[providers.NAME]`` of kind ``anthropic``."""

    batch_capabilities = CAPABILITIES

    def __init__(self, session: aiohttp.ClientSession, base_url: str, provider: str, *,
                 default_max_tokens: int, timeout: float) -> None:
        """``session`` carries the key and version headers; ``timeout`` bounds each read of
        a call (as httpx's timeouts do, so a long results download that keeps moving is
        never cut), at least ``TRANSFER_TIMEOUT_FLOOR``."""
        self._session = session
        self._url = base_url.rstrip("/") + "/messages/batches"
        self.name = provider
        self._default_max_tokens = default_max_tokens
        self._timeout = aiohttp.ClientTimeout(total=None,
                                              sock_read=max(timeout, TRANSFER_TIMEOUT_FLOOR))

    # --- no upload step -----------------------------------------------------------------------

    async def upload_batch_file(self, path: Path, filename: str) -> str:
        raise NotImplementedError("Message Batches take their requests inline")

    async def find_batch_file(self, filename: str) -> str | None:
        raise NotImplementedError("Message Batches take their requests inline")

    # --- batches ------------------------------------------------------------------------------

    async def create_batch(self, submission: BatchSubmission) -> RemoteBatch:
        refused = refused_path(submission.input_path, submission.intent)
        body, sent = await anyio.to_thread.run_sync(self._request_body, submission, refused)
        if not sent:
            raise BadUpstreamAnswer(  # abandoned: its lines go directly, and fail alone there
                f"{self.name}: none of the batch's {submission.lines} requests can be sent to "
                "Anthropic", code="untranslatable_batch")
        document = await self._call("POST", self._url, data=_chunks(body))
        return remote_batch(self.name, document)

    def _request_body(self, submission: BatchSubmission, refused: Path) -> tuple[Path, int]:
        """The create call's JSON written to a file beside the input (``<intent>.create.json``),
        and how many requests it holds; the answers of the requests refused go to
        ``refused``. In a worker thread: translating 100,000 requests takes seconds."""
        target = submission.input_path.with_name(f"{submission.intent}.create.json")
        sent = 0
        with target.open("wb") as out, ResultWriter(refused) as answers:
            out.write(b'{"requests":[')
            for line in read_input_lines(submission.input_path):
                try:
                    params = anthropic_params(line.json(),
                                              default_max_tokens=self._default_max_tokens)
                except ApiError as error:
                    answers.answered(line.custom_id, error.status, orjson.loads(error.body()))
                    continue
                if sent:
                    out.write(b",")
                out.write(orjson.dumps({"custom_id": tagged(submission.intent, line.custom_id),
                                        "params": params}))
                sent += 1
            out.write(b"]}")
            answers.commit()
        return target, sent

    async def find_batch(self, submission: BatchSubmission) -> RemoteBatch | None:
        """See the module docstring: the oldest batch created since the intent, not on record,
        with as many requests; an ended one must carry the intent in its results."""
        candidates = [batch async for batch in self._list_since(submission.submitted_after)
                      if batch.id not in submission.known and batch.total == submission.lines]
        for batch in reversed(candidates):  # oldest first: the closest to the intent
            ended = batch.terminal and batch.output_file_id is not None
            if ended and not await self._carries(batch.output_file_id or "", submission.intent):
                continue
            return batch
        return None

    async def _list_since(self, since: float) -> AsyncIterator[RemoteBatch]:
        """Batches newest first, every page, down to those created before ``since``."""
        after: str | None = None
        while True:
            query = {"limit": str(LIST_PAGE), **({"after_id": after} if after else {})}
            page = await self._call("GET", self._url, params=query)
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list):
                raise _bad(self.name, "the batch list has no data array")
            for item in data:
                batch = remote_batch(self.name, item)
                if batch.created_at < since:
                    return
                yield batch
            last = page.get("last_id")
            if not page.get("has_more") or not isinstance(last, str) or not data:
                return
            after = last

    async def _carries(self, results_url: str, intent: str) -> bool:
        """Whether the first result of an ended batch carries ``intent``."""
        async with self._open("GET", results_url) as response:
            first = await response.content.readline()
        try:
            upstream_id = orjson.loads(first).get("custom_id")
        except (orjson.JSONDecodeError, AttributeError):
            return False
        return isinstance(upstream_id, str) and untagged(intent, upstream_id) is not None

    async def retrieve_batch(self, batch_id: str) -> RemoteBatch:
        return remote_batch(self.name, await self._call("GET", f"{self._url}/{batch_id}"))

    async def cancel_batch(self, batch_id: str) -> RemoteBatch:
        return remote_batch(self.name,
                            await self._call("POST", f"{self._url}/{batch_id}/cancel"))

    async def download_results(self, batch: RemoteBatch, files: BatchFiles) -> int:
        if await anyio.Path(files.output).exists():
            return 0
        url = batch.output_file_id or f"{self._url}/{batch.id}/results"
        raw = files.output.with_name(f"{files.intent}.results.jsonl")
        with contextlib.suppress(FileNotFoundError):
            raw.unlink()
        async with self._open("GET", url) as response:
            with raw.open("wb") as sink:  # buffered writes to the page cache, as OpenAI's
                async for chunk in response.content.iter_chunked(STREAM_CHUNK):
                    sink.write(chunk)
        try:
            return await anyio.to_thread.run_sync(translate_results, raw, files)
        finally:
            raw.unlink(missing_ok=True)

    async def delete_batch_files(self, batch: RemoteBatch) -> None:
        """Delete the ended batch upstream (its results go with it); a 404 means it is gone."""
        await self._call("DELETE", f"{self._url}/{batch.id}", missing_ok=True)

    # --- HTTP -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _open(self, method: str, url: str, **options: Any
                    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A call whose answer must be a 2xx (an error answer raises ``UpstreamError`` in
        OpenAI's shape, as the data plane's do)."""
        try:
            async with self._session.request(method, url, timeout=self._timeout,
                                             **options) as response:
                if response.status >= 300:
                    raw = await response.read()
                    raise self._error(response.status, raw, response.headers)
                yield response
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise unreachable(self.name, exc) from exc

    async def _call(self, method: str, url: str, *, missing_ok: bool = False,
                    **options: Any) -> Any:
        try:
            async with self._open(method, url, **options) as response:
                raw = await response.read()
        except UpstreamError as error:
            if missing_ok and error.status == 404:
                return None
            raise
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _bad(self.name, "the answer is not JSON") from exc

    def _error(self, status: int, raw: bytes, headers: Mapping[str, str]) -> UpstreamError:
        try:
            parsed: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = raw.decode(errors="replace")
        mapped, body = openai_error(status, parsed)
        kept = {name: headers[name] for name in ("retry-after", "request-id") if name in headers}
        return UpstreamError(self.name, mapped, orjson.dumps(body), upstream_headers=kept)


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    """The file at ``path`` in chunks (an aiohttp request body), removed once sent."""
    try:
        with path.open("rb") as source:
            while chunk := source.read(STREAM_CHUNK):
                yield chunk
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _timestamp(provider: str, value: Any) -> float:
    if not isinstance(value, str):
        raise _bad(provider, f"created_at {value!r} is not an RFC 3339 time")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise _bad(provider, f"created_at {value!r} is not an RFC 3339 time") from exc


def _bad(provider: str, what: str) -> BadUpstreamAnswer:
    return BadUpstreamAnswer(f"{provider} answered a message batch we cannot read: {what}",
                             code="upstream_shape")
