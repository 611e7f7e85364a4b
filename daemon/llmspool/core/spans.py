"""Spans recorded in plain Python objects and handed to ``SpanPipe`` as they end.

The OpenTelemetry SDK's span checks every attribute as it is set: its ``BoundedAttributes``
runs each value through a recursive validator and two locks. On llmspool's request path that
was most of what a span cost, about 60 µs of the ~70 µs of each of a call's two spans, out of
the ~400 µs of CPU tracing added per call. ``LeanTracer`` makes spans that keep attributes in
a dict and, when they end, go straight to the export pipe as the tuples the child process
rebuilds (``span_export.compact``'s format), without an SDK ``ReadableSpan`` in between.

The daemon's own request path gives a call's spans what it knows (some 30 attributes a call)
through ``SpanFields``: a fixed tuple of names and a tuple of values, kept as they are and made
attributes in the child: a traced call's telemetry in a loop went from 9.2 to 7.1 µs
(``bench_span_work``), and the writer thread's pickling of its two spans from 1.0 to 0.85;
then to 6.3 µs with ``SpanFields``' common case and the parent's lookup made inline.

What stays the SDK's: the sampler (``OTEL_TRACES_SAMPLER`` and its argument, read by a
``TracerProvider`` made for its settings; the SDK's own samplers are decided inline as they
decide, any other is called), the id generator, the resource, and the OTLP exporter in the
child. What a span does is the API's: attributes, events, links, status,
exceptions recorded, ``use_span``/``start_as_current_span`` making it current. A span the
sampler drops is the API's ``NonRecordingSpan``, as with the SDK (``UnrecordedSpan``: its
context made only when asked).

Attribute values are checked by their type alone (a ``str``, ``bool``, ``int`` or ``float``
is kept as it is); anything else is made one of those or a tuple of one of those, or dropped
with a warning as the SDK drops it, so nothing reaches the child that it cannot encode. A span
keeps at most 128 attributes, events and links (the SDK's default limits); the limits a user
sets (``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`` and the others) are applied by the export child, as
the SDK applies them (``span_limits``). The daemon's spans live on
its event loop: a span is not for sharing between threads (the SDK's takes a lock).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Mapping, Sequence
from random import getrandbits
from time import time_ns
from types import TracebackType
from typing import Any, TypeGuard, TypeVar

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation import _SPAN_KEY as _CURRENT_SPAN
from opentelemetry.trace.span import TraceState
from opentelemetry.util import types
from opentelemetry.util._decorator import _agnosticcontextmanager

from llmspool.core.span_export import UNSET, ContextData, context_data, span_data
from llmspool.core.span_pipe import SpanPipe

log = logging.getLogger(__name__)

_LIMIT = 128  # attributes, events and links per span (the SDK's defaults)
# The four combinations of the sampled and random-trace-id flags, made once, not per span.
_TRACE_FLAGS = tuple(TraceFlags(bits) for bits in range(4))


class LeanTracer(trace.Tracer):
    """A tracer whose spans go to ``pipe`` when they end (see the module's docstring)."""

    def __init__(self, pipe: SpanPipe, *, resource: int, sampler: Sampler,
                 ids: IdGenerator, scope: InstrumentationScope) -> None:
        self.pipe = pipe  # where ended spans go (``LeanSpan.end``)
        self.resource = resource  # the resource's index in the pipe's list
        self._sampler = sampler
        self._parent_decides, self._root_bound = _inline_rule(sampler)
        # Whether the sampler is decided here, without being called (nor read attributes).
        self.inline = self._parent_decides or self._root_bound is not None
        self._ids = ids
        # The SDK's default generator: its ids made inline (``getrandbits``, as it makes them;
        # a zero, which is not a valid id, goes to the generator, which draws again).
        self._random_ids = type(ids) is RandomIdGenerator
        self.scope = (scope.name, scope.version, scope.schema_url)

    def start_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        # ``trace.get_current_span``'s read, with its check that what is there is a ``Span``
        # (an ABC's, some 0.3 µs) only for what is not one of ours.
        parent_span = (context if context is not None else context_api.get_current()
                       ).get(_CURRENT_SPAN)
        random_ids = self._random_ids
        parent_data: ContextData | None
        unread: trace.Span = trace.INVALID_SPAN  # a parent whose plain data is made if needed
        if type(parent_span) is LeanSpan:
            # A parent of ours (a call's span under its request's): what its context holds,
            # read from its plain data, without a ``SpanContext`` made for it.
            ours = parent_span.data
            parent_data = ours
            trace_id, parent_flags = ours[0], ours[3]
            parent_state = parent_span.trace_state
        elif type(parent_span) is UnrecordedSpan:
            # One of ours the sampler dropped: read as plainly, its context made only if the
            # child records (below).
            parent_data, unread = _UNREAD, parent_span
            trace_id, parent_flags = parent_span.trace_id, parent_span.flags
            parent_state = parent_span.trace_state
        else:  # a parent not of ours (the client's, remote), or none
            if parent_span is not None and isinstance(parent_span, trace.Span):
                unread = parent_span
            parent = unread.get_span_context()
            if parent.is_valid:
                # Made plain data only for a span that records (below).
                parent_data = _UNREAD
                trace_id, parent_flags = parent.trace_id, int(parent.trace_flags)
                parent_state = parent.trace_state
            else:
                parent_data = None
                trace_id = (getrandbits(128) if random_ids else 0) \
                    or self._ids.generate_trace_id()
                parent_flags, parent_state = 0, None
        # A span's parent decides (sampled: every trace id is under the bound), or the rule
        # for roots does; None: the sampler is asked.
        bound = self._root_bound if parent_data is None or not self._parent_decides else (
            _EVERY if parent_flags & TraceFlags.SAMPLED else _NONE)
        kept: types.Attributes
        if bound is None:
            decision = self._sampler.should_sample(
                context, trace_id, name, kind, attributes, links or ())
            recording = decision.decision is not Decision.DROP
            sampled = decision.decision is Decision.RECORD_AND_SAMPLE
            trace_state, kept = decision.trace_state, decision.attributes  # ours and its
        else:
            # The SDK's own samplers decided inline, as they decide, without their four to
            # six calls a span (``_inline_rule``); each keeps the parent's trace state.
            recording = sampled = trace_id & _TRACE_ID_LIMIT < bound
            trace_state = parent_state
            kept = attributes if sampled else None
        # As the SDK: the W3C "random trace id" flag, for a trace id made here at random or
        # continued from a parent that had it.
        flags = (TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT) | (
            parent_flags & TraceFlags.RANDOM_TRACE_ID if parent_data is not None
            else TraceFlags.RANDOM_TRACE_ID if random_ids or self._ids.is_trace_id_random()
            else TraceFlags.DEFAULT)
        if not recording:
            return UnrecordedSpan(self, trace_id, flags, trace_state)
        span_id = (getrandbits(64) if random_ids else 0) or self._ids.generate_span_id()
        if parent_data is _UNREAD:
            parent_data = context_data(unread.get_span_context())
        # The span's context as the pipe carries it; its ``SpanContext`` is made only if asked.
        data = (trace_id, span_id, False, flags, tuple(trace_state.items()) if trace_state else ())
        span = LeanSpan(self, name, data, trace_state, parent_data, kind, links, start_time,
                        sampled, on_exception=(record_exception, set_status_on_exception))
        if kept:
            span.set_attributes(kept)
        return span

    def dropped_parent(self, context: context_api.Context) -> UnrecordedSpan | None:
        """The span current in ``context`` when every span started under it would be dropped
        too, so that a caller may skip building one: it is one of ours the sampler dropped,
        and the sampler is decided inline, where its child's decision is its own (a parent-
        based sampler's unsampled parent; a trace-id ratio, or ``always_off``, on the same
        trace id). None: a span started there might record."""
        # The key ``trace.get_current_span`` reads, without its check that what is there is
        # a ``Span`` (an ABC's, some 0.1 µs on every call's path): only ours is looked for.
        parent = context.get(_CURRENT_SPAN)
        if type(parent) is UnrecordedSpan and self.inline:
            return parent
        return None

    def new_span_id(self) -> int:
        """A span id from the tracer's generator (the SDK's default's made inline)."""
        return (getrandbits(64) if self._random_ids else 0) or self._ids.generate_span_id()

    # The API's own decorator (as the SDK's tracer uses): its override must return that type.
    @_agnosticcontextmanager
    def start_as_current_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(span, end_on_exit=end_on_exit, record_exception=record_exception,
                            set_status_on_exception=set_status_on_exception) as current:
            yield current


# Sampling as the SDK's ``TraceIdRatioBased`` decides it: a span is sampled when its trace
# id's low 64 bits are under a bound. Every id is under ``_EVERY``, none under ``_NONE``.
_TRACE_ID_LIMIT = TraceIdRatioBased.TRACE_ID_LIMIT
_EVERY, _NONE = _TRACE_ID_LIMIT + 1, 0
_UNREAD: ContextData = (0, 0, False, 0, ())  # a parent's plain data, not made yet
_Kind = TypeVar("_Kind", bound=Sampler)


def _inline_rule(sampler: Sampler) -> tuple[bool, int | None]:
    """How ``LeanTracer`` samples without calling ``sampler``: whether a span's parent alone
    decides (the SDK's ``ParentBased`` with its default delegates: a sampled parent's children
    are sampled, an unsampled one's are not, remote or local), and the bound a span's trace id
    is held under otherwise (a root, for ``ParentBased``; every span, for the others):
    ``_EVERY`` for the SDK's ``ALWAYS_ON``, ``_NONE`` for its ``ALWAYS_OFF``, its
    ``TraceIdRatioBased``'s own bound. None: the sampler is called (one of the user's, or
    ``ParentBased`` with delegates of its own)."""
    def bound(chosen: Sampler) -> int | None:
        if chosen is ALWAYS_ON:
            return _EVERY
        if chosen is ALWAYS_OFF:
            return _NONE
        return chosen.bound if _decides_as(chosen, TraceIdRatioBased) else None

    if not _decides_as(sampler, ParentBased):
        return False, bound(sampler)
    defaults = (sampler._remote_parent_sampled is ALWAYS_ON
                and sampler._remote_parent_not_sampled is ALWAYS_OFF
                and sampler._local_parent_sampled is ALWAYS_ON
                and sampler._local_parent_not_sampled is ALWAYS_OFF)
    return (True, bound(sampler._root)) if defaults else (False, None)


def _decides_as(sampler: Sampler, kind: type[_Kind]) -> TypeGuard[_Kind]:
    """Whether ``sampler`` decides as the SDK's ``kind`` does: one of its, or of a subclass
    that changes only how it is made. ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` names
    such a subclass (``ParentBasedTraceIdRatio``); checking the class alone sent that one, the
    sampler most deployments set, through ``should_sample`` for every span."""
    return isinstance(sampler, kind) and type(sampler).should_sample is kind.should_sample


class UnrecordedSpan(trace.NonRecordingSpan):
    """A span the sampler dropped: the API's ``NonRecordingSpan``, whose ``SpanContext`` (and
    span id) is made on the first ``get_span_context``. Most are never asked: a dropped request
    span is only its call's parent, which ``LeanTracer`` reads from the fields below. That
    saved a ``SpanContext`` and a span id for each of a call's two spans, which was most of
    what a span the sampler dropped cost."""

    def __init__(self, tracer: LeanTracer, trace_id: int, flags: int,
                 trace_state: TraceState | None) -> None:
        self._tracer = tracer
        self.trace_id = trace_id
        self.flags = flags
        self.trace_state = trace_state
        self._made: SpanContext | None = None

    @property
    def _context(self) -> SpanContext:  # type: ignore[override]  # the API's field, made late
        return self.get_span_context()

    def get_span_context(self) -> SpanContext:
        if self._made is None:
            self._made = SpanContext(self.trace_id, self._tracer.new_span_id(),
                                     is_remote=False, trace_flags=_TRACE_FLAGS[self.flags],
                                     trace_state=self.trace_state)
        return self._made


class LeanSpan(trace.Span):
    """A recording span: its data in plain attributes until it ends."""

    def __init__(self, tracer: LeanTracer, name: str, data: ContextData,
                 trace_state: TraceState | None, parent_data: ContextData | None,
                 kind: SpanKind, links: Sequence[Link] | None, start_time: int | None,
                 sampled: bool, *, on_exception: tuple[bool, bool] = (True, True)) -> None:
        self._tracer = tracer
        self.name = name
        # Its context and its parent's as ``span_export.context_data`` makes them: trace id,
        # span id, remote, flags, trace state's pairs. The ``SpanContext`` the API hands out
        # is made from ``data`` on the first ``get_span_context`` (most spans are never asked).
        self.data = data
        self.trace_state = trace_state
        self.parent_data = parent_data
        self._context: SpanContext | None = None
        self.kind = kind
        self.end_time: int | None = None
        self.attributes: dict[str, Any] = {}  # what the API's setters were given
        # What ``SpanFields.set`` gave, in the order given: each time its names' tuple, then
        # their values, one list (one tuple to pickle; a pair of tuples each time made the
        # writer thread's pickling half as long again). The export child makes them
        # attributes (``span_export.attributes_of``).
        self.fields: list[Any] = []
        self._field_count = 0  # names given as fields (a name given twice counts twice)
        self.events: list[tuple[str, dict[str, Any], int]] = []
        self.links = list(links[:_LIMIT]) if links else []
        self.status = UNSET
        self.start_time = start_time if start_time is not None else time_ns()
        self._sampled = sampled
        # ``with span:`` and an exception leaving it: (record it, set the status), as the SDK.
        self._on_exception = on_exception

    @property
    def context(self) -> SpanContext:
        return self.get_span_context()

    def get_span_context(self) -> SpanContext:
        if self._context is None:
            trace_id, span_id, _remote, flags, _pairs = self.data
            self._context = SpanContext(trace_id, span_id, is_remote=False,
                                        trace_flags=_TRACE_FLAGS[flags],
                                        trace_state=self.trace_state)
        return self._context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        kept = self.attributes
        if self.end_time is not None:
            return
        # Most often every value is plain and there is room: one update, in C.
        room = _LIMIT - self._field_count
        if (_PLAIN.issuperset(map(type, attributes.values()))
                and len(kept) + len(attributes) <= room):
            kept.update(attributes)
            return
        for key, given in attributes.items():  # set_attribute's, without a call a key
            if key not in kept and len(kept) >= room:
                continue
            value = given if type(given) in _PLAIN else _plain(key, given)
            if value is not None:
                kept[key] = value

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        kept = self.attributes
        if self.end_time is not None or (
                key not in kept and len(kept) + self._field_count >= _LIMIT):
            return
        if type(value) not in _PLAIN:
            value = _plain(key, value)
            if value is None:
                return
        kept[key] = value

    def set_fields(self, names: tuple[str, ...], values: tuple[Any, ...]) -> None:
        """``SpanFields.set``'s: ``values`` (plain, or None for a name not set) kept as given,
        for the names ``names``."""
        if self.end_time is not None:
            return
        given = self.attributes
        count = len(names)
        if given:  # set by the API's setters earlier: the values given now win
            if len(given) + self._field_count + count > _LIMIT:
                self.set_attributes({name: value for name, value in zip(names, values, strict=True)
                                     if value is not None})
                return
            for name, value in zip(names, values, strict=True):
                if value is not None:
                    given.pop(name, None)
        elif self._field_count + count > _LIMIT:
            self.set_attributes({name: value for name, value in zip(names, values, strict=True)
                                 if value is not None})
            return
        self._field_count += count
        fields = self.fields
        fields.append(names)
        fields += values

    def add_event(self, name: str, attributes: types.Attributes = None,
                  timestamp: int | None = None) -> None:
        if self.end_time is None and len(self.events) < _LIMIT:
            kept = {}
            for key, value in (attributes or {}).items():
                plain = value if type(value) in _PLAIN else _plain(key, value)
                if plain is not None:
                    kept[key] = plain
            self.events.append((name, kept, timestamp if timestamp is not None else time_ns()))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self.end_time is None and context.is_valid and len(self.links) < _LIMIT:
            self.links.append(Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: OK is final, and UNSET changes nothing.
        if self.end_time is not None or self.status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self.status = status

    def record_exception(self, exception: BaseException, attributes: types.Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        recorded: dict[str, Any] = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins"
            else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        recorded.update(attributes or {})
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time if end_time is not None else time_ns()
        if self._sampled:  # to the pipe, as the tuple the export child rebuilds
            tracer = self._tracer
            # ``span_data``'s arguments in its order (by name, they took a third longer).
            tracer.pipe.put(span_data(
                self.name, self.data, self.parent_data, tracer.resource, self.attributes,
                self.events, self.links, self.kind, tracer.scope, self.status,
                self.start_time, self.end_time, self.fields,
            ))

    def __exit__(self, kind: type[BaseException] | None, exception: BaseException | None,
                 tb: TracebackType | None) -> None:
        record, set_status = self._on_exception
        if exception is not None and self.is_recording():
            if record:
                self.record_exception(exception, escaped=True)
            if set_status:
                self.set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: "
                                                         f"{exception}"))
        self.end()

    def __repr__(self) -> str:
        return f"LeanSpan({self.name!r}, {self.get_span_context()!r})"



class SpanFields:
    """Attribute names the daemon sets together, whose values a span is given in their order:
    how its request path tells a call's spans what it knows (the request, the upstream call,
    its answer, its bill: some 30 attributes a call). On a ``LeanSpan`` the values are kept as
    given, after the names' own tuple, and the export child makes them attributes: no dict
    built, no value checked, fewer objects to pickle. Any other span is given them as
    attributes.

    The values must be what a span keeps as they are: a ``str``, ``bool``, ``int`` or
    ``float``, or a tuple of one of those (the callers' own, or checked where they were read:
    an upstream's answer goes through ``core.wire``). None leaves that name unset. Given after
    the same name was set through the API, a value replaces it, as ``set_attribute`` would;
    the API's setters replace a value given here. Each name given counts against a span's 128
    attributes (past them, values are set as ``set_attributes`` sets them)."""

    __slots__ = ("count", "names")

    def __init__(self, *names: str) -> None:
        self.names = names
        self.count = len(names)

    def set(self, span: trace.Span, *values: types.AttributeValue | None) -> None:
        """Give ``span`` ``values``, one for each name, in order."""
        if type(span) is LeanSpan:
            assert len(values) == self.count, (self.names, values)
            # ``LeanSpan.set_fields``'s most common case inline (a span still open, nothing
            # set through the API's setters, room left): a call's spans are given six sets.
            if span.end_time is None and not span.attributes \
                    and span._field_count <= _LIMIT - self.count:
                span._field_count += self.count
                fields = span.fields
                fields.append(self.names)
                fields += values
            else:
                span.set_fields(self.names, values)
        # Tracing off, a call's spans are all the API's invalid span: known without a call.
        elif span is not trace.INVALID_SPAN and span.is_recording():
            span.set_attributes(self.attributes(values))

    def attributes(self, values: Sequence[types.AttributeValue | None]
                   ) -> dict[str, types.AttributeValue]:
        """``values`` as the attributes they stand for."""
        return {name: value for name, value in zip(self.names, values, strict=True)
                if value is not None}

    def start_span(self, tracer: trace.Tracer, name: str,
                   values: tuple[types.AttributeValue | None, ...], *,
                   context: context_api.Context | None = None,
                   kind: SpanKind = SpanKind.INTERNAL, links: Sequence[Link] | None = (),
                   record_exception: bool = True,
                   set_status_on_exception: bool = True) -> trace.Span:
        """``tracer.start_span`` with ``values`` as its attributes: a sampler that reads them
        (one not decided inline) is given them as a dict; otherwise a span that records is
        given them as fields."""
        assert len(values) == len(self.names), (self.names, values)
        if type(tracer) is trace.NoOpTracer:  # tracing off: its span, no attributes built
            return trace.INVALID_SPAN
        if type(tracer) is LeanTracer and tracer.inline:
            span = tracer.start_span(name, context, kind, None, links, None, record_exception,
                                     set_status_on_exception)
            if type(span) is LeanSpan and self.count <= _LIMIT:  # new: open, nothing set
                span._field_count = self.count
                fields = span.fields
                fields.append(self.names)
                fields += values
            return span
        return tracer.start_span(name, context, kind, self.attributes(values), links, None,
                                 record_exception, set_status_on_exception)


_PLAIN = frozenset({str, bool, int, float})


def _plain(key: str, value: Any) -> Any:
    """``value`` as a plain ``str``, ``bool``, ``int``, ``float`` or tuple of one of those (a
    subclass such as an enum member made its base type, so that the child needs no import to
    unpickle it); None, with a warning, for what OpenTelemetry does not allow."""
    if value is None:
        return None
    if type(value) is tuple:  # an answer's finish reasons: most often already plain
        kinds = set(map(type, value))
        if len(kinds) <= 1 and _PLAIN.issuperset(kinds):
            return value
    for kind in (bool, str, int, float):
        if isinstance(value, kind):
            return kind(value) if kind is not str else str.__str__(value)
    if isinstance(value, list | tuple):
        items = [_plain(key, item) for item in value]
        kinds = {type(item) for item in items}
        if None not in items and len(kinds) <= 1:
            return tuple(items)
    log.warning("span attribute %s=%r is not a value OpenTelemetry allows; dropped", key, value)
    return None
