"""OpenTelemetry: a tracer and a meter for the actors, exported over OTLP/HTTP, or no-op ones.

``[tracing] enabled = "auto"`` turns tracing on when the environment names an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) or asks for it with
``OTEL_TRACES_EXPORTER=otlp``; ``OTEL_SDK_DISABLED=true`` turns it off whatever else is set.
The exporter itself reads the standard ``OTEL_*`` variables (endpoint, headers, timeout).

The tracer provider is not installed globally: the daemon passes its tracer to the actors,
so two daemons in one process (as in tests) never share one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from llmspool import __version__
from llmspool.config import TracingConfig

_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(frozen=True, slots=True)
class Tracing:
    """The daemon's tracer, and the provider to flush at exit (None when tracing is off)."""

    tracer: trace.Tracer
    provider: TracerProvider | None
    meter: metrics.Meter = field(default_factory=lambda: metrics.NoOpMeter("llmspool"))
    meter_provider: MeterProvider | None = None

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def shutdown(self) -> None:
        """Flush and stop the exporter (blocking: call it from a worker thread)."""
        if self.provider is not None:
            self.provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def tracing_wanted(config: TracingConfig, environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if config.enabled != "auto":
        return config.enabled == "on"
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "otlp":
        return True
    return any(environ.get(name) for name in _ENDPOINT_VARIABLES)


def build_tracing(config: TracingConfig, environ: Mapping[str, str]) -> Tracing:
    if not tracing_wanted(config, environ):
        return Tracing(trace.NoOpTracer(), None)
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": config.service_name}
    attributes["service.version"] = __version__
    resource = Resource.create(attributes)
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
    )
    return Tracing(
        provider.get_tracer("llmspool", __version__),
        provider,
        meter_provider.get_meter("llmspool", __version__),
        meter_provider,
    )


def context_from_headers(headers: Mapping[str, str]) -> Context:
    """The trace context a client sent in ``traceparent``/``tracestate`` (empty if none)."""
    if "traceparent" not in headers:
        return Context()
    return _PROPAGATOR.extract(carrier=headers)


def links_from(traceparents: Iterable[str]) -> list[trace.Link]:
    """Span links to the spans named by W3C ``traceparent`` values (invalid ones skipped):
    how a batch's spans point at the requests it carries."""
    links = []
    for traceparent in traceparents:
        context = _PROPAGATOR.extract({"traceparent": traceparent})
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            links.append(trace.Link(span_context))
    return links


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current span, to store with work that outlives it."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")
