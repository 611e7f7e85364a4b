"""Spans exported over OTLP from a child process, so that encoding them never holds the daemon.

OpenTelemetry's OTLP exporter encodes each span into protobuf objects built in Python: about
170 µs of CPU for a call's span (its ~30 attributes), run in the batch processor's thread while
it holds the interpreter lock, so the event loop stalls for it in slices of up to the
interpreter's switch interval. That was the larger half of what tracing cost per call.

``ChildExporter`` is the ``SpanExporter`` the daemon puts in its ``BatchSpanProcessor`` in place
of ``OTLPSpanExporter``. The processor still batches in its thread; ``export`` only copies each
finished span into plain tuples and pickles the batch (~30 µs a span) onto a pipe. A child
process (``python -m llmspool.core.span_export``, fed on its standard input) rebuilds the
spans and hands them to the real ``OTLPSpanExporter``, configured by the same ``OTEL_*``
environment variables. Batches, retries and timeouts of the upload are the exporter's own.

- A full pipe (a collector slower than the daemon) blocks the processor's thread, never the
  event loop; the processor then drops spans past its ``OTEL_BSP_MAX_QUEUE_SIZE``, as it would.
- ``force_flush`` and ``shutdown`` wait (bounded by their timeouts) until the child has sent
  what it was given, so the spans of a stopping daemon still reach the collector.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

log = logging.getLogger(__name__)

_FLUSH = b"flush"
_STOP = b"stop"
_READY = b"ready"
_LENGTH = struct.Struct(">I")  # each message to the child: its length, then its bytes
_START_TIMEOUT = 30.0  # seconds for a child to import the exporter and say it is ready

# A span as plain data: what pickles fast, and all the OTLP encoder reads.
CompactSpan = tuple[Any, ...]


def compact(span: ReadableSpan, resources: dict[int, int], resource_list: list[Any]) -> CompactSpan:
    """``span`` as tuples, its resource as an index into ``resource_list`` (shared per batch)."""
    resource = span.resource
    index = resources.get(id(resource))
    if index is None:
        index = resources[id(resource)] = len(resource_list)
        resource_list.append((dict(resource.attributes), resource.schema_url))
    scope = span.instrumentation_scope
    status = span.status
    return (
        span.name, _context(span.context), _context(span.parent), index,
        dict(span.attributes or {}),
        [(event.name, dict(event.attributes or {}), event.timestamp) for event in span.events],
        [(_context(link.context), dict(link.attributes or {})) for link in span.links],
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


def _context(context: SpanContext | None) -> tuple[Any, ...] | None:
    if context is None:
        return None
    return (context.trace_id, context.span_id, context.is_remote, int(context.trace_flags),
            list(context.trace_state.items()))


def _span_context(data: tuple[Any, ...] | None) -> SpanContext | None:
    if data is None:
        return None
    trace_id, span_id, is_remote, flags, state = data
    return SpanContext(trace_id, span_id, is_remote, TraceFlags(flags), TraceState(state))


class ChildExporter(SpanExporter):
    """A ``SpanExporter`` that hands each batch to an OTLP exporter in a child process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the processor's thread, and a flush from another
        self._process: subprocess.Popen[bytes] | None = None
        self._stopped = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        resources: dict[int, int] = {}
        resource_list: list[Any] = []
        batch = [compact(span, resources, resource_list) for span in spans]
        payload = pickle.dumps((resource_list, batch), protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self._stopped:
                return SpanExportResult.FAILURE
            for attempt in (1, 2):
                process = self._running()
                if process is None:
                    return SpanExportResult.FAILURE
                try:
                    _send(process, payload)
                    return SpanExportResult.SUCCESS
                except OSError:
                    log.warning("the span export process ended; %s",
                                "starting it again" if attempt == 1 else "spans are dropped")
                    self._forget()
        return SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._lock:
            return self._round_trip(_FLUSH, timeout_millis / 1000)

    def shutdown(self) -> None:
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
    process.stdin.write(_LENGTH.pack(len(message)) + message)
    process.stdin.flush()


def _receive(process: subprocess.Popen[bytes], timeout: float) -> bytes | None:
    """The child's next word, or None if it says nothing within ``timeout`` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        return None
    return process.stdout.readline().rstrip(b"\n") or None


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
            resource_list, batch = pickle.loads(message)
            resources = [Resource(attributes, schema_url)
                         for attributes, schema_url in resource_list]
            exporter.export([rebuild(data, resources) for data in batch])
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
