"""Telemetry as an OpenTelemetry GenAI backend (Arize Phoenix, say) sees it, through a real
OTLP/HTTP receiver: the answer's id, finish reasons, served tier, cached input tokens and the
billed cost on the provider-call span; the GenAI client metrics and llmspool's own; a span
for each job submission that every request of the job links to."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.test_tracing import OtlpReceiver, attributes_of
from tests.support.processes import Sim, openai_client, start_daemon, unix_exchange, unix_request
from tests.support.waiting import wait_for

TELEMETRY_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "200"}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    try:
        yield server
    finally:
        server.close()


def _env(receiver: OtlpReceiver) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, **TELEMETRY_ENV}


def _points(receiver: OtlpReceiver, name: str) -> list[tuple[dict[str, Any], Any]]:
    """(attributes, data point) of the last export of metric ``name``, whatever its kind."""
    metric = receiver.metric(name)
    if metric is None:
        return []
    data = getattr(metric, metric.WhichOneof("data"))
    return [(attributes_of(point), point) for point in data.data_points]


def _number(point: Any) -> float:
    return float(point.as_int or point.as_double)


def test_provider_call_spans_and_metrics_follow_the_genai_conventions(
    tmp_path: Path, sim: Sim, receiver: OtlpReceiver
) -> None:
    daemon = start_daemon(tmp_path, sim.url, env=_env(receiver), process=True)
    try:
        client = openai_client(daemon.socket_path)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-5-mini", messages=[{"role": "user", "content": "flex me"}],
            service_tier="flex")
        flex = raw.parse()
        flex_cost = float(raw.headers["x-llmspool-cost-usd"])
        chunks = list(client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "stream me"}],
            stream=True))
        # A job whose one request is answered after its deadline: a late result.
        sim.set_faults({"kind": "slow", "delay": "1500ms", "count": 1, "model": "gpt-4.1-nano"})
        status, job = unix_request(daemon.socket_path, "POST", "/v1/jobs", orjson.dumps({
            "requests": [{"url": "/v1/chat/completions", "body": {
                "model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "late"}]}}],
            "deadline": "1s", "on_short_deadline": "best_effort"}),
            {"content-type": "application/json"})
        assert status == 202, job
        unix_request(daemon.socket_path, "GET", f"/v1/jobs/{job['id']}/results?wait=30")
        _, ledger = daemon.get("/v1/ledger")
        wait_for(lambda: {"chat gpt-5-mini", "chat gpt-4o-mini"}
                 <= {span.name for span in receiver.spans})
        wait_for(lambda: sum(point.count for _a, point in
                             _points(receiver, "gen_ai.client.operation.duration")) >= 3
                 and bool(_points(receiver, "llmspool.jobs.requests_late")))
    finally:
        daemon.terminate()

    # The flex call: its id, why it stopped, the tier it says served it, its tokens, and the
    # cost billed at flex prices (half of standard), which a backend shows as it is.
    span = attributes_of(receiver.span("chat gpt-5-mini"))
    assert span["gen_ai.response.id"] == flex.id
    assert span["gen_ai.response.model"] == flex.model
    assert span["gen_ai.response.finish_reasons"] == ["stop"]
    assert span["openai.response.service_tier"] == "flex" == flex.service_tier
    assert span["gen_ai.usage.input_tokens"] == flex.usage.prompt_tokens
    assert span["gen_ai.usage.output_tokens"] == flex.usage.completion_tokens
    assert span["gen_ai.usage.cache_read.input_tokens"] == 0  # what the answer reported
    entry = next(e for e in ledger["entries"] if e["request_id"] == raw.headers[
        "x-llmspool-request-id"])
    assert span["gen_ai.usage.cost.amount"] == pytest.approx(flex_cost)
    assert span["gen_ai.usage.cost.amount"] == pytest.approx(entry["cost_usd"])
    assert span["gen_ai.usage.cost.amount"] == pytest.approx(entry["standard_cost_usd"] / 2)
    assert span["gen_ai.usage.cost.currency"] == "USD"
    assert span["gen_ai.usage.cost.source"] == "local"
    assert span["llmspool.cost_usd"] == span["gen_ai.usage.cost.amount"]

    # The streamed call: the same, read from the events as they passed.
    span = attributes_of(receiver.span("chat gpt-4o-mini"))
    assert span["gen_ai.response.id"] == chunks[0].id
    assert span["gen_ai.response.model"] == chunks[0].model
    assert span["gen_ai.response.finish_reasons"] == ["stop"]
    assert span["openai.response.service_tier"] == "default"
    assert span["gen_ai.usage.output_tokens"] > 0 and span["gen_ai.usage.cost.amount"] > 0

    # GenAI client metrics: one duration per call (seconds) and tokens by type.
    metric = receiver.metric("gen_ai.client.operation.duration")
    assert metric is not None and metric.unit == "s"
    durations = {(a["gen_ai.request.model"], a["llmspool.tier"]): p for a, p in
                 _points(receiver, "gen_ai.client.operation.duration")}
    assert set(durations) == {("gpt-5-mini", "flex"), ("gpt-4o-mini", "standard"),
                              ("gpt-4.1-nano", "standard")}
    assert durations[("gpt-5-mini", "flex")].count == 1
    assert 0 < durations[("gpt-4.1-nano", "standard")].sum < 30
    assert durations[("gpt-4.1-nano", "standard")].sum >= 1.5  # the slow answer
    for attributes, _point in _points(receiver, "gen_ai.client.operation.duration"):
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == "openai"
        assert "error.type" not in attributes
    tokens = {(a["gen_ai.request.model"], a["gen_ai.token.type"]): p.sum for a, p in
              _points(receiver, "gen_ai.client.token.usage")}
    assert receiver.metric("gen_ai.client.token.usage").unit == "{token}"  # type: ignore[union-attr]
    assert tokens[("gpt-5-mini", "input")] == flex.usage.prompt_tokens
    assert tokens[("gpt-5-mini", "output")] == flex.usage.completion_tokens
    assert tokens[("gpt-4o-mini", "output")] > 0

    # llmspool's own: spend and savings (flex saved half), queue, breakers, batches, late.
    spend = {a["llmspool.tier"]: _number(p) for a, p in _points(receiver, "llmspool.spend")}
    assert spend["flex"] == pytest.approx(flex_cost)
    savings = {a["llmspool.saving.source"]: _number(p)
               for a, p in _points(receiver, "llmspool.savings")}
    assert savings["tier"] == pytest.approx(entry["standard_cost_usd"] - flex_cost)
    assert [_number(p) for _a, p in _points(receiver, "llmspool.queue.depth")] == [0]
    assert [_number(p) for _a, p in _points(receiver, "llmspool.queue.in_flight")] == [0]
    breakers = {(a["llmspool.tier"], a["llmspool.breaker.state"]): _number(p)
                for a, p in _points(receiver, "llmspool.breaker.state")}
    assert breakers[("flex", "closed")] == 1 and breakers[("flex", "open")] == 0
    assert breakers[("standard", "closed")] == 1
    assert [_number(p) for _a, p in _points(receiver, "llmspool.batches.open")] == [0]
    assert [_number(p) for _a, p in _points(receiver, "llmspool.batch.requests_waiting")] == [0]
    assert [_number(p) for _a, p in _points(receiver, "llmspool.jobs.requests_late")] == [1]


# --- an upstream whose answers report cached input ------------------------------------------


_STUB_ID = "chatcmpl-stub-1"
_STUB_MODEL = "gpt-4o-mini-2024-07-18"
_STUB_USAGE = {"prompt_tokens": 2000, "completion_tokens": 7, "total_tokens": 2007,
               "prompt_tokens_details": {"cached_tokens": 1536}}


class _CachingUpstream(BaseHTTPRequestHandler):
    """Answers every chat completion as an OpenAI-compatible server would a prompt that hit
    its cache, cut by max_tokens; JSON as Python writes it (spaces after ``:``), as some
    OpenAI-compatible servers do."""

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        head = {"id": _STUB_ID, "created": 1, "model": _STUB_MODEL, "service_tier": "default"}
        if request.get("stream"):
            events = [
                {**head, "object": "chat.completion.chunk", "usage": None, "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": "cached"},
                     "finish_reason": None}]},
                {**head, "object": "chat.completion.chunk", "usage": None, "choices": [
                    {"index": 0, "delta": {}, "finish_reason": "length"}]},
                {**head, "object": "chat.completion.chunk", "choices": [], "usage": _STUB_USAGE},
            ]
            body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
            body += b"data: [DONE]\n\n"
            content_type = "text/event-stream"
        else:
            body = json.dumps({**head, "object": "chat.completion", "usage": _STUB_USAGE,
                               "choices": [{"index": 0, "finish_reason": "length", "message": {
                                   "role": "assistant", "content": "cached"}}]}).encode()
            content_type = "application/json"
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def caching_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CachingUpstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_cached_input_tokens_and_finish_reasons_reach_the_span(
    tmp_path: Path, caching_upstream: str, receiver: OtlpReceiver
) -> None:
    daemon = start_daemon(tmp_path, caching_upstream, env=_env(receiver), process=True)
    costs = []
    try:
        for stream in (False, True):
            status, _body, headers = unix_exchange(
                daemon.socket_path, "POST", "/v1/chat/completions", orjson.dumps({
                    "model": "gpt-4o-mini", "stream": stream, "max_tokens": 7,
                    "messages": [{"role": "user", "content": "a long shared prefix"}]}),
                {"content-type": "application/json"})
            assert status == 200
            if not stream:
                costs.append(float(headers["x-llmspool-cost-usd"]))
        wait_for(lambda: len([s for s in receiver.spans if s.name == "chat gpt-4o-mini"]) == 2)
    finally:
        daemon.terminate()
    spans = [attributes_of(s) for s in receiver.spans if s.name == "chat gpt-4o-mini"]
    for span in spans:
        assert span["gen_ai.response.id"] == _STUB_ID
        assert span["gen_ai.response.model"] == _STUB_MODEL
        assert span["gen_ai.response.finish_reasons"] == ["length"]
        assert span["openai.response.service_tier"] == "default"
        assert span["gen_ai.usage.input_tokens"] == 2000
        assert span["gen_ai.usage.cache_read.input_tokens"] == 1536
        assert span["gen_ai.usage.output_tokens"] == 7
        # Cached input at its own price: 464 x 0.15 + 1536 x 0.075 + 7 x 0.60 per million.
        assert span["gen_ai.usage.cost.amount"] == pytest.approx(
            (464 * 0.15 + 1536 * 0.075 + 7 * 0.60) / 1e6)
    assert costs == [pytest.approx(spans[0]["gen_ai.usage.cost.amount"])]


# --- job submission ---------------------------------------------------------------------------


def test_job_submission_is_a_span_every_request_of_the_job_links_to(
    tmp_path: Path, sim: Sim, receiver: OtlpReceiver
) -> None:
    daemon = start_daemon(tmp_path, sim.url, env=_env(receiver), process=True)
    client_trace = "5b8efff798038103d269b633813fc60c"
    line = {"method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}
    try:
        # As `llmspool submit` sends it: no traceparent. A 5-minute deadline: sent directly.
        status, job = unix_request(daemon.socket_path, "POST", "/v1/jobs", orjson.dumps({
            "requests": [{**line, "custom_id": f"j{i}"} for i in range(2)],
            "deadline": "5m", "operation": "evals"}), {"content-type": "application/json"})
        assert status == 202, job
        # Through the Batch API, inside the caller's trace.
        client = openai_client(daemon.socket_path)
        upload = client.files.create(file=("in.jsonl", b"".join(
            orjson.dumps({**line, "custom_id": f"b{i}"}) + b"\n" for i in range(2))),
            purpose="batch")
        batch = client.batches.with_raw_response.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
            extra_headers={"x-llmspool-deadline": "5m",
                           "traceparent": f"00-{client_trace}-a3ce929d0e0e4736-01"})
        batch_job = batch.headers["x-llmspool-job-id"]
        for job_id in (job["id"], batch_job):
            unix_request(daemon.socket_path, "GET", f"/v1/jobs/{job_id}/results?wait=30")
        wait_for(lambda: len([s for s in receiver.spans if s.name == "chat gpt-4o-mini"]) == 4
                 and len([s for s in receiver.spans if s.name == "job submit"]) == 2)
    finally:
        daemon.terminate()
    submits = {attributes_of(s)["llmspool.job.id"]: s
               for s in receiver.spans if s.name == "job submit"}
    api_job, batch_api_job = submits[job["id"]], submits[batch_job]
    assert api_job.kind == api_job.SPAN_KIND_PRODUCER
    assert api_job.parent_span_id == b""  # a trace of its own, as the CLI sent no context
    assert batch_api_job.trace_id.hex() == client_trace
    assert batch_api_job.parent_span_id.hex() == "a3ce929d0e0e4736"
    submitted = attributes_of(api_job)
    assert submitted["llmspool.job.requests"] == 2
    assert submitted["llmspool.operation"] == "evals"
    assert submitted["gen_ai.request.model"] == "gpt-4o-mini"
    assert submitted["llmspool.job.plan"]
    # Each request: a trace of its own, linked to its job's submission span.
    linked: dict[bytes, int] = {}
    for call in (s for s in receiver.spans if s.name == "chat gpt-4o-mini"):
        [link] = call.links
        assert call.trace_id != link.trace_id
        linked[link.span_id] = linked.get(link.span_id, 0) + 1
    assert linked == {api_job.span_id: 2, batch_api_job.span_id: 2}
