"""Which exporters the ``OTEL_*`` variables ask for, links to a job's submission, and what
telemetry reads of answers and streams (id, model, finish reasons)."""

from __future__ import annotations

import contextvars

import orjson
import pytest
from llmspool.core.config.sections import TracingConfig
from llmspool.core.tracing import (
    Tally,
    active,
    build_tracing,
    exporters,
    linked_context,
    links_of,
    tracing_wanted,
)
from llmspool.core.wire import SseMeter, finish_reasons_of, response_id_of, response_model_of
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Sum

ENDPOINT = "http://127.0.0.1:4318"


@pytest.mark.parametrize(("environ", "traces", "metrics"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, ("otlp",), ("otlp",)),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_METRICS_EXPORTER": "none"}, ("otlp",), ()),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_TRACES_EXPORTER": " None "}, (),
     ("otlp",)),
    # A traces-only backend named on its own: metrics have nowhere to go.
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{ENDPOINT}/v1/traces"}, ("otlp",), ()),
    ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{ENDPOINT}/v1/metrics"}, (), ("otlp",)),
    ({"OTEL_TRACES_EXPORTER": "console"}, ("console",), ()),
    ({"OTEL_TRACES_EXPORTER": "otlp,console,otlp"}, ("otlp", "console"), ()),
    ({"OTEL_METRICS_EXPORTER": "console,none"}, (), ()),
    ({"OTEL_METRICS_EXPORTER": "prometheus,console"}, (), ("console",)),  # unknown: ignored
    ({}, ("otlp",), ("otlp",)),  # nothing named: the OTLP default (for enabled = "on")
])
def test_exporters_per_signal(environ: dict[str, str], traces: tuple[str, ...],
                              metrics: tuple[str, ...]) -> None:
    assert exporters("traces", environ) == traces
    assert exporters("metrics", environ) == metrics


def test_auto_turns_telemetry_on_when_an_endpoint_or_exporter_is_named() -> None:
    auto = TracingConfig()
    assert not tracing_wanted(auto, {})
    assert tracing_wanted(auto, {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT})
    assert tracing_wanted(auto, {"OTEL_TRACES_EXPORTER": "console"})
    assert tracing_wanted(auto, {"OTEL_METRICS_EXPORTER": "otlp"})
    assert not tracing_wanted(auto, {"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing_wanted(auto, {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT,
                                     "OTEL_TRACES_EXPORTER": "none",
                                     "OTEL_METRICS_EXPORTER": "none"})
    assert not tracing_wanted(auto, {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT,
                                     "OTEL_SDK_DISABLED": "true"})
    assert tracing_wanted(TracingConfig(enabled="on"), {})


def test_none_builds_no_provider_for_that_signal() -> None:
    def build() -> None:
        tracing = build_tracing(TracingConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT,
                                                  "OTEL_METRICS_EXPORTER": "none"})
        try:
            assert tracing.provider is not None and tracing.meter_provider is None
            assert active() is tracing  # what parts built without a meter or tracer take
        finally:
            tracing.shutdown()

    # In a context of its own: ``active()`` belongs to the task that built it.
    contextvars.copy_context().run(build)
    assert active().provider is None


def test_a_deferred_call_links_to_the_submission_span() -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    [link] = links_of(linked_context(traceparent)) or []
    assert f"{link.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert f"{link.context.span_id:016x}" == "00f067aa0ba902b7"
    assert links_of(linked_context(None)) is None
    assert links_of(linked_context("garbage")) is None


def test_readers_of_whole_answers() -> None:
    chat = {"id": "chatcmpl-1", "model": "gpt-4o-mini-2024-07-18", "choices": [
        {"index": 0, "finish_reason": "stop"}, {"index": 1, "finish_reason": "length"}]}
    assert response_id_of(chat) == "chatcmpl-1"
    assert response_model_of(chat) == "gpt-4o-mini-2024-07-18"
    assert finish_reasons_of(chat) == ["stop", "length"]
    response = {"id": "resp_1", "object": "response", "model": "gpt-5", "status": "completed"}
    assert (response_id_of(response), finish_reasons_of(response)) == ("resp_1", ["stop"])
    cut = {**response, "status": "incomplete",
           "incomplete_details": {"reason": "max_output_tokens"}}
    assert finish_reasons_of(cut) == ["max_output_tokens"]
    event = {"type": "response.completed", "response": response}
    assert (response_id_of(event), response_model_of(event)) == ("resp_1", "gpt-5")
    assert finish_reasons_of({"type": "response.created",
                              "response": {**response, "status": "in_progress"}}) == []
    embeddings = {"object": "list", "data": [], "model": "text-embedding-3-small"}
    assert (response_id_of(embeddings), finish_reasons_of(embeddings)) == (None, [])


@pytest.mark.parametrize("dumps", [
    orjson.dumps,  # compact, as OpenAI writes it
    lambda value: orjson.dumps(value).replace(b'":', b'": '),  # as some servers do
])
def test_stream_meter_notes_id_model_and_finish_reasons(dumps: object) -> None:
    assert callable(dumps)
    head = {"id": "chatcmpl-9", "model": "gpt-4o-mini-2024-07-18", "service_tier": "default"}

    def event(choices: list[object], usage: object = None) -> bytes:
        return b"data: " + dumps({**head, "choices": choices, "usage": usage}) + b"\n\n"

    stream = [
        event([{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]),
        event([{"index": 0, "delta": {"content": "b"}, "finish_reason": None}]),
        event([{"index": 0, "delta": {}, "finish_reason": "length"}]),
        event([], {"prompt_tokens": 3, "completion_tokens": 2}),
        b"data: [DONE]\n\n",
    ]
    meter = SseMeter(strip_usage_chunk=True)
    out = b"".join(meter.feed(chunk) for chunk in stream) + meter.flush()
    assert out == b"".join(stream[:3] + stream[4:])  # only the usage chunk kept back
    assert (meter.response_id, meter.model) == ("chatcmpl-9", "gpt-4o-mini-2024-07-18")
    assert meter.finish_reasons == ["length"]
    assert meter.events == 5


def _sums(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, object], ...], float]:
    data = reader.get_metrics_data()
    assert data is not None
    found = [metric for resource in data.resource_metrics for scope in resource.scope_metrics
             for metric in scope.metrics if metric.name == name]
    assert len(found) == 1
    points = found[0].data
    assert isinstance(points, Sum) and points.is_monotonic
    return {tuple(sorted((point.attributes or {}).items())): point.value
            for point in points.data_points}


def test_a_tally_exports_cumulative_sums_by_attribute_set() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    attempts = Tally(meter, "llmspool.upstream.attempts", "{attempt}", "attempts")
    attempts.add(1, (("llmspool.provider", "openai"),))
    attempts.add(1, (("llmspool.provider", "openai"),))
    attempts.add(1, (("llmspool.provider", "anthropic"),))
    assert _sums(reader, "llmspool.upstream.attempts") == {
        (("llmspool.provider", "openai"),): 2, (("llmspool.provider", "anthropic"),): 1}
    attempts.add(0.5, (("llmspool.provider", "openai"),))
    # Cumulative: each collection reports the whole sum so far.
    assert _sums(reader, "llmspool.upstream.attempts")[(("llmspool.provider", "openai"),)] == 2.5


def test_a_tally_on_a_no_op_meter_keeps_nothing() -> None:
    tally = Tally(metrics.NoOpMeter("off"), "llmspool.spend", "USD", "spend")
    tally.add(1.0, (("llmspool.provider", "openai"),))
    assert not tally.enabled
    assert tally._observe(metrics.CallbackOptions()) == []
