"""uvicorn, embedded: our signal handling, and the caller's identity in every request scope.

uvicorn normally installs its own SIGINT/SIGTERM handlers; the daemon handles signals itself
(it must drain actors after the server stops), so ``EmbeddedServer`` does not. The HTTP
protocol subclass reads the Unix socket's peer credentials (SO_PEERCRED: pid, uid, gid) once
per connection and puts them in ``scope["extensions"]["llmspool.peer"]``.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Generator
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from llmspool.messages import Caller

PEER_KEY = "llmspool.peer"
_UCRED = struct.Struct("3i")


class PeerCredentialsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the peer's credentials in each request's scope."""

    _peer: Caller = Caller()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            try:
                raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
                pid, uid, gid = _UCRED.unpack(raw)
                self._peer = Caller(pid=pid, uid=uid, gid=gid)
            except OSError:
                pass

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # ASGI's scope type declares extensions as dict[str, dict]; ours holds a Caller.
        cast(dict[str, Any], self.scope)["extensions"] = {PEER_KEY: self._peer}


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the daemon."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def build_server(app: Any, *, graceful_shutdown: float) -> EmbeddedServer:
    config = uvicorn.Config(
        app,
        http=PeerCredentialsProtocol,
        lifespan="off",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=max(1, round(graceful_shutdown)),
        timeout_keep_alive=30,
        backlog=2048,
        server_header=False,
        date_header=False,
    )
    return EmbeddedServer(config)


def caller_of(scope: Any) -> Caller:
    extensions = scope.get("extensions") or {}
    peer = extensions.get(PEER_KEY)
    return peer if isinstance(peer, Caller) else Caller()
