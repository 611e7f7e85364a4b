"""``OpenAIProvider``: forwards calls to an OpenAI-compatible API, and runs its batches.

Two clients, each pooled once per provider for the daemon's life:

- the data plane (chat, responses, embeddings) forwards the request bytes with the daemon's
  HTTP/1.1 pool (``llmspool.core.http1``, about a tenth less CPU per call than aiohttp) and
  hands back the raw answer, because parsing and re-encoding through the SDK's models costs
  ~3 ms per call (DESIGN.md, "Performance notes") and the daemon needs only usage, tier and errors;
- the control plane (models, files and batches) uses the official ``openai`` SDK with
  ``max_retries=0``, because the daemon owns its retry policy. The Batch API half of
  ``llmspool.core.provider.BatchProvider`` lives in ``llmspool_openai.batches``; the provider
  delegates to it.

A request with a ``request_id`` carries it as ``X-Client-Request-Id``, the header in which
OpenAI takes a caller's id for a call (ASCII, at most 512 characters: an id that is not is not
sent), so that the daemon's ledger entries can be matched to the provider's records. The
provider's ``organization`` and ``project`` keys (``llmspool_openai.keys``) go on every call of
both planes as ``OpenAI-Organization`` and ``OpenAI-Project``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import ClassVar, Self

import openai
from llmspool.plugin_api import (
    BatchCapabilities,
    ConnectionCounter,
    DelegatedBatches,
    Endpoint,
    Http1Pool,
    Http1Response,
    ProviderSettings,
    Tier,
    UpstreamRequest,
    pooled_http1,
)

from llmspool_openai._errors import sdk_errors, unreachable
from llmspool_openai.batches import (
    CAPABILITIES,
    OpenAIBatches,
    control_plane_client,
    transfer_timeout,
)
from llmspool_openai.keys import ORGANIZATION, PROJECT
from llmspool_openai.tiers import body_for_tier

CLIENT_REQUEST_ID = "X-Client-Request-Id"
MAX_CLIENT_REQUEST_ID = 512


def client_request_id_headers(request_id: str | None) -> dict[str, str] | None:
    """The header carrying ``request_id`` upstream, or ``None`` if there is none to send: no
    id, or one OpenAI would refuse (empty, over 512 characters, not printable ASCII)."""
    if (
        not request_id
        or len(request_id) > MAX_CLIENT_REQUEST_ID
        or not request_id.isascii()
        or not request_id.isprintable()
    ):
        return None
    return {CLIENT_REQUEST_ID: request_id}


class _Http1Answer:
    """An answer of the HTTP/1.1 pool seen through ``llmspool.core.provider.UpstreamResponse``:
    a connection lost mid-body is the provider unreachable."""

    __slots__ = ("_provider", "_response")

    def __init__(self, provider: str, response: Http1Response) -> None:
        self._provider = provider
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers  # names lower-cased

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except OSError as exc:
            raise unreachable(self._provider, exc) from exc

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.iter_chunks():
                yield chunk
        except OSError as exc:
            raise unreachable(self._provider, exc) from exc


def account_headers(organization: str, project: str) -> dict[str, str]:
    """The headers that put a call in an OpenAI organization and project (none for "")."""
    headers = {}
    if organization:
        headers["OpenAI-Organization"] = organization
    if project:
        headers["OpenAI-Project"] = project
    return headers


class OpenAIProvider(DelegatedBatches):
    """One ``[providers.NAME]`` of kind ``openai``."""

    # What `llmspool plugins` reports (llmspool.core.provider.provider_capabilities), besides the
    # Batch API methods below: every endpoint, streaming, and the flex and priority tiers.
    endpoints: ClassVar[frozenset[Endpoint]] = frozenset(Endpoint)
    service_tiers: ClassVar[frozenset[Tier]] = frozenset({Tier.STANDARD, Tier.FLEX,
                                                          Tier.PRIORITY})
    batch_capabilities: ClassVar[BatchCapabilities] = CAPABILITIES

    def __init__(self, settings: ProviderSettings) -> None:
        self.name = settings.name
        self._config = settings.config
        self._api_key = settings.api_key
        self._organization: str = settings.option(ORGANIZATION)
        self._project: str = settings.option(PROJECT)
        self._account_headers = account_headers(self._organization, self._project)
        self._base_url = settings.config.base_url.rstrip("/")
        self._pool: Http1Pool | None = None
        self._sdk: openai.AsyncOpenAI | None = None
        self._batches: OpenAIBatches | None = None
        self._connections = ConnectionCounter()

    async def __aenter__(self) -> Self:
        self._pool = pooled_http1(self._config, self._api_key, self._connections,
                                  headers=self._account_headers)
        self._sdk = control_plane_client(self._config, self._api_key,
                                         organization=self._organization, project=self._project)
        self._batches = OpenAIBatches(
            self._sdk, self.name, transfer_timeout=transfer_timeout(self._config)
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None
        if self._sdk is not None:
            await self._sdk.close()
            self._sdk = None
            self._batches = None

    @asynccontextmanager
    async def send(self, request: UpstreamRequest) -> AsyncIterator[_Http1Answer]:
        if self._pool is None:
            raise RuntimeError("OpenAIProvider used outside its `async with`")
        try:
            response = await self._pool.post(
                request.endpoint.upstream_path, body_for_tier(request.body, request.tier),
                client_request_id_headers(request.request_id),
            )
        except OSError as exc:  # TimeoutError (the connect timeout) is one
            raise unreachable(self.name, exc) from exc
        try:
            yield _Http1Answer(self.name, response)
        finally:
            # A body not read to the end (a client that went away mid-stream) closes the
            # connection rather than returning a half-read one to the pool.
            response.release()

    def connection_stats(self) -> dict[str, int]:
        """``{"requests": n, "reused": m}`` of the data plane: requests put on a connection, and
        those of them sent on one that had already carried a request (keep-alive at work)."""
        return self._connections.snapshot()

    async def list_models(self) -> list[str]:
        if self._sdk is None:
            raise RuntimeError("OpenAIProvider used outside its `async with`")
        with sdk_errors(self.name):
            return [model.id async for model in self._sdk.models.list()]

    # The Batch API (llmspool.core.provider.BatchProvider): see llmspool_openai.batches.

    def _batch_api(self) -> OpenAIBatches:
        if self._batches is None:
            raise RuntimeError("OpenAIProvider used outside its `async with`")
        return self._batches

    async def download_file(self, file_id: str, destination: Path) -> int:
        return await self._batch_api().download_file(file_id, destination)

    async def delete_file(self, file_id: str) -> None:
        await self._batch_api().delete_file(file_id)
