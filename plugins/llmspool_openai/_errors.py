"""Where the plugin's HTTP clients' exceptions become ``llmspool.core.errors``.

Both planes use it: the data plane (the daemon's HTTP/1.1 pool) for its timeouts and connection
errors, and the ``openai`` SDK control plane (models, files, batches) through ``sdk_errors``.
Nothing outside the plugin ever sees an httpx2 or openai exception.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
import openai
from llmspool.plugin_api import (
    BadUpstreamAnswer,
    ConnectTimeout,
    UpstreamError,
    UpstreamUnreachable,
)
from llmspool.plugin_api import unreachable as http_unreachable

PASSED_HEADERS = ("x-request-id", "retry-after", "retry-after-ms")
"""Upstream headers an ``UpstreamError`` carries: the request id for support tickets, and the
retry hints the daemon's retry policy reads."""


def unreachable(provider: str, exc: BaseException) -> UpstreamUnreachable:
    """No answer from ``provider``, from either plane: the SDK's and httpx2's timeouts as the
    data plane's (``llmspool.core.http_pool.unreachable``)."""
    if isinstance(exc, httpx2.ConnectTimeout):
        return http_unreachable(provider, ConnectTimeout(str(exc)))
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return http_unreachable(provider, TimeoutError(str(exc)))
    return http_unreachable(provider, exc)


def upstream_error(provider: str, exc: openai.APIStatusError) -> UpstreamError:
    """An HTTP error answer, with its raw body and the headers the daemon needs."""
    response = exc.response
    try:
        raw_body = response.content
    except httpx2.ResponseNotRead:  # the SDK reads error bodies before raising; be safe anyway
        raw_body = b""
    headers = {name: response.headers[name] for name in PASSED_HEADERS if name in response.headers}
    return UpstreamError(provider, exc.status_code, raw_body, upstream_headers=headers)


@contextmanager
def sdk_errors(provider: str) -> Iterator[None]:
    """Map the exceptions of SDK calls made inside the block (awaits included).

    httpx2 exceptions are listed too: the SDK wraps those raised while sending a request, but
    not those raised while a streamed body (a file download) is being read.
    """
    try:
        yield
    except openai.APIStatusError as exc:
        raise upstream_error(provider, exc) from exc
    except (openai.APIConnectionError, httpx2.TransportError) as exc:
        raise unreachable(provider, exc) from exc
    except openai.APIResponseValidationError as exc:
        raise BadUpstreamAnswer(
            f"{provider} answered something the OpenAI API does not: {exc.message}",
            code="upstream_shape",
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        # The SDK parses a JSON content type with the json module and lets its error through.
        raise BadUpstreamAnswer(
            f"{provider} answered a body that is not JSON: {exc}", code="upstream_shape"
        ) from exc
