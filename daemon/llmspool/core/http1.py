"""The data plane's HTTP/1.1 client: a keep-alive connection pool per provider, parsed by httptools.

Why not aiohttp, which forwarded the data plane before: under load aiohttp was about a fifth
of the daemon's profile, for machinery a forwarder never uses (cookies, redirects, proxies,
multipart, request and response objects built field by field). This client writes a call's
head and body in one ``write`` and parses the answer with httptools, the C parser uvicorn
already uses on the daemon's own socket. Measured side by side (h2load at c=64, old and new
daemons interleaved): the daemon's CPU per call fell by about a tenth for the OpenAI plugin and
a quarter for the Anthropic one (``tests/bench/bench_money.py --baseline`` shows the req/s).

What it does:

- ``http://`` and ``https://`` (the system's certificates; ``SSL_CERT_FILE`` is honoured);
- keep-alive: a connection is reused when its last answer was read to the end and the server
  did not ask to close it; one the server closed, or idle past ``keepalive_timeout``, is never
  reused;
- at most ``max_connections`` open at once; a call past that waits for one, in turn;
- bodies delimited by length, by chunks or by the connection's end, and ``gzip`` or
  ``deflate`` answers decoded (the client asks for neither);
- a stream's reader that falls behind pauses reading from the socket (back-pressure);
- an answer not read to its end (the client left mid-stream, the call was cancelled or timed
  out) closes its connection rather than return a half-read one to the pool.

What it does not: proxies (the aiohttp session did not read the proxy environment either),
redirects, HTTP/2, and retries. A POST is never repeated on a fresh connection here: the daemon's
retry policy decides whether a call is sent again.

Errors: ``ConnectTimeout`` (no connection within ``connect_timeout``), ``OSError`` from
connecting, and ``ConnectionError`` (``UpstreamProtocolError`` for an answer that is not
HTTP/1.1) for a connection lost or broken before its answer ended; ``IdleConnectionClosed``
when that connection had already carried a request and not a byte of this one's answer came.
``llmspool.core.http_pool.unreachable`` maps each to the daemon's 502 or 504.

A kept-alive connection can be closed by the server, its idle timeout run out, just as a
request goes out on it: the server never reads the request, and its close reaches us before any
answer. The pool cannot tell the close from a crash of the server after reading, so it does not
send the request again itself; ``IdleConnectionClosed`` says what most likely happened, and the
retry policy sends it again at once (``resilience.failures``: it is not the provider failing).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import cast
from urllib.parse import urlsplit

import anyio
import httptools

from llmspool.core.connection_stats import ConnectionCounter

__all__ = ["ConnectTimeout", "Http1Pool", "Http1Response", "IdleConnectionClosed",
           "LowercaseHeaders", "UpstreamProtocolError"]

# Bytes of an answer buffered unread before the socket is paused; a read takes them all
# and resumes it.
_HIGH_WATER = 256 * 1024


class ConnectTimeout(TimeoutError):
    """No connection to the server within the pool's connect timeout."""


class UpstreamProtocolError(ConnectionError):
    """The server's answer is not valid HTTP/1.1."""


class LowercaseHeaders(dict[str, str]):
    """An answer's headers, every name lower-cased (of a repeated one, the first value): what
    reads them can skip lower-casing them again (``resilience.ratelimit_headers``)."""


class IdleConnectionClosed(ConnectionError):
    """The server closed a kept-alive connection as a request went out on it, before a byte of
    the answer: most likely its idle timeout ran out as the connection was reused."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the exchange on it: the request sent, the answer parsed
    as it arrives (httptools calls the ``on_*`` methods from ``feed_data``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: Http1Pool) -> None:
        self._loop = loop
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self.lost = False
        self.discarded = False  # closed and no longer counted by the pool
        self.idle_timer: asyncio.TimerHandle | None = None
        self.status = 0
        self.headers = LowercaseHeaders()
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self._exchanging = False
        self._informational = False
        self._head_done = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: zlib._Decompress | None = None
        self._framed = False  # the body's end is given by a length or by chunks
        self.exchanges = 0  # requests sent on this connection, this one included
        self._answered = False  # a byte of this exchange's answer has come

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._answered = True
        if not self._exchanging or self.complete:
            # Bytes nobody asked for: the connection cannot be trusted.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"the server's answer is not valid HTTP/1.1 ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._exchanging and not self.complete:
            if self._head_done and not self._framed and self.error is None:
                self._finish()  # a body delimited by the connection's end has ended
            elif not self._answered and self.exchanges > 1:
                self._fail(IdleConnectionClosed(
                    "the server closed a kept-alive connection as the request went out on it, "
                    "before answering (its idle timeout ran out, most likely)"))
            else:
                cause = f" ({exc})" if exc is not None else ""
                where = "in the middle of its answer" if self._head_done else "before answering"
                self._fail(ConnectionError(f"the server closed the connection {where}{cause}"))
        self._pool.lost(self)

    # httptools' callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        # Lower-case names; of a repeated header the first value is kept, as aiohttp's get() did.
        self.headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue and friends: the real answer follows
            self._informational = True
            self.headers = LowercaseHeaders()
            return
        self.status = status
        headers = self.headers
        self._framed = "content-length" in headers or "chunked" in headers.get(
            "transfer-encoding", "").lower() or status in (204, 304)
        encoding = headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(47)  # 32 + 15: a gzip or zlib header, either
        self._head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error as exc:
                self._fail(UpstreamProtocolError(f"the server's compressed answer is corrupt "
                                                 f"({exc})"))
                self.close()
                return
        if not body:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.keep_alive = self._parser.should_keep_alive()
        self._finish()

    # The exchange, for the pool and the response

    def send(self, data: bytes) -> None:
        """Start an exchange: ``data`` is the whole request."""
        self.status = 0
        self.headers = LowercaseHeaders()
        self.complete = self.keep_alive = self._head_done = self._framed = False
        self.error = None
        self._decoder = None
        self._exchanging = True
        self.exchanges += 1
        self._answered = False
        assert self._transport is not None
        self._transport.write(data)

    async def head(self) -> None:
        """Wait for the answer's status line and headers."""
        while not self._head_done and self.error is None:
            await self._wait()
        if self.error is not None:
            raise self.error

    async def read_chunk(self) -> bytes | None:
        """All of the body that has arrived and was not yet read, waiting for more when none
        has; ``None`` at its end.

        All of it, not one piece: one read from the socket can hold many (a chunked answer's
        chunks, each a stream's event). Handed one at a time without waiting, the relay
        passed every one to the front door, each with its own timer and message, before the
        front door could write the first: an instant upstream's 18-event stream reached its
        client in one burst, its first event as late as its last."""
        while True:
            if self._chunks:
                chunks = self._chunks
                chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                if self._paused and self._transport is not None:
                    self._paused = False
                    self._transport.resume_reading()
                return chunk
            if self.error is not None:
                raise self.error
            if self.complete:
                return None
            await self._wait()

    async def read_all(self) -> bytes:
        """The whole body."""
        while not self.complete and self.error is None:
            if self._paused and self._transport is not None:
                self._paused = False  # a whole body is wanted: no reason to hold it back
                self._transport.resume_reading()
            await self._wait()
        if self.error is not None:
            raise self.error
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return body

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.lost and self.error is None

    def end_exchange(self) -> None:
        self._exchanging = False
        self._chunks.clear()
        self._buffered = 0
        if self._paused:
            # An answer can end while its last bytes hold the socket paused (the parser
            # completes it in the same feed that crossed the high-water mark). Left paused, the
            # next answer on this connection would never be read, nor the server closing it.
            self._paused = False
            if self._transport is not None:
                self._transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _finish(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
                self._buffered += len(tail)
        self.complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class Http1Response:
    """An answer whose head has arrived; its body is read with ``read`` or ``iter_chunks``.
    ``release`` (the pool's caller must call it) returns the connection or closes it."""

    __slots__ = ("_connection", "_pool", "_released", "headers", "status")

    def __init__(self, pool: Http1Pool, connection: _Connection) -> None:
        self._pool = pool
        self._connection = connection
        self._released = False
        self.status = connection.status
        self.headers: Mapping[str, str] = connection.headers  # names lower-cased

    async def read(self) -> bytes:
        return await self._connection.read_all()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._connection.read_chunk()) is not None:
            yield chunk

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool.give_back(self._connection)


class Http1Pool:
    """Connections to one server (``base_url``'s scheme, host and port), kept alive and reused;
    each request's path is put after ``base_url``'s path. ``headers`` go on every request."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        max_connections: int,
        keepalive_timeout: float,
        connect_timeout: float,
        counter: ConnectionCounter | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url {base_url!r} must be an http:// or https:// URL")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        self._max = max(1, max_connections)
        self._keepalive = keepalive_timeout
        self._connect_timeout = connect_timeout
        self._counter = counter or ConnectionCounter()
        every = {"host": parts.netloc.rpartition("@")[2], "accept-encoding": "identity",
                 "user-agent": "llmspool", **headers}
        self._head_tail = _header_lines(every)
        self._idle: list[_Connection] = []
        self._open = 0  # connections opening, busy or idle
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    async def post(self, path: str, body: bytes,
                   headers: Mapping[str, str] | None = None) -> Http1Response:
        """Send ``body`` to ``path``; the answer once its head has arrived. The caller must
        ``release()`` it."""
        head = (f"POST {self._prefix}{path} HTTP/1.1\r\n{self._head_tail}"
                f"{_header_lines(headers) if headers else ''}"
                f"content-length: {len(body)}\r\n\r\n")
        connection = await self._acquire()
        try:
            connection.send(head.encode("latin-1") + body)
            await connection.head()
        except BaseException:
            self.give_back(connection)  # not reusable: closed
            raise
        return Http1Response(self, connection)

    async def aclose(self) -> None:
        """Close the idle connections now, and every other one as it is given back."""
        self._closed = True
        for connection in self._idle:
            self._discard(connection)
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)  # they find the pool closed

    # What connections tell the pool

    def give_back(self, connection: _Connection) -> None:
        """A request is done with ``connection``: kept for the next one, or closed."""
        reusable = connection.reusable() and not self._closed
        connection.end_exchange()
        if reusable:
            connection.idle_timer = asyncio.get_running_loop().call_later(
                self._keepalive, self._expire, connection)
            self._idle.append(connection)
        else:
            self._discard(connection)
        self._wake_one()

    def lost(self, connection: _Connection) -> None:
        """The server closed ``connection`` (or it was closed here)."""
        if connection in self._idle:
            self._idle.remove(connection)
            self._discard(connection)
            self._wake_one()

    # Inside

    async def _acquire(self) -> _Connection:
        while True:
            if self._closed:
                raise ConnectionError("the provider's connection pool is closed (the daemon "
                                      "is stopping)")
            while self._idle:
                connection = self._idle.pop()
                if connection.idle_timer is not None:
                    connection.idle_timer.cancel()
                    connection.idle_timer = None
                if not connection.lost:
                    self._counter.handed_out += 1
                    return connection
                self._discard(connection)
            if self._open < self._max:
                return await self._connect()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done():
                    self._wake_one()  # it was this one's turn: pass it on
                else:
                    self._waiters.remove(waiter)
                raise

    async def _connect(self) -> _Connection:
        self._open += 1
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(self._connect_timeout):
                _transport, connection = await loop.create_connection(
                    lambda: _Connection(loop, self), self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None)
        except TimeoutError:
            self._open -= 1
            self._wake_one()
            raise ConnectTimeout(
                f"no connection to {self._host}:{self._port} within {self._connect_timeout:g}s"
            ) from None
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        self._counter.created += 1
        self._counter.handed_out += 1
        return connection

    def _expire(self, connection: _Connection) -> None:
        connection.idle_timer = None
        if connection in self._idle:
            self._idle.remove(connection)
            self._discard(connection)
            self._wake_one()

    def _discard(self, connection: _Connection) -> None:
        if connection.idle_timer is not None:
            connection.idle_timer.cancel()
            connection.idle_timer = None
        if not connection.discarded:
            connection.discarded = True
            self._open -= 1
            connection.close()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _header_lines(headers: Mapping[str, str]) -> str:
    """``name: value\\r\\n`` lines; a name or value that would break the head is refused."""
    lines = []
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0") or ":" in name:
            raise ValueError(f"header {name!r} has a character HTTP/1.1 forbids in a head")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines)
