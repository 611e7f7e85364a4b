"""The span limits a user sets (``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT``,
``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` and the others) cut llmspool's own spans as the SDK's cut
its spans: the export child, which reads them from the environment it inherits, sends the very
bytes OpenTelemetry's encoder makes of an SDK span given the same attributes, events and links,
dropped counts included."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from llmspool.core.otlp_spans import SpanEncoder
from llmspool.core.span_export import attribute_pairs, with_attributes
from llmspool.core.span_limits import SpanLimiter
from llmspool.core.spans import SpanFields
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags

from tests.support.lean_tracers import lean_tracer

RESOURCE = Resource({"service.name": "llmspool"})
REQUEST = SpanFields("gen_ai.request.model", "llmspool.request_id", "llmspool.stream")
ANSWER = SpanFields("gen_ai.response.id", "gen_ai.response.finish_reasons",
                    "llmspool.request_id")
LINKED = [Link(SpanContext(0xA1, 0xB0 + n, True, TraceFlags(1)),
               {"job": f"batch_{n:04}-long-identifier", "n": n, "ok": True}) for n in range(4)]


class _Ids(IdGenerator):
    """The same ids, in the same order, for both tracers."""

    def __init__(self) -> None:
        self._next = 0x1000

    def generate_span_id(self) -> int:
        self._next += 1
        return self._next

    def generate_trace_id(self) -> int:
        return 0x0AF7651916CD43DD8448EB211C80319C


def _spans(tracer: trace.Tracer) -> None:
    """What a call's span goes through, with more than some limits let through: fields and
    the API's setters on the same names, long strings, a tuple of them, events with
    attributes, an exception, and links given at the start."""
    span = tracer.start_span("chat gpt-4o-mini", kind=SpanKind.CLIENT, links=LINKED,
                             start_time=1_000)
    # Fields, then the API's setters (the order the child knows them in: ``span_limits``),
    # names set again on both sides.
    REQUEST.set(span, "gpt-4o-mini-2024-07-18", "llmspool-3f2a9c1d7e-1a", False)
    ANSWER.set(span, "chatcmpl-AbCdEfGhIjKlMnOp", ("stop", "length-of-the-answer"),
               "llmspool-3f2a9c1d7e-1a")
    span.set_attribute("llmspool.tier", "standard")
    span.set_attributes({"gen_ai.usage.input_tokens": 12, "error.type": "upstream_timeout",
                         "gen_ai.request.model": "gpt-4o-mini"})
    for n in range(5):
        span.add_event(f"retry {n}", {"attempt": n, "reason": "resource unavailable, retried",
                                      "wait_ms": 125.5, "tier": "flex"}, timestamp=2_000 + n)
    span.record_exception(TimeoutError("the upstream took longer than the 30 s it was given"),
                          timestamp=3_000)
    span.end(end_time=9_000)


def _sdk_bytes() -> bytes:
    exported = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE, id_generator=_Ids())  # limits from the env
    provider.add_span_processor(SimpleSpanProcessor(exported))
    _spans(provider.get_tracer("llmspool", "1"))
    return encode_spans(exported.get_finished_spans()).SerializeToString()


def _child_bytes(limiter: SpanLimiter | None) -> bytes:
    tracer, queue = lean_tracer(ids=_Ids())
    _spans(tracer)
    spans = [with_attributes(span) if limiter is None
             else limiter.limit(span, attribute_pairs(span)) for span in queue.spans]
    return SpanEncoder().encode(spans, [(dict(RESOURCE.attributes), RESOURCE.schema_url)])


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("OTEL_ATTRIBUTE_COUNT_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
                 "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
                 "OTEL_SPAN_EVENT_COUNT_LIMIT", "OTEL_SPAN_LINK_COUNT_LIMIT",
                 "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


@pytest.mark.parametrize("environment", [
    {"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "4"},
    {"OTEL_ATTRIBUTE_COUNT_LIMIT": "3"},  # the default of every count
    {"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "6"},
    {"OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "9", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "4"},
    {"OTEL_SPAN_EVENT_COUNT_LIMIT": "2", "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT": "1"},
    {"OTEL_SPAN_LINK_COUNT_LIMIT": "1", "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT": "2"},
    {"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "0", "OTEL_SPAN_EVENT_COUNT_LIMIT": "0",
     "OTEL_SPAN_LINK_COUNT_LIMIT": "0"},
], ids=lambda environment: ",".join(f"{k[5:]}={v}" for k, v in environment.items()))
def test_the_child_cuts_a_span_as_the_sdk_does(limits: pytest.MonkeyPatch,
                                               environment: dict[str, str]) -> None:
    for name, value in environment.items():
        limits.setenv(name, value)
    limiter = SpanLimiter.from_environment()
    assert limiter is not None
    ours = _child_bytes(limiter)
    assert ours == _sdk_bytes()
    assert ours != _child_bytes(None)  # the limit cut something


def test_with_the_default_limits_the_child_does_no_extra_work(
        limits: pytest.MonkeyPatch) -> None:
    assert SpanLimiter.from_environment() is None
    limits.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "500")  # above what a span keeps anyway
    assert SpanLimiter.from_environment() is None
    limits.setenv("OTEL_LINK_ATTRIBUTE_COUNT_LIMIT", "127")
    assert SpanLimiter.from_environment() is not None
