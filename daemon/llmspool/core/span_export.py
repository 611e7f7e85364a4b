"""Spans exported over OTLP from a child process, so that encoding them never holds the daemon.

OpenTelemetry's OTLP exporter encodes each span into protobuf objects built in Python: about
70 µs of CPU a span. In the daemon, even in a thread, that work held the interpreter lock in
slices of up to its switch interval (5 ms) while the event loop waited.

This module is the daemon's side of the child and the child itself:

- the wire format: a span as plain tuples (``span_data``, made by ``spans.LeanTracer``
  directly or by ``compact`` from an SDK span); a batch is a mark, its resources' frame
  (``resource_frame``), then frames each holding a pickled list of spans (``frame``);
- ``ExportChild``, which starts the child (``python -m llmspool.core.span_export``, fed on
  its standard input), hands it batches, and waits for it to send what it has on
  ``flush``/``stop``. A child that died is started again at the next batch (what it held is
  lost; that is logged). A daemon killed outright closes the child's input, and the child
  ends;
- ``main``, the child: it writes each batch as OTLP protobuf (``otlp_spans.SpanEncoder``,
  the bytes OpenTelemetry's encoder makes, at a fraction of its cost) and sends them with
  the real ``OTLPSpanExporter``'s HTTP client, configured by the same ``OTEL_*`` environment
  variables: endpoint, headers, compression, retries and timeouts are the exporter's own,
  and the span limits (``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`` and the others) are applied as the
  SDK applies them (``span_limits``).
  It runs at a lower CPU priority than the daemon (``NICENESS``), and on Linux only in CPU
  time nothing else wants (``SCHED_IDLE``: ``run_when_idle``).

``span_pipe.SpanPipe`` queues the spans and decides when a batch goes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from llmspool.core.otlp_spans import SpanEncoder
from llmspool.core.span_limits import SpanLimiter

log = logging.getLogger(__name__)

_FLUSH = b"flush"
_STOP = b"stop"
_READY = b"ready"
_BATCH = b"S"  # a batch: its resource list, then its spans, each a length-prefixed pickle
_LENGTH = struct.Struct(">I")  # each message to the child: its length, then its bytes
_START_TIMEOUT = 30.0  # seconds for a child to import the exporter and say it is ready
# How much lower the child's CPU priority is than the daemon's. It encodes a batch of 512
# spans in one burst of some 35 ms; on a small machine that burst took a core from the daemon
# and its upstream, and was a traced daemon's p99 at low load. Niced, it runs in the time they
# leave: it still kept up with 2,300 calls a second on 2 cores.
NICENESS = 10
PICKLE = pickle.HIGHEST_PROTOCOL

# A span as plain data: what pickles fast, and all the OTLP encoder reads. Tuples, not lists,
# all the way down: the collector's first pass over a queued span stops tracking its contexts,
# events and links, and only the span's own tuple (which holds the attributes' dict) is left to
# it. Lists kept some 7 objects a span in every pass until the writer thread took the span: at
# c=256 a traced daemon spent 5% of its event loop in the collector, against 2% untraced.
CompactSpan = tuple[Any, ...]
_ATTRIBUTES, _FIELDS = 4, 13  # where a span's attributes and its fields are in its tuple
# A span context as plain data: trace id, span id, remote, flags, trace state's pairs.
ContextData = tuple[int, int, bool, int, tuple[tuple[str, str], ...]]
# A span's status until one is set: ``LeanSpan``'s (a ``Status`` never changes), which
# ``span_data`` knows without reading it.
UNSET = Status(StatusCode.UNSET)


def span_data(name: str, context: ContextData | None, parent: ContextData | None,
              resource: int, attributes: dict[str, Any],
              events: list[tuple[str, dict[str, Any], int]], links: Sequence[Link],
              kind: SpanKind, scope: tuple[str, str | None, str | None] | None, status: Status,
              start_time: int | None, end_time: int | None,
              fields: Sequence[Any] = ()) -> CompactSpan:
    """A span as the plain tuple ``rebuild`` reads: the one place its order is written.
    ``context`` and ``parent`` are ``context_data``'s; ``resource`` is an index into the
    batch's resource list; ``events`` are (name, attributes, timestamp); ``fields``, what
    ``spans.SpanFields`` gave it: each time a tuple of names, then their values (None: not
    set), set before ``attributes`` (``attributes_of``). They are last in the tuple, beside
    the attributes' dict rather than with it, so that the collector stops tracking them at
    its first pass."""
    code, description = (0, None) if status is UNSET else \
        (status.status_code.value, status.description)
    return (
        name, context, parent, resource, attributes, tuple(events) if events else (),
        tuple([(context_data(link.context), dict(link.attributes or {})) for link in links])
        if links else (),
        kind._value_, scope, code, description, start_time, end_time,  # _value_: no lookup
        tuple(fields),
    )


def attributes_of(data: CompactSpan) -> dict[str, Any]:
    """A span's attributes, from what ``span_data`` made of them: its fields' values in the
    order given (a later one replacing an earlier of the same name), then its attributes'.
    Fields that do not add up (as ``SpanFields`` never makes them) raise ``ValueError``."""
    fields, attributes = data[_FIELDS], data[_ATTRIBUTES]
    if not fields:
        return attributes  # type: ignore[no-any-return]
    merged: dict[str, Any] = {}
    # Names, their values, names...: walked by index, a value at a time (slicing each set's
    # values and building a dict of them took three times as long, in the child's CPU).
    index, end = 0, len(fields)
    try:
        while index < end:
            names = fields[index]
            if type(names) is not tuple:
                raise ValueError(f"span fields: names expected at {index}, not {names!r}")
            for name in names:
                index += 1
                value = fields[index]
                if value is not None:
                    merged[name] = value
            index += 1
    except IndexError:
        raise ValueError("span fields: fewer values than names") from None
    merged.update(attributes)
    return merged


def attribute_pairs(data: CompactSpan) -> Iterator[tuple[str, Any]]:
    """A span's attributes as they were set, in ``attributes_of``'s order, each time a name
    was given a value (for the span limits: ``span_limits``)."""
    fields = data[_FIELDS]
    index, end = 0, len(fields)
    while index < end:
        names = fields[index]
        values = fields[index + 1:index + 1 + len(names)]
        if type(names) is not tuple or len(values) < len(names):
            raise ValueError(f"span fields: names and their values expected at {index}")
        yield from ((name, value) for name, value in zip(names, values, strict=True)
                    if value is not None)
        index += 1 + len(names)
    yield from data[_ATTRIBUTES].items()


def with_attributes(data: CompactSpan) -> CompactSpan:
    """``data`` with its attributes one dict, and no fields (what ``otlp_spans`` reads)."""
    if not data[_FIELDS]:
        return data
    return (*data[:_ATTRIBUTES], attributes_of(data), *data[_ATTRIBUTES + 1:_FIELDS], ())


def compact(span: ReadableSpan, resource: int) -> CompactSpan:
    """An SDK span as ``span_data``."""
    scope = span.instrumentation_scope
    return span_data(
        name=span.name, context=context_data(span.context), parent=context_data(span.parent),
        resource=resource,
        attributes=dict(span.attributes or {}),
        events=[(event.name, dict(event.attributes or {}), event.timestamp)
                for event in span.events],
        links=span.links, kind=span.kind,
        scope=(scope.name, scope.version, scope.schema_url) if scope is not None else None,
        status=span.status, start_time=span.start_time, end_time=span.end_time,
    )


def rebuild(data: CompactSpan, resources: Sequence[Resource]) -> ReadableSpan:
    """The ``ReadableSpan`` that ``compact`` made ``data`` of."""
    (name, context, parent, resource, _attributes, events, links, kind, scope, status,
     description, start_time, end_time, _fields) = data
    attributes = attributes_of(data)
    return ReadableSpan(
        name=name,
        context=_span_context(context),
        parent=_span_context(parent),
        resource=resources[resource],
        attributes=attributes,
        events=[Event(event_name, event_attributes, timestamp)
                for event_name, event_attributes, timestamp in events],
        links=[Link(_span_context(link_context), link_attributes)  # type: ignore[arg-type]
               for link_context, link_attributes in links],
        kind=SpanKind(kind),
        instrumentation_scope=InstrumentationScope(*scope) if scope is not None else None,
        status=Status(StatusCode(status), description),
        start_time=start_time,
        end_time=end_time,
    )


def context_data(context: SpanContext | None) -> ContextData | None:
    """A span context as plain data (``None`` stays ``None``)."""
    if context is None:
        return None
    state = context.trace_state
    return (context.trace_id, context.span_id, context.is_remote, int(context.trace_flags),
            tuple(state.items()) if state else ())


def _span_context(data: tuple[Any, ...] | None) -> SpanContext | None:
    if data is None:
        return None
    trace_id, span_id, is_remote, flags, state = data
    return SpanContext(trace_id, span_id, is_remote, TraceFlags(flags), TraceState(state))


class ExportChild:
    """The child process that exports spans with OTLP: started on the first batch, and again
    when it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the writer thread, and a flush from another
        self._process: subprocess.Popen[bytes] | None = None
        self._stopped = False

    def send(self, payload: bytes) -> bool:
        """Hand a batch over; False when no child could take it (the spans are dropped)."""
        with self._lock:
            if self._stopped:
                return False
            for attempt in (1, 2):
                process = self._running()
                if process is None:
                    return False
                try:
                    _send(process, payload)
                    return True
                except OSError:
                    log.warning("the span export process ended; %s",
                                "starting it again" if attempt == 1 else "spans are dropped")
                    self._forget()
        return False

    def flush(self, timeout: float) -> bool:
        """Wait until the child has sent everything handed over."""
        with self._lock:
            return self._round_trip(_FLUSH, timeout)

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._round_trip(_STOP, 30.0)
            self._forget()

    def _round_trip(self, command: bytes, timeout: float) -> bool:
        """Send ``command`` and wait for the child's word that everything before it was sent."""
        process = self._process
        if process is None or process.poll() is not None:
            return True  # nothing handed over is waiting
        try:
            _send(process, command)
            return _receive(process, timeout) == command
        except OSError:
            return False

    def _running(self) -> subprocess.Popen[bytes] | None:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._forget()
        # The child imports llmspool from where this daemon did, whatever its sys.path.
        source = str(Path(__file__).resolve().parents[2])
        path = os.environ.get("PYTHONPATH")
        environment = {**os.environ,
                       "PYTHONPATH": source if not path else f"{source}{os.pathsep}{path}"}
        process = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=environment)
        if _receive(process, _START_TIMEOUT) != _READY:
            log.warning("the span export process did not start; spans are dropped")
            process.kill()
            process.wait()
            return None
        self._process = process
        return process

    def _forget(self) -> None:
        """Close the child's input (it sends what it has and exits) and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
        try:
            process.wait(10.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _send(process: subprocess.Popen[bytes], message: bytes) -> None:
    assert process.stdin is not None
    process.stdin.write(_LENGTH.pack(len(message)))
    process.stdin.write(message)  # a large write goes straight to the pipe, no copy
    process.stdin.flush()


def _receive(process: subprocess.Popen[bytes], timeout: float) -> bytes | None:
    """The child's next word, or None if it says nothing within ``timeout`` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        return None
    return process.stdout.readline().rstrip(b"\n") or None


def resource_frame(resources: Sequence[Resource]) -> bytes:
    """How a batch starts: the mark, then the resources' frame."""
    data = pickle.dumps([(dict(r.attributes), r.schema_url) for r in resources], PICKLE)
    return _BATCH + _LENGTH.pack(len(data)) + data


def frame(data: bytes) -> bytes:
    """``data``, length-prefixed: spans in a batch (a batch is its frames, joined)."""
    return _LENGTH.pack(len(data)) + data


def _frames(data: memoryview) -> Iterator[memoryview]:
    """The length-prefixed frames ``data`` is made of."""
    offset = 0
    while offset < len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        yield data[offset:offset + length]
        offset += length


def main() -> None:
    """The child: encode each batch and export it with OTLP, until told to stop or its input
    ends (the daemon stopped, or was killed)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    source, answers = sys.stdin.buffer, sys.stdout.buffer
    run_when_idle()
    exporter = OTLPSpanExporter()
    send = bytes_sender(exporter)
    encoder = SpanEncoder()
    limiter = SpanLimiter.from_environment()
    prepare = with_attributes if limiter is None else \
        lambda span: limiter.limit(span, attribute_pairs(span))
    answers.write(_READY + b"\n")
    answers.flush()
    try:
        while True:
            head = source.read(_LENGTH.size)
            if len(head) < _LENGTH.size:
                return
            message = source.read(_LENGTH.unpack(head)[0])
            if message in (_FLUSH, _STOP):
                answers.write(message + b"\n")
                answers.flush()
                if message == _STOP:
                    return
                continue
            frames = _frames(memoryview(message)[len(_BATCH):])
            resources = pickle.loads(next(frames))
            try:
                spans = [prepare(span) for packed in frames for span in pickle.loads(packed)]
                if send is None:  # the exporter's own (slower) encoder, from SDK spans
                    rebuilt = [rebuild(span, [Resource(*resource) for resource in resources])
                               for span in spans]
                else:
                    data = encoder.encode(spans, resources)
            except Exception:  # as the SDK's exporter: the batch is lost, the child goes on
                log.exception("Failed to encode span batch")
                continue
            if send is None:
                exporter.export(rebuilt)
            else:
                send(data)
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]


def run_when_idle() -> None:
    """The child's priority: niced, and on Linux ``SCHED_IDLE``, so that it runs only when no
    other task wants the CPU and gives it up at once when one does.

    Niced alone, the scheduler still gave its burst (a batch's unpickling, encoding and
    sending) slices of a few ms that the daemon's upstream and clients waited behind on a
    busy machine. Idle, in one run of ``bench_latency`` (3 rounds), a traced daemon's p99
    added went from 0.69 to 0.23 ms above untraced at c=1, from 4.2 to 3.1 ms in the open loop
    at 50% of its rate and from 6.2 to 5.1 ms at 75%. The cost is on a host with no idle CPU
    at all: the child then falls behind, and spans past ``OTEL_BSP_MAX_QUEUE_SIZE`` waiting
    are dropped and counted, as for a slow collector. Another system, or a policy the
    host refuses, keeps the niced priority.

    Either may be refused: a seccomp filter such as systemd's ``SystemCallFilter=~@resources``
    fails ``setpriority`` and ``sched_setscheduler`` with EPERM (``systemd/llmspool.service``
    allows these two back). Refused, the child runs at the daemon's own priority rather
    than not at all: an ``os.nice`` that raised used to end it before it said it was ready,
    and every span was dropped."""
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed here
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def bytes_sender(exporter: Any) -> Callable[[bytes], object] | None:
    """What sends encoded bytes with ``exporter``'s own HTTP client: its endpoint, headers,
    compression, timeout and retries, as the ``OTEL_*`` variables set them. The client is not
    public API (``opentelemetry-exporter-otlp-proto-http`` 1.45): an exporter without one gets
    rebuilt SDK spans instead, its own encoder's slower way (``test_otlp_spans`` checks that
    the installed one has it)."""
    export = getattr(getattr(exporter, "_client", None), "export", None)
    return export if callable(export) else None


if __name__ == "__main__":
    main()
