"""What the async and sync clients share about moving bytes: where the daemon is, how long to
give it, and how httpx2's answers and failures become the client's answers and ``SpoolError``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
import orjson

from llmspool.client.errors import Json, SpoolError, connect_failure, error_from_response
from llmspool.client.protocol import JOB_STATUS_HEADER, TERMINAL_STATUSES, results_request
from llmspool.core.locate import socket_path

# The daemon listens on a Unix socket; the host part of the URL is never used to connect.
BASE_URL = "http://localhost"


class Endpoint:
    """Where a client's daemon is (``socket``, found as the CLI finds it when not given) and
    how long an ordinary request may take (``timeout``)."""

    def __init__(self, socket: str | None, timeout: float, config: str | None) -> None:
        self.socket = socket_path(socket, config)
        self.timeout = float(timeout)

    def _results_request(self, job_id: str, wait: float | None) -> tuple[str, httpx2.Timeout]:
        """The URL of a results request and the timeout it gets (longer for a long poll)."""
        url, seconds = results_request(job_id, wait, self.timeout)
        return url, client_timeout(seconds)


class ResultsStream:
    """An open results stream: the job's status when the daemon answered, then its lines, which
    the async (``AsyncResults``) or sync (``SyncResults``) kind reads."""

    def __init__(self, response: httpx2.Response) -> None:
        self._response = response
        self.job_status: str | None = response.headers.get(JOB_STATUS_HEADER)

    @property
    def complete(self) -> bool:
        """Whether the job had finished, so that these are all its results."""
        return self.job_status in TERMINAL_STATUSES


def client_timeout(timeout: float) -> httpx2.Timeout:
    """``timeout`` for a request, but at most 10 s to connect: a socket answers at once or not
    at all."""
    return httpx2.Timeout(timeout, connect=min(timeout, 10.0))


@contextmanager
def transport_errors(socket: str) -> Iterator[None]:
    """Map httpx2's transport errors to ``SpoolError`` at the boundary where they happen."""
    try:
        yield
    except httpx2.ConnectError as exc:
        raise connect_failure(socket, exc) from exc
    except httpx2.TimeoutException as exc:
        raise SpoolError(f"the llmspool daemon at {socket} did not answer in time") from exc
    except httpx2.TransportError as exc:
        raise SpoolError(f"lost the connection to the llmspool daemon at {socket}: {exc}") from exc


def json_or_error(response: httpx2.Response) -> Json:
    """The JSON object of a read response, or the ``SpoolError`` it stands for."""
    if response.status_code >= 400:
        raise response_error(response)
    payload = orjson.loads(response.content)
    if not isinstance(payload, dict):
        raise SpoolError(f"the daemon answered something other than an object: {payload!r}")
    return payload


def response_error(response: httpx2.Response) -> SpoolError:
    """The ``SpoolError`` an error answer stands for, once its body has been read."""
    return error_from_response(response.status_code, response.content, response.headers)
