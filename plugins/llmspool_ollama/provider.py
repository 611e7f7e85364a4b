"""``OllamaProvider``: forwards calls to Ollama's OpenAI-compatible ``/v1`` routes.

One pooled aiohttp session per provider, kept for the daemon's life (keep-alive, at most
``max_connections`` connections), serves both the data plane (chat, responses, embeddings: the
request bytes go out as they came, the answer comes back raw) and the one control-plane call
(``GET /v1/models``). What differs from OpenAI is handled here, at the boundary:

- Ollama has no service tiers: a ``service_tier`` in a request body is dropped before sending
  (the body is re-encoded only then);
- Ollama's error bodies (``{"error": "…"}``, or plain text) are read back in OpenAI's error
  shape (``_errors.openai_error_body``), so the daemon and the clients understand them;
- Ollama sends no ``x-ratelimit-*`` headers, and needs no API key (one is sent if configured,
  for an Ollama behind an authenticating proxy).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

import aiohttp
import orjson
from llmspool.plugin_api import (
    BadUpstreamAnswer,
    ConnectionCounter,
    Endpoint,
    ProviderSettings,
    Tier,
    UpstreamError,
    UpstreamRequest,
    pooled_session,
    unreachable,
)

from llmspool_ollama._errors import openai_error_body
from llmspool_ollama.keys import DEFAULT_BASE_URL

__all__ = ["DEFAULT_BASE_URL", "OllamaProvider", "openai_base_url", "without_service_tier"]

log = logging.getLogger(__name__)


_SERVICE_TIER = b'"service_tier"'
OLLAMA_HINT = " (is Ollama running? `ollama serve` starts it)"
_PASSED_ERROR_HEADERS = ("retry-after",)


def openai_base_url(base_url: str) -> str:
    """Ollama's OpenAI-compatible API lives under ``/v1``: its usual address without a path
    (``http://127.0.0.1:11434``, as Ollama's own docs give it) means that, rather than 404 on
    every call at the moment a failover needs it. A URL with a path is used as it is."""
    url = base_url.rstrip("/")
    if not urlsplit(url).path:
        log.info("Ollama base_url %s has no path; using %s/v1 (its OpenAI-compatible API)",
                 url, url)
        url += "/v1"
    return url


class _OllamaAnswer:
    """An aiohttp response seen through ``llmspool.core.provider.UpstreamResponse``; an error
    answer's body reads in OpenAI's error shape."""

    __slots__ = ("_provider", "_response")

    def __init__(self, provider: str, response: aiohttp.ClientResponse) -> None:
        self._provider = provider
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers  # case-insensitive, so lower-case lookups work

    async def read(self) -> bytes:
        try:
            body = await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise unreachable(self._provider, exc, hint=OLLAMA_HINT) from exc
        if self._response.status >= 400:
            return openai_error_body(self._provider, self._response.status, body)
        return body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise unreachable(self._provider, exc, hint=OLLAMA_HINT) from exc


class OllamaProvider:
    """One ``[providers.NAME]`` of kind ``ollama``."""

    # What `llmspool plugins` reports (llmspool.core.provider.provider_capabilities): every
    # endpoint and streaming, and no tier but standard (a service_tier is dropped).
    endpoints: ClassVar[frozenset[Endpoint]] = frozenset(Endpoint)
    service_tiers: ClassVar[frozenset[Tier]] = frozenset({Tier.STANDARD})

    def __init__(self, settings: ProviderSettings) -> None:
        self.name = settings.name
        self._config = settings.config
        self._api_key = settings.api_key
        self._base_url = openai_base_url(settings.config.base_url or DEFAULT_BASE_URL)
        self._session: aiohttp.ClientSession | None = None
        self._connections = ConnectionCounter()

    async def __aenter__(self) -> Self:
        self._session = pooled_session(self._config, self._api_key, self._connections)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("OllamaProvider used outside its `async with`")
        return self._session

    @asynccontextmanager
    async def send(self, request: UpstreamRequest) -> AsyncIterator[_OllamaAnswer]:
        session = self._open_session()
        url = self._base_url + request.endpoint.upstream_path
        body = request.body
        if _SERVICE_TIER in body:  # cheap test first: most bodies name no tier
            body = without_service_tier(body)
        try:
            response = await session.post(url, data=body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise unreachable(self.name, exc, hint=OLLAMA_HINT) from exc
        try:
            yield _OllamaAnswer(self.name, response)
        finally:
            # A body not read to the end closes the connection instead of pooling it.
            response.release()

    async def list_models(self) -> list[str]:
        session = self._open_session()
        try:
            async with session.get(self._base_url + "/models") as response:
                raw = await response.read()
                status = response.status
                headers = {
                    name: response.headers[name]
                    for name in _PASSED_ERROR_HEADERS
                    if name in response.headers
                }
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise unreachable(self.name, exc, hint=OLLAMA_HINT) from exc
        if status >= 400:
            raise UpstreamError(
                self.name,
                status,
                openai_error_body(self.name, status, raw),
                upstream_headers=headers,
            )
        return _model_ids(self.name, raw)

    def connection_stats(self) -> dict[str, int]:
        """``{"requests": n, "reused": m}``: requests put on a connection, and those of them
        sent on one that had already carried a request (keep-alive at work)."""
        return self._connections.snapshot()


def without_service_tier(body: bytes) -> bytes:
    """``body`` with its top-level ``service_tier`` removed (Ollama has no tiers); unchanged if
    it has none, or is not a JSON object (Ollama will say what is wrong with it)."""
    try:
        document: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(document, dict) or "service_tier" not in document:
        return body
    del document["service_tier"]
    return orjson.dumps(document)


def _model_ids(provider: str, raw: bytes) -> list[str]:
    """The ids in a ``GET /v1/models`` answer (OpenAI's list shape)."""
    try:
        parsed: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    data = parsed.get("data") if isinstance(parsed, dict) else None
    if not isinstance(data, list) or not all(
        isinstance(item, dict) and isinstance(item.get("id"), str) for item in data
    ):
        raise BadUpstreamAnswer(
            f"{provider} answered GET /models with something that is not a model list "
            f"({len(raw)} bytes starting {raw[:60]!r})",
            code="upstream_shape",
        )
    return [item["id"] for item in data]
