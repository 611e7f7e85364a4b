"""``OTEL_TRACES_EXPORTER`` and ``OTEL_METRICS_EXPORTER`` as an operator uses them: against a
traces-only backend (Arize Phoenix takes no metrics; here a real OTLP/HTTP receiver that
answers 404 to ``/v1/metrics``), ``OTEL_METRICS_EXPORTER=none`` means no metric export at all
and so no error in the daemon's log; ``console`` writes spans to the daemon's output."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.test_tracing import OtlpReceiver
from tests.support.processes import Daemon, Sim, openai_client, start_daemon
from tests.support.waiting import wait_for

FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "100"}


@pytest.fixture
def traces_only() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver(accept_metrics=False)
    try:
        yield server
    finally:
        server.close()


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _one_call_then_stop(daemon: Daemon, exported: Callable[[Daemon], object]) -> str:
    """One chat completion, a wait until ``exported(daemon)`` shows the exporters have run,
    a stop (which flushes whatever exporters there are); the daemon's log."""
    try:
        openai_client(daemon.socket_path).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        wait_for(lambda: exported(daemon), what="an export")
    finally:
        daemon.terminate()
    return daemon.log()


def _export_errors(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if "ERROR" in line or "Failed to export" in line or "Traceback" in line]


def _span_received(receiver: OtlpReceiver) -> Callable[[Daemon], bool]:
    return lambda _daemon: "chat gpt-4o-mini" in {span.name for span in receiver.spans}


def test_metrics_exporter_none_sends_no_metrics_and_logs_no_error(
    tmp_path: Path, sim: Sim, traces_only: OtlpReceiver
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": traces_only.endpoint, **FAST_EXPORT}
    # As things were: metrics go to a backend that refuses them, and each export fails.
    log = _one_call_then_stop(
        start_daemon(_folder(tmp_path / "default"), sim.url, env=env, process=True),
        lambda daemon: "/v1/metrics" in traces_only.paths and _export_errors(daemon.log()))
    assert "/v1/metrics" in traces_only.paths
    assert _export_errors(log)
    traces_only.paths.clear()
    traces_only.spans.clear()

    log = _one_call_then_stop(start_daemon(_folder(tmp_path / "none"), sim.url,
                                           env={**env, "OTEL_METRICS_EXPORTER": "none"},
                                           process=True), _span_received(traces_only))
    assert "/v1/metrics" not in traces_only.paths
    assert _export_errors(log) == []
    assert "chat gpt-4o-mini" in {span.name for span in traces_only.spans}  # traces still go


def test_a_traces_only_endpoint_gets_no_metrics(
    tmp_path: Path, sim: Sim, traces_only: OtlpReceiver
) -> None:
    """Only ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` named (Phoenix's setup): metrics have
    nowhere to go unless asked for, so none are exported (not to localhost:4318 either)."""
    log = _one_call_then_stop(start_daemon(tmp_path, sim.url, env={
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{traces_only.endpoint}/v1/traces",
        **FAST_EXPORT}, process=True), _span_received(traces_only))
    assert set(traces_only.paths) == {"/v1/traces"}
    assert _export_errors(log) == []


def test_traces_exporter_none_and_console(tmp_path: Path, sim: Sim) -> None:
    receiver = OtlpReceiver()
    try:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, **FAST_EXPORT}
        # none: metrics only.
        daemon = start_daemon(_folder(tmp_path / "none"), sim.url,
                              env={**env, "OTEL_TRACES_EXPORTER": "none"}, process=True)
        try:
            openai_client(daemon.socket_path).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
            wait_for(lambda: "gen_ai.client.operation.duration" in receiver.metric_names())
        finally:
            daemon.terminate()
        assert "/v1/traces" not in receiver.paths and receiver.spans == []
        # console (and no metrics): spans in the daemon's output, nothing sent anywhere.
        receiver.paths.clear()
        log = _one_call_then_stop(start_daemon(_folder(tmp_path / "console"), sim.url, env={
            **env, "OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none"},
            process=True), lambda daemon: '"name": "chat gpt-4o-mini"' in daemon.log())
        assert receiver.paths == []
        assert '"name": "chat gpt-4o-mini"' in log
        assert '"gen_ai.usage.cost.amount"' in log
    finally:
        receiver.close()
