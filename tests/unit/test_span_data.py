"""What ``LeanTracer`` queues for export as a span ends: plain data that the garbage collector
stops tracking at its first pass, but for the span's own tuple, so that the thousands of spans
waiting for the writer thread add little to every collection of a traced daemon
(``span_export.CompactSpan``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

from llmspool.actors.dispatch.relay import ANSWER_FIELDS
from llmspool.core.tracing import context_from_traceparent
from opentelemetry.trace import SpanKind

from tests.support.lean_tracers import lean_tracer


def _tracked(data: Any) -> Iterator[Any]:
    """``data`` and what it holds, those of them the collector tracks."""
    if gc.is_tracked(data):
        yield data
    parts = data.values() if isinstance(data, dict) else data \
        if isinstance(data, tuple | list) else ()
    for part in parts:
        yield from _tracked(part)


def test_a_queued_span_is_one_object_for_the_collector_after_its_first_pass() -> None:
    tracer, queue = lean_tracer()
    # A call's two spans: the front door's, under the client's traceparent, and its upstream
    # call's (its attributes set as it ends).
    remote = context_from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    with (tracer.start_as_current_span("POST /v1/chat/completions", context=remote,
                                       kind=SpanKind.SERVER, attributes={"n": 1}),
          tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT) as client):
        client.set_attributes({"gen_ai.request.model": "gpt-4o-mini", "ok": True,
                               "gen_ai.response.finish_reasons": ("stop",)})
        # And as the daemon tells it most of what it knows: fields.
        ANSWER_FIELDS.set(client, "chatcmpl-1", "gpt-4o-mini-2024-07-18", ("stop",))
    assert len(queue.spans) == 2
    gc.collect()
    # The span's tuple stays tracked (it holds its attributes' dict, which the collector
    # cannot see through); its contexts, events and links do not.
    assert [list(_tracked(span)) for span in queue.spans] == [[span] for span in queue.spans]
