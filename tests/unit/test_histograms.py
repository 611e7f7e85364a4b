"""The GenAI histograms kept as plain counts (``core.histograms``) reach a metric exporter as the
SDK's explicit-bucket aggregation would send them, through the SDK's own meter provider and
periodic reader, beside the SDK's instruments."""

from __future__ import annotations

import math

from llmspool.core.histograms import Histograms, WithHistograms
from llmspool.core.tracing import GenAiMetrics
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

SCOPE = InstrumentationScope("llmspool", "test")
RESOURCE = Resource.create({"service.name": "llmspool-test"})


class Captured(MetricExporter):
    """What an exporter is handed, export by export."""

    def __init__(self, temporality: AggregationTemporality | None = None) -> None:
        super().__init__(preferred_temporality=None if temporality is None
                         else {Histogram: temporality})
        self.exports: list[MetricsData] = []

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: object) -> MetricExportResult:
        self.exports.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        pass

    def points(self, name: str, export: int = -1) -> dict[tuple[tuple[str, object], ...],
                                                          HistogramDataPoint]:
        found = {}
        for resource in self.exports[export].resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            assert isinstance(point, HistogramDataPoint)
                            found[tuple(sorted(point.attributes.items()))] = point
        return found


def _provider(*exporters: Captured) -> tuple[MeterProvider, GenAiMetrics]:
    histograms = Histograms()
    metrics = GenAiMetrics(histograms)
    provider = MeterProvider(resource=RESOURCE, metric_readers=[
        PeriodicExportingMetricReader(
            WithHistograms(exporter, histograms, resource=RESOURCE, scope=SCOPE),
            export_interval_millis=3_600_000)
        for exporter in exporters])
    # An SDK instrument of the same meter: the histograms join its scope.
    provider.get_meter(SCOPE.name, SCOPE.version).create_counter("llmspool.test").add(1)
    return provider, metrics


def test_values_fall_in_the_bucket_their_boundary_closes_per_attribute_set() -> None:
    exporter = Captured()
    provider, metrics = _provider(exporter)
    chat = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "m"}
    metrics.operation(0.01, "chat", "openai", "m")  # exactly the first boundary: 1st bucket
    metrics.operation(0.011, "chat", "openai", "m")  # the same set: the same point
    metrics.operation(100.0, "chat", "openai", "m")  # past the last boundary
    metrics.operation(0.5, "chat", "openai", "m", error_type="timeout")
    metrics.operation(0.2, "chat", "openai", "m", "m-2025", "flex")  # what served it
    metrics.operation(-1.0, "chat", "openai", "m")  # as the SDK: negative and NaN values
    metrics.operation(math.nan, "chat", "openai", "m")  # are not recorded
    metrics.tokens(12, 40, "chat", "openai", "m", "m-2025", "flex")
    provider.force_flush()

    durations = exporter.points("gen_ai.client.operation.duration")
    served = {**chat, "gen_ai.response.model": "m-2025", "llmspool.tier": "flex"}
    assert set(durations) == {tuple(sorted(chat.items())),
                              tuple(sorted({**chat, "error.type": "timeout"}.items())),
                              tuple(sorted(served.items()))}
    point = durations[tuple(sorted(chat.items()))]
    assert (point.count, point.min, point.max) == (3, 0.01, 100.0)
    assert point.sum == 0.01 + 0.011 + 100.0
    assert point.explicit_bounds[0] == 0.01
    assert point.bucket_counts[0] == 1 and point.bucket_counts[1] == 1
    assert point.bucket_counts[-1] == 1
    assert len(point.bucket_counts) == len(point.explicit_bounds) + 1
    tokens = exporter.points("gen_ai.client.token.usage")
    assert {dict(key)["gen_ai.token.type"]: p.sum for key, p in tokens.items()} == \
        {"input": 12, "output": 40}
    assert all({**dict(key), "gen_ai.token.type": None} == {**served, "gen_ai.token.type": None}
               for key in tokens)
    # One scope for the meter's own instruments and the histograms.
    scopes = exporter.exports[-1].resource_metrics[0].scope_metrics
    assert [scope.scope for scope in scopes] == [SCOPE]
    assert {metric.name for metric in scopes[0].metrics} == {
        "llmspool.test", "gen_ai.client.operation.duration", "gen_ai.client.token.usage"}
    assert exporter.exports[-1].resource_metrics[0].resource == RESOURCE


def test_each_exporter_gets_the_temporality_it_prefers() -> None:
    cumulative, delta = Captured(), Captured(AggregationTemporality.DELTA)
    provider, metrics = _provider(cumulative, delta)
    attributes = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                  "gen_ai.request.model": "m"}
    metrics.operation(1.0, "chat", "openai", "m")
    provider.force_flush()
    metrics.operation(2.0, "chat", "openai", "m")
    provider.force_flush()

    key = tuple(sorted(attributes.items()))
    first, second = (cumulative.points("gen_ai.client.operation.duration", n)[key]
                     for n in (0, 1))
    assert (second.count, second.sum, second.min) == (2, 3.0, 1.0)
    assert second.start_time_unix_nano == first.start_time_unix_nano
    first, second = (delta.points("gen_ai.client.operation.duration", n)[key] for n in (0, 1))
    assert (first.count, first.sum) == (1, 1.0)
    assert (second.count, second.sum, second.min) == (1, 2.0, 2.0)
    assert second.start_time_unix_nano == first.time_unix_nano
    # A delta export with nothing new carries no histogram at all.
    provider.force_flush()
    assert delta.points("gen_ai.client.operation.duration") == {}
    assert cumulative.points("gen_ai.client.operation.duration")[key].count == 2


def test_off_nothing_is_kept() -> None:
    metrics = GenAiMetrics(None)
    assert not metrics.enabled
    metrics.operation(1.0, "chat", "openai", "m")  # callers skip it; harmless


def test_every_model_keeps_its_own_points_however_many_there_are() -> None:
    """Each record lands in its own attribute set, however many sets there are."""
    exporter = Captured()
    provider, metrics = _provider(exporter)
    for n in range(1_500):
        metrics.operation(0.5, "chat", "openai", f"m-{n}")
        metrics.tokens(n, 1, "chat", "openai", f"m-{n}", f"m-{n}", "standard")
    metrics.operation(1.5, "chat", "openai", "m-7")
    provider.force_flush()
    durations = exporter.points("gen_ai.client.operation.duration")
    assert len(durations) == 1_500
    seventh = durations[(("gen_ai.operation.name", "chat"), ("gen_ai.provider.name", "openai"),
                         ("gen_ai.request.model", "m-7"))]
    assert (seventh.count, seventh.sum) == (2, 2.0)
    tokens = exporter.points("gen_ai.client.token.usage")
    assert len(tokens) == 3_000
    assert tokens[(("gen_ai.operation.name", "chat"), ("gen_ai.provider.name", "openai"),
                   ("gen_ai.request.model", "m-1499"), ("gen_ai.response.model", "m-1499"),
                   ("gen_ai.token.type", "input"), ("llmspool.tier", "standard"))].sum == 1_499
