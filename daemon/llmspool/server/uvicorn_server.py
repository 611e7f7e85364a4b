"""uvicorn, embedded: our signal handling, the caller's identity in every request scope, and
bounds on what a connection may cost.

uvicorn normally installs its own SIGINT/SIGTERM handlers; the daemon handles signals itself
(it must drain actors after the server stops), so ``EmbeddedServer`` does not. The HTTP
protocol subclass reads the Unix socket's peer credentials (SO_PEERCRED: pid, uid, gid) once
per connection and puts them in ``scope["extensions"]["llmspool.peer"]``.

A connection is a file descriptor; a client that never finishes its request must not keep one:

- a request's head (request line and headers) must arrive within ``[daemon] header_timeout``
  from the connection's start or the request's first byte, else 408 and the connection closes;
- its headers are bounded in count and size (``max_headers``, ``max_header_size``): 431 beyond;
- an idle keep-alive connection closes after ``keepalive_timeout``;
- past ``max_connections`` open connections, the one that has waited longest for its head is
  closed to make room; if every one is busy with a request, the newcomer gets 503. The cap stays
  ``DESCRIPTOR_RESERVE`` below the process's file descriptors (``connection_cap``), so a flood
  never takes the descriptors that upstream calls and the database need.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import struct
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from llmspool.server.disconnect import DISCONNECT_KEY, DisconnectHooks
from llmspool.store.records import Caller

PEER_KEY = "llmspool.peer"
_UCRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one connection may take: seconds for a request's head, headers and their bytes."""

    header_timeout: float = 10.0
    max_headers: int = 100
    max_header_size: int = 64 * 1024
    max_connections: int = 4096


_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
_BUSY_503 = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
             b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s")
_TOO_LARGE_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                  b"content-type: application/json\r\nconnection: close\r\n"
                  b"content-length: %d\r\n\r\n%s")


def _error_body(message: str, code: str) -> bytes:
    return (b'{"error":{"message":"%s","type":"invalid_request_error","param":null,'
            b'"code":"%s"}}' % (message.encode(), code.encode()))


class _HeadTooLarge(Exception):
    """Raised in a parser callback: the request's head is over the limits."""


class PeerCredentialsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the peer's credentials in each request's scope, and
    the head limits above (``limits`` is set on a subclass by ``build_server``)."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    _peer: Caller = Caller()
    _head_timer: asyncio.TimerHandle | None = None
    _head_since = 0.0  # when the head being waited for started (loop time)
    _head_items = 0
    _head_bytes = 0
    _head_too_large = False
    _disconnect: DisconnectHooks | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._disconnect = DisconnectHooks()
        self._start_head_timer()
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            body = _error_body(f"llmspool has {self.limits.max_connections} connections "
                               "open ([daemon] max_connections); try again shortly",
                               "too_many_connections")
            transport.write(_BUSY_503 % (len(body), body))
            transport.close()
            return
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
        cast(dict[str, Any], self.scope)["extensions"] = {PEER_KEY: self._peer,
                                                          DISCONNECT_KEY: self._disconnect}
        self._head_items = self._head_bytes = 0
        if self._head_timer is None:  # a kept-alive connection's next request
            self._start_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url), items=0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value), items=1)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)
        if self._disconnect is not None:
            self._disconnect.connection_lost()

    def send_400_response(self, msg: str) -> None:
        if not self._head_too_large:
            super().send_400_response(msg)
            return
        limits = self.limits
        body = _error_body(f"the request's headers are over the limit ({limits.max_headers} "
                           f"headers, {limits.max_header_size} bytes with the URL)",
                           "headers_too_large")
        self.transport.write(_TOO_LARGE_431 % (len(body), body))
        self.transport.close()

    def _make_room(self) -> bool:
        """At the cap, close the connection that has waited longest for its request's head
        (a slow or stalled client) so that this one is served; False if every other is busy
        with a request."""
        stalled = [c for c in self.connections
                   if isinstance(c, PeerCredentialsProtocol) and c is not self
                   and c._head_timer is not None]
        if not stalled:
            return False
        min(stalled, key=lambda c: c._head_since)._head_too_slow()
        return True

    def _count_head(self, size: int, *, items: int) -> None:
        self._head_items += items
        self._head_bytes += size
        if self._head_items > self.limits.max_headers or \
                self._head_bytes > self.limits.max_header_size:
            self._head_too_large = True
            raise _HeadTooLarge  # httptools turns it into a parser error: answered 431

    def _start_head_timer(self) -> None:
        self._head_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        """The head did not arrive in time (or room is needed): answer 408 and close."""
        self._stop_head_timer()
        if self.transport.is_closing():
            return
        body = _error_body(f"the request's headers did not arrive within "
                           f"{self.limits.header_timeout:g} s", "request_timeout")
        self.transport.write(_TIMEOUT_408 % (len(body), body))
        self.transport.close()


STOP_CHECK_SECONDS = 1.0
"""How often the server looks at ``should_exit`` set by something other than ``stop``."""


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the daemon, and that an idle daemon
    does not wake ten times a second.

    uvicorn's own main loop ticks every 0.1 s, to refresh the Date and Server headers (which
    the daemon does not send), check a request limit (which it does not set) and see whether
    ``should_exit`` was set: ten wake-ups a second, 2 ms of CPU a second on an idle daemon
    here. This one waits for ``stop``, and looks at ``should_exit`` once a second as well.
    """

    _stopped: asyncio.Event | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def stop(self) -> None:
        """Stop accepting and let the requests in flight finish (uvicorn's graceful stop).
        From the server's own event loop."""
        self.should_exit = True
        if self._stopped is not None:
            self._stopped.set()

    async def main_loop(self) -> None:
        self._stopped = asyncio.Event()
        while not self.should_exit:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), STOP_CHECK_SECONDS)


def build_server(app: Any, *, graceful_shutdown: float,
                 limits: ConnectionLimits | None = None,
                 keepalive_timeout: float = 30.0) -> EmbeddedServer:
    protocol = type("LimitedProtocol", (PeerCredentialsProtocol,),
                    {"limits": limits or ConnectionLimits()})
    config = uvicorn.Config(
        app,
        http=protocol,
        lifespan="off",
        access_log=False,
        log_config=None,
        # Calls still waiting at the grace's end are answered 503 by the forwarder; uvicorn
        # cuts what is left (a stream mid-way) a little later.
        timeout_graceful_shutdown=max(1, round(graceful_shutdown + 2)),
        timeout_keep_alive=max(1, round(keepalive_timeout)),
        backlog=2048,
        server_header=False,
        date_header=False,
        # X-Forwarded-* would be trusted only from 127.0.0.1; a Unix socket's peer has no
        # address, so the middleware only cost each request a pass (py-spy: ~0.5% of CPU).
        proxy_headers=False,
    )
    return EmbeddedServer(config)


DESCRIPTOR_RESERVE = 512  # kept for the database, upstream connections, logs and /healthz


def connection_cap(wanted: int) -> int:
    """The connections the daemon serves at once: ``wanted``, within the process's file
    descriptors (its soft limit raised to the hard one first) less ``DESCRIPTOR_RESERVE``, so
    that a flood of connections never takes the descriptors upstream calls need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return max(16, min(wanted, soft - DESCRIPTOR_RESERVE))


def caller_of(scope: Any) -> Caller:
    extensions = scope.get("extensions") or {}
    peer = extensions.get(PEER_KEY)
    return peer if isinstance(peer, Caller) else Caller()
