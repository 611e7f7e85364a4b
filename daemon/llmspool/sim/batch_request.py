"""A ``POST /v1/batches`` body checked as OpenAI checks it (``create_request``): no unknown keys,
``input_file_id``, ``endpoint`` (one the simulator answers, ``batch_lines.PARSERS``) and
``completion_window`` (``24h``) present as strings, and ``metadata`` within OpenAI's limits.

Whether the input file exists and has purpose ``batch`` is the registry's to check
(``batches``): it holds the file store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from llmspool.core.errors import InvalidRequest
from llmspool.sim import validate
from llmspool.sim.batch_lines import PARSERS
from llmspool.sim.batch_state import COMPLETION_WINDOW

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
_CREATE_KEYS = frozenset(
    {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
)


class BatchCreate(NamedTuple):
    """What a valid create body asks for."""

    input_file_id: str
    endpoint: str
    metadata: dict[str, str] | None


def create_request(payload: Mapping[str, Any]) -> BatchCreate:
    """The create body's fields, or a 400 for the first problem (in OpenAI's order)."""
    for key in payload:
        if key not in _CREATE_KEYS:
            raise InvalidRequest(
                f"Unrecognized request argument supplied: {key}",
                param=key,
                code="unknown_parameter",
            )
    file_id = _required_text(payload, "input_file_id")
    endpoint = _required_text(payload, "endpoint")
    window = _required_text(payload, "completion_window")
    if endpoint not in PARSERS:
        raise validate.invalid(
            "endpoint",
            f"Invalid value for 'endpoint': {endpoint!r}. The simulator supports: "
            f"{', '.join(repr(e) for e in PARSERS)}.",
        )
    if window != COMPLETION_WINDOW:
        raise validate.invalid(
            "completion_window",
            f"Invalid value for 'completion_window': {window!r}. Supported values are: "
            f"'{COMPLETION_WINDOW}'.",
        )
    metadata = _metadata(payload.get("metadata"))
    return BatchCreate(file_id, endpoint, metadata)


def _required_text(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if value is None:
        raise validate.missing(name)
    if not isinstance(value, str):
        raise validate.invalid(name, f"Invalid type for '{name}': expected a string.")
    return value


def _metadata(value: Any) -> dict[str, str] | None:
    """``metadata``: up to 16 pairs of strings (keys up to 64 chars, values up to 512)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise validate.invalid("metadata", "Invalid type for 'metadata': expected an object.")
    if len(value) > MAX_METADATA_PAIRS:
        raise validate.invalid(
            "metadata",
            f"Invalid 'metadata': too many properties; at most {MAX_METADATA_PAIRS} are allowed.",
        )
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise validate.invalid(
                "metadata",
                f"Invalid 'metadata': key {key!r} is longer than {MAX_METADATA_KEY} characters.",
            )
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE:
            raise validate.invalid(
                f"metadata.{key}",
                f"Invalid 'metadata.{key}': expected a string of at most {MAX_METADATA_VALUE} "
                "characters.",
            )
    return dict(value)
