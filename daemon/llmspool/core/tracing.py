"""OpenTelemetry: a tracer and a meter for the actors, exported over OTLP/HTTP (or to the
console), or no-op ones.

When: ``[tracing] enabled = "auto"`` turns telemetry on when the environment names an OTLP
endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` or a signal's own ``…_TRACES_ENDPOINT`` /
``…_METRICS_ENDPOINT``) or an exporter (``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``);
``OTEL_SDK_DISABLED=true`` turns it off whatever else is set.

Where each signal goes: ``OTEL_TRACES_EXPORTER`` and ``OTEL_METRICS_EXPORTER`` name its
exporters (``otlp``, ``console``, a comma-separated list, or ``none``: no exporter at all, so
nothing is sent and nothing can fail). Unset, a signal goes over OTLP when an endpoint for it
is named, or when nothing at all is named (the OTLP default, localhost:4318); so a backend
given only as ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (Phoenix takes no metrics) gets traces,
and the daemon does not log a failed metrics export to localhost every minute. The exporters
read the standard ``OTEL_*`` variables themselves (endpoint, headers, timeout, intervals).

The tracer provider is not installed globally: the daemon passes its tracer and meter to the
actors, so two daemons in one process (as in tests) never share one. Parts built without one
take the daemon's from ``active()``, a context variable ``build_tracing`` sets in the daemon's
task (child tasks inherit it, other daemons' tasks do not).

Names follow OpenTelemetry's GenAI semantic conventions (Development status): the span
attributes ``gen_ai.response.id``, ``gen_ai.response.finish_reasons``,
``gen_ai.usage.cache_read.input_tokens``, ``openai.response.service_tier``; the cost as the
open cost proposal names it (``gen_ai.usage.cost.amount``, ``.currency``, ``.source``); and
the client metrics ``gen_ai.client.operation.duration`` and ``gen_ai.client.token.usage``
(``GenAiMetrics``), with the conventions' bucket boundaries.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry import metrics, trace
from opentelemetry.context import Context, create_key, set_value
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from llmspool import __version__
from llmspool.core.config.sections import TracingConfig
from llmspool.core.histograms import Histograms, Labels, WithHistograms
from llmspool.core.span_pipe import SpanPipe
from llmspool.core.spans import LeanTracer

log = logging.getLogger(__name__)

_ENDPOINT_VARIABLES = {
    "traces": ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    "metrics": ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
}
_EXPORTER_VARIABLES = {"traces": "OTEL_TRACES_EXPORTER", "metrics": "OTEL_METRICS_EXPORTER"}
EXPORTERS = ("otlp", "console")
_PROPAGATOR = TraceContextTextMapPropagator()
# Where a call made later on behalf of another span (a job's request) keeps its links: the
# ``Call`` carries an OpenTelemetry ``Context``, so the links travel in it without a new field.
_LINKS = create_key("llmspool.links")

# The GenAI conventions' advisory bucket boundaries (seconds; tokens).
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                     20.48, 40.96, 81.92)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                  16777216, 67108864)


class SpanSink(Protocol):
    """Where the daemon's spans go, stopped (after sending what it has) at the end."""

    def shutdown(self) -> object: ...


@dataclass(frozen=True, slots=True)
class Tracing:
    """The daemon's tracer and meter, and the providers to flush at exit (None when off)."""

    tracer: trace.Tracer
    provider: SpanSink | None
    meter: metrics.Meter = field(default_factory=lambda: metrics.NoOpMeter("llmspool"))
    meter_provider: MeterProvider | None = None
    # The histograms every metric export carries (None: no metrics exported).
    histograms: Histograms | None = None

    @property
    def enabled(self) -> bool:
        return self.provider is not None or self.meter_provider is not None

    def shutdown(self) -> None:
        """Flush and stop the exporters (blocking: call it from a worker thread)."""
        if self.provider is not None:
            self.provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


_OFF = Tracing(trace.NoOpTracer(), None)
_ACTIVE: ContextVar[Tracing] = ContextVar("llmspool_tracing", default=_OFF)

NO_SPAN: AbstractContextManager[trace.Span] = contextlib.nullcontext(trace.INVALID_SPAN)
"""A span scope for when nothing records spans: ``with (tracer.start_as_current_span(...) if
records(tracer) else NO_SPAN) as span``. A no-op tracer's ``start_as_current_span`` still makes
its span current (a context attach and detach, ~6 µs): paid twice per call for nothing."""


def records(tracer: trace.Tracer) -> bool:
    """Whether ``tracer``'s spans go anywhere (tracing is off: the daemon's is a no-op)."""
    return not isinstance(tracer, trace.NoOpTracer)


def active() -> Tracing:
    """The telemetry of the daemon this task belongs to (no-op outside one)."""
    return _ACTIVE.get()


def tracing_wanted(config: TracingConfig, environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if config.enabled != "auto":
        return config.enabled == "on"
    return _configured(environ) and bool(exporters("traces", environ)
                                         or exporters("metrics", environ))


def exporters(signal: str, environ: Mapping[str, str]) -> tuple[str, ...]:
    """The exporters of ``signal`` ("traces" or "metrics"), as the module docstring says."""
    variable = _EXPORTER_VARIABLES[signal]
    raw = environ.get(variable, "").strip().lower()
    if not raw:
        named = any(environ.get(name) for name in _ENDPOINT_VARIABLES[signal])
        return ("otlp",) if named or not _configured(environ) else ()
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if "none" in names:
        return ()
    chosen: list[str] = []
    for name in names:
        if name not in EXPORTERS:
            log.warning("%s names %r, which llmspool does not export to (it knows %s and "
                        "none); ignored", variable, name, ", ".join(EXPORTERS))
        elif name not in chosen:
            chosen.append(name)
    return tuple(chosen)


def _configured(environ: Mapping[str, str]) -> bool:
    """Whether the environment names any OTLP endpoint or exporter."""
    variables = {*_EXPORTER_VARIABLES.values(), *_ENDPOINT_VARIABLES["traces"],
                 *_ENDPOINT_VARIABLES["metrics"]}
    return any(environ.get(name, "").strip() for name in variables)


def build_tracing(config: TracingConfig, environ: Mapping[str, str]) -> Tracing:
    """The daemon's telemetry, also made ``active()`` for the calling task."""
    tracing = _build(config, environ)
    _ACTIVE.set(tracing)
    return tracing


def _build(config: TracingConfig, environ: Mapping[str, str]) -> Tracing:
    if not tracing_wanted(config, environ):
        return _OFF
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": config.service_name}
    attributes["service.version"] = __version__
    resource = Resource.create(attributes)
    span_exporters = exporters("traces", environ)
    metric_exporters: list[MetricExporter] = [
        OTLPMetricExporter() if name == "otlp" else ConsoleMetricExporter()
        for name in exporters("metrics", environ)]
    provider: SpanSink | None = None
    tracer: trace.Tracer = trace.NoOpTracer()
    if span_exporters == ("otlp",):
        # The daemon's own spans, pipe and child (``core.spans``, ``core.span_export``); the
        # SDK's provider is made only for its sampler and ids, read from ``OTEL_*``.
        pipe = SpanPipe(environ=environ)
        settings = TracerProvider(resource=resource, shutdown_on_exit=False)
        tracer = LeanTracer(pipe, resource=pipe.resource_index(resource),
                            sampler=settings.sampler, ids=settings.id_generator,
                            scope=InstrumentationScope("llmspool", __version__))
        provider = pipe
    elif span_exporters:
        # The console exporter, for looking at spans by hand: the SDK's spans and processor.
        sdk_provider = TracerProvider(resource=resource)
        for name in span_exporters:
            sdk_provider.add_span_processor(
                SpanPipe(environ=environ) if name == "otlp"
                else BatchSpanProcessor(ConsoleSpanExporter()))
        tracer = sdk_provider.get_tracer("llmspool", __version__)
        provider = sdk_provider
    meter_provider = None
    meter: metrics.Meter = metrics.NoOpMeter("llmspool")
    histograms = None
    if metric_exporters:
        histograms = Histograms()
        scope = InstrumentationScope("llmspool", __version__)
        meter_provider = MeterProvider(resource=resource, metric_readers=[
            PeriodicExportingMetricReader(WithHistograms(
                metric_exporter, histograms, resource=resource, scope=scope))
            for metric_exporter in metric_exporters])
        meter = meter_provider.get_meter(scope.name, scope.version)
    return Tracing(tracer, provider, meter, meter_provider, histograms)


# --- trace context ------------------------------------------------------------------------


def context_from_headers(headers: Mapping[str, str]) -> Context:
    """The trace context a client sent in ``traceparent``/``tracestate`` (empty if none)."""
    if "traceparent" not in headers:
        return Context()
    return _PROPAGATOR.extract(carrier=headers)


def context_from_traceparent(traceparent: str | None) -> Context:
    """The context whose current span is the one ``traceparent`` names (empty if none)."""
    if not traceparent:
        return Context()
    return _PROPAGATOR.extract({"traceparent": traceparent})


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


def traceparent_of(span: trace.Span) -> str | None:
    """The ``traceparent`` naming ``span`` (None for a span that is not recorded anywhere)."""
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


def linked_context(traceparent: str | None) -> Context:
    """The context of work done later on behalf of the span ``traceparent`` names (a job's
    request, hours after its submission): a trace of its own, linked to that span, rather
    than a child of it (a trace would otherwise last as long as the job and hold all of it)."""
    links = links_from((traceparent,)) if traceparent else []
    return set_value(_LINKS, tuple(links), Context()) if links else Context()


def links_of(context: Context) -> Sequence[trace.Link] | None:
    """The links ``linked_context`` put in ``context`` (None: none)."""
    links = context.get(_LINKS)
    return links if type(links) is tuple else None


# --- counters ------------------------------------------------------------------------------


class Tally:
    """A monotonic counter kept as plain sums, one per set of attributes, and reported through
    an observable counter when the metric reader collects.

    The SDK's ``Counter.add`` takes ~15 µs on the event loop (a measurement object, the
    attributes hashed, two locks); ``Tally.add`` is a dict update. The exported figures are the
    same: cumulative sums by attribute set. The reader's thread copies the sums with one
    ``list(dict.items())``, which runs in C without letting the event loop's thread in between.
    """

    def __init__(self, meter: metrics.Meter, name: str, unit: str, description: str) -> None:
        # Off (a no-op meter), nothing would read the sums: adds do nothing.
        self.enabled = not isinstance(meter, metrics.NoOpMeter)
        self._sums: dict[Labels, float] = {}
        meter.create_observable_counter(name, [self._observe], unit, description)

    def add(self, amount: float, labels: Labels = ()) -> None:
        if self.enabled:
            sums = self._sums
            sums[labels] = sums.get(labels, 0) + amount

    def _observe(self, _options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [metrics.Observation(total, dict(labels))
                for labels, total in list(self._sums.items())]


# --- GenAI client metrics -----------------------------------------------------------------


class GenAiMetrics:
    """The GenAI conventions' client metrics: ``gen_ai.client.operation.duration`` (seconds)
    and ``gen_ai.client.token.usage`` (by ``gen_ai.token.type``: input, output), kept as
    ``histograms.HistogramTally`` counts (``histograms`` None: no metrics are exported)."""

    def __init__(self, histograms: Histograms | None) -> None:
        # Off, callers skip building attributes.
        self.enabled = histograms is not None
        registry = histograms if histograms is not None else Histograms()
        self._duration = registry.histogram(
            "gen_ai.client.operation.duration", "s", "GenAI operation duration",
            _DURATION_BUCKETS)
        self._tokens = registry.histogram(
            "gen_ai.client.token.usage", "{token}",
            "Measures number of input and output tokens used", _TOKEN_BUCKETS)
        # Each attribute set made once: sorting them was most of a record's cost. As many as
        # the histograms' own points (one per set).
        self._operation_labels: dict[tuple[str | None, ...], Labels] = {}
        self._token_labels: dict[tuple[str, ...], tuple[Labels, Labels]] = {}

    def operation(self, seconds: float, operation: str, provider: str, request_model: str,
                  response_model: str | None = None, tier: str | None = None,
                  error_type: str | None = None) -> None:
        """A call's duration, by what it asked for and (None: unknown) what served it."""
        key = (operation, provider, request_model, response_model, tier, error_type)
        labels = self._operation_labels.get(key)
        if labels is None:
            labels = self._operation_labels[key] = _labels(
                ("gen_ai.operation.name", operation), ("gen_ai.provider.name", provider),
                ("gen_ai.request.model", request_model),
                ("gen_ai.response.model", response_model), ("llmspool.tier", tier),
                ("error.type", error_type))
        self._duration.record(seconds, labels)

    def tokens(self, input_tokens: int, output_tokens: int, operation: str, provider: str,
               request_model: str, response_model: str, tier: str) -> None:
        """An answer's input and output tokens, by what it asked for and what served it."""
        key = (operation, provider, request_model, response_model, tier)
        labels = self._token_labels.get(key)
        if labels is None:
            common = (("gen_ai.operation.name", operation), ("gen_ai.provider.name", provider),
                      ("gen_ai.request.model", request_model),
                      ("gen_ai.response.model", response_model), ("llmspool.tier", tier))
            labels = self._token_labels[key] = (
                _labels(*common, ("gen_ai.token.type", "input")),
                _labels(*common, ("gen_ai.token.type", "output")))
        self._tokens.record(input_tokens, labels[0])
        self._tokens.record(output_tokens, labels[1])


def _labels(*pairs: tuple[str, AttributeValue | None]) -> Labels:
    """A histogram's attribute set: the pairs with a value, sorted by name."""
    return tuple(sorted((name, value) for name, value in pairs if value is not None))
