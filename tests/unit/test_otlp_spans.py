"""``otlp_spans.SpanEncoder`` writes the very bytes OpenTelemetry's own OTLP encoder makes of
the same spans, whatever they hold: every kind of attribute value, events, links, remote
parents, trace state, statuses, several resources and scopes, and values OTLP refuses."""

from __future__ import annotations

import logging

import pytest
from llmspool.core.otlp_spans import SpanEncoder
from llmspool.core.span_export import bytes_sender, context_data, rebuild, span_data
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

RESOURCES = [Resource({"service.name": "llmspool", "service.version": "1.2"}),
             Resource({"service.name": "other", "n": 3}, "https://opentelemetry.io/schemas/1.9")]
SCOPE = ("llmspool", "1.2", None)


def _context(span_id: int, *, remote: bool = False, state: TraceState | None = None
             ) -> SpanContext:
    return SpanContext(0x0AF7651916CD43DD8448EB211C80319C, span_id, remote,
                       TraceFlags(TraceFlags.SAMPLED), state)


def _span(name: str = "chat gpt-4o-mini", **changes: object) -> tuple[object, ...]:
    fields: dict[str, object] = {
        "name": name, "context": _context(0x1122334455667788), "parent": None, "resource": 0,
        "attributes": {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini"},
        "events": [], "links": [], "kind": SpanKind.CLIENT, "scope": SCOPE,
        "status": Status(StatusCode.UNSET), "start_time": 1_764_000_000_000_000_000,
        "end_time": 1_764_000_000_123_456_789,
    }
    fields.update(changes)
    fields["context"] = context_data(fields["context"])  # type: ignore[arg-type]
    fields["parent"] = context_data(fields["parent"])  # type: ignore[arg-type]
    return span_data(**fields)  # type: ignore[arg-type]


def _same_bytes(spans: list[tuple[object, ...]], encoder: SpanEncoder | None = None) -> bytes:
    ours = (encoder or SpanEncoder()).encode(
        spans, [(dict(r.attributes), r.schema_url) for r in RESOURCES])
    theirs = encode_spans([rebuild(span, RESOURCES) for span in spans]).SerializeToString()
    assert ours == theirs
    return ours


def test_every_kind_of_value_is_written_as_the_sdk_writes_it() -> None:
    _same_bytes([_span(attributes={
        "text": "héllo ✓", "empty": "", "yes": True, "no": False, "zero": 0, "big": 2**62,
        "negative": -42, "most negative": -(2**63), "float": 0.1, "float zero": 0.0,
        "negative float": -1.5e300, "texts": ("a", "b"), "numbers": (1, -2, 3),
        "floats": (0.5,), "bools": (True, False), "empty tuple": (), "blob": b"\x00\xff",
        "mapping": {"a": 1, "b": ("x",)}, "none": None,
    })])


def test_events_links_parents_states_and_statuses() -> None:
    parent = _context(0x0102030405060708, remote=True, state=TraceState([("vendor", "v1")]))
    _same_bytes([
        _span("remote child", parent=parent, context=_context(
            0x99, state=TraceState([("vendor", "v1"), ("other", "x")])),
            kind=SpanKind.SERVER, status=Status(StatusCode.ERROR, "upstream_timeout: slow")),
        _span("local child", parent=_context(0x55), kind=SpanKind.INTERNAL,
              status=Status(StatusCode.OK)),
        _span("with events", events=[("exception", {"exception.type": "ValueError",
                                                     "exception.escaped": "False"}, 17),
                                     ("no attributes", {}, 18)]),
        _span("with links", links=[Link(_context(0x77, remote=True), {"why": "job"}),
                                   Link(_context(0x78))], kind=SpanKind.PRODUCER),
        _span("consumer", kind=SpanKind.CONSUMER, attributes={}),
    ])


def test_spans_are_grouped_by_resource_then_scope_in_the_order_first_seen() -> None:
    _same_bytes([
        _span("a"), _span("b", resource=1), _span("c", scope=("other", None, None)),
        _span("d", resource=1, scope=("llmspool", "1.2", "https://opentelemetry.io/s")),
        _span("e"), _span("f", scope=None),
    ])


def test_repeated_attributes_come_from_the_cache_unchanged() -> None:
    encoder = SpanEncoder()
    first = _same_bytes([_span(str(n), attributes={"model": "m", "n": n % 3, "ok": True})
                         for n in range(10)], encoder)
    again = _same_bytes([_span(str(n), attributes={"model": "m", "n": n % 3, "ok": True})
                         for n in range(10)], encoder)
    assert first == again
    # True and 1 are equal in Python: the cache keeps them apart.
    _same_bytes([_span(attributes={"v": True}), _span(attributes={"v": 1})], encoder)
    ExportTraceServiceRequest.FromString(first)  # and the bytes parse


def test_a_value_otlp_has_no_place_for_is_dropped_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spans = [_span(attributes={"kept": "yes", "object": object(), "surrogate": "\udc80"})]
    with caplog.at_level(logging.ERROR):
        ours = SpanEncoder().encode(spans, [({}, None), ({}, None)])
    [resource_spans] = ExportTraceServiceRequest.FromString(ours).resource_spans
    [span] = resource_spans.scope_spans[0].spans
    assert [kv.key for kv in span.attributes] == ["kept"]
    assert caplog.text.count("Failed to encode key") == 2


def test_the_installed_exporter_lends_its_http_client_for_the_bytes() -> None:
    # Otherwise the export child falls back to the SDK's encoder, several times slower.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    try:
        assert bytes_sender(exporter) is not None
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]
    assert bytes_sender(object()) is None
