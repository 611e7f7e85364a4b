"""The data plane's HTTP/1.1 pool (``llmspool.core.http1``) against real servers on 127.0.0.1:
connections kept alive and reused, every way a body may be framed, answers cut short or not
HTTP, the connection cap, the idle timeout, the connect timeout, and TLS."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import pytest
from llmspool.core.connection_stats import ConnectionCounter
from llmspool.core.http1 import (
    ConnectTimeout,
    Http1Pool,
    IdleConnectionClosed,
    UpstreamProtocolError,
)

# A handler gets each request's head and body and the writer; the server reads requests
# off a connection until the handler returns False or the client closes it.
Handler = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[bool]]


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.closed = 0
        self.requests: list[bytes] = []
        self.port = 0


@asynccontextmanager
async def serving(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                server.requests.append(head + body)
                if not await handler(head, body, writer):
                    break
                await writer.drain()
        finally:
            server.closed += 1
            writer.close()

    listener = await asyncio.start_server(connection, "127.0.0.1", 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


def answer(body: bytes, *, extra: bytes = b"", status: bytes = b"200 OK") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


async def ok(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(answer(b'{"echo": ' + str(len(body)).encode() + b"}",
                        extra=b"X-Request-Id: req_1\r\n"))
    return True


async def body_of(pool: Http1Pool, path: str = "/x", body: bytes = b"{}") -> bytes:
    """One call's whole answer, its connection given back."""
    response = await pool.post(path, body)
    try:
        return await response.read()
    finally:
        response.release()


def pool_for(server: Server, counter: ConnectionCounter | None = None, *,
             scheme: str = "http", max_connections: int = 8, keepalive: float = 30.0,
             connect_timeout: float = 5.0) -> Http1Pool:
    return Http1Pool(f"{scheme}://127.0.0.1:{server.port}/v1",
                     headers={"authorization": "Bearer sk-test"},
                     max_connections=max_connections, keepalive_timeout=keepalive,
                     connect_timeout=connect_timeout, counter=counter)


def test_a_connection_is_kept_alive_and_reused_and_headers_are_sent() -> None:
    async def main() -> None:
        counter = ConnectionCounter()
        async with serving(ok) as server:
            pool = pool_for(server, counter)
            for _ in range(3):
                response = await pool.post("/chat/completions", b'{"a": 1}', {"X-Extra": "y"})
                assert response.status == 200
                assert response.headers["x-request-id"] == "req_1"  # names lower-cased
                assert await response.read() == b'{"echo": 8}'
                response.release()
            await pool.aclose()
        assert server.connections == 1
        assert counter.snapshot() == {"requests": 3, "reused": 2}
        first = server.requests[0]
        assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        for line in (b"host: 127.0.0.1:", b"authorization: Bearer sk-test", b"X-Extra: y",
                     b"content-length: 8"):
            assert line in first

    anyio.run(main)


def test_chunked_close_delimited_and_gzip_bodies_are_read_whole() -> None:
    async def chunked(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        return True

    async def until_close(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        return False

    async def gzipped(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(gzip.compress(b'{"zipped": true}'),
                            extra=b"content-encoding: gzip\r\n"))
        return True

    async def main() -> None:
        for handler, expected in ((chunked, b"hello world"), (until_close, b"all of it"),
                                  (gzipped, b'{"zipped": true}')):
            async with serving(handler) as server:
                pool = pool_for(server)
                for _ in range(2):  # the second call: reused, or a new connection after close
                    assert await body_of(pool) == expected
                await pool.aclose()
            assert server.connections == (2 if handler is until_close else 1)

    anyio.run(main)


def test_answers_bigger_than_the_read_buffer_leave_their_connection_reusable() -> None:
    # Past 256 KiB unread the pool stops reading the socket; read whole or streamed, a big
    # answer must not leave it stopped for the next call on the same connection (it waited
    # forever: a 4 MB answer wedged the daemon's next call to that provider).
    big = b'{"text": "' + b"x" * (4 * 1024 * 1024) + b'"}'

    async def large(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(big))
        return True

    async def streamed(pool: Http1Pool) -> bytes:
        response = await pool.post("/x", b"{}")
        try:
            # A reader slower than the socket: the buffer fills and reading pauses.
            pieces = []
            async for chunk in response.iter_chunks():
                pieces.append(chunk)
                await anyio.sleep(0)
            return b"".join(pieces)
        finally:
            response.release()

    async def main() -> None:
        async with serving(large) as server:
            pool = pool_for(server, max_connections=1)
            with anyio.fail_after(10):
                for _ in range(3):
                    assert await body_of(pool) == big
                    assert await streamed(pool) == big
            await pool.aclose()
        assert server.connections == 1

    anyio.run(main)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk_of(event: bytes) -> bytes:
    """``event`` as one chunk of a chunked body."""
    return f"{len(event):x}\r\n".encode() + event + b"\r\n"


def streamed_pieces(handler: Handler, *, settle: float = 0.0) -> list[tuple[bytes, float]]:
    """The pieces ``iter_chunks`` hands over of ``handler``'s answer, with when each came;
    reading begins ``settle`` seconds after the answer's head."""
    async def main() -> list[tuple[bytes, float]]:
        async with serving(handler) as server:
            pool = pool_for(server)
            response = await pool.post("/x", b"{}")
            await anyio.sleep(settle)
            pieces = [(chunk, time.monotonic()) async for chunk in response.iter_chunks()]
            response.release()
            await pool.aclose()
        return pieces

    return anyio.run(main)


def test_a_stream_arrives_in_pieces_as_it_is_sent() -> None:
    async def slow_stream(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(CHUNKED_HEAD)
        for index in range(3):
            writer.write(chunk_of(f"data: {index}\n\n".encode()))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        return True

    pieces = streamed_pieces(slow_stream)
    assert b"".join(chunk for chunk, _ in pieces) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert len(pieces) == 3 and pieces[-1][1] - pieces[0][1] >= 0.08  # not buffered to the end


def test_a_streams_events_that_arrive_together_are_read_as_one_piece() -> None:
    # An instant upstream sends a whole stream in one write. Read a chunk at a time, the relay
    # handed each event to the front door before it could write the first, so the client's
    # first event waited for the stream's last.
    events = [f"data: {index}\n\n".encode() for index in range(18)]

    async def burst_then_end(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(CHUNKED_HEAD + b"".join(chunk_of(event) for event in events))
        await writer.drain()
        await asyncio.sleep(0.05)  # the stream's end comes later, on its own
        writer.write(b"0\r\n\r\n")
        return True

    pieces = streamed_pieces(burst_then_end, settle=0.02)  # the whole burst has arrived
    assert [chunk for chunk, _ in pieces] == [b"".join(events)]


def test_an_answer_not_read_to_its_end_closes_its_connection() -> None:
    async def endless(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(b"0\r\n\r\n")
        return True

    async def main() -> None:
        async with serving(endless) as server:
            pool = pool_for(server)
            response = await pool.post("/x", b"{}")
            async for chunk in response.iter_chunks():
                assert chunk == b"first"
                break  # the client went away mid-stream
            response.release()
            with anyio.fail_after(5):
                while server.closed < 1:
                    await anyio.sleep(0.01)
            assert await body_of(pool) == b"first"  # on a new connection
            await pool.aclose()
        assert server.connections == 2

    anyio.run(main)


def test_a_cancelled_call_closes_its_connection_and_frees_its_place() -> None:
    async def hang(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        if b"/hang" in head:
            await asyncio.sleep(10)
        writer.write(answer(b"{}"))
        return True

    async def main() -> None:
        async with serving(hang) as server:
            pool = pool_for(server, max_connections=1)
            with anyio.move_on_after(0.2) as scope:
                await pool.post("/hang", b"{}")
            assert scope.cancelled_caught
            with anyio.fail_after(5):  # the only place was given back: not waiting forever
                assert await body_of(pool, "/fine") == b"{}"
            await pool.aclose()
        assert server.connections == 2

    anyio.run(main)


def test_calls_past_max_connections_wait_for_one_in_turn() -> None:
    async def slow(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        writer.write(answer(body))
        return True

    async def main() -> None:
        async with serving(slow) as server:
            pool = pool_for(server, max_connections=2)
            answers: list[bytes] = []

            async def one(index: int) -> None:
                answers.append(await body_of(pool, "/x", str(index).encode()))

            started = time.monotonic()
            async with anyio.create_task_group() as group:
                for index in range(6):
                    group.start_soon(one, index)
            took = time.monotonic() - started
            await pool.aclose()
        assert sorted(answers) == [str(index).encode() for index in range(6)]
        assert server.connections == 2
        assert took >= 0.14  # three rounds of two: the cap held

    anyio.run(main)


def test_an_idle_connection_is_closed_after_the_keepalive_timeout() -> None:
    async def main() -> None:
        async with serving(ok) as server:
            pool = pool_for(server, keepalive=0.1)
            await body_of(pool)
            with anyio.fail_after(5):
                while server.closed < 1:
                    await anyio.sleep(0.01)
            assert await body_of(pool) == b'{"echo": 2}'
            await pool.aclose()
        assert server.connections == 2

    anyio.run(main)


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def once(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"{}"))
        await writer.drain()
        return False  # closes without saying "connection: close"

    async def main() -> None:
        async with serving(once) as server:
            pool = pool_for(server)
            for _ in range(3):
                assert await body_of(pool) == b"{}"
                await anyio.sleep(0.05)  # the close arrives before the next call
            await pool.aclose()
        assert server.connections == 3

    anyio.run(main)


def test_a_kept_alive_connection_closed_as_a_request_goes_out_is_said_to_be_so() -> None:
    # The server's idle timeout running out as the client reuses the connection: the close
    # reaches the client after its request went out, before any answer. Here the server takes
    # the second request on a connection and closes it unanswered; the first on a connection
    # closed so is a failure like any other, not a kept-alive connection's.
    served: dict[int, int] = {}

    async def first_only(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        key = id(writer)
        served[key] = served.get(key, 0) + 1
        if served[key] > 1:
            return False  # closed, unanswered
        writer.write(answer(b"{}"))
        return True

    async def silent(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        return False

    async def main() -> None:
        async with serving(first_only) as server:
            pool = pool_for(server)
            assert await body_of(pool) == b"{}"
            with pytest.raises(IdleConnectionClosed, match="idle timeout"):
                await pool.post("/x", b"{}")
            assert await body_of(pool) == b"{}"  # on a new connection
            await pool.aclose()
        assert server.connections == 2
        async with serving(silent) as server:
            pool = pool_for(server)
            with pytest.raises(ConnectionError, match="before answering") as raised:
                await pool.post("/x", b"{}")
            assert not isinstance(raised.value, IdleConnectionClosed)

    anyio.run(main)


def test_an_answer_cut_short_or_not_http_is_an_error() -> None:
    async def cut(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        return False

    async def silent(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        return False

    async def garbage(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SMTP ready\r\n\r\n")
        return True

    async def main() -> None:
        async with serving(cut) as server:
            pool = pool_for(server)
            response = await pool.post("/x", b"{}")
            with pytest.raises(ConnectionError, match="in the middle of its answer"):
                await response.read()
            response.release()
        async with serving(silent) as server:
            pool = pool_for(server)
            with pytest.raises(ConnectionError, match="before answering"):
                await pool.post("/x", b"{}")
        async with serving(garbage) as server:
            pool = pool_for(server)
            with pytest.raises(UpstreamProtocolError, match=r"not valid HTTP/1\.1"):
                await pool.post("/x", b"{}")

    anyio.run(main)


def test_no_connection_within_the_connect_timeout_is_a_connect_timeout() -> None:
    # A listener that never accepts, its backlog filled: the next connection's SYN goes
    # unanswered, so connecting hangs until the timeout.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)

        async def main() -> None:
            server = Server()
            server.port = port
            pool = pool_for(server, connect_timeout=0.3)
            started = time.monotonic()
            with pytest.raises(ConnectTimeout, match=r"within 0\.3s"):
                await pool.post("/x", b"{}")
            assert time.monotonic() - started < 3

        try:
            anyio.run(main)
        finally:
            for filler in fillers:
                filler.close()


def test_a_header_that_would_break_the_head_is_refused() -> None:
    with pytest.raises(ValueError, match="forbids"):
        Http1Pool("http://127.0.0.1:1", headers={"x-evil": "a\r\nx-injected: 1"},
                  max_connections=1, keepalive_timeout=1, connect_timeout=1)
    with pytest.raises(ValueError, match="http:// or https://"):
        Http1Pool("ftp://example", headers={}, max_connections=1, keepalive_timeout=1,
                  connect_timeout=1)


def test_https_verifies_the_server_with_the_systems_certificates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)

    async def main(trusted: bool) -> None:
        async with serving(ok, tls) as server:
            pool = pool_for(server, scheme="https")
            if not trusted:
                with pytest.raises(ssl.SSLCertVerificationError):
                    await pool.post("/x", b"{}")
                return
            assert await body_of(pool) == b'{"echo": 2}'
            await pool.aclose()

    anyio.run(main, False)  # a certificate nobody trusts is refused
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    anyio.run(main, True)
