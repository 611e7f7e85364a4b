"""A ``LeanTracer`` whose ended spans are kept in a list, for tests of what it records: the
span pipe's ``put`` is all it uses of the pipe."""

from __future__ import annotations

from typing import cast

from llmspool.core.span_export import CompactSpan
from llmspool.core.span_pipe import SpanPipe
from llmspool.core.spans import LeanTracer
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import DEFAULT_ON, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope


class SpanQueue:
    """Where the tracer puts ended spans, as the tuples the export child is sent."""

    def __init__(self) -> None:
        self.spans: list[CompactSpan] = []

    def put(self, span: CompactSpan) -> None:
        self.spans.append(span)


def lean_tracer(sampler: Sampler = DEFAULT_ON,
                ids: IdGenerator | None = None) -> tuple[LeanTracer, SpanQueue]:
    """A tracer sampling with ``sampler`` (its ids from ``ids``, the SDK's random ones by
    default), and the queue its ended spans go to."""
    queue = SpanQueue()
    return LeanTracer(cast(SpanPipe, queue), resource=0, sampler=sampler,
                      ids=ids if ids is not None else RandomIdGenerator(),
                      scope=InstrumentationScope("llmspool", "1")), queue
