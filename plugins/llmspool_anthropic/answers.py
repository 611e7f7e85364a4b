"""Anthropic Messages answers -> OpenAI Chat Completions answers: pure functions, no I/O.

The answer side of the ``anthropic`` plugin's translation (``llmspool_anthropic.translate``
owns the request side):

- ``openai_completion``: an Anthropic ``message`` -> an OpenAI ``chat.completion``;
- ``finish_reason``, ``openai_usage``, ``service_tier``: the pieces of it that the stream
  translator (``llmspool_anthropic.stream``) also reports;
- ``openai_error``: an Anthropic error answer -> the status and OpenAI error body the daemon
  should see (``llmspool.resilience.failures`` classifies it from those).

Usage: Anthropic's ``input_tokens`` counts only the input after the last cache breakpoint; the
OpenAI ``prompt_tokens`` is all the input, so it is ``input_tokens + cache_read_input_tokens +
cache_creation_input_tokens``, with the cache reads as ``cached_tokens`` and the cache writes as
``cache_write_tokens`` under ``prompt_tokens_details`` (as ``llmspool.core.wire.usage_of``
reads it).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

__all__ = [
    "FINISH_REASONS",
    "finish_reason",
    "openai_completion",
    "openai_error",
    "openai_usage",
    "service_tier",
]

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    # A server tool loop paused; what came so far is a finished answer as far as a chat
    # completion can say.
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
"""Anthropic ``stop_reason`` -> OpenAI ``finish_reason`` (anything else: ``stop``)."""

_MAX_MESSAGE_CHARS = 500


# -- answers --------------------------------------------------------------------------------


def finish_reason(stop_reason: Any) -> str:
    """OpenAI's ``finish_reason`` for an Anthropic ``stop_reason``."""
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _count(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def openai_usage(usage: Any) -> dict[str, Any]:
    """OpenAI chat ``usage`` for an Anthropic ``usage`` object (see the module docstring)."""
    usage = usage if isinstance(usage, dict) else {}
    cache_read = _count(usage, "cache_read_input_tokens")
    cache_write = _count(usage, "cache_creation_input_tokens")
    prompt = _count(usage, "input_tokens") + cache_read + cache_write
    completion = _count(usage, "output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read,
                                  "cache_write_tokens": cache_write},
    }


def service_tier(usage: Any) -> str:
    """The ``service_tier`` an answer reports: Anthropic's own (``standard``, ``priority``,
    ``batch``) when its usage says, else ``default`` (standard, as OpenAI spells it)."""
    tier = usage.get("service_tier") if isinstance(usage, dict) else None
    return tier if isinstance(tier, str) and tier else "default"


def openai_completion(message: dict[str, Any], *, created: int | None = None) -> dict[str, Any]:
    """The OpenAI ``chat.completion`` for an Anthropic ``message`` (``created``: now if None)."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            tool_calls.append({
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"),
                             "arguments": orjson.dumps(block.get("input") or {}).decode()},
            })
        # thinking, redacted_thinking and server tool blocks have no chat completion field
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if tool_calls:
        reply["tool_calls"] = tool_calls
    usage = message.get("usage")
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": message.get("model"),
        "choices": [{
            "index": 0,
            "message": reply,
            "logprobs": None,
            "finish_reason": finish_reason(message.get("stop_reason")),
        }],
        "usage": openai_usage(usage),
        "service_tier": service_tier(usage),
    }


# -- errors ---------------------------------------------------------------------------------

# Anthropic error type -> (status the daemon sees, OpenAI type, OpenAI code). 529 becomes 503,
# which the daemon retries and counts against the provider's circuit breaker.
_ERRORS: dict[str, tuple[int | None, str, str | None]] = {
    "invalid_request_error": (None, "invalid_request_error", None),
    "authentication_error": (401, "authentication_error", "invalid_api_key"),
    "permission_error": (403, "permission_error", None),
    "not_found_error": (404, "invalid_request_error", "not_found"),
    "request_too_large": (413, "invalid_request_error", "request_too_large"),
    "rate_limit_error": (429, "rate_limit_error", "rate_limit_exceeded"),
    "api_error": (None, "server_error", None),
    "overloaded_error": (503, "server_error", "overloaded"),
    "timeout_error": (504, "server_error", "upstream_timeout"),
    "conflict_error": (409, "invalid_request_error", "conflict"),
    # Billing trouble: waiting never helps, so it goes out as a 429 with a code the daemon
    # counts as quota (llmspool.resilience.failures.QUOTA_CODES): never retried.
    "billing_error": (429, "insufficient_quota", "billing_not_active"),
}
_STATUS_FOR_OVERLOAD = {529: 503}

# Messages Anthropic answers, as a 400 or a 429, when the account cannot pay: the code names
# what the operator must fix.
_QUOTA_MESSAGES = (
    ("credit balance is too low", "credit_balance_exhausted"),
    ("spend limit", "organization_spend_limit_exceeded"),
    ("specified api usage limits", "organization_spend_limit_exceeded"),
)
_QUOTA_DETAIL_CODES = {"enforced_spend_limit_reached": "organization_spend_limit_exceeded"}


def _error_body(message: str, error_type: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def openai_error(status: int, body: Any) -> tuple[int, dict[str, Any]]:
    """The status the daemon should see and the OpenAI error body for an Anthropic error
    answer of ``status`` with ``body`` (raw bytes, text, or parsed JSON).

    A body that is not Anthropic's error shape gives a 502 saying what came back."""
    parsed = body
    if isinstance(body, bytes | bytearray | memoryview | str):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    if not isinstance(error, dict) or not isinstance(message, str) or not isinstance(kind, str):
        return 502, _error_body(
            f"Anthropic answered HTTP {status} with a body that is not an Anthropic error "
            f"({_preview(body)})", "bad_upstream_answer", "upstream_shape")
    quota = _quota_code(message, error)
    if quota is not None:
        return 429, _error_body(message, "insufficient_quota", quota)
    mapped_status, error_type, code = _ERRORS.get(kind, (None, kind, None))
    if kind == "invalid_request_error" and "prompt is too long" in message.lower():
        code = "context_length_exceeded"  # what OpenAI calls it; never worth a retry
    if kind == "not_found_error" and "model" in message.lower():
        code = "model_not_found"
    out_status = mapped_status or _STATUS_FOR_OVERLOAD.get(status, status)
    if out_status < 400:
        out_status = 502  # an error body on a success status: the answer cannot be trusted
    return out_status, _error_body(message, error_type, code)


def _quota_code(message: str, error: dict[str, Any]) -> str | None:
    details = error.get("details")
    detail_code = details.get("error_code") if isinstance(details, dict) else None
    if detail_code in _QUOTA_DETAIL_CODES:
        return _QUOTA_DETAIL_CODES[detail_code]
    lowered = message.lower()
    for needle, code in _QUOTA_MESSAGES:
        if needle in lowered:
            return code
    return None


def _preview(body: Any) -> str:
    if isinstance(body, bytes | bytearray | memoryview):
        text = bytes(body).decode("utf-8", "replace")
    elif isinstance(body, str):
        text = body
    else:
        text = orjson.dumps(body, default=repr).decode()
    text = " ".join(text.split())
    if not text:
        return "an empty body"
    cut = text[:_MAX_MESSAGE_CHARS]
    return f"starting {cut!r}" if len(text) > len(cut) else repr(cut)
