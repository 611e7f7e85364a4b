"""The client's errors, and how a refusal, a failed request or a silent socket becomes one.

Pure: each function reads a status, bytes, headers or an exception and returns the error to
raise; the transports (``llmspool.client.transport``) decide when.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson

Json = dict[str, Any]


class SpoolError(Exception):
    """The daemon refused or could not do what was asked; ``status`` is the HTTP status if any.

    ``code``, ``type`` and ``param`` come from the OpenAI-shaped error; ``lines`` lists the bad
    lines of a refused JSONL file (``{"line", "custom_id", "message"}``); ``retry_after`` is the
    daemon's hint, in seconds, when its queue is full.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        error_type: str | None = None,
        param: str | None = None,
        lines: list[Json] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.type = error_type
        self.param = param
        self.lines = lines
        self.retry_after = retry_after


class DaemonNotRunning(SpoolError):
    """Nothing answers at the socket; ``socket`` is where the client looked."""

    def __init__(self, message: str, socket: str) -> None:
        super().__init__(message, code="daemon_not_running")
        self.socket = socket


class RequestFailed(SpoolError):
    """The request of a one-request job failed; ``line`` is its Batch output line.

    ``status_code`` is the HTTP status the provider answered (``None`` when the request never
    got an answer), ``error`` the error object (``{"code", "message", ...}``) when there is one.
    """

    def __init__(self, line: Json) -> None:
        response = line.get("response") or None
        self.line = line
        self.custom_id: str | None = line.get("custom_id")
        self.status_code: int | None = response.get("status_code") if response else None
        self.error: Json | None = _line_error(line)
        error = self.error or {}
        described = error.get("message") or "no answer"
        status = f" ({self.status_code})" if self.status_code is not None else ""
        super().__init__(
            f"request {self.custom_id} failed{status}: {described}",
            status=self.status_code,
            code=error.get("code"),
        )


def _line_error(line: Json) -> Json | None:
    """The error of a Batch output line: its ``error``, else the error in the response body."""
    if line.get("error"):
        return dict(line["error"])
    body = (line.get("response") or {}).get("body")
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        return dict(body["error"])
    return None


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> SpoolError:
    """The ``SpoolError`` for an error answer, from OpenAI's error shape when the body has it."""
    retry_after = _float_or_none(headers.get("retry-after"))
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        payload = None
    error = payload.get("error") if isinstance(payload, Mapping) else None
    if not isinstance(error, Mapping):
        text = body.decode(errors="replace").strip()[:500] or "no details"
        return SpoolError(f"the daemon answered {status}: {text}", status=status,
                          retry_after=retry_after)
    lines = error.get("lines")
    return SpoolError(
        str(error.get("message") or f"the daemon answered {status}"),
        status=status,
        code=error.get("code"),
        error_type=error.get("type"),
        param=error.get("param"),
        lines=list(lines) if isinstance(lines, list) else None,
        retry_after=retry_after,
    )


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def connect_failure(socket: str, exc: BaseException) -> SpoolError:
    """Say why the socket did not answer, and where the client looked."""
    cause = _os_error_in(exc)
    if isinstance(cause, PermissionError):
        return SpoolError(
            f"cannot connect to the llmspool daemon at {socket}: permission denied "
            "(members of the socket's group may use it)"
        )
    if not os.path.exists(socket):
        reason = f"{socket} does not exist"
    else:
        reason = f"nothing answers at {socket} ({cause.strerror if cause else exc})"
    return DaemonNotRunning(
        f"the llmspool daemon is not running: {reason}. Start it (`llmspool daemon`, or "
        "`systemctl start llmspool`), or name its socket with --socket or LLMSPOOL_SOCKET.",
        socket,
    )


def _os_error_in(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind a transport error (httpx2 wraps httpcore2, which wraps the OS)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
