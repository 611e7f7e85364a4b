"""Traces: spans for the front door and the provider call reach a real OTLP/HTTP receiver,
continue the client's ``traceparent``, and carry the GenAI attributes and the cost."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.processes import Sim, openai_client, start_daemon, unix_request


class _Receiver(ThreadingHTTPServer):
    spans: list[Any]


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/v1/traces":
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self.server.spans.extend(scope_spans.spans)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver(("127.0.0.1", 0), _Handler)
    server.spans = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _attributes(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


def test_spans_form_a_tree_under_the_clients_trace(
    tmp_path: Path, sim: Sim, receiver: _Receiver
) -> None:
    port = receiver.server_address[1]
    daemon = start_daemon(tmp_path, sim.url, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    })
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent_id = "00f067aa0ba902b7"
    try:
        client = openai_client(daemon.socket_path)
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "trace me"}],
            extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
        )
        deadline = time.monotonic() + 10
        while len(receiver.spans) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
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
    attributes = _attributes(provider_call)
    assert attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["llmspool.tier"] == "standard"
    assert attributes["llmspool.cost_usd"] > 0


def test_otel_sdk_disabled_turns_tracing_off(tmp_path: Path, sim: Sim, receiver: _Receiver) -> None:
    port = receiver.server_address[1]
    daemon = start_daemon(tmp_path, sim.url, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SDK_DISABLED": "true",
    })
    try:
        openai_client(daemon.socket_path).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
        time.sleep(0.5)
    finally:
        daemon.terminate()  # a shutdown flushes any spans there were
    assert receiver.spans == []


class _MetricsReceiver(_Receiver):
    metric_names: set[str]


class _MetricsHandler(BaseHTTPRequestHandler):
    server: _MetricsReceiver

    def do_POST(self) -> None:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
        )

        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/v1/metrics":
            request = ExportMetricsServiceRequest()
            request.ParseFromString(body)
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        total = sum(p.as_int or p.as_double for p in metric.sum.data_points)
                        if total:
                            self.server.metric_names.add(metric.name)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_flex_metrics_are_exported_over_otlp(tmp_path: Path, sim: Sim) -> None:
    server = _MetricsReceiver(("127.0.0.1", 0), _MetricsHandler)
    server.spans = []
    server.metric_names = set()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    daemon = start_daemon(tmp_path, sim.url, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
    })
    try:
        openai_client(daemon.socket_path).chat.completions.create(
            model="gpt-5-mini", messages=[{"role": "user", "content": "x"}], service_tier="flex"
        )
        deadline = time.monotonic() + 10
        while "llmspool.flex.requests" not in server.metric_names:
            assert time.monotonic() < deadline, server.metric_names
            time.sleep(0.1)
        assert {"llmspool.flex.tokens", "llmspool.flex.saved"} <= server.metric_names
    finally:
        daemon.terminate()
        server.shutdown()
        server.server_close()


def test_batch_spans_link_to_the_trace_of_the_job_they_carry(
    tmp_path: Path, sim: Sim, receiver: _Receiver
) -> None:
    port = receiver.server_address[1]
    config = ('[planner]\nsafety = "1s"\ndefault_standard_latency = "1s"\n'
              'default_batch_latency = "2s"\n[batch]\nmax_age = "100ms"\npoll_min = "200ms"\n')
    daemon = start_daemon(tmp_path, sim.url, config_toml=config, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    })
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
        deadline = time.monotonic() + 10
        wanted = {"batch submit", "batch poll", "batch retrieve"}
        while not wanted <= {s.name for s in receiver.spans} and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        daemon.terminate()
    batch_spans = [span for span in receiver.spans if span.name in wanted]
    assert {span.name for span in batch_spans} == wanted
    for span in batch_spans:
        assert [link.trace_id.hex() for link in span.links] == [trace_id], span.name
    retrieve = next(span for span in batch_spans if span.name == "batch retrieve")
    assert _attributes(retrieve)["llmspool.batch.succeeded"] == 3
