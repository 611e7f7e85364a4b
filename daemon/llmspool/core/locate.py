"""Where a client finds the daemon's socket: the one rule the CLI and ``llmspool.client`` share.

It lives apart from both so that the client need not import the CLI (which imports its job
commands, which import the client), and so that a client told its socket loads nothing more.
"""

from __future__ import annotations

import os


def socket_path(explicit: str | None, config_path: str | None) -> str:
    """Where a client finds the daemon: ``explicit`` (a flag), then ``LLMSPOOL_SOCKET``, then the
    config's ``[daemon] socket`` (``config_path``, else ``LLMSPOOL_CONFIG``, else the default).

    Reading the config validates all of it, as the daemon would, so a broken config is reported
    here too (``ConfigError``) rather than sending the client to a socket it merely guessed.
    """
    if explicit:
        return explicit
    if os.environ.get("LLMSPOOL_SOCKET"):
        return os.environ["LLMSPOOL_SOCKET"]
    # Imported here: the config's shape takes every section's module (the simulator's among
    # them), which a client given its socket, by argument or environment, never needs.
    from llmspool.core.config_load import load_config

    return load_config(config_path).daemon.socket
