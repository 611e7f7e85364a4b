"""``LeanTracer``'s spans, as a collector receives them through the real pipe and export child:
what the API promises (parents, status rules, events, exceptions, links), values made what
OTLP can carry, and the SDK's sampler read from ``OTEL_TRACES_SAMPLER``."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any

import pytest
from llmspool.core.config.sections import TracingConfig
from llmspool.core.spans import LeanSpan
from llmspool.core.tracing import Tracing, build_tracing, context_from_traceparent
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from tests.integration.test_tracing import OtlpReceiver, attributes_of, receiver  # noqa: F401
from tests.support.waiting import wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Colour(enum.StrEnum):
    RED = "red"


@pytest.fixture
def environ(receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:  # noqa: F811
    # The export child reads the endpoint from its environment, inherited from this process.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_METRICS_EXPORTER": "none",
            "OTEL_BSP_SCHEDULE_DELAY": "50"}


def _tracing(environ: dict[str, str]) -> Iterator[Tracing]:
    tracing = build_tracing(TracingConfig(enabled="on"), environ)
    try:
        yield tracing
    finally:
        tracing.shutdown()


@pytest.fixture
def tracing(environ: dict[str, str]) -> Iterator[Tracing]:
    yield from _tracing(environ)


def _flush(tracing: Tracing) -> None:
    tracing.shutdown()  # sends what waits and waits for the child to send it


def test_the_daemons_tracer_is_the_lean_one_and_spans_reach_the_collector_whole(
    tracing: Tracing, receiver: OtlpReceiver,  # noqa: F811
) -> None:
    tracer = tracing.tracer
    parent_context = context_from_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-01")
    with tracer.start_as_current_span("outer", context=parent_context, kind=SpanKind.SERVER,
                                      attributes={"n": 1, "none": None}) as outer:
        assert isinstance(outer, LeanSpan)
        with tracer.start_as_current_span("inner", kind=SpanKind.CLIENT) as inner:
            inner.set_attributes({"tier": Colour.RED, "reasons": ["stop", "length"],
                                  "ratio": 0.5, "ok": True})
            inner.set_attribute("odd", {"a": 1})  # not allowed: dropped
            inner.add_event("attempt 1 failed", {"error.type": "timeout", "none": None})
            inner.set_status(Status(StatusCode.ERROR, "upstream timed out"))
            inner.set_status(StatusCode.UNSET)  # changes nothing
        linked = tracer.start_span("linked", links=[Link(outer.get_span_context())])
        linked.set_status(StatusCode.OK)
        linked.set_status(StatusCode.ERROR, "too late")  # OK is final
        linked.end()
        linked.set_attribute("after", 1)  # an ended span takes nothing more
    _flush(tracing)
    wait_for(lambda: len(receiver.spans) == 3, what="the three spans")
    outer_span, inner_span, linked_span = (receiver.span(name) for name in
                                           ("outer", "inner", "linked"))
    assert outer_span.trace_id.hex() == TRACE_ID
    assert outer_span.parent_span_id.hex() == PARENT_ID
    assert outer_span.kind == outer_span.SPAN_KIND_SERVER
    assert attributes_of(outer_span) == {"n": 1}
    assert inner_span.parent_span_id == outer_span.span_id
    assert inner_span.trace_id == outer_span.trace_id
    assert attributes_of(inner_span) == {"tier": "red", "reasons": ["stop", "length"],
                                         "ratio": 0.5, "ok": True}
    assert [event.name for event in inner_span.events] == ["attempt 1 failed"]
    assert attributes_of(inner_span.events[0]) == {"error.type": "timeout"}
    assert inner_span.status.code == inner_span.status.STATUS_CODE_ERROR
    assert inner_span.status.message == "upstream timed out"
    assert inner_span.end_time_unix_nano >= inner_span.start_time_unix_nano > 0
    assert linked_span.links[0].span_id == outer_span.span_id
    assert linked_span.status.code == linked_span.status.STATUS_CODE_OK
    assert attributes_of(linked_span) == {}


def test_an_exception_leaving_a_current_span_is_recorded_and_sets_its_status(
    tracing: Tracing, receiver: OtlpReceiver,  # noqa: F811
) -> None:
    with pytest.raises(ValueError), tracing.tracer.start_as_current_span("failing"):
        raise ValueError("bad input")
    # The same for a span used as a context manager itself, unless told not to.
    with pytest.raises(ValueError), tracing.tracer.start_span("with span"):
        raise ValueError("bad input")
    with pytest.raises(ValueError), tracing.tracer.start_span(
            "quiet", record_exception=False, set_status_on_exception=False):
        raise ValueError("bad input")
    _flush(tracing)
    wait_for(lambda: len(receiver.spans) == 3, what="the spans")
    quiet = receiver.span("quiet")
    assert not quiet.events and quiet.status.code == quiet.status.STATUS_CODE_UNSET
    with_span = receiver.span("with span")
    assert with_span.status.code == quiet.status.STATUS_CODE_ERROR
    assert [event.name for event in with_span.events] == ["exception"]
    assert attributes_of(with_span.events[0])["exception.escaped"] == "True"
    span = receiver.span("failing")
    assert span.status.code == span.status.STATUS_CODE_ERROR
    assert "ValueError: bad input" in span.status.message
    [event] = span.events
    recorded: dict[str, Any] = attributes_of(event)
    assert event.name == "exception" and recorded["exception.type"] == "ValueError"
    assert recorded["exception.message"] == "bad input"
    assert "raise ValueError" in recorded["exception.stacktrace"]


@pytest.mark.parametrize(("sampler", "traceparent", "kept"), [
    ("always_off", None, False),
    # Parent-based: a client's trace that was not sampled stays unsampled here.
    ("parentbased_always_on", f"00-{TRACE_ID}-{PARENT_ID}-00", False),
    ("parentbased_always_on", f"00-{TRACE_ID}-{PARENT_ID}-01", True),
])
def test_the_sampler_named_in_the_environment_decides(
    environ: dict[str, str], receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    sampler: str, traceparent: str | None, kept: bool,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)  # the SDK reads it from os.environ
    for tracing in _tracing(environ):
        span = tracing.tracer.start_span("maybe", context=context_from_traceparent(traceparent))
        assert span.get_span_context().trace_flags.sampled == kept
        assert isinstance(span, LeanSpan) == kept and span.is_recording() == kept
        span.end()
    # Stopping sent everything handed over and waited for the child to export it.
    assert [s.name for s in receiver.spans] == (["maybe"] if kept else [])


def test_the_span_limits_set_in_the_environment_cut_what_the_collector_gets(
    environ: dict[str, str], receiver: OtlpReceiver,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Read by the export child, from the environment it inherits from the daemon.
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "4")
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "1")
    for tracing in _tracing(environ):
        span = tracing.tracer.start_span("limited")
        span.set_attributes({"model": "gpt-4o-mini", "reasons": ("stop", "length"), "n": 12345})
        for attempt in range(3):
            span.add_event(f"attempt {attempt}", {"error.type": "resource_unavailable"})
        span.end()
    wait_for(lambda: len(receiver.spans) == 1, what="the span")
    limited = receiver.span("limited")
    assert attributes_of(limited) == {"model": "gpt-", "reasons": ["stop", "leng"], "n": 12345}
    assert [event.name for event in limited.events] == ["attempt 2"]  # the newest kept
    assert limited.dropped_events_count == 2
    assert {kv.key: kv.value.string_value for kv in limited.events[0].attributes} == {
        "error.type": "reso"}
