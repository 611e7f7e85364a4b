"""``LeanTracer`` samples as the OpenTelemetry SDK's own tracer does, for each of the SDK's
samplers (which it decides inline) and for the samplers it must call: the same spans
recorded, with the same trace flags, trace state and attributes, for roots, children of its
own spans and children of a client's traceparent, sampled or not."""

from __future__ import annotations

import random
from typing import Any

import pytest
from llmspool.core.tracing import context_from_headers
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.util.types import Attributes

from tests.support.lean_tracers import lean_tracer


class _SeededIds(IdGenerator):
    """The same ids, in the same order, for two tracers given the same seed."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._random.getrandbits(128) or 1

    def is_trace_id_random(self) -> bool:
        return True


class _ByName(Sampler):
    """A sampler of the user's: keeps spans whose name says so, adding an attribute."""

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: Any = None, attributes: Attributes = None, links: Any = None,
                      trace_state: Any = None) -> SamplingResult:
        if name.startswith("keep"):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, {"chosen.by": "name"})
        return SamplingResult(Decision.DROP)

    def get_description(self) -> str:
        return "ByName"


SAMPLERS = {
    "parentbased_always_on (the default)": DEFAULT_ON,
    "parentbased_always_off": DEFAULT_OFF,
    "always_on": ALWAYS_ON,
    "always_off": ALWAYS_OFF,
    "traceidratio": TraceIdRatioBased(0.3),
    "parentbased_traceidratio": ParentBased(TraceIdRatioBased(0.3)),
    # What OTEL_TRACES_SAMPLER=parentbased_traceidratio makes: a subclass of ParentBased.
    "parentbased_traceidratio, as the environment names it": ParentBasedTraceIdRatio(0.3),
    # Delegates of its own: called, not decided inline.
    "parentbased with a remote unsampled parent kept": ParentBased(
        TraceIdRatioBased(0.3), remote_parent_not_sampled=ALWAYS_ON),
    "a sampler of the user's": _ByName(),
    "parentbased on a sampler of the user's": ParentBased(_ByName()),
}


def _decisions(tracer: trace.Tracer, remote_contexts: list[Context]) -> list[tuple[Any, ...]]:
    """What ``tracer`` decides for roots, their children, and children of remote parents."""
    seen = []

    def told(span: trace.Span) -> tuple[Any, ...]:
        context = span.get_span_context()
        kept = dict(getattr(span, "attributes", None) or {})
        return (span.is_recording(), int(context.trace_flags), context.trace_id,
                tuple(context.trace_state.items()), kept, parent_of(span))

    def parent_of(span: trace.Span) -> int | None:
        """The span id of a recorded span's parent (the SDK's ``parent``; ours, its data)."""
        parent = getattr(span, "parent", None)
        if parent is not None:
            return int(parent.span_id)
        data = getattr(span, "parent_data", None)
        return int(data[1]) if data else None

    for number in range(200):
        name = "keep" if number % 3 else "drop"
        root = tracer.start_span(f"{name} root", attributes={"n": number})
        seen.append(told(root))
        # Now and then a child the user's sampler keeps under a root it dropped.
        child_name = "keep" if number % 5 == 0 else name
        child = tracer.start_span(f"{child_name} child", context=trace.set_span_in_context(root),
                                  attributes={"child": True})
        seen.append(told(child))
        child.end()
        root.end()
    for number, remote in enumerate(remote_contexts):
        span = tracer.start_span("keep remote" if number % 2 else "drop remote", context=remote,
                                 attributes={"remote": True})
        seen.append(told(span))
        span.end()
    return seen


@pytest.mark.parametrize("sampler", SAMPLERS.values(), ids=SAMPLERS.keys())
def test_spans_are_sampled_as_the_sdk_samples_them(sampler: Sampler) -> None:
    remote_contexts = [
        context_from_headers({
            "traceparent": f"00-{random.Random(n).getrandbits(128):032x}-00f067aa0ba902b7-"
                           f"{'01' if n % 2 else '00'}",
            "tracestate": "vendor=value"})
        for n in range(1, 101)]
    sdk = TracerProvider(sampler=sampler, id_generator=_SeededIds(7)).get_tracer("llmspool")
    lean, _ = lean_tracer(sampler, _SeededIds(7))
    expected = _decisions(sdk, remote_contexts)
    assert _decisions(lean, remote_contexts) == expected
    # Both ways occur, so that the comparison says something (but for the samplers that
    # always or never keep).
    recorded = {decision[0] for decision in expected}
    assert recorded == {True, False} or sampler in (ALWAYS_ON, ALWAYS_OFF, DEFAULT_OFF)



# The samplers under whose dropped spans every child is dropped, by a rule ``LeanTracer``
# decides inline (the parent's, or the trace id's, which a child shares), and that drop some
# of the roots below. Not: those that keep every root, ``ParentBased`` with a delegate of its
# own (it may keep a child of a dropped parent), and the user's own sampler (it decides each
# span by its name).
DROP_CHILDREN_WITH_PARENT = {"parentbased_always_off", "always_off", "traceidratio",
                             "parentbased_traceidratio",
                             "parentbased_traceidratio, as the environment names it",
                             "parentbased on a sampler of the user's"}


@pytest.mark.parametrize("name", SAMPLERS.keys())
def test_a_dropped_parent_is_named_only_when_its_children_would_be_dropped(name: str) -> None:
    """``dropped_parent`` lets the dispatcher skip building a call's span: it must name a
    parent only when a child started under it is dropped whatever it is called, and it
    should name every parent the sampler dropped when its children go with it."""
    lean, _ = lean_tracer(SAMPLERS[name], _SeededIds(7))
    named = 0
    for number in range(200):
        root = lean.start_span("keep root" if number % 3 else "drop root")
        context = trace.set_span_in_context(root)
        dropped = lean.dropped_parent(context)
        child = lean.start_span("keep child", context=context)  # a name the user's keeps
        if dropped is not None:
            assert dropped is root and not child.is_recording()
            named += 1
        elif name in DROP_CHILDREN_WITH_PARENT:
            assert root.is_recording()
    assert lean.dropped_parent(Context()) is None  # no parent: a root may record
    assert (named > 0) is (name in DROP_CHILDREN_WITH_PARENT)


@pytest.mark.parametrize("named", ["always_on", "always_off", "traceidratio",
                                   "parentbased_always_on", "parentbased_always_off",
                                   "parentbased_traceidratio"])
def test_the_samplers_the_environment_names_are_decided_without_being_called(
        named: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sampler ``OTEL_TRACES_SAMPLER`` can name is one of the SDK's, which
    ``LeanTracer`` decides inline: asking it (some six Python calls a span) would fail here."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", named)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    sampler = TracerProvider(shutdown_on_exit=False).sampler  # as the daemon reads it

    def asked(*_args: object, **_kwargs: object) -> SamplingResult:
        raise AssertionError(f"{named}'s should_sample was called")

    for called in (sampler, getattr(sampler, "_root", None)):
        if called is not None and called not in (ALWAYS_ON, ALWAYS_OFF):
            monkeypatch.setattr(called, "should_sample", asked)
    lean, _ = lean_tracer(sampler, _SeededIds(7))
    unsampled = context_from_headers(
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"})
    for number in range(50):
        root = lean.start_span(f"root {number}")
        lean.start_span("child", context=trace.set_span_in_context(root)).end()
        lean.start_span("remote child", context=unsampled).end()
        root.end()
