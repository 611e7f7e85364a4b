"""``http.client`` over a Unix socket: how the command line talks to the daemon."""

from __future__ import annotations

import http.client
import socket

from llmspool.core.errors import StartupError


class UnixConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection to the daemon's socket at ``path``."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def get(path: str, url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of ``GET url`` on the daemon's socket, or ``StartupError`` saying the
    daemon cannot be reached and how to check it."""
    return request(path, "GET", url, timeout=timeout)


def request(path: str, method: str, url: str, body: bytes | None = None,
            timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of ``method url`` (with a JSON ``body``, if any) on the daemon's socket,
    or ``StartupError`` as ``get`` raises it."""
    connection = UnixConnection(path, timeout)
    try:
        headers = {"content-type": "application/json"} if body is not None else {}
        connection.request(method, url, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError as exc:
        raise StartupError(
            f"cannot reach the daemon at {path} ({exc.strerror or exc}); is it running? "
            "(systemctl status llmspool, or `llmspool daemon`)"
        ) from None
    finally:
        connection.close()
