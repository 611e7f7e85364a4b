"""Telling a request that its client went away, without a task per request to watch for it.

ASGI's only way to see a client leave is to wait on ``receive()`` for ``http.disconnect``, which
takes a task per request (and a task group, and a cancel scope): measured, about a tenth of the
daemon's CPU per call under load. The connection's protocol knows at once when it is lost, so
the daemon's uvicorn protocol (``uvicorn_server.PeerCredentialsProtocol``) gives each request's
scope the connection's ``DisconnectHooks`` under ``DISCONNECT_KEY``, and calls them from
``connection_lost``. A handler registers what to do for as long as it waits; an ASGI server
without the hooks (a test calling the app in process) falls back to watching ``receive()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

DISCONNECT_KEY = "llmspool.on_disconnect"


class DisconnectHooks:
    """Callbacks to run once if the connection is lost; plain calls on the event loop."""

    __slots__ = ("_callbacks", "lost")

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], None]] = []
        self.lost = False

    @contextlib.contextmanager
    def watching(self, callback: Callable[[], None]) -> Iterator[None]:
        """Run ``callback`` if the connection is lost while the block runs (at once if it is
        lost already)."""
        if self.lost:
            callback()
        self._callbacks.append(callback)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

    def connection_lost(self) -> None:
        self.lost = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()
