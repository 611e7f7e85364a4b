"""Every error llmspool raises on purpose, and how each one looks to an HTTP client.

The tree::

    LlmspoolError                    base; never raised itself
    ├── ConfigError                  bad config or pricing file: names the key; refuses to start
    ├── StartupError                 cannot start (socket in use by a live daemon, ...)
    └── ApiError                     anything that becomes an HTTP answer in OpenAI's error shape
        ├── InvalidRequest           400: the caller's request is wrong
        ├── PermissionDenied         403: an admin's right asked for by someone else
        ├── NotFound                 404: unknown path, model or provider; another user's job
        ├── MethodNotAllowed         405
        ├── PayloadTooLarge          413: body over ``daemon.max_body_bytes``
        ├── UnsupportedMediaType     415: not JSON
        ├── ServiceUnavailable       503: shutting down, queue full; carries ``retry_after``
        │   └── TooManyRequests      429: too much deferred work waiting; ``retry_after`` too
        ├── BudgetExceeded           402: a spending cap would break; names the cap, limit, spend
        ├── UpstreamError            the provider answered an error: status and body pass through
        ├── UpstreamUnreachable      502/504: no answer (connection refused or reset, timeout)
        └── BadUpstreamAnswer        502: the provider answered something we cannot read

Foreign exceptions (aiohttp, openai, sqlite) are mapped at the boundary where they occur:
``raise UpstreamUnreachable(...) from exc``. Nothing else in the daemon catches them.
"""

from __future__ import annotations

from typing import Any

import orjson


class LlmspoolError(Exception):
    """Base of every error llmspool raises on purpose."""


class ConfigError(LlmspoolError):
    """A configuration or pricing value is wrong; ``key`` is its dotted name (``daemon.socket``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class StartupError(LlmspoolError):
    """The daemon cannot start, for a reason the operator can fix (the message says how)."""


class ApiError(LlmspoolError):
    """An error that answers an HTTP request, in OpenAI's shape.

    ``type`` and ``code`` follow OpenAI's conventions (``invalid_request_error``,
    ``model_not_found``...) so that the official clients raise their usual exception classes.
    """

    status: int = 500
    type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        if status is not None:
            self.status = status
        if error_type is not None:
            self.type = error_type

    def body(self) -> bytes:
        """The JSON body OpenAI would send for this error."""
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )

    def headers(self) -> dict[str, str]:
        """Extra response headers (``retry-after`` for 503)."""
        return {}


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class PermissionDenied(ApiError):
    """403: what the caller asked for is for the daemon's admins ([daemon] admins)."""

    status = 403
    type = "permission_error"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"


class MethodNotAllowed(ApiError):
    status = 405
    type = "invalid_request_error"


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"


class UnsupportedMediaType(ApiError):
    status = 415
    type = "invalid_request_error"


class ServiceUnavailable(ApiError):
    status = 503
    type = "server_error"

    def __init__(self, message: str, *, retry_after: float = 1.0, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(max(1, round(self.retry_after)))}


class TooManyRequests(ServiceUnavailable):
    """429: the caller should come back later (``retry-after`` says when)."""

    status = 429
    type = "rate_limit_error"


class BudgetExceeded(ApiError):
    """402: the call would break a spending cap, so it was not sent. Waiting does not help
    (until the day turns, for a daily cap), which is why it is not a 429 that clients retry."""

    status = 402
    type = "budget_exceeded"


class UpstreamError(ApiError):
    """The provider answered with an error status; its body and key headers reach the client."""

    def __init__(
        self,
        provider: str,
        status: int,
        raw_body: bytes,
        *,
        upstream_headers: dict[str, str] | None = None,
    ) -> None:
        error = _parse_error_body(raw_body)
        message = str(error.get("message") or f"{provider} answered HTTP {status}")
        code = error.get("code")
        param = error.get("param")
        super().__init__(
            message,
            code=str(code) if code is not None else None,
            param=str(param) if param is not None else None,
            status=status,
            error_type=str(error.get("type") or "upstream_error"),
        )
        self.provider = provider
        self.raw_body = raw_body
        self.upstream_headers = upstream_headers or {}

    def body(self) -> bytes:
        # Pass the provider's own body through when it is already in OpenAI's shape.
        if _parse_error_body(self.raw_body):
            return self.raw_body
        return super().body()

    def headers(self) -> dict[str, str]:
        return dict(self.upstream_headers)


class UpstreamUnreachable(ApiError):
    """No answer from the provider: refused, reset, or timed out (``status`` 504 for timeouts)."""

    status = 502
    type = "upstream_unreachable"


class BadUpstreamAnswer(ApiError):
    """The provider answered, but with something we cannot read as its API promises."""

    status = 502
    type = "bad_upstream_answer"


def _parse_error_body(raw: bytes) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-shaped error body, or ``{}`` if it is not one."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):
            return error
    return {}
