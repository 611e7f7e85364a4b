"""``SpanPipe``: finished spans queued as bytes, and a thread that pipes them to the export child.

The SDK's ``BatchSpanProcessor`` copied each 512-span batch in its thread (and, before that,
encoded it there), holding the interpreter lock for whole switch intervals while the event loop
waited: what a traced daemon's p99 paid. Here a span is queued where it ends as plain data
(``span_export.span_data``'s tuple), and the writer thread pickles each batch in one go:
about 0.5 µs a span, the pickle's memo writing each attribute's name once a batch.

Pickled in chunks of 64 spans, a batch cost twice that and held the interpreter lock no less.
The event loop, once it has handed the lock to this thread, waits to get it back until the
thread releases it at the pipe's write, not between two chunks. Beside a thread like this one,
a busy loop waited 105 ms in 4 s in waits longer than 0.1 ms with chunks, 52 ms with a pickle a
batch; the longest wait went from 0.8-1.3 ms to 0.5 ms. So:

- never blocking: past ``OTEL_BSP_MAX_QUEUE_SIZE`` spans waiting, a span is dropped and counted
  (the first drop and the total at shutdown are logged), as the SDK's processor would;
- a writer thread wakes every ``OTEL_BSP_SCHEDULE_DELAY`` ms, or once
  ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` spans wait, and writes them to the child in batches of
  that size, each pickled in one go; the pipe write releases the interpreter lock. A full pipe
  (a collector slower than the daemon) blocks this thread, never the event loop;
- ``force_flush`` and ``shutdown`` send what waits and wait (bounded by their timeouts) until
  the child has sent it, so the spans of a stopping daemon still reach the collector.

``spans.LeanTracer`` hands its spans to ``put`` as plain data; as an SDK ``SpanProcessor``
(next to the console exporter) it makes SDK spans plain data in ``on_end``.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
from collections import deque
from collections.abc import Mapping

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from llmspool.core.span_export import (
    PICKLE,
    CompactSpan,
    ExportChild,
    compact,
    frame,
    resource_frame,
)

log = logging.getLogger(__name__)

# The batch processor's settings, read from the same variables and with the same defaults
# as OpenTelemetry's ``BatchSpanProcessor``.
SCHEDULE_DELAY = ("OTEL_BSP_SCHEDULE_DELAY", 5000)  # ms between sends
MAX_QUEUE_SIZE = ("OTEL_BSP_MAX_QUEUE_SIZE", 2048)  # spans waiting; more are dropped
MAX_EXPORT_BATCH_SIZE = ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)  # spans per OTLP request


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
        self._lock = threading.Lock()  # the resources below, and the count of drops
        # Spans end on any thread: a deque's append and popleft need no lock of ours (one
        # taken a span was 0.1 µs of the event loop's, two a call).
        self._waiting: deque[CompactSpan] = deque()
        self._resources: dict[int, int] = {}  # id(resource) → index into _resource_list
        self._resource_list: list[Resource] = []  # kept, so that their ids stay theirs
        self._resource_data = resource_frame([])  # the list, framed, as each batch starts
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
        waiting = self._waiting
        if len(waiting) >= self._limit or self._stopped:
            self._drop()
            return
        waiting.append(span)
        # Two threads may both wake the writer: it then finds less to send, no harm done.
        if len(waiting) >= self._batch and not self._woken:
            self._woken = True
            self._wake.set()

    def _drop(self) -> None:
        if self._stopped:
            return
        with self._lock:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("%d spans wait to be exported (OTEL_BSP_MAX_QUEUE_SIZE); "
                            "more are dropped until the collector catches up", self._limit)

    def resource_index(self, resource: Resource) -> int:
        """``resource``'s index in the list each batch carries (added if new)."""
        with self._lock:
            index = self._resources.get(id(resource))
            if index is None:
                index = self._resources[id(resource)] = len(self._resource_list)
                self._resource_list.append(resource)
                self._resource_data = resource_frame(self._resource_list)
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
            self._woken = False
            queue = self._waiting
            # As many as wait now (more may come meanwhile, from any thread: they wait for
            # the next pass).
            waiting = [queue.popleft() for _ in range(len(queue))]
            with self._lock:
                resources = self._resource_data
            sent = True
            for start in range(0, len(waiting), self._batch):
                batch = frame(pickle.dumps(waiting[start:start + self._batch], PICKLE))
                sent = self._child.send(resources + batch) and sent
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
