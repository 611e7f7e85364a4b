"""``llmspool top`` as its users meet it: the real command, run as a subprocess against a real
daemon in front of ``llmspool sim``, once printing a frame (``--once``) and once in a real
terminal (a pty) quitting on ``q``; and with no daemon, saying so."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import termios
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.money import QUICK_BATCHES
from tests.support.processes import (
    Daemon,
    Sim,
    python_command,
    start_daemon,
    start_sim,
    unix_exchange,
    unix_request,
)
from tests.support.waiting import wait_for

MODEL = "gpt-4o-mini"
JOB_MODEL = "gpt-4.1-mini"
DAILY_CAP = "[budgets]\ndaily_usd = 5.0\n"
QUIT_WITHIN = 5.0  # seconds `top` may take to leave after `q`


@dataclass(frozen=True)
class Running:
    sim: Sim
    daemon: Daemon
    job_id: str


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A daemon with a daily cap that has answered a few calls (one of them from the cache)
    and holds a job of five lines in a batch the simulator keeps open for an hour."""
    tmp_path = tmp_path_factory.mktemp("top")
    sim = start_sim(tmp_path, '[sim.batch]\nturnaround = "1h"\n')
    try:
        daemon = start_daemon(tmp_path, sim.url, config_toml=QUICK_BATCHES + DAILY_CAP)
        try:
            for text in ("one", "two"):
                status, answer, _headers = chat(daemon, text)
                assert status == 200, answer
            # The cache writes behind: once it has both, "one" again is a hit.
            wait_for(lambda: daemon.get("/v1/status")[1]["cache"]["entries"] == 2,
                     timeout=10, what="two cache entries")
            status, answer, headers = chat(daemon, "one")
            assert headers.get("x-llmspool-cache") == "hit", answer
            job = submit_job(daemon, lines=5)
            # Created as "validating"; the poller's first look finds it "in_progress".
            wait_for(lambda: open_batch_states(daemon) == ["in_progress"], timeout=20,
                     what="the job's batch open upstream and polled")
            yield Running(sim, daemon, job["id"])
        finally:
            daemon.terminate()
    finally:
        sim.terminate()


def chat(daemon: Daemon, text: str) -> tuple[int, Any, dict[str, str]]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 8,
            "temperature": 0}
    return unix_exchange(daemon.socket_path, "POST", "/v1/chat/completions",
                         orjson.dumps(body), {"content-type": "application/json"})


def submit_job(daemon: Daemon, lines: int) -> dict[str, Any]:
    body = b"".join(orjson.dumps({
        "custom_id": f"line-{number}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": JOB_MODEL, "messages": [{"role": "user", "content": f"n{number}"}],
                 "max_tokens": 8},
    }) + b"\n" for number in range(lines))
    status, job = unix_request(daemon.socket_path, "POST", "/v1/jobs?deadline=24h", body,
                               {"content-type": "application/jsonl"})
    assert status == 202, job
    return job  # type: ignore[no-any-return]


def open_batch_states(daemon: Daemon) -> list[str]:
    """The provider's status of each batch the daemon has open, as it last polled them."""
    _status, report = daemon.get("/v1/status")
    return [batch["provider_status"] for batch in report["batches"]["open"]]


def top(daemon: Daemon | None, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    environment = {**(daemon.env if daemon else os.environ), **(env or {})}
    completed = subprocess.run(python_command("top", *args), env=environment,
                               capture_output=True, timeout=60)
    return subprocess.CompletedProcess(completed.args, completed.returncode,
                                       completed.stdout.decode(), completed.stderr.decode())


def row(text: str, *cells: str) -> bool:
    """Whether a line of ``text`` holds ``cells`` in order, separated only by space and rules
    (a table row as the user reads it)."""
    pattern = r"[\s│┃|]+".join(re.escape(cell) for cell in cells)
    return re.search(rf"(^|[\s│┃|]){pattern}($|[\s│┃|])", text, re.MULTILINE) is not None


def test_once_prints_the_daemons_figures_and_the_callers_own(running: Running) -> None:
    daemon = running.daemon
    _status, report = daemon.get("/v1/status")
    ledger = report["ledger"]
    shown = top(daemon, "--once")
    assert shown.returncode == 0, shown.stderr
    frame = shown.stdout
    assert "q quits" not in frame  # nothing to press in a one-off frame
    # Calls by tier: two calls went upstream on standard (the third was the cache's), and the
    # caller's ledger has all three today.
    assert row(frame, "standard", "0", "2", "2"), frame
    assert row(frame, "cache", "0", "0", "1"), frame
    # Queue depth, and the job's five lines are in the batch, not waiting.
    assert row(frame, "queue: waiting", "0"), frame
    # Spend today against the cap, as the daemon counts it.
    spend = ledger["spend_today_usd"]
    assert spend > 0
    assert re.search(r"spend today\s+\$0\.0+\d", frame), frame
    assert row(frame, "[budgets] daily_usd"), frame
    assert "of $5.00" in frame
    # The model mix of the caller's calls: one model, all of them.
    assert row(frame, MODEL, "3", "100%"), frame
    # Savings by source: the cache hit saved what a call costs.
    assert re.search(r"saved by source[\s│]+cache\s+\$0\.0+[1-9]", frame), frame
    # The cache's hit rate: one hit, two misses.
    assert row(frame, "hit rate", "33.3%"), frame
    assert row(frame, "hits / misses", "1 / 2"), frame
    # The job in progress, and its open batch with time to its deadline.
    assert row(frame, running.job_id, "0/5"), frame
    assert row(frame, JOB_MODEL, "in_progress"), frame
    assert re.search(r"batches: 1 open", frame), frame
    # Breakers: the standard tier's, closed.
    assert row(frame, "openai", "standard", "closed"), frame


def test_a_call_in_flight_shows_on_its_tier(running: Running) -> None:
    daemon = running.daemon
    # The simulator holds the next call until its client leaves; the caller's connection is
    # closed once the frame is printed, which cancels the call.
    running.sim.set_faults({"kind": "hang", "count": 1})
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hang"}]})
    with socket.socket(socket.AF_UNIX) as caller:
        caller.connect(str(daemon.socket_path))
        caller.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: llmspool\r\n"
                       b"content-type: application/json\r\ncontent-length: "
                       + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_for(lambda: daemon.get("/v1/status")[1]["dispatcher"]["in_flight_by_tier"]
                 == {"standard": 1}, timeout=10, what="the call in flight on standard")
        frame = top(daemon, "--once").stdout
    assert row(frame, "standard", "1", "2"), frame
    assert row(frame, "all", "1"), frame


def test_top_in_a_terminal_shows_the_daemon_and_quits_on_q(running: Running) -> None:
    with Terminal(running.daemon, "--interval", "0.2") as terminal:
        assert terminal.mode()[3] & termios.ICANON  # the usual (canonical) mode at first
        terminal.wait_for(lambda seen: b"q quits" in seen and MODEL.encode() in seen
                          and b"daily_usd" in seen)
        assert ENTER_ALTERNATE_SCREEN in terminal.seen()  # a full-screen view
        assert not terminal.mode()[3] & termios.ICANON  # cbreak: a key counts at once
        # It refreshes: each frame is drawn whole, header first.
        terminal.wait_for(lambda seen: seen.count(b"q quits") >= 3)
        quit_at = len(terminal.seen())
        terminal.type(b"q")
        assert terminal.process.wait(QUIT_WITHIN) == 0
        terminal.wait_for(lambda seen: LEAVE_ALTERNATE_SCREEN in seen[quit_at:])
        assert terminal.mode() == terminal.before  # the terminal as it was


def test_ctrl_c_leaves_top_and_restores_the_terminal(running: Running) -> None:
    with Terminal(running.daemon) as terminal:
        terminal.wait_for(lambda seen: b"q quits" in seen)
        quit_at = len(terminal.seen())
        terminal.type(b"\x03")  # Ctrl-C, as the terminal sends it: SIGINT to top
        assert terminal.process.wait(QUIT_WITHIN) == 0
        terminal.wait_for(lambda seen: LEAVE_ALTERNATE_SCREEN in seen[quit_at:])
        assert b"Traceback" not in terminal.seen()
        assert terminal.mode() == terminal.before


def test_with_no_daemon_it_says_so_and_exits_1(tmp_path: Path) -> None:
    for args in (("--once",), ()):
        shown = top(None, *args, env={"LLMSPOOL_SOCKET": str(tmp_path / "none.sock")})
        assert shown.returncode == 1
        assert "cannot reach the daemon" in shown.stderr
        assert "is it running?" in shown.stderr
        assert shown.stdout == ""


ENTER_ALTERNATE_SCREEN = b"\x1b[?1049h"
LEAVE_ALTERNATE_SCREEN = b"\x1b[?1049l"


TAKE_THE_TERMINAL = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                     "os.execv(sys.argv[1], sys.argv[1:])")


class Terminal:
    """``llmspool top ARGS`` in a terminal of its own: a pty of 60 rows and 160 columns, its
    controlling terminal (so that Ctrl-C there is SIGINT to it). A thread reads everything
    it shows, as a terminal emulator would, so that it never blocks writing."""

    def __init__(self, daemon: Daemon, *args: str) -> None:
        self._leader, self._follower = os.openpty()
        termios.tcsetwinsize(self._follower, (60, 160))
        self.before = self.mode()
        self._seen = bytearray()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        # A new session (start_new_session) whose first act is to take the pty as its
        # controlling terminal, then become `llmspool top` (preexec_fn is not safe here: the
        # daemon's threads run in this process).
        self.process = subprocess.Popen(
            [sys.executable, "-c", TAKE_THE_TERMINAL, *python_command("top", *args)],
            env={**daemon.env, "TERM": "xterm-256color"},
            stdin=self._follower, stdout=self._follower, stderr=self._follower,
            start_new_session=True)
        self._reader.start()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self._follower)  # the reader then sees the end (EIO) and stops
        self._reader.join(5)
        os.close(self._leader)

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._leader, 65536)
            except OSError:  # EIO: no process holds the terminal any more
                chunk = b""
            with self._changed:
                self._seen += chunk
                self._changed.notify_all()
            if not chunk:
                return

    def mode(self) -> list[Any]:
        return termios.tcgetattr(self._follower)

    def type(self, keys: bytes) -> None:
        os.write(self._leader, keys)

    def seen(self) -> bytes:
        with self._changed:
            return bytes(self._seen)

    def wait_for(self, done: Callable[[bytes], bool], timeout: float = 20.0) -> None:
        """Until ``done(everything shown so far)``; fails with the end of it by ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(lambda: done(bytes(self._seen)), timeout):
                raise AssertionError(f"not shown in {timeout}s: {bytes(self._seen)[-3000:]!r}")
