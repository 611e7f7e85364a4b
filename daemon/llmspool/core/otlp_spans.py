"""Spans written straight into OTLP's protobuf bytes, for the export child.

OpenTelemetry's encoder builds a protobuf object for every span, attribute and value through
Python calls (about 70 µs a span here: the child's CPU was about as much as the daemon's
added for tracing, and on a small machine it took a core from the daemon). ``encode`` writes
the wire format of ``ExportTraceServiceRequest`` directly from the child's plain span tuples
(``span_export.span_data``), with the attributes that repeat from span to span (a provider,
a model, a currency) encoded once and reused.

The bytes are the ones the SDK's ``encode_spans(...).SerializeToString()`` makes of the same
spans (``tests/unit/test_otlp_spans.py`` compares them): spans grouped by resource, then by
instrumentation scope, in the order first seen; fields in field-number order; the span flags
saying whether the parent was remote; an empty status still sent. Values follow the SDK's
rules (bool before int, sequences as arrays, mappings as key-value lists); a value that
cannot be encoded is dropped with a log line, as the SDK drops it. What the span limits cut
(``span_limits``) is counted in the span's, events' and links' ``dropped_*_count``.

The proto definitions: opentelemetry/proto/trace/v1/trace.proto and common/v1/common.proto.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from llmspool.core.span_limits import BoundedDict, BoundedTuple

log = logging.getLogger(__name__)

_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
_SMALL = [bytes([n]) for n in range(0x80)]  # varints under 128: one byte
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags
_CACHE_LIMIT = 8192  # encoded attributes kept for reuse; past it, the cache starts over

# (tag byte of a repeated KeyValue field) in each message that has one.
_SPAN_ATTRIBUTE, _EVENT_ATTRIBUTE, _LINK_ATTRIBUTE, _RESOURCE_ATTRIBUTE = (
    b"\x4a", b"\x1a", b"\x22", b"\x0a")
_KEY_VALUE_IN_LIST = b"\x0a"  # KeyValueList.values, ArrayValue.values

Resources = Sequence[tuple[Mapping[str, Any], str | None]]
"""Each resource of a batch: its attributes and schema URL (``span_export.resource_frame``)."""


def _varint(number: int) -> bytes:
    if number < 0x80:
        return _SMALL[number]
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag + _varint(len(payload)) + payload


def _text(tag: bytes, text: str) -> bytes:
    """A string field, left out when empty (proto3's default)."""
    return _field(tag, text.encode()) if text else b""


def _any_value(value: Any) -> bytes:
    """An ``AnyValue``'s payload; raises for a value OTLP has no place for."""
    # In the SDK encoder's order: bool is an int, str and bytes are sequences.
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value if value >= 0 else value + (1 << 64))
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(
            _field(_KEY_VALUE_IN_LIST, _any_value(item)) for item in value))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join(
            _field(_KEY_VALUE_IN_LIST, _key_value(str(key), item))
            for key, item in value.items()))
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _key_value(key: str, value: Any) -> bytes:
    return _field(b"\x0a", key.encode()) + _field(b"\x12", _any_value(value))


class SpanEncoder:
    """Encodes batches of spans; keeps the encodings of attributes that repeat."""

    def __init__(self) -> None:
        self._attributes: dict[tuple[str, type, Any], bytes] = {}

    def encode(self, spans: Sequence[tuple[Any, ...]], resources: Resources) -> bytes:
        """``ExportTraceServiceRequest`` bytes for ``spans`` (``span_data`` tuples, their
        resource an index into ``resources``)."""
        groups: dict[int, dict[Any, list[bytes]]] = {}
        for span in spans:
            scope = span[8]
            groups.setdefault(span[3], {}).setdefault(
                tuple(scope) if scope is not None else None, []).append(
                _field(b"\x12", self._span(span)))
        out = []
        for resource_index, scopes in groups.items():
            attributes, schema_url = resources[resource_index]
            resource = _field(b"\x0a", self._attribute_list(_RESOURCE_ATTRIBUTE, attributes))
            scope_spans = b"".join(
                _field(b"\x12", _field(b"\x0a", _scope(scope)) + b"".join(encoded)
                       + _text(b"\x1a", scope[2] if scope is not None and scope[2] else ""))
                for scope, encoded in scopes.items())
            out.append(_field(b"\x0a", resource + scope_spans + _text(b"\x1a", schema_url or "")))
        return b"".join(out)

    def _span(self, span: tuple[Any, ...]) -> bytes:
        (name, context, parent, _resource, attributes, events, links, kind, _scope, status,
         description, start_time, end_time, _fields) = span  # none: ``with_attributes``
        trace_id, span_id, _is_remote, _flags, state = context
        parts = [b"\x0a\x10", trace_id.to_bytes(16, "big"), b"\x12\x08",
                 span_id.to_bytes(8, "big")]
        if state:
            parts.append(_text(b"\x1a", ",".join(f"{key}={value}" for key, value in state)))
        if parent is not None:
            parts.append(b"\x22\x08" + parent[1].to_bytes(8, "big"))
        parts.append(_text(b"\x2a", name))
        parts.append(b"\x30" + _varint(kind + 1))  # SpanKind.INTERNAL (0) is SPAN_KIND_INTERNAL (1)
        if start_time:
            parts.append(b"\x39" + _FIXED64.pack(start_time))
        if end_time:
            parts.append(b"\x41" + _FIXED64.pack(end_time))
        parts.append(self._attribute_list(_SPAN_ATTRIBUTE, attributes))
        if type(attributes) is BoundedDict:  # cut by the span limits: how many went
            parts.append(_dropped(b"\x50", attributes.dropped))
        for event_name, event_attributes, timestamp in events:
            parts.append(_field(b"\x5a", (b"\x09" + _FIXED64.pack(timestamp) if timestamp
                                          else b"") + _text(b"\x12", event_name)
                                + self._attribute_list(_EVENT_ATTRIBUTE, event_attributes)
                                + _dropped(b"\x20", getattr(event_attributes, "dropped", 0))))
        if type(events) is BoundedTuple:
            parts.append(_dropped(b"\x60", events.dropped))
        for link_context, link_attributes in links:
            parts.append(_field(b"\x6a", b"".join((
                b"\x0a\x10", link_context[0].to_bytes(16, "big"),
                b"\x12\x08", link_context[1].to_bytes(8, "big"),
                self._attribute_list(_LINK_ATTRIBUTE, link_attributes),
                _dropped(b"\x28", getattr(link_attributes, "dropped", 0)),
                b"\x35", _FIXED32.pack(_flags_of(link_context))))))
        if type(links) is BoundedTuple:
            parts.append(_dropped(b"\x70", links.dropped))
        parts.append(_field(b"\x7a", _text(b"\x12", description or "")
                            + (b"\x18" + _varint(status) if status else b"")))
        parts.append(b"\x85\x01" + _FIXED32.pack(_flags_of(parent)))
        return b"".join(parts)

    def _attribute_list(self, tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
        if not attributes:
            return b""
        cache = self._attributes
        parts = []
        for key, value in attributes.items():
            kind = type(value)
            reusable = kind is str or kind is bool or kind is int
            encoded = cache.get((key, kind, value)) if reusable else None
            if encoded is None:
                try:
                    encoded = _field(b"", _key_value(key, value))
                except (TypeError, ValueError) as error:  # ValueError: a bad surrogate
                    log.error("Failed to encode key %s: %s", key, error)
                    continue
                if reusable:
                    if len(cache) >= _CACHE_LIMIT:
                        cache.clear()
                    cache[key, kind, value] = encoded
            parts.append(tag + encoded)
        return b"".join(parts)


def _dropped(tag: bytes, count: int) -> bytes:
    """A ``dropped_*_count`` field, left out when 0 (proto3's default)."""
    return tag + _varint(count) if count else b""


def _scope(scope: tuple[str, str | None, str | None] | None) -> bytes:
    """An ``InstrumentationScope``'s payload (empty for none, as the SDK sends it)."""
    if scope is None:
        return b""
    name, version, _schema_url = scope
    return _text(b"\x0a", name) + _text(b"\x12", version or "")


def _flags_of(context: tuple[Any, ...] | None) -> int:
    """The span flags the SDK sends: whether the context (a span's parent, a link's) is
    known to be remote, and whether it is."""
    return _HAS_IS_REMOTE | (_IS_REMOTE if context is not None and context[2] else 0)
