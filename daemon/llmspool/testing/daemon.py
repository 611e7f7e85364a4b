"""A real daemon inside the calling process: every actor, real SQLite, the front door on a real
Unix socket, run on an event loop in a thread of its own.

It starts in tens of milliseconds where a subprocess takes a second and a half (the
interpreter and every import), so behaviour tests can have a daemon each. What it is not: a
process. It takes no signals, changes nothing process-wide (umask, allocator, garbage
collector, systemd's socket), and is stopped with ``stop()`` as SIGTERM would stop it. Tests of
what only a process shows (kill -9, signals, exit codes, systemd, file modes from the umask)
start ``llmspool daemon`` instead.

Its log lines (its event loop and the worker threads it starts) are written to ``log_path``
as well as to the ``llmspool`` logger as usual.
"""

from __future__ import annotations

import contextvars
import http.client
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from anyio.from_thread import BlockingPortal, start_blocking_portal

from llmspool.app import Daemon
from llmspool.core.clock import SYSTEM_CLOCK, Clock
from llmspool.core.config.sections import Config
from llmspool.core.config_load import load_config
from llmspool.core.crashpoints import ENVIRONMENT_KEY as CRASH_POINTS
from llmspool.core.plugins import provider_config_keys

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

_RUNNING_DAEMON: contextvars.ContextVar[int] = contextvars.ContextVar("llmspool_test_daemon")
"""Which in-process daemon a log record comes from: set in the daemon's main task, inherited by
every task it starts and by the worker threads it runs code in (anyio copies the context)."""


class DaemonFailed(RuntimeError):
    """The in-process daemon ended with an error, or did not start or stop in time."""


@dataclass
class InProcessDaemon:
    """A daemon running in this process; ``stop()`` ends it as SIGTERM would."""

    daemon: Daemon
    socket_path: Path
    log_path: Path
    _portal: BlockingPortal
    _run: Future[None]

    @property
    def config(self) -> Config:
        return self.daemon.config

    @property
    def state_dir(self) -> Path:
        return self.daemon.config.state_path

    def running(self) -> bool:
        return not self._run.done()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop accepting, finish what is in flight within the grace, and wait for the end.
        Raises ``DaemonFailed`` if the daemon ended with an error or took longer than
        ``timeout``."""
        if self.running():
            self._portal.call(self.daemon.stop)
        self._wait(timeout)

    def _wait(self, timeout: float) -> None:
        try:
            self._run.result(timeout)
        except TimeoutError as exc:
            self._run.cancel()
            raise DaemonFailed(f"the daemon did not stop within {timeout}s:\n{self.log()}") \
                from exc
        except BaseException as exc:  # an actor's error, in the daemon's task group
            raise DaemonFailed(f"the daemon failed: {type(exc).__name__}: {exc}\n{self.log()}") \
                from exc


def load_config_with(plugins: Iterable[object], path: str | Path | None = None, *,
                     environ: Mapping[str, str] | None = None) -> Config:
    """The config at ``path`` (with ``environ``'s overrides), its ``[providers.NAME]`` tables
    checked against the kinds ``plugins`` register as well as the installed ones: how a config
    naming ``plugin = "fake"`` loads."""
    return load_config(path, environ=dict(environ or {}),
                       provider_keys=provider_config_keys(plugins))


@contextmanager
def running_daemon(
    config: Config,
    *,
    config_path: str | None = None,
    environ: Mapping[str, str] | None = None,
    plugins: Iterable[object] = (),
    log_path: Path | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Iterator[InProcessDaemon]:
    """A daemon built from ``config`` (its socket is ``config.daemon.socket``), serving until the
    block ends; ``plugins`` are pluggy plugins registered beside the installed ones (a fake
    provider, say). Its log goes to ``log_path`` (default: ``daemon.log`` in its state dir);
    ``clock`` is its calendar (a ``ManualClock`` lets the test move it).
    Crash points are refused: they SIGKILL the process they are in, which here is the caller's."""
    if (environ or {}).get(CRASH_POINTS):
        raise ValueError(f"{CRASH_POINTS} would kill this process with the daemon in it: start "
                         "`llmspool daemon` as a process of its own to use crash points")
    daemon = Daemon(config, config_path=config_path, environ=dict(environ or {}),
                    extra_plugins=plugins, owns_process=False, clock=clock)
    socket_path = Path(config.daemon.socket)
    log_file = log_path or config.state_path / "daemon.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    tag = id(daemon)
    with _log_to(log_file, tag, config.daemon.log_level), \
            start_blocking_portal(backend="asyncio") as portal:
        run = portal.start_task_soon(_run_tagged, daemon, tag)
        running = InProcessDaemon(daemon, socket_path, log_file, portal, run)
        try:
            _wait_until_healthy(running, START_TIMEOUT)
            yield running
        finally:
            if running.running():
                running.stop()


async def _run_tagged(daemon: Daemon, tag: int) -> None:
    _RUNNING_DAEMON.set(tag)
    await daemon.run()


def _wait_until_healthy(running: InProcessDaemon, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running.running():
            running._wait(0)
            raise DaemonFailed(f"the daemon ended while starting:\n{running.log()}")
        if running.socket_path.exists() and _healthy(running.socket_path):
            return
        time.sleep(0.005)
    raise DaemonFailed(f"the daemon did not answer within {timeout}s:\n{running.log()}")


def _healthy(path: Path) -> bool:
    connection = UnixHTTPConnection(path, timeout=5)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix socket: raw requests to a daemon, as no SDK would send."""

    def __init__(self, path: Path | str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class _FromDaemon(logging.Filter):
    def __init__(self, tag: int) -> None:
        super().__init__()
        self._tag = tag

    def filter(self, record: logging.LogRecord) -> bool:
        return _RUNNING_DAEMON.get(None) == self._tag


_LOG_LOCK = threading.Lock()  # guards the logger levels the running daemons share


@contextmanager
def _log_to(path: Path, tag: int, level: str) -> Iterator[None]:
    """Copy the records this daemon emits to ``path``, at its configured level."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_FromDaemon(tag))
    handler.setLevel(level.upper())
    # The daemon's own logger gets its configured level, as the command sets it; uvicorn's
    # keeps the level its server config gave it (a simulator in this process shares it).
    ours, uvicorn = logging.getLogger("llmspool"), logging.getLogger("uvicorn.error")
    with _LOG_LOCK:
        level_before = ours.level
        if ours.getEffectiveLevel() > handler.level:
            ours.setLevel(handler.level)
        ours.addHandler(handler)
        uvicorn.addHandler(handler)
    try:
        yield
    finally:
        with _LOG_LOCK:
            ours.removeHandler(handler)
            uvicorn.removeHandler(handler)
            ours.setLevel(level_before)
        handler.close()
