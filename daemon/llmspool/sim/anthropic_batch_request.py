"""A ``POST /v1/messages/batches`` body checked as Anthropic checks it
(``message_batch_requests``): only ``requests``, a non-empty list of at most ``MAX_REQUESTS``
entries, each with only a ``custom_id`` (matching ``CUSTOM_ID``, unique in the batch) and
``params`` (an object, not asking ``stream: true``). Every problem is a 400
``invalid_request_error`` (``anthropic_errors.invalid``).

The ``params`` themselves are checked later, when the batch validates: a bad one makes that
request's result ``errored`` rather than refusing the batch (``anthropic_batches``).
``MAX_BATCH_BYTES`` is the body's size limit: the route reads the body under it (``resources``).
"""

from __future__ import annotations

import re
from typing import Any

from llmspool.sim.anthropic_errors import expect_object, invalid

MAX_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1000 * 1000
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def message_batch_requests(payload: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The ``requests`` of a create body, checked."""
    for key in payload:
        if key != "requests":
            raise invalid(key, "Extra inputs are not permitted")
    requests = payload.get("requests")
    if requests is None:
        raise invalid("requests", "Field required")
    if not isinstance(requests, list):
        raise invalid("requests", "Input should be a valid list")
    if not requests:
        raise invalid("requests", "List should have at least 1 item after validation, not 0")
    if len(requests) > MAX_REQUESTS:
        raise invalid(
            "requests",
            f"List should have at most {MAX_REQUESTS} items after validation, not {len(requests)}",
        )
    checked: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for index, entry in enumerate(requests):
        where = f"requests.{index}"
        request = expect_object(entry, where)
        for key in request:
            if key not in ("custom_id", "params"):
                raise invalid(f"{where}.{key}", "Extra inputs are not permitted")
        custom_id = request.get("custom_id")
        if custom_id is None:
            raise invalid(f"{where}.custom_id", "Field required")
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            raise invalid(
                f"{where}.custom_id", f"String should match pattern '{CUSTOM_ID.pattern}'"
            )
        if custom_id in seen:
            raise invalid(
                f"{where}.custom_id",
                f"Duplicate custom_id {custom_id!r}: each request in a Message Batch must have "
                "a unique custom_id.",
            )
        seen.add(custom_id)
        params = request.get("params")
        if params is None:
            raise invalid(f"{where}.params", "Field required")
        params = expect_object(params, f"{where}.params")
        if params.get("stream") is True:
            raise invalid(f"{where}.params.stream", "streaming is not supported in Message Batches")
        checked.append((custom_id, params))
    return checked
