"""Test doubles that ship with llmspool, for its own tests and for plugin authors.

- ``running_daemon(config)``: a real daemon (every actor, real SQLite, the front door on a real
  Unix socket) inside the calling process, started in milliseconds and stopped as SIGTERM
  stops it; ``llmspool.testing.daemon`` says what it does not do that a process does.
- ``running_sim(config)``: the upstream simulator (``llmspool sim``) in a thread, on 127.0.0.1.
- ``load_config_with(plugins, path)``: a config that may name the kinds ``plugins`` register.
- ``UnixHTTPConnection``: ``http.client`` over the daemon's socket, for raw requests.
- ``ManualClock``: a clock the test jumps forward (``running_daemon(config, clock=...)``), so a
  deadline hours away, the next budget day or a batch's 24 hours come at once.
- ``FakeUpstream`` and ``fake_provider_plugin``: a provider kind ``fake`` answering in memory
  (chat, embeddings, streams, errors on cue, a Batch API that ends on cue);
  ``running_with_fake(directory, upstream, config_toml)`` runs a daemon whose ``openai``
  provider is that fake.
"""

from llmspool.testing.clock import ManualClock
from llmspool.testing.daemon import (
    DaemonFailed,
    InProcessDaemon,
    UnixHTTPConnection,
    load_config_with,
    running_daemon,
)
from llmspool.testing.provider import (
    FakeProvider,
    FakeUpstream,
    fake_provider_plugin,
    running_with_fake,
)
from llmspool.testing.sim import InProcessSim, SimFailed, running_sim

__all__ = [
    "DaemonFailed",
    "FakeProvider",
    "FakeUpstream",
    "InProcessDaemon",
    "ManualClock",
    "InProcessSim",
    "SimFailed",
    "UnixHTTPConnection",
    "fake_provider_plugin",
    "load_config_with",
    "running_daemon",
    "running_sim",
    "running_with_fake",
]
