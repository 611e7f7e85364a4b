"""Test doubles that ship with llmspool, for its own tests and for plugin authors.

- ``running_daemon(config)``: a real daemon (every actor, real SQLite, the front door on a real
  Unix socket) inside the calling process, started in milliseconds and stopped as SIGTERM
  stops it; ``llmspool.testing.daemon`` says what it does not do that a process does.
- ``running_sim(config)``: the upstream simulator (``llmspool sim``) in a thread, on 127.0.0.1.
- ``UnixHTTPConnection``: ``http.client`` over the daemon's socket, for raw requests.
"""

from llmspool.testing.daemon import (
    DaemonFailed,
    InProcessDaemon,
    UnixHTTPConnection,
    running_daemon,
)
from llmspool.testing.sim import InProcessSim, SimFailed, running_sim

__all__ = [
    "DaemonFailed",
    "InProcessDaemon",
    "InProcessSim",
    "SimFailed",
    "UnixHTTPConnection",
    "running_daemon",
    "running_sim",
]
