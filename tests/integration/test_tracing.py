"""Traces: spans for the front door and the provider call reach a real OTLP/HTTP receiver,
continue the client's ``traceparent``, and carry the GenAI attributes and the cost.

``OtlpReceiver`` (used by the ``test_telemetry_*`` modules too) is an HTTP server that decodes
the protobuf export requests with ``opentelemetry-proto``, as a collector would.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.processes import Daemon, Sim, openai_client, start_daemon, unix_request
from tests.support.waiting import wait_for


class OtlpReceiver(ThreadingHTTPServer):
    """A real OTLP/HTTP receiver on 127.0.0.1. ``accept_metrics=False`` makes it a traces-only
    backend (as Arize Phoenix is): ``/v1/metrics`` answers 404."""

    def __init__(self, *, accept_metrics: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), _OtlpHandler)
        self.accept_metrics = accept_metrics
        self.spans: list[Any] = []
        self.metrics: list[Any] = []  # every Metric message, in the order exported
        self.paths: list[str] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def span(self, name: str) -> Any:
        found = [span for span in self.spans if span.name == name]
        assert len(found) == 1, (name, [span.name for span in self.spans])
        return found[0]

    def metric(self, name: str) -> Any | None:
        """The last export of metric ``name`` (cumulative: it holds every point so far)."""
        found = [metric for metric in self.metrics if metric.name == name]
        return found[-1] if found else None

    def metric_names(self) -> set[str]:
        return {metric.name for metric in self.metrics}


class _OtlpHandler(BaseHTTPRequestHandler):
    server: OtlpReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.paths.append(self.path)
        if self.path == "/v1/traces":
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self.server.spans.extend(scope_spans.spans)
        elif self.path == "/v1/metrics" and self.server.accept_metrics:
            metrics_request = ExportMetricsServiceRequest()
            metrics_request.ParseFromString(body)
            for resource_metrics in metrics_request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    self.server.metrics.extend(scope_metrics.metrics)
        else:
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    try:
        yield server
    finally:
        server.close()


def attributes_of(item: Any) -> dict[str, Any]:
    """A span's (or data point's) attributes as Python values (arrays as lists)."""
    return {kv.key: _value(kv.value) for kv in item.attributes}


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind)

def traced_daemon(tmp_path: Path, sim: Sim, receiver: OtlpReceiver,
                  config_toml: str = "") -> Daemon:
    """A daemon process exporting its spans to ``receiver`` every 100 ms."""
    return start_daemon(tmp_path, sim.url, config_toml=config_toml, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }, process=True)



def test_spans_form_a_tree_under_the_clients_trace(
    tmp_path: Path, sim: Sim, receiver: OtlpReceiver
) -> None:
    daemon = traced_daemon(tmp_path, sim, receiver)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent_id = "00f067aa0ba902b7"
    try:
        client = openai_client(daemon.socket_path)
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "trace me"}],
            extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
        )
        wait_for(lambda: len(receiver.spans) >= 2, what="the two spans")
    finally:
        daemon.terminate()
    spans = {span.name: span for span in receiver.spans}
    server = spans["POST /v1/chat/completions"]
    provider_call = spans["chat gpt-4o-mini"]
    assert server.trace_id.hex() == trace_id
    assert server.parent_span_id.hex() == parent_id
    assert provider_call.trace_id.hex() == trace_id
    assert provider_call.parent_span_id == server.span_id
    assert server.kind == server.SPAN_KIND_SERVER
    assert provider_call.kind == provider_call.SPAN_KIND_CLIENT
    attributes = attributes_of(provider_call)
    assert attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["llmspool.tier"] == "standard"
    assert attributes["llmspool.cost_usd"] > 0


def test_a_clients_unsampled_trace_is_answered_and_exports_nothing(
    tmp_path: Path, sim: Sim, receiver: OtlpReceiver
) -> None:
    """The default sampler follows the client's ``traceparent``: under an unsampled one the
    daemon records neither the request's span nor the upstream call's (which it then does not
    build at all), and still answers; a sampled one in the same run exports both."""
    daemon = traced_daemon(tmp_path, sim, receiver)
    unsampled, sampled = "4bf92f3577b34da6a3ce929d0e0e4736", "5bf92f3577b34da6a3ce929d0e0e4737"
    try:
        client = openai_client(daemon.socket_path)
        for trace_id, flags in ((unsampled, "00"), (sampled, "01")):
            answer = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "trace me?"}],
                extra_headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-{flags}"})
            assert answer.choices[0].message.content
        wait_for(lambda: len(receiver.spans) >= 2, what="the sampled call's two spans")
    finally:
        daemon.terminate()  # a shutdown flushes any spans there were
    assert sorted(span.name for span in receiver.spans) == [
        "POST /v1/chat/completions", "chat gpt-4o-mini"]
    assert {span.trace_id.hex() for span in receiver.spans} == {sampled}


def test_otel_sdk_disabled_turns_tracing_off(
    tmp_path: Path, sim: Sim, receiver: OtlpReceiver
) -> None:
    daemon = start_daemon(tmp_path, sim.url, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SDK_DISABLED": "true",
    }, process=True)
    try:
        openai_client(daemon.socket_path).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    finally:
        daemon.terminate()  # a shutdown flushes any spans there were: no need to wait first
    assert receiver.spans == []
    assert receiver.paths == []


def test_flex_metrics_are_exported_over_otlp(
    tmp_path: Path, sim: Sim, receiver: OtlpReceiver
) -> None:
    daemon = start_daemon(tmp_path, sim.url, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
    }, process=True)
    try:
        openai_client(daemon.socket_path).chat.completions.create(
            model="gpt-5-mini", messages=[{"role": "user", "content": "x"}], service_tier="flex"
        )

        def counted(name: str) -> bool:
            metric = receiver.metric(name)
            return metric is not None and sum(
                p.as_int or p.as_double for p in metric.sum.data_points) > 0

        wait_for(lambda: all(counted(name) for name in (
            "llmspool.flex.requests", "llmspool.flex.tokens", "llmspool.flex.saved")))
    finally:
        daemon.terminate()


def test_batch_spans_link_to_the_trace_of_the_job_they_carry(
    tmp_path: Path, sim: Sim, receiver: OtlpReceiver
) -> None:
    config = ('[planner]\nsafety = "1s"\ndefault_standard_latency = "1s"\n'
              'default_batch_latency = "2s"\n[batch]\nmax_age = "100ms"\npoll_min = "200ms"\n')
    daemon = start_daemon(tmp_path, sim.url, config_toml=config, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }, process=True)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    lines = b"".join(orjson.dumps({
        "custom_id": f"t{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "max_tokens": 3,
                 "messages": [{"role": "user", "content": "hi"}]},
    }) + b"\n" for i in range(3))
    try:
        status, job = unix_request(
            daemon.socket_path, "POST", "/v1/jobs?deadline=1h", lines,
            {"content-type": "application/jsonl",
             "traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
        assert status == 202, job
        status, _results = unix_request(daemon.socket_path, "GET",
                                        f"/v1/jobs/{job['id']}/results?wait=60")
        assert status == 200
        wanted = {"job submit", "batch submit", "batch poll", "batch retrieve"}
        wait_for(lambda: wanted <= {s.name for s in receiver.spans})
    finally:
        daemon.terminate()
    # The submission is a span in the caller's trace; the batch's spans link to it.
    submitted = receiver.span("job submit")
    assert submitted.trace_id.hex() == trace_id
    assert submitted.parent_span_id.hex() == "b7ad6b7169203331"
    batch_spans = [span for span in receiver.spans if span.name in wanted - {"job submit"}]
    assert {span.name for span in batch_spans} == wanted - {"job submit"}
    for span in batch_spans:
        assert [(link.trace_id, link.span_id) for link in span.links] == \
            [(submitted.trace_id, submitted.span_id)], span.name
    retrieve = next(span for span in batch_spans if span.name == "batch retrieve")
    assert attributes_of(retrieve)["llmspool.batch.succeeded"] == 3


def test_a_retried_call_shows_each_retry_as_a_span_and_the_first_attempt_on_its_own(
    tmp_path: Path, sim: Sim, receiver: OtlpReceiver
) -> None:
    daemon = traced_daemon(tmp_path, sim, receiver,
                           '[retry]\nbackoff_min = "10ms"\nbackoff_max = "20ms"\n')
    try:
        client = openai_client(daemon.socket_path)
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "answered at once"}])
        sim.set_faults({"kind": "status", "status": 503, "count": 2})
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "retried twice"}])
        wait_for(lambda: len([s for s in receiver.spans if s.name == "chat gpt-4o-mini"]) == 2
                 and len([s for s in receiver.spans if s.name.startswith("attempt")]) == 2,
                 what="two calls' spans and two retries' spans")
    finally:
        daemon.terminate()
    calls = [s for s in receiver.spans if s.name == "chat gpt-4o-mini"]
    attempts = {s.name: s for s in receiver.spans if s.name.startswith("attempt")}
    # The call answered at its first attempt is one span, its attempt told on it.
    once, retried = sorted(calls, key=lambda s: len(s.events))
    assert not [e for e in once.events if e.name.startswith("attempt")]
    assert all(s.parent_span_id != once.span_id for s in receiver.spans)
    # The retried call: its first attempt's failure is an event on its span, and each retry
    # is its own span under it, the failed one marked as such.
    failed = [e for e in retried.events if e.name == "attempt 1 failed"]
    assert len(failed) == 1
    failure = attributes_of(failed[0])
    assert failure["error.type"] and failure["message"]  # what the upstream said
    assert set(attempts) == {"attempt 2", "attempt 3"}
    assert all(a.parent_span_id == retried.span_id for a in attempts.values())
    assert attempts["attempt 2"].status.code == attempts["attempt 2"].status.STATUS_CODE_ERROR
    assert attempts["attempt 3"].status.code != attempts["attempt 3"].status.STATUS_CODE_ERROR
    assert retried.status.code != retried.status.STATUS_CODE_ERROR


def test_a_circuit_breakers_moves_are_told_on_the_spans_of_the_calls_that_moved_it(
    tmp_path: Path, sim: Sim, receiver: OtlpReceiver
) -> None:
    """The call whose failure opens the breaker carries "circuit breaker open"; the probe
    call after the cooldown carries "half_open" (its route) and "closed" (its answer)."""
    daemon = traced_daemon(tmp_path, sim, receiver, '[breaker]\nfailures = 2\n'
                           'cooldown = "300ms"\n[retry]\nmax_attempts = 1\n')
    try:
        client = openai_client(daemon.socket_path, max_retries=0)
        sim.set_faults({"kind": "status", "status": 503, "count": 2})
        for content in ("fails", "fails and opens"):
            with pytest.raises(Exception, match="503"):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": content}])
        wait_for(lambda: _breaker_state(daemon) == "open", what="the breaker to open")

        def probe_answered() -> bool:
            status, _body = unix_request(daemon.socket_path, "POST", "/v1/chat/completions",
                                         orjson.dumps({"model": "gpt-4o-mini", "messages": [
                                             {"role": "user", "content": "probe"}]}),
                                         {"content-type": "application/json"})
            return status == 200
        wait_for(probe_answered, timeout=10, what="a probe call through the breaker")
        wait_for(lambda: len([s for s in receiver.spans if s.name == "chat gpt-4o-mini"]) >= 3,
                 what="the calls' spans")
    finally:
        daemon.terminate()
    moves = [(span.status.code == span.status.STATUS_CODE_ERROR,
              [e.name for e in span.events if e.name.startswith("circuit breaker")])
             for span in sorted((s for s in receiver.spans if s.name == "chat gpt-4o-mini"),
                                key=lambda s: s.start_time_unix_nano)]
    assert moves[:2] == [(True, []), (True, ["circuit breaker open"])], moves
    assert (False, ["circuit breaker half_open", "circuit breaker closed"]) in moves[2:], moves


def _breaker_state(daemon: Daemon) -> str:
    status = daemon.get("/v1/status")[1]["dispatcher"]["breakers"]
    return next(b["state"] for b in status if b["provider"] == "openai" and b["tier"] == "standard")


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started, from any of its threads."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def _ended(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie not yet reaped counts: its files are
    closed)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def test_spans_are_encoded_in_a_child_process_started_again_when_it_dies(
    tmp_path: Path, sim: Sim, receiver: OtlpReceiver
) -> None:
    daemon = traced_daemon(tmp_path, sim, receiver)
    assert daemon.process is not None

    def calls() -> list[Any]:
        return [s for s in receiver.spans if s.name == "chat gpt-4o-mini"]

    try:
        client = openai_client(daemon.socket_path)
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "first"}])
        wait_for(lambda: len(calls()) == 1, what="the first call's span")
        # The OTLP encoding runs in the daemon's child, not in the daemon.
        exporters = _children(daemon.pid)
        assert len(exporters) == 1
        os.kill(exporters[0], signal.SIGKILL)
        # Dead, not dying: a batch written while a killed child's end of the pipe is still
        # open is lost with it (on a busy machine the kill can take that long), and this
        # test is about the batch after it.
        wait_for(lambda: _ended(exporters[0]), what="the killed export child to end")
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "second"}])
        # The new child starts niced: on a busy machine its imports take seconds.
        wait_for(lambda: len(calls()) == 2, timeout=60.0,
                 what="the second call's span, after the restart")
        restarted = _children(daemon.pid)
        assert len(restarted) == 1 and restarted != exporters
    finally:
        assert daemon.terminate() == 0
    # Stopping waited for the child to send what it had, and ended it.
    assert not Path(f"/proc/{exporters[0]}").exists()
