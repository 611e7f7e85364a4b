"""``AnthropicProvider``: chat completions served by Anthropic's Messages API.

The daemon hands a provider an OpenAI Chat Completions request and relays, bills and caches
the answer as OpenAI's, so this provider translates at its boundary, both ways:

- the request body becomes Anthropic's Messages params (``translate.anthropic_params``) and is
  posted to ``{base_url}/messages``; what cannot be translated is answered here with an
  OpenAI-shaped 400, without calling upstream, as is any endpoint but chat completions;
- a whole answer becomes a ``chat.completion`` (``answers.openai_completion``), a stream
  becomes ``chat.completion.chunk`` events (``stream.ChunkTranslator``), an error answer an
  OpenAI error with the status the daemon should act on (``answers.openai_error``: 529
  overloaded is a 503, billing trouble a quota 429);
- the answer's headers carry Anthropic's rate limits as ``x-ratelimit-*``
  (``ratelimits.openai_ratelimit_headers``), its ``retry-after``, and its ``request-id`` as
  ``x-request-id``.

Two clients per provider, pooled for the daemon's life (``llmspool.core.http_pool``), both
authenticating with ``x-api-key`` and ``anthropic-version`` rather than a bearer token: the
messages (the data plane) go through the daemon's HTTP/1.1 pool (``pooled_http1``, cheaper per
call), the models list and Message Batches through an aiohttp session (``pooled_session``:
file uploads, GET and DELETE). Each may open ``max_connections``. Anthropic takes no
client-supplied request id, so ``UpstreamRequest.request_id`` is not sent.

The Message Batches half of ``llmspool.core.provider.BatchProvider`` (the batch tier) lives in
``llmspool_anthropic.batches``; the provider delegates to it, on the aiohttp session.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Self

import aiohttp
import orjson
from llmspool.plugin_api import (
    ApiError,
    BadUpstreamAnswer,
    BatchCapabilities,
    ConnectionCounter,
    DelegatedBatches,
    Endpoint,
    Http1Pool,
    Http1Response,
    InvalidRequest,
    ProviderSettings,
    Tier,
    UpstreamError,
    UpstreamRequest,
    pooled_http1,
    pooled_session,
    unreachable,
)

from llmspool_anthropic.answers import openai_completion, openai_error
from llmspool_anthropic.batches import CAPABILITIES, AnthropicBatches
from llmspool_anthropic.keys import (
    ANTHROPIC_VERSION,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_TOKENS_KEY,
)
from llmspool_anthropic.ratelimits import openai_ratelimit_headers
from llmspool_anthropic.stream import ChunkTranslator
from llmspool_anthropic.translate import anthropic_params

__all__ = ["AnthropicProvider", "completion_body"]

_MODELS_PAGE = "1000"  # the most Anthropic's GET /v1/models gives per page
_JSON = "application/json"
_EVENT_STREAM = "text/event-stream"
_PASSED_ERROR_HEADERS = ("retry-after", "x-request-id")


def completion_body(provider: str, raw: bytes) -> bytes:
    """The OpenAI ``chat.completion`` JSON for Anthropic's whole answer ``raw``; raises
    ``BadUpstreamAnswer`` when it is not a message."""
    try:
        message: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        message = None
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise BadUpstreamAnswer(
            f"{provider} answered a message that is not Anthropic's ({len(raw)} bytes "
            f"starting {raw[:60]!r})",
            code="upstream_shape",
        )
    return orjson.dumps(openai_completion(message))


class _Answer:
    """An Anthropic answer seen through ``llmspool.core.provider.UpstreamResponse``, in OpenAI's
    shapes. ``body`` is set when the answer is already known whole (an error, or a request
    refused before sending); otherwise it is read from ``response`` and translated."""

    __slots__ = ("_body", "_headers", "_include_usage", "_provider", "_response", "_status",
                 "_stream")

    def __init__(self, provider: str, status: int, headers: dict[str, str], *,
                 response: Http1Response | None = None, body: bytes | None = None,
                 stream: bool = False, include_usage: bool = False) -> None:
        self._provider = provider
        self._status = status
        self._headers = headers
        self._response = response
        self._body = body
        self._stream = stream
        self._include_usage = include_usage

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    async def _raw(self) -> bytes:
        assert self._response is not None  # set whenever body is not
        try:
            return await self._response.read()
        except OSError as exc:  # the pool's errors (TimeoutError is one)
            raise unreachable(self._provider, exc) from exc

    async def read(self) -> bytes:
        if self._body is not None:
            return self._body
        raw = await self._raw()
        if self._stream:
            translator = ChunkTranslator(include_usage=self._include_usage)
            return translator.feed(raw) + translator.flush()
        return completion_body(self._provider, raw)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        if self._body is not None or not self._stream:
            yield await self.read()
            return
        assert self._response is not None
        translator = ChunkTranslator(include_usage=self._include_usage)
        try:
            async for chunk in self._response.iter_chunks():
                out = translator.feed(chunk)
                if out:
                    yield out
        except OSError as exc:
            raise unreachable(self._provider, exc) from exc
        rest = translator.flush()
        if rest:
            yield rest


def _refused(error: ApiError) -> _Answer:
    """An answer given without calling upstream."""
    return _Answer("", error.status, {"content-type": _JSON}, body=error.body())


class AnthropicProvider(DelegatedBatches):
    """One ``[providers.NAME]`` of kind ``anthropic``."""

    # What `llmspool plugins` reports (llmspool.core.provider.provider_capabilities): chat
    # completions, streamed too, on the standard tier (a service_tier is dropped).
    endpoints: ClassVar[frozenset[Endpoint]] = frozenset({Endpoint.CHAT})
    service_tiers: ClassVar[frozenset[Tier]] = frozenset({Tier.STANDARD})
    batch_capabilities: ClassVar[BatchCapabilities] = CAPABILITIES

    def __init__(self, settings: ProviderSettings) -> None:
        self.name = settings.name
        self._config = settings.config
        self._api_key = settings.api_key
        self.base_url: str = (settings.config.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.anthropic_version: str = settings.option(ANTHROPIC_VERSION)
        self.default_max_tokens: int = settings.option(DEFAULT_MAX_TOKENS_KEY)
        self._session: aiohttp.ClientSession | None = None
        self._pool: Http1Pool | None = None
        self._batches: AnthropicBatches | None = None
        self._connections = ConnectionCounter()

    async def __aenter__(self) -> Self:
        self._session = pooled_session(self._config, self._api_key, self._connections,
                                       auth_headers=self._headers())
        # The messages (the data plane) go through the daemon's HTTP/1.1 pool, cheaper per
        # call; models and Message Batches (uploads, GET, DELETE) through the aiohttp session.
        self._pool = pooled_http1(dataclasses.replace(self._config, base_url=self.base_url),
                                  self._api_key, self._connections,
                                  auth_headers=self._headers())
        self._batches = AnthropicBatches(
            self._session, self.base_url, self.name,
            default_max_tokens=self.default_max_tokens, timeout=self._config.timeout)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._batches = None

    def _headers(self) -> dict[str, str]:
        """The headers every call to Anthropic carries: the key and the API version."""
        headers = {"anthropic-version": self.anthropic_version}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        return headers

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("AnthropicProvider used outside its `async with`")
        return self._session

    def _answer_headers(self, upstream: Mapping[str, str], content_type: str) -> dict[str, str]:
        headers = openai_ratelimit_headers(upstream)
        request_id = upstream.get("request-id")
        if request_id:
            headers["x-request-id"] = request_id
        headers["content-type"] = content_type
        return headers

    @asynccontextmanager
    async def send(self, request: UpstreamRequest) -> AsyncIterator[_Answer]:
        if self._pool is None:
            raise RuntimeError("AnthropicProvider used outside its `async with`")
        pool = self._pool
        if request.endpoint is not Endpoint.CHAT:
            yield _refused(InvalidRequest(
                f"provider {self.name!r} (Anthropic) serves only /v1/chat/completions, not "
                f"{request.endpoint.value}; send it to a provider that serves it",
                code="unsupported_endpoint"))
            return
        try:
            body, params = self._params(request)
        except InvalidRequest as refusal:
            yield _refused(refusal)
            return
        stream = bool(params.get("stream"))
        options = body.get("stream_options")
        include_usage = stream and isinstance(options, dict) \
            and bool(options.get("include_usage"))
        try:
            response = await pool.post("/messages", orjson.dumps(params))
        except OSError as exc:  # TimeoutError (the connect timeout) is one
            raise unreachable(self.name, exc) from exc
        try:
            if response.status >= 400:
                # Read now: the status the daemon sees depends on the body (billing trouble
                # answered as a 400 is a quota 429 here), and error bodies are small.
                try:
                    raw = await response.read()
                except OSError as exc:
                    raise unreachable(self.name, exc) from exc
                status, openai_body = openai_error(response.status, raw)
                yield _Answer(self.name, status, self._answer_headers(response.headers, _JSON),
                              body=orjson.dumps(openai_body))
            else:
                content_type = _EVENT_STREAM if stream else _JSON
                yield _Answer(self.name, response.status,
                              self._answer_headers(response.headers, content_type),
                              response=response, stream=stream, include_usage=include_usage)
        finally:
            # A body not read to the end (a client that went away mid-stream) closes the
            # connection rather than returning a half-read one to the pool.
            response.release()

    def _params(self, request: UpstreamRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        """The request's OpenAI body and the Anthropic params for it; ``InvalidRequest`` if it
        cannot be translated."""
        try:
            body: Any = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"the request body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object")
        params = anthropic_params(body, default_max_tokens=self.default_max_tokens)
        # The daemon's choice of model (a failover's, or the name without a provider prefix).
        params["model"] = request.model or params.get("model")
        return body, params

    def connection_stats(self) -> dict[str, int]:
        """``{"requests": n, "reused": m}``: requests put on a connection, and those of them
        sent on one that had already carried a request (keep-alive at work)."""
        return self._connections.snapshot()

    async def list_models(self) -> list[str]:
        """Every model id of ``GET {base_url}/models``, page after page."""
        session = self._open_session()
        ids: list[str] = []
        after: str | None = None
        while True:
            query = {"limit": _MODELS_PAGE}
            if after is not None:
                query["after_id"] = after
            try:
                async with session.get(self.base_url + "/models", params=query) as response:
                    raw = await response.read()
                    status = response.status
                    headers = self._answer_headers(response.headers, _JSON)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise unreachable(self.name, exc) from exc
            if status >= 400:
                mapped, openai_body = openai_error(status, raw)
                passed: dict[str, str] = {name: headers[name] for name in _PASSED_ERROR_HEADERS
                                          if name in headers}
                raise UpstreamError(self.name, mapped, orjson.dumps(openai_body),
                                    upstream_headers=passed)
            page, has_more, last = _model_page(self.name, raw)
            ids.extend(page)
            if not has_more or last is None or last == after:
                return ids
            after = last

    # Message Batches (llmspool.core.provider.BatchProvider): see llmspool_anthropic.batches.

    def _batch_api(self) -> AnthropicBatches:
        if self._batches is None:
            raise RuntimeError("AnthropicProvider used outside its `async with`")
        return self._batches


def _model_page(provider: str, raw: bytes) -> tuple[list[str], bool, str | None]:
    """The ids, ``has_more`` and ``last_id`` of one page of Anthropic's model list."""
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
    last = parsed.get("last_id")
    return ([item["id"] for item in data], parsed.get("has_more") is True,
            last if isinstance(last, str) else None)
