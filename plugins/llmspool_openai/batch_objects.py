"""Reading OpenAI batch objects into the daemon's ``RemoteBatch``, checked at the boundary.

Every batch object the OpenAI plugin receives goes through ``remote_batch``, so a malformed
answer is refused here (``BadUpstreamAnswer``, naming the field). The daemon's intent id travels
in the batch's ``metadata`` under ``INTENT_KEY``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmspool.plugin_api import STATUSES, BadUpstreamAnswer, BatchError, RemoteBatch

INTENT_KEY = "llmspool_intent"
"""The ``metadata`` key that carries the daemon's intent id, to find a batch after a crash."""


def remote_batch(provider: str, document: Any) -> RemoteBatch:
    """Read an OpenAI batch object; raises ``BadUpstreamAnswer`` naming what is wrong."""
    if not isinstance(document, dict):
        raise _bad(provider, "the batch is not a JSON object")
    status = document.get("status")
    if status not in STATUSES:
        raise _bad(provider, f"batch status {status!r} is not one of {sorted(STATUSES)}")
    counts = document.get("request_counts") or {}
    if not isinstance(counts, dict):
        raise _bad(provider, "request_counts is not an object")
    errors_field = document.get("errors") or {}
    data = errors_field.get("data") if isinstance(errors_field, dict) else None
    errors = tuple(_error(provider, item) for item in (data or []))
    metadata = document.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise _bad(provider, "metadata is not an object")
    created_at = document.get("created_at")
    if not isinstance(created_at, int | float) or isinstance(created_at, bool):
        raise _bad(provider, f"created_at {created_at!r} is not a number")
    intent = metadata.get(INTENT_KEY)
    return RemoteBatch(
        id=_text(provider, document, "id"),
        status=status,
        endpoint=_text(provider, document, "endpoint"),
        input_file_id=_text(provider, document, "input_file_id"),
        created_at=float(created_at),
        output_file_id=_optional_text(provider, document, "output_file_id"),
        error_file_id=_optional_text(provider, document, "error_file_id"),
        total=_count(provider, counts, "total"),
        completed=_count(provider, counts, "completed"),
        failed=_count(provider, counts, "failed"),
        errors=errors,
        intent=str(intent) if intent is not None else None,
    )


def _error(provider: str, item: Any) -> BatchError:
    if not isinstance(item, dict):
        raise _bad(provider, "an entry of errors.data is not an object")
    line = item.get("line")
    return BatchError(
        code=str(item.get("code") or "unknown"),
        message=str(item.get("message") or ""),
        line=line if isinstance(line, int) and not isinstance(line, bool) else None,
        param=item.get("param") if isinstance(item.get("param"), str) else None,
    )


def _text(provider: str, document: Mapping[str, Any], key: str) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value:
        raise _bad(provider, f"batch field {key!r} is {value!r}, not a non-empty string")
    return value


def _optional_text(provider: str, document: Mapping[str, Any], key: str) -> str | None:
    value = document.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _bad(provider, f"batch field {key!r} is {value!r}, not a string")
    return value


def _count(provider: str, counts: Mapping[str, Any], key: str) -> int:
    value = counts.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(provider, f"request_counts.{key} is {value!r}, not a count")
    return value


def _bad(provider: str, what: str) -> BadUpstreamAnswer:
    return BadUpstreamAnswer(f"{provider} answered a batch we cannot read: {what}",
                             code="upstream_shape")
