"""One call's tracing work on the event loop, in a loop, by sampler: what ``LeanTracer`` and
the GenAI metrics cost a call with nothing else around them.

The daemon's figures (``bench_tracing_cost``) are the ones a user sees, but a change of a
microsecond or two a call is lost in their noise (the same code in two processes differs by
several). This replays what a chat call does to telemetry, as the daemon does it: the front
door's server span under the client's (empty) trace context, its attributes, the context
made for the call; the upstream call's client span with its attributes, the planned tier, the
upstream's status, the bill and the answer told on it (each through the daemon's own
``SpanFields``) (under a request span the sampler dropped, none: the dispatcher
lets that one stand in); both ended and handed to the span pipe (a list here: the
writer thread and the export child are not timed); the duration and token histograms.

Hot caches and one thread: the daemon pays three to four times these figures a call, as it
does for all of its Python. Compare two checkouts by running this from each. Minimum of
repeats (the least disturbed), in µs a call.

    python -m tests.bench.bench_span_work [--calls 20000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from typing import cast

from llmspool.actors import dispatcher
from llmspool.actors.dispatch import accounts, relay
from llmspool.core.histograms import Histograms
from llmspool.core.span_pipe import SpanPipe
from llmspool.core.spans import LeanTracer
from llmspool.core.tracing import GenAiMetrics, context_from_headers, links_of
from llmspool.server import call_builder, forwarding
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import AggregationTemporality
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    DEFAULT_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind
from rich.console import Console
from rich.table import Table

SAMPLERS: dict[str, Sampler] = {
    "every trace (the default)": DEFAULT_ON,
    "1 in 10 (parentbased_traceidratio)": ParentBased(TraceIdRatioBased(0.1)),
    "none (always_off)": ALWAYS_OFF,
}
HEADERS = {"content-type": "application/json", "host": "localhost"}


class _Pipe:
    """The span pipe's ``put``: ended spans kept, a batch at a time, as the writer takes them."""

    def __init__(self) -> None:
        self.spans: list[object] = []

    def put(self, span: object) -> None:
        self.spans.append(span)
        if len(self.spans) >= 512:
            self.spans.clear()


def one_call(sampler: Sampler) -> Callable[[int], None]:
    """A function doing call ``number``'s telemetry, with ``sampler`` deciding its spans."""
    settings = TracerProvider(resource=Resource.create({}), sampler=sampler,
                              shutdown_on_exit=False)
    tracer = LeanTracer(cast(SpanPipe, _Pipe()), resource=0, sampler=settings.sampler,
                        ids=settings.id_generator,
                        scope=InstrumentationScope("llmspool", "bench"))
    histograms = Histograms()
    # One metric exporter's counts, which the values recorded are settled into (the daemon
    # makes them for its OTLP metric exporter).
    histograms.counts(AggregationTemporality.CUMULATIVE)
    metrics = GenAiMetrics(histograms)

    def call(number: int) -> None:
        request_id = f"llmspool-bench-{number:x}"
        server = forwarding.REQUEST_FIELDS.start_span(
            tracer, "POST /v1/chat/completions",
            ("POST", "/v1/chat/completions", request_id),
            context=context_from_headers(HEADERS), kind=SpanKind.SERVER)
        call_builder.REQUEST_FIELDS.set(server, "gpt-4o-mini", "chat", "openai", False)
        context = trace.set_span_in_context(server)
        # As the dispatcher: under a request span the sampler dropped, that one stands in
        # for the call's, which would be dropped too.
        dropped = tracer.dropped_parent(context)
        with contextlib.nullcontext(dropped) if dropped is not None else \
                dispatcher.CALL_FIELDS.start_span(
                    tracer, "chat gpt-4o-mini",
                    ("openai", "openai", "chat", "gpt-4o-mini", request_id, "openai",
                     round(0.000123 * 1000, 3)),
                    context=context, kind=SpanKind.CLIENT, links=links_of(context),
                    record_exception=False, set_status_on_exception=False) as client:
            dispatcher.PLANNED_FIELDS.set(client, "standard")
            relay.STATUS_FIELDS.set(client, 200)
            if client.is_recording():
                accounts.BILL_FIELDS.set(
                    client, 12, 9, 0, 0, "gpt-4o-mini", "standard", False, 7.2e-06, "USD",
                    "local", 7.2e-06, "2026-11", None, None)
            relay.ANSWER_FIELDS.set(client, "chatcmpl-bench", "gpt-4o-mini-2024-07-18",
                                    ("stop",))
        forwarding.ANSWERED_FIELDS.set(server, 200, "standard")
        server.end()
        metrics.operation(0.0021, "chat", "openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18",
                          "standard")
        metrics.tokens(12, 9, "chat", "openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18",
                       "standard")

    return call


def microseconds_a_call(call: Callable[[int], None], calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for number in range(calls):
            call(number)
        best = min(best, time.perf_counter() - started)
    return best / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if args.calls < 1 or args.repeats < 1:
        print("--calls and --repeats must be at least 1", file=sys.stderr)
        return 2
    table = Table(title="one call's tracing work on the event loop, in a loop "
                        f"(best of {args.repeats} x {args.calls:,} calls)")
    table.add_column("traces recorded")
    table.add_column("µs a call", justify="right")
    for name, sampler in SAMPLERS.items():
        cost = microseconds_a_call(one_call(sampler), args.calls, args.repeats)
        table.add_row(name, f"{cost:.2f}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
