"""``llmspool sim`` inside the calling process: the same app and uvicorn settings as the command,
served on 127.0.0.1 from a thread of its own, so a test gets an upstream in milliseconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from llmspool.sim.app import SimApp, build_app
from llmspool.sim.cli import SimServer, listen, server_config
from llmspool.sim.config import SimConfig

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


class SimFailed(RuntimeError):
    """The in-process simulator did not start or stop in time."""


@dataclass(frozen=True)
class InProcessSim:
    app: SimApp
    url: str  # ends in /v1

    @property
    def base(self) -> str:
        return self.url.removesuffix("/v1")


@contextmanager
def running_sim(config: SimConfig | None = None) -> Iterator[InProcessSim]:
    """The simulator with ``config`` (default: its defaults), serving until the block ends."""
    app = build_app(config or SimConfig.from_table({}))
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = SimServer(server_config(app), announcement=None, on_stop=app.stop)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"llmspool-sim-{port}", daemon=True)
    with sock:
        thread.start()
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise SimFailed("the simulator did not start")
                time.sleep(0.002)
            yield InProcessSim(app, f"http://127.0.0.1:{port}/v1")
        finally:
            server.should_exit = True
            thread.join(STOP_TIMEOUT)
            if thread.is_alive():
                raise SimFailed(f"the simulator did not stop within {STOP_TIMEOUT}s")
