"""``SpanFields``: the daemon's own attributes given to a span as one tuple of values, made
attributes in the export child. A span ends with the attributes the OpenTelemetry SDK's span
has after the same sets, whatever mix of fields and the API's setters gave them; a span that
is not ``LeanTracer``'s, and a sampler that reads attributes, are given them as a dict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
from llmspool.core.span_export import attributes_of, rebuild, with_attributes
from llmspool.core.spans import LeanSpan, SpanFields
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import Attributes

from tests.support.lean_tracers import lean_tracer

REQUEST = SpanFields("llmspool.request_id", "gen_ai.request.model", "llmspool.stream")
ANSWER = SpanFields("gen_ai.response.model", "gen_ai.response.finish_reasons",
                    "llmspool.billing_flag")


def _sdk() -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("llmspool", "1"), exporter


def _attributes_after(sets: Callable[[trace.Span], None]) -> tuple[dict[str, Any],
                                                                   dict[str, Any]]:
    """The attributes a ``LeanSpan`` ends with after ``sets`` (as the export child makes them
    of what it was sent), and an SDK span's after the same."""
    lean, queue = lean_tracer()
    with lean.start_as_current_span("call") as span:
        sets(span)
    sdk, exported = _sdk()
    with sdk.start_as_current_span("call") as span:
        sets(span)
    [data] = queue.spans
    [theirs] = exported.get_finished_spans()
    return attributes_of(data), dict(theirs.attributes or {})


def test_fields_become_the_attributes_they_name_and_none_sets_nothing() -> None:
    ours, theirs = _attributes_after(lambda span: (
        REQUEST.set(span, "req-1", "gpt-4o-mini", False),
        ANSWER.set(span, "gpt-4o-mini-2024-07-18", ("stop", "length"), None)))
    assert ours == theirs == {
        "llmspool.request_id": "req-1", "gen_ai.request.model": "gpt-4o-mini",
        "llmspool.stream": False, "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.finish_reasons": ("stop", "length")}


def test_the_last_value_given_wins_whether_a_field_or_the_apis_setter_gave_it() -> None:
    def sets(span: trace.Span) -> None:
        span.set_attribute("gen_ai.response.model", "set first")
        span.set_attribute("llmspool.billing_flag", "kept: the field leaves it unset")
        ANSWER.set(span, "a field after the setter", ("stop",), None)
        span.set_attribute("gen_ai.response.finish_reasons", ("a setter after the field",))
        REQUEST.set(span, "req-2", "gpt-4o", True)
        REQUEST.set(span, "req-2", "a field after a field", None)

    ours, theirs = _attributes_after(sets)
    assert ours == theirs
    assert ours["gen_ai.response.model"] == "a field after the setter"
    assert ours["gen_ai.response.finish_reasons"] == ("a setter after the field",)
    assert ours["gen_ai.request.model"] == "a field after a field"
    assert ours["llmspool.stream"] is True
    assert ours["llmspool.billing_flag"] == "kept: the field leaves it unset"


def test_a_span_keeps_its_first_128_names_however_they_were_given() -> None:
    # The SDK's own span keeps 128 too, but drops the oldest to make room; ``LeanSpan`` keeps
    # the first ones, fields or not.
    many = [SpanFields(*(f"field.{group}.{number}" for number in range(10)))
            for group in range(15)]
    lean, queue = lean_tracer()
    with lean.start_as_current_span("call") as span:
        span.set_attributes({f"api.{number}": number for number in range(20)})
        for group, fields in enumerate(many):
            fields.set(span, *range(group * 10, group * 10 + 10))
        span.set_attribute("api.late", "no room")
    [data] = queue.spans
    expected = {f"api.{number}": number for number in range(20)}
    expected.update({f"field.{n // 10}.{n % 10}": n for n in range(108)})
    assert attributes_of(data) == expected


def test_an_ended_span_takes_no_more_fields() -> None:
    lean, queue = lean_tracer()
    span = lean.start_span("call")
    REQUEST.set(span, "req-3", "gpt-4o", False)
    span.end()
    ANSWER.set(span, "too late", None, None)
    [data] = queue.spans
    assert attributes_of(data) == {"llmspool.request_id": "req-3",
                                   "gen_ai.request.model": "gpt-4o", "llmspool.stream": False}


def test_the_export_child_rebuilds_fields_as_the_sdks_span_holds_them() -> None:
    lean, queue = lean_tracer()
    with lean.start_as_current_span("call", kind=SpanKind.CLIENT) as span:
        REQUEST.set(span, "req-4", "gpt-4o", False)
        span.set_attribute("http.response.status_code", 200)
    [data] = queue.spans
    rebuilt: ReadableSpan = rebuild(data, [Resource.create({})])
    expected = {"llmspool.request_id": "req-4", "gen_ai.request.model": "gpt-4o",
                "llmspool.stream": False, "http.response.status_code": 200}
    assert dict(rebuilt.attributes or {}) == expected
    # What the child's encoder reads: the same span, its attributes one dict, no fields.
    merged = with_attributes(data)
    assert merged[4] == expected
    assert merged[:4] == data[:4] and merged[5:-1] == data[5:-1] and merged[-1] == ()
    assert len(merged) == len(data)


def test_another_tracers_span_is_given_the_values_as_attributes() -> None:
    sdk, exported = _sdk()
    with sdk.start_as_current_span("call") as span:
        REQUEST.set(span, "req-5", "gpt-4o", None)
    [finished] = exported.get_finished_spans()
    assert dict(finished.attributes or {}) == {"llmspool.request_id": "req-5",
                                               "gen_ai.request.model": "gpt-4o"}
    # A span nobody records is left alone.
    REQUEST.set(trace.INVALID_SPAN, "req-6", "gpt-4o", False)


class _Reading(Sampler):
    """A sampler of the user's that decides on a span's attributes, and keeps what it read."""

    def __init__(self) -> None:
        self.read: list[dict[str, Any]] = []

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: Any = None, attributes: Attributes = None, links: Any = None,
                      trace_state: Any = None) -> SamplingResult:
        self.read.append(dict(attributes or {}))
        keep = (attributes or {}).get("gen_ai.request.model") == "gpt-4o"
        return SamplingResult(Decision.RECORD_AND_SAMPLE if keep else Decision.DROP,
                              attributes)

    def get_description(self) -> str:
        return "reads attributes"


def test_a_sampler_that_reads_attributes_is_given_the_starting_fields() -> None:
    sampler = _Reading()
    lean, queue = lean_tracer(sampler)
    for model in ("gpt-4o", "gpt-4o-mini"):
        REQUEST.start_span(lean, "call", ("req-7", model, False)).end()
    assert sampler.read == [
        {"llmspool.request_id": "req-7", "gen_ai.request.model": model,
         "llmspool.stream": False} for model in ("gpt-4o", "gpt-4o-mini")]
    [kept] = queue.spans
    assert attributes_of(kept)["gen_ai.request.model"] == "gpt-4o"


def test_a_span_started_with_fields_under_an_inline_sampler_records_them() -> None:
    lean, queue = lean_tracer()
    span = REQUEST.start_span(lean, "call", ("req-8", "gpt-4o", True), kind=SpanKind.SERVER)
    assert span.is_recording()
    span.end()
    [data] = queue.spans
    assert attributes_of(data) == {"llmspool.request_id": "req-8",
                                   "gen_ai.request.model": "gpt-4o", "llmspool.stream": True}
    # The same from a tracer that is not ``LeanTracer``: the values as its attributes.
    sdk, exported = _sdk()
    REQUEST.start_span(sdk, "call", ("req-9", "gpt-4o", None)).end()
    [finished] = exported.get_finished_spans()
    assert dict(finished.attributes or {}) == {"llmspool.request_id": "req-9",
                                               "gen_ai.request.model": "gpt-4o"}


@pytest.mark.parametrize("fields", [
    (("a", "b"), 1),  # a value missing at the end
    (("a",), 1, 2, ("b",), 3),  # a value too many: the next names are not where expected
    ("ab", 1, 2),  # names that are not a tuple
])
def test_fields_that_do_not_add_up_are_refused_not_misread(fields: tuple[Any, ...]) -> None:
    lean, queue = lean_tracer()
    span = lean.start_span("broken")
    cast(LeanSpan, span).fields.extend(fields)  # what no ``SpanFields`` makes (it checks)
    span.end()
    [data] = queue.spans
    with pytest.raises(ValueError, match="span fields"):
        attributes_of(data)

