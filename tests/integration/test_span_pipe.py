"""``SpanPipe``: the daemon's span processor, against its real export child and a real OTLP
receiver. Ending a span never waits for the collector, spans past the queue's size are dropped
and counted, and every span queued reaches the collector, in batches of the configured size.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from llmspool.core.span_export import NICENESS, run_when_idle
from llmspool.core.span_pipe import MAX_QUEUE_SIZE, SpanPipe, setting
from llmspool.core.spans import LeanSpan, LeanTracer, SpanFields
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import DEFAULT_ON
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from tests.integration.test_tracing import OtlpReceiver, receiver  # noqa: F401 (fixture)
from tests.support.waiting import wait_for


@pytest.fixture
def pipe_env(receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:  # noqa: F811
    # The child reads the endpoint from its environment, inherited from this process.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    return {"OTEL_BSP_SCHEDULE_DELAY": "20", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "7",
            "OTEL_BSP_MAX_QUEUE_SIZE": "50"}


@pytest.fixture
def provider(pipe_env: dict[str, str]) -> Iterator[tuple[TracerProvider, SpanPipe]]:
    pipe = SpanPipe(environ=pipe_env)
    provider = TracerProvider()
    provider.add_span_processor(pipe)
    try:
        yield provider, pipe
    finally:
        provider.shutdown()


def _children() -> list[int]:
    """The pids of this process's children, from every thread's ``children`` file."""
    found: list[int] = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:  # a thread that ended since the listing (a worker's, idle)
            continue
    return found


def _traces(receiver: OtlpReceiver) -> int:  # noqa: F811
    return receiver.paths.count("/v1/traces")


def test_spans_reach_the_collector_in_batches_of_the_configured_size(
    provider: tuple[TracerProvider, SpanPipe], receiver: OtlpReceiver,  # noqa: F811
) -> None:
    tracer_provider, pipe = provider
    tracer = tracer_provider.get_tracer("test")
    for number in range(20):
        with tracer.start_as_current_span(f"span {number}", attributes={"n": number}):
            pass
    assert pipe.force_flush()
    # 20 spans, at most 7 to a request: 7 + 7 + 6, whichever of the thread or the flush sent.
    wait_for(lambda: len(receiver.spans) == 20, what="the 20 spans")
    assert sorted(span.name for span in receiver.spans) == sorted(
        f"span {number}" for number in range(20))
    assert _traces(receiver) >= 3
    assert {kv.key: kv.value.int_value for kv in receiver.span("span 3").attributes} == {"n": 3}


def test_the_export_child_yields_the_cpu_to_the_daemon(
    provider: tuple[TracerProvider, SpanPipe], receiver: OtlpReceiver,  # noqa: F811
) -> None:
    tracer_provider, pipe = provider
    others = set(_children())
    with tracer_provider.get_tracer("test").start_as_current_span("first"):
        pass
    assert pipe.force_flush()
    wait_for(lambda: len(receiver.spans) == 1, what="the span")
    [child] = set(_children()) - others
    # Its encoding bursts run in the CPU time the daemon leaves (capped at the lowest priority),
    # and only when no other task wants the CPU.
    assert os.getpriority(os.PRIO_PROCESS, child) == min(
        os.getpriority(os.PRIO_PROCESS, 0) + NICENESS, 19)
    assert os.sched_getscheduler(child) == os.SCHED_IDLE


def test_a_stalled_collector_never_holds_the_thread_that_ends_spans(
    provider: tuple[TracerProvider, SpanPipe], receiver: OtlpReceiver,  # noqa: F811
) -> None:
    tracer_provider, pipe = provider
    tracer = tracer_provider.get_tracer("test")
    others = set(_children())  # this test process may hold others' (a module's sim)
    with tracer.start_as_current_span("first"):
        pass
    assert pipe.force_flush()  # the export child starts with the first batch
    [child] = set(_children()) - others
    os.kill(child, signal.SIGSTOP)  # the collector's side stops reading: the pipe fills
    try:
        ended = threading.Event()
        slowest = [0.0]

        def end_many() -> None:
            for number in range(3000):
                started = time.perf_counter()
                tracer.start_span(f"stalled {number}", attributes={"pad": "x" * 200}).end()
                slowest[0] = max(slowest[0], time.perf_counter() - started)
            ended.set()

        threading.Thread(target=end_many, daemon=True).start()
        # Blocking on the pipe would never end: the child reads nothing until SIGCONT.
        assert ended.wait(30), "ending spans waited for the stalled collector"
        assert slowest[0] < 0.5
        assert pipe.dropped > 0  # past OTEL_BSP_MAX_QUEUE_SIZE waiting
    finally:
        os.kill(child, signal.SIGCONT)
    assert pipe.force_flush()
    # Every span not dropped arrived once the child could read again.
    wait_for(lambda: len(receiver.spans) == 1 + 3000 - pipe.dropped,
             what="every span that was not dropped")


def test_spans_ended_on_many_threads_at_once_each_arrive_once(
    pipe_env: dict[str, str], receiver: OtlpReceiver,  # noqa: F811
) -> None:
    """Spans are queued without a lock of the pipe's: four threads ending spans while the
    writer takes batches of 7 lose none and send none twice."""
    pipe = SpanPipe(environ={**pipe_env, "OTEL_BSP_MAX_QUEUE_SIZE": "100000"})
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(pipe)
    tracer = tracer_provider.get_tracer("test")
    start = threading.Barrier(4)

    def end_spans(thread: int) -> None:
        start.wait()
        for number in range(250):
            tracer.start_span(f"thread {thread} span {number}").end()

    try:
        threads = [threading.Thread(target=end_spans, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert pipe.force_flush()
        wait_for(lambda: len(receiver.spans) >= 1000, what="the 1,000 spans")
    finally:
        tracer_provider.shutdown()
    names = [span.name for span in receiver.spans]
    assert sorted(names) == sorted(
        f"thread {thread} span {number}" for thread in range(4) for number in range(250))
    assert pipe.dropped == 0


def test_a_batch_for_a_child_that_died_unseen_goes_to_a_new_child(
    provider: tuple[TracerProvider, SpanPipe], receiver: OtlpReceiver,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """The child dies between the check that it runs and the write of a batch: the write
    fails (a broken pipe), and the batch goes to a child started again, nothing lost."""
    tracer_provider, pipe = provider
    tracer = tracer_provider.get_tracer("test")
    others = set(_children())
    with tracer.start_as_current_span("before"):
        pass
    assert pipe.force_flush()
    [child] = set(_children()) - others
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: Path(f"/proc/{child}/stat").read_text().split(") ")[1][0] == "Z",
             what="the child to die")
    # The race made to happen: the check (poll) still says the dead child runs.
    process = pipe._child._process
    assert process is not None and process.pid == child
    monkeypatch.setattr(process, "poll", lambda: None)
    with caplog.at_level(logging.WARNING):
        with tracer.start_as_current_span("after"):
            pass
        assert pipe.force_flush()
    wait_for(lambda: {span.name for span in receiver.spans} == {"before", "after"},
             what="the span sent after the child died")
    assert "the span export process ended; starting it again" in caplog.text
    [restarted] = set(_children()) - others - {child}
    assert restarted != child


def test_a_setting_that_is_not_a_positive_number_falls_back_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        assert setting({"OTEL_BSP_MAX_QUEUE_SIZE": "lots"}, MAX_QUEUE_SIZE) == 2048
        assert setting({"OTEL_BSP_MAX_QUEUE_SIZE": "-3"}, MAX_QUEUE_SIZE) == 2048
    assert setting({"OTEL_BSP_MAX_QUEUE_SIZE": "100"}, MAX_QUEUE_SIZE) == 100
    assert setting({}, MAX_QUEUE_SIZE) == 2048
    assert caplog.text.count("OTEL_BSP_MAX_QUEUE_SIZE") == 2


def test_a_batch_the_child_cannot_encode_is_dropped_and_the_child_goes_on(
    provider: tuple[TracerProvider, SpanPipe], receiver: OtlpReceiver,  # noqa: F811
) -> None:
    _, pipe = provider
    others = set(_children())
    tracer = LeanTracer(pipe, resource=pipe.resource_index(Resource.create({})),
                        sampler=DEFAULT_ON, ids=RandomIdGenerator(),
                        scope=InstrumentationScope("test", "1"))
    broken = tracer.start_span("broken")
    # Two names and one value: what no ``SpanFields`` makes (it checks), and the child's
    # rebuilding of the attributes refuses.
    cast(LeanSpan, broken).fields.extend((("a", "b"), 1))
    broken.end()
    assert pipe.force_flush()
    [child] = set(_children()) - others
    good = tracer.start_span("good")
    SpanFields("gen_ai.request.model", "llmspool.stream").set(good, "gpt-4o", None)
    good.end()
    assert pipe.force_flush()
    wait_for(lambda: [span.name for span in receiver.spans] == ["good"], what="the good span")
    assert {kv.key: kv.value.string_value for kv in receiver.span("good").attributes} == {
        "gen_ai.request.model": "gpt-4o"}
    assert set(_children()) - others == {child}  # the same child: it did not die


def test_a_child_refused_a_lower_priority_still_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a seccomp filter that refuses ``setpriority`` and ``sched_setscheduler`` (the
    shipped unit's ``SystemCallFilter=~@resources`` did), the child goes on at the daemon's
    priority. No seccomp filter can be installed here, so the refusal is the calls' own
    error, raised in their place."""
    def refused(*_args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "nice", refused)
    monkeypatch.setattr(os, "sched_setscheduler", refused)
    run_when_idle()  # returns: the child goes on to say it is ready
