"""The dispatcher's workers: a burst of calls is served at once, each on a worker, and the
burst's workers go once later calls show the dispatcher no longer needs them (not before)."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import orjson
import pytest
from llmspool.actors import dispatcher

from tests.integration.test_bad_input import dispatcher_status
from tests.support.processes import UNLIMITED_SIM, Daemon, start_daemon, start_sim, unix_request
from tests.support.waiting import wait_for

BURST = 60
LATENCY = 0.2  # seconds the sim takes over each answer
LATER = 4  # calls at a time after the burst


def chat(daemon: Daemon) -> int:
    body = orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 5,
                         "messages": [{"role": "user", "content": "Hello"}]})
    status, _answer = unix_request(daemon.socket_path, "POST", "/v1/chat/completions", body,
                                   {"content-type": "application/json"})
    return status


def burst(daemon: Daemon, calls: int, at_a_time: int) -> None:
    with concurrent.futures.ThreadPoolExecutor(at_a_time) as pool:
        statuses = list(pool.map(lambda _n: chat(daemon), range(calls)))
    assert statuses == [200] * calls
    wait_for(lambda: dispatcher_status(daemon)["in_flight"] == 0, what="no call in flight")


@pytest.mark.parametrize("window", [0.0, dispatcher.BUSIEST_WINDOW])
def test_a_burst_is_served_at_once_and_its_workers_go_only_once_not_needed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: float) -> None:
    # The daemon runs inside this process: the window it remembers its busiest moment for.
    monkeypatch.setattr(dispatcher, "BUSIEST_WINDOW", window)
    sim = start_sim(tmp_path, UNLIMITED_SIM + f'latency = "{int(LATENCY * 1000)}ms"\n')
    daemon = start_daemon(tmp_path, sim.url)
    try:
        assert dispatcher_status(daemon)["workers"] == 1  # one waits for the first call
        started = time.monotonic()
        burst(daemon, BURST, at_a_time=BURST)
        took = time.monotonic() - started
        after_burst = dispatcher_status(daemon)["workers"]
        # Served side by side, each on a worker of its own (one after the other: 12 s).
        assert took < BURST * LATENCY / 2, took
        burst(daemon, BURST, at_a_time=LATER)
        workers = dispatcher_status(daemon)["workers"]
        if window:
            # Within the window the burst was its busiest moment: its workers stay, so that
            # calls ending in waves under load do not end workers the next wave needs. (On a
            # loaded machine the burst's threads may start late, so not all 60 overlap.)
            assert after_burst > BURST // 2, after_burst
            assert workers == after_burst
        else:
            # Each call after the burst let one worker go, down to the spares.
            assert workers <= LATER + dispatcher.SPARE_WORKERS + 1, workers
    finally:
        daemon.terminate()
        sim.terminate()
