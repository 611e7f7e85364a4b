"""A clean stop: on SIGTERM, calls still waiting when ``[daemon] shutdown_grace`` runs out are
answered 503 ``daemon_stopping`` with ``retry-after`` (their upstream calls stopped), deferred
work in flight stays queued and is sent again at the next start, nothing reaches the log as a
traceback, the stop takes the grace and a few seconds, and the exit status is 0."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from tests.integration.test_batches import results
from tests.support.processes import Sim, start_daemon, unix_exchange, unix_request
from tests.support.waiting import wait_for

BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
LINE = orjson.dumps({"custom_id": "kept", "method": "POST", "url": "/v1/chat/completions",
                     "body": orjson.loads(BODY)}) + b"\n"
GRACE = '[daemon]\nshutdown_grace = "2s"\n'


def test_calls_past_the_grace_get_503_and_the_daemon_exits_0(tmp_path: Path, sim: Sim) -> None:
    sim.set_faults({"kind": "hang"})  # every call hangs until the daemon gives up on it
    daemon = start_daemon(tmp_path, sim.url, config_toml=GRACE, process=True)
    status, job = unix_request(daemon.socket_path, "POST", "/v1/jobs?deadline=12m", LINE,
                               {"content-type": "application/jsonl"})
    assert status == 202, job
    answers: list[tuple[int, Any, dict[str, str]]] = []

    def call() -> None:
        answers.append(unix_exchange(daemon.socket_path, "POST", "/v1/chat/completions", BODY,
                                     {"content-type": "application/json"}))

    callers = [threading.Thread(target=call) for _ in range(4)]
    for caller in callers:
        caller.start()
    # The four calls and the job's request all hang at the upstream.
    wait_for(lambda: sim.stats()["requests"]["in_flight"] >= 5, what="five calls upstream")
    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    code = daemon.process.wait(30)
    took = time.monotonic() - started
    for caller in callers:
        caller.join(10)
    assert code == 0
    assert took < 2 + 6, f"the stop took {took:.1f} s with a grace of 2 s"
    assert [status for status, _body, _headers in answers] == [503] * 4
    for _status, body, headers in answers:
        assert body["error"]["code"] == "daemon_stopping" and "retry-after" in headers
    log = daemon.log()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]

    # The job's request was in flight: it is still queued, and the next start sends it.
    sim.clear_faults()
    again = start_daemon(tmp_path, sim.url, config_toml=GRACE, process=True)
    try:
        [line] = results(again, job["id"])
        assert line["custom_id"] == "kept" and line["response"]["status_code"] == 200
    finally:
        again.terminate()
