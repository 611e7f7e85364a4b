"""Where Ollama's error bodies become OpenAI's (its aiohttp exceptions become
``llmspool.core.errors`` in ``llmspool.core.http_pool.unreachable``).

Ollama answers errors in its own shape, ``{"error": "model \\"x\\" not found, try pulling it
first"}`` (a string, not an object), or as plain text ("404 page not found"). The daemon's
``UpstreamError`` reads OpenAI's ``{"error": {"message", "type", "param", "code"}}``, and so do
the official clients, so ``openai_error_body`` rewrites an error body into that shape with the
message kept and the type and code chosen by status.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_MESSAGE_CHARS = 500
"""A body that is not JSON becomes the message, cut to this length."""

# status -> (type, code) of the OpenAI-shaped error, after what Ollama means by each status.
_BY_STATUS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    404: ("invalid_request_error", "model_not_found"),  # "model ... not found, try pulling it"
    500: ("server_error", None),
    503: ("server_error", "server_is_overloaded"),  # "server busy": its request queue is full
}
_OTHER = ("upstream_error", None)


def openai_error_body(provider: str, status: int, raw: bytes) -> bytes:
    """``raw``, an error answer's body, in OpenAI's error shape (unchanged if it already is)."""
    message = ""
    try:
        parsed: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
        message = raw.decode("utf-8", "replace").strip()[:MAX_MESSAGE_CHARS]
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):
            return raw
        if isinstance(error, str):
            message = error
    if parsed is not None and not message:
        message = raw.decode("utf-8", "replace").strip()[:MAX_MESSAGE_CHARS]
    error_type, code = _BY_STATUS.get(status, _OTHER)
    return orjson.dumps(
        {
            "error": {
                "message": message or f"{provider} answered HTTP {status}",
                "type": error_type,
                "param": None,
                "code": code,
            }
        }
    )
