"""Spans exported over OTLP from a child process, so that neither encoding them nor a thread
packing them holds the daemon.

OpenTelemetry's OTLP exporter encodes each span into protobuf objects built in Python: about
170 µs of CPU for a call's span (its ~30 attributes). Run in the SDK's batch processor thread,
that work (and even the cheaper copying that replaced it) holds the interpreter lock in slices
of up to its switch interval (5 ms) while the event loop waits for it: a 512-span batch kept the
loop from running for several of those slices, which is what a traced daemon's p99 paid.

``SpanPipe`` is the span processor the daemon uses in place of ``BatchSpanProcessor`` and
``OTLPSpanExporter``:

- ``on_end`` packs the finished span right where it ends (copied into plain tuples and
  pickled, ~20 µs, on the event loop in small pieces like the rest of a call's work) and
  queues the bytes. It never blocks: past ``OTEL_BSP_MAX_QUEUE_SIZE`` spans waiting, a span is
  dropped and counted, as the SDK's processor would.
- A writer thread wakes every ``OTEL_BSP_SCHEDULE_DELAY`` ms, or once
  ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` spans wait, takes the queued bytes and writes them to the
  child in batches of that size. Writing to a pipe releases the interpreter lock, so this
  thread holds it only for a list swap and a join.
- A child process (``python -m llmspool.core.span_export``, fed on its standard input)
  rebuilds the spans and hands them to the real ``OTLPSpanExporter``, configured by the same
  ``OTEL_*`` environment variables. Batches, retries and timeouts of the upload are the
  exporter's own. A full pipe (a collector slower than the daemon) blocks the writer thread,
  never the event loop.
- ``force_flush`` and ``shutdown`` send what waits and wait (bounded by their timeouts) until
  the child has sent it, so the spans of a stopping daemon still reach the collector.
- A child that died is started again at the next batch (what it held is lost; that is
  logged). A daemon killed outright closes the child's input, and the child ends.
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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

log = logging.getLogger(__name__)

_FLUSH = b"flush"
_STOP = b"stop"
_READY = b"ready"
_BATCH = b"S"  # a batch: its resource list, then its spans, each a length-prefixed pickle
_LENGTH = struct.Struct(">I")  # each message to the child: its length, then its bytes
_START_TIMEOUT = 30.0  # seconds for a child to import the exporter and say it is ready
_PICKLE = pickle.HIGHEST_PROTOCOL

# The batch processor's settings, read from the same variables and with the same defaults
# as OpenTelemetry's ``BatchSpanProcessor``.
SCHEDULE_DELAY = ("OTEL_BSP_SCHEDULE_DELAY", 5000)  # ms between sends
MAX_QUEUE_SIZE = ("OTEL_BSP_MAX_QUEUE_SIZE", 2048)  # spans waiting; more are dropped
MAX_EXPORT_BATCH_SIZE = ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)  # spans per OTLP request

# A span as plain data: what pickles fast, and all the OTLP encoder reads.
CompactSpan = tuple[Any, ...]


def compact(span: ReadableSpan, resource: int) -> CompactSpan:
    """``span`` as tuples; its resource as ``resource``, an index into the batch's list."""
    scope = span.instrumentation_scope
    status = span.status
    return (
        span.name, context_data(span.context), context_data(span.parent), resource,
        dict(span.attributes or {}),
        [(event.name, dict(event.attributes or {}), event.timestamp) for event in span.events],
        [(context_data(link.context), dict(link.attributes or {})) for link in span.links],
        span.kind.value,
        (scope.name, scope.version, scope.schema_url) if scope is not None else None,
        status.status_code.value, status.description, span.start_time, span.end_time,
    )


def rebuild(data: CompactSpan, resources: Sequence[Resource]) -> ReadableSpan:
    """The ``ReadableSpan`` that ``compact`` made ``data`` of."""
    (name, context, parent, resource, attributes, events, links, kind, scope, status,
     description, start_time, end_time) = data
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


def context_data(context: SpanContext | None) -> tuple[Any, ...] | None:
    """A span context as plain data (``None`` stays ``None``)."""
    if context is None:
        return None
    return (context.trace_id, context.span_id, context.is_remote, int(context.trace_flags),
            list(context.trace_state.items()))


def _span_context(data: tuple[Any, ...] | None) -> SpanContext | None:
    if data is None:
        return None
    trace_id, span_id, is_remote, flags, state = data
    return SpanContext(trace_id, span_id, is_remote, TraceFlags(flags), TraceState(state))


def setting(environ: Mapping[str, str], name_and_default: tuple[str, int]) -> int:
    """A positive whole number from ``environ``; its default (with a warning) when unset
    or not one."""
    name, default = name_and_default
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning("%s=%r is not a positive whole number; using %d", name, raw, default)
        return default
    return value


class SpanPipe(SpanProcessor):
    """Packs each finished span where it ends; a thread hands them to an ``ExportChild``."""

    def __init__(self, child: ExportChild | None = None, *,
                 environ: Mapping[str, str] = os.environ) -> None:
        self._child = child if child is not None else ExportChild()
        self._delay = setting(environ, SCHEDULE_DELAY) / 1000
        self._batch = setting(environ, MAX_EXPORT_BATCH_SIZE)
        self._limit = max(setting(environ, MAX_QUEUE_SIZE), self._batch)
        self._lock = threading.Lock()  # the queue below: spans end on any thread
        self._packed: list[bytes] = []
        self._resources: dict[int, int] = {}  # id(resource) → index into _resource_list
        self._resource_list: list[Resource] = []  # kept, so that their ids stay theirs
        self._resource_data = _resource_frame([])  # the list, framed, as each batch starts
        self._woken = False
        self._stopped = False
        self.dropped = 0
        self._sending = threading.Lock()  # one batch at a time: the thread, or a flush
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._work, name="llmspool-span-pipe",
                                        daemon=True)
        self._thread.start()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled or self._stopped:
            return
        resource = self._resources.get(id(span.resource))
        if resource is None:
            resource = self.resource_index(span.resource)
        self.put(compact(span, resource))

    def put(self, span: CompactSpan) -> None:
        """Queue a span already made plain data (its resource from ``resource_index``)."""
        if self._stopped:
            return
        packed = pickle.dumps(span, _PICKLE)
        packed = _LENGTH.pack(len(packed)) + packed  # framed: a batch is these, joined
        with self._lock:
            if len(self._packed) >= self._limit:
                self.dropped += 1
                if self.dropped == 1:
                    log.warning("%d spans wait to be exported (OTEL_BSP_MAX_QUEUE_SIZE); "
                                "more are dropped until the collector catches up", self._limit)
                return
            self._packed.append(packed)
            if len(self._packed) < self._batch or self._woken:
                return
            self._woken = True
        self._wake.set()

    def resource_index(self, resource: Resource) -> int:
        """``resource``'s index in the list each batch carries (added if new)."""
        with self._lock:
            index = self._resources.get(id(resource))
            if index is None:
                index = self._resources[id(resource)] = len(self._resource_list)
                self._resource_list.append(resource)
                self._resource_data = _resource_frame(self._resource_list)
            return index

    def _work(self) -> None:
        while not self._stopped:
            self._wake.wait(self._delay)
            self._wake.clear()
            self._send_waiting()

    def _send_waiting(self, timeout: float = -1) -> bool:
        """Send every span waiting, in batches; False if some could not be handed over (or,
        within ``timeout`` seconds, the batch being sent still was not)."""
        if not self._sending.acquire(timeout=timeout):
            return False
        try:
            with self._lock:
                packed, self._packed, self._woken = self._packed, [], False
                resources = self._resource_data
            sent = True
            for start in range(0, len(packed), self._batch):
                batch = packed[start:start + self._batch]
                # One copy in C, holding the interpreter lock only for a memcpy: the spans
                # stay framed and pickled, and the child unpickles each.
                sent = self._child.send(resources + b"".join(batch)) and sent
            return sent
        finally:
            self._sending.release()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        sent = self._send_waiting(timeout_millis / 1000)
        return self._child.flush(timeout_millis / 1000) and sent

    def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._wake.set()
        self._thread.join(30.0)
        self._send_waiting(30.0)
        if self.dropped:
            log.warning("%d spans were dropped because the collector fell behind "
                        "(raise OTEL_BSP_MAX_QUEUE_SIZE to keep more waiting)", self.dropped)
        self._child.stop()


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


def _resource_frame(resources: Sequence[Resource]) -> bytes:
    """How a batch starts: the mark, then the resources' frame."""
    data = pickle.dumps([(dict(r.attributes), r.schema_url) for r in resources], _PICKLE)
    return _BATCH + _LENGTH.pack(len(data)) + data


def _frames(data: memoryview) -> Iterator[memoryview]:
    """The length-prefixed frames ``data`` is made of."""
    offset = 0
    while offset < len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        yield data[offset:offset + length]
        offset += length


def main() -> None:
    """The child: rebuild each batch and export it with OTLP, until told to stop or its
    input ends (the daemon stopped, or was killed)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    source, answers = sys.stdin.buffer, sys.stdout.buffer
    exporter = OTLPSpanExporter()
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
            resources = [Resource(attributes, schema_url)
                         for attributes, schema_url in pickle.loads(next(frames))]
            exporter.export([rebuild(pickle.loads(packed), resources) for packed in frames])
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
