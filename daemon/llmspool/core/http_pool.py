"""The pooled HTTP clients a provider plugin forwards the data plane with.

``pooled_http1`` is the daemon's own keep-alive HTTP/1.1 pool (``llmspool.core.http1``), the
cheaper one per call; the OpenAI and Anthropic plugins forward their calls with it.
``pooled_session`` is an aiohttp session for a plugin that wants aiohttp's API (the Anthropic
plugin's Message Batches use one). Every provider wants the same client: kept for
the daemon's life, at most ``max_connections`` connections kept alive ``keepalive_timeout``,
the API key as a bearer token (or the headers an API authenticates with instead, such as
Anthropic's ``x-api-key`` and ``anthropic-version``), no cookie handling (bodies pass through
as the client sent them), a connect timeout only (the daemon bounds each call itself, with
cancel scopes that say which limit fired), and a ``ConnectionCounter`` watching how often
connections are reused. ``unreachable`` maps either client's exceptions to the daemon's
``UpstreamUnreachable``.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from llmspool.core.config.sections import ProviderConfig
from llmspool.core.connection_stats import ConnectionCounter
from llmspool.core.errors import UpstreamUnreachable
from llmspool.core.http1 import ConnectTimeout, Http1Pool, IdleConnectionClosed


def _auth(api_key: str, auth_headers: Mapping[str, str] | None) -> dict[str, str]:
    if auth_headers is not None:
        return dict(auth_headers)
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def pooled_http1(config: ProviderConfig, api_key: str, connections: ConnectionCounter, *,
                 headers: Mapping[str, str] | None = None,
                 auth_headers: Mapping[str, str] | None = None) -> Http1Pool:
    """The daemon's HTTP/1.1 pool for one ``[providers.NAME]`` (``base_url``'s server);
    ``headers`` go on every call besides the key and the content type. ``auth_headers``: as
    for ``pooled_session``."""
    return Http1Pool(
        config.base_url,
        headers={"content-type": "application/json", **_auth(api_key, auth_headers),
                 **(headers or {})},
        max_connections=config.max_connections,
        keepalive_timeout=config.keepalive_timeout,
        connect_timeout=config.connect_timeout,
        counter=connections,
    )


def pooled_session(config: ProviderConfig, api_key: str, connections: ConnectionCounter, *,
                   auth_headers: Mapping[str, str] | None = None) -> aiohttp.ClientSession:
    """A session for one ``[providers.NAME]``; open it inside a running event loop.

    ``auth_headers``: headers sent on every call in place of ``authorization: Bearer
    {api_key}``, for an API that authenticates another way (``api_key`` is then unused)."""
    connector = connections.connector(
        limit=config.max_connections,
        keepalive_timeout=config.keepalive_timeout,
        enable_cleanup_closed=False,
    )
    headers = {"content-type": "application/json", **_auth(api_key, auth_headers)}
    return aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def unreachable(provider: str, exc: BaseException, *, hint: str = "") -> UpstreamUnreachable:
    """No answer from ``provider`` (an ``OSError`` of ``pooled_http1``, an aiohttp exception, or
    a ``TimeoutError``): a timeout is 504 (``connect_timeout`` for the connection,
    ``upstream_timeout`` for the rest), and a kept-alive connection closed as the request went
    out is ``idle_connection_closed``, so that the daemon's retry policy and its messages can
    tell them apart; anything else is ``upstream_unreachable``, with ``hint`` (what to check)
    after the cause."""
    if isinstance(exc, ConnectTimeout | aiohttp.ConnectionTimeoutError):
        return UpstreamUnreachable(
            f"no connection to {provider} within its connect timeout ([providers.{provider}] "
            "connect_timeout); check the network and base_url",
            code="connect_timeout",
            status=504,
        )
    if isinstance(exc, IdleConnectionClosed):
        return UpstreamUnreachable(
            f"{provider} closed a kept-alive connection as the request went out on it, before "
            "answering (its idle timeout ran out, most likely); the request may be sent again",
            code="idle_connection_closed",
        )
    if isinstance(exc, TimeoutError):  # aiohttp's other timeouts are TimeoutErrors too
        return UpstreamUnreachable(
            f"{provider} did not answer in time ({type(exc).__name__}); the request may be "
            f"retried, or given a longer timeout in [providers.{provider}] timeout",
            code="upstream_timeout",
            status=504,
        )
    return UpstreamUnreachable(f"cannot reach {provider}: {exc or type(exc).__name__}{hint}",
                               code="upstream_unreachable")
