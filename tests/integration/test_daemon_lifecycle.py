"""The daemon as an operator sees it: socket file and mode, a stale socket replaced, a second
daemon refused, SIGTERM draining requests in flight, SIGHUP reloading."""

from __future__ import annotations

import signal
import socket
import stat
import threading
from pathlib import Path

import orjson

from tests.support.processes import Sim, start_daemon, start_sim, unix_request
from tests.support.waiting import wait_for

GOOD = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
JSON = {"content-type": "application/json"}


def test_socket_mode_defaults_to_0660_and_is_configurable(tmp_path: Path, sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url, process=True)
    try:
        assert stat.S_IMODE(daemon.socket_path.stat().st_mode) == 0o660
    finally:
        assert daemon.terminate() == 0
    assert not daemon.socket_path.exists(), "the socket file is removed at exit"
    other = tmp_path / "other"
    other.mkdir()
    daemon = start_daemon(other, sim.url, config_toml='[daemon]\nsocket_mode = "0600"\n',
                          process=True)
    try:
        assert stat.S_IMODE(daemon.socket_path.stat().st_mode) == 0o600
    finally:
        daemon.terminate()


def test_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: Path, sim: Sim) -> None:
    # A socket file nobody listens on, as a daemon killed with SIGKILL leaves behind.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "d.sock"))
    stale.close()
    daemon = start_daemon(tmp_path, sim.url, process=True)
    try:
        second_dir = tmp_path / "second"
        second_dir.mkdir()
        second = start_daemon(second_dir, sim.url, wait=False,
                              env={"LLMSPOOL_SOCKET": str(daemon.socket_path)}, process=True)
        assert second.process.wait(30) == 1
        assert "another llmspool daemon is already serving" in second.log()
        assert unix_request(daemon.socket_path, "GET", "/healthz")[0] == 200
    finally:
        daemon.terminate()


def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, '[sim]\nlatency = "1500ms"\n')
    daemon = start_daemon(tmp_path, sim.url, process=True)
    results: list[tuple[int, object]] = []
    try:
        worker = threading.Thread(
            target=lambda: results.append(
                unix_request(daemon.socket_path, "POST", "/v1/chat/completions", GOOD, JSON)
            )
        )
        worker.start()
        # The request is now waiting on the slow upstream.
        wait_for(lambda: sim.stats()["requests"]["in_flight"] == 1, what="the call upstream")
        daemon.process.send_signal(signal.SIGTERM)
        worker.join(20)
        assert results and results[0][0] == 200, results
        assert daemon.process.wait(20) == 0
        assert not daemon.socket_path.exists()
        assert "finishing requests in flight" in daemon.log()
    finally:
        daemon.terminate()
        sim.terminate()


def test_sighup_reloads_and_a_bad_reload_keeps_the_running_config(
    tmp_path: Path, sim: Sim
) -> None:
    daemon = start_daemon(tmp_path, sim.url, process=True)
    try:
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded the log level and the price book" in daemon.log(),
                 what="the reload in the log")
        (tmp_path / "llmspool.toml").write_text("[daemon]\nlog_level = 'loud'\n")
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in daemon.log(), what="the refusal in the log")
        assert "daemon.log_level" in daemon.log()
        status, _body = unix_request(daemon.socket_path, "POST", "/v1/chat/completions", GOOD, JSON)
        assert status == 200
    finally:
        daemon.terminate()
