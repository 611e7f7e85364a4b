"""Anthropic's errors in the simulator: ``AnthropicError`` (the ``{"type": "error", "error":
{"type", "message"}, "request_id"}`` body, with ``retry-after`` when it has a hint), the error
type for each status (``ERROR_TYPES``, ``error_type_of``), the 400 ``invalid`` that request
checks raise (and ``expect_object``/``expect_text``, the two shapes they check most),
``translate`` (an error the shared code raised in OpenAI's terms, as Anthropic
answers it), and the messages Anthropic words its faults with (``FAULT_MESSAGES``).

Shared by the flavor (``anthropic``), its request checks (``anthropic_validate``,
``anthropic_tools``, ``anthropic_content``), its prompt cache (``anthropic_cache``) and its
Message Batches (``anthropic_batches``, ``anthropic_batch_request``).
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from llmspool.core.errors import ApiError
from llmspool.sim.ratelimit import RateLimitExceeded

__all__ = [
    "ERROR_TYPES",
    "FAULT_MESSAGES",
    "AnthropicError",
    "error_type_of",
    "expect_object",
    "expect_text",
    "invalid",
    "translate",
]

_TOO_LARGE_RETRY_SECONDS = 60.0

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""Anthropic's error type for each status; other 4xx are ``invalid_request_error``, other 5xx
``api_error``."""
FAULT_MESSAGES = {
    400: "Simulated bad request.",
    401: "invalid x-api-key",
    402: "Your credit balance is too low to access the Anthropic API.",
    403: "Your API key does not have permission to use the specified resource.",
    404: "Not Found",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: (
        "This request would exceed your organization's rate limit. Please reduce the prompt "
        "length or the maximum tokens requested, or try again later."
    ),
    500: "Internal server error",
    504: "Request timed out",
    529: "Overloaded",
}


class AnthropicError(ApiError):
    """An error in Anthropic's shape; ``retry_after`` (seconds) adds ``retry-after``."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        error_type: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, error_type=error_type or error_type_of(status))
        self.request_id = request_id
        self.retry_after = retry_after

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "type": "error",
                "error": {"type": self.type, "message": self.message},
                "request_id": self.request_id,
            }
        )

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, math.ceil(self.retry_after)))}


def error_type_of(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def invalid(where: str, problem: str) -> AnthropicError:
    """400 ``invalid_request_error``: ``"<where>: <problem>"``, as Anthropic words them."""
    return AnthropicError(f"{where}: {problem}", status=400)


def expect_object(value: Any, where: str) -> dict[str, Any]:
    """``value`` if it is an object, else the 400 Anthropic words for one that is not."""
    if not isinstance(value, dict):
        raise invalid(where, "Input should be a valid dictionary")
    return value


def expect_text(value: Any, where: str) -> str:
    """``value`` if it is a string, else the 400 for one missing or of another type."""
    if value is None:
        raise invalid(where, "Field required")
    if not isinstance(value, str):
        raise invalid(where, "Input should be a valid string")
    return value


def translate(error: ApiError, request_id: str | None) -> AnthropicError:
    """``error`` (raised by the shared code in OpenAI's terms) as Anthropic answers it."""
    if isinstance(error, AnthropicError):
        return AnthropicError(
            error.message,
            status=error.status,
            error_type=error.type,
            request_id=request_id,
            retry_after=error.retry_after,
        )
    retry_after: float | None = None
    message = error.message
    if isinstance(error, RateLimitExceeded):
        # Waiting never lets a request larger than the limit through, but Anthropic always
        # sends a hint: a full refill.
        retry_after = error.retry_after or _TOO_LARGE_RETRY_SECONDS
        message = FAULT_MESSAGES[429]
    else:
        hint = error.headers().get("retry-after")
        if hint is not None:
            retry_after = float(hint)
        elif error.status == 429:
            retry_after = 1.0
    if error.status == 404 and message.startswith("Invalid URL"):
        message = FAULT_MESSAGES[404]
    return AnthropicError(
        message, status=error.status, request_id=request_id, retry_after=retry_after
    )
