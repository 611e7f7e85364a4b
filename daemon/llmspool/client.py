"""The Python client of the daemon's jobs API: hand over work with a deadline, get answers later.

A call site changes one line to get deferred pricing::

    from llmspool.client import Spool

    async with Spool() as spool:        # finds the socket as the CLI does
        answer = await (await spool.submit(
            {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}]},
            deadline="6h",
        )).result()
        print(answer["choices"][0]["message"]["content"])   # the body the API would answer

Many requests make one job, and come back in OpenAI's Batch output format, in input order::

    async with Spool() as spool:
        job = await spool.submit(
            [{"model": "gpt-5-mini", "messages": [...]} for _ in range(1000)],
            deadline="24h", operation="evals", tags={"project": "atlas"},
        )
        await job.wait()
        async for line in job.iter_results():
            print(line["custom_id"], line["response"] or line["error"])

Scripts without an event loop use ``SyncSpool``: the same names, without ``await``::

    with SyncSpool() as spool:
        print(spool.submit(body, deadline="1h").result())

Errors: whatever the daemon refuses becomes ``SpoolError`` (``message``, ``status``, ``code``,
and ``lines`` when a JSONL file had bad lines); ``DaemonNotRunning`` (a ``SpoolError``) when
nothing answers at the socket, naming where it looked; ``RequestFailed`` (a ``SpoolError``) when
``result()`` finds that a one-request job's request failed; ``TimeoutError`` when
``wait(timeout=...)`` runs out.

What this module owns: building requests and interpreting answers, as pure helpers shared by the
async classes (``Spool``, ``JobHandle``) and the sync ones (``SyncSpool``, ``SyncJobHandle``),
which only move bytes over the socket.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import anyio
import httpx2
import orjson

from llmspool.states import JOB_TERMINAL, REQUEST_TERMINAL
from llmspool.units import format_duration

__all__ = [
    "DEFAULT_ENDPOINT",
    "JOB_STATUS_HEADER",
    "TERMINAL_STATUSES",
    "AsyncResults",
    "DaemonNotRunning",
    "JobHandle",
    "RequestFailed",
    "SpoolError",
    "Spool",
    "Submission",
    "SyncJobHandle",
    "SyncResults",
    "SyncSpool",
    "build_requests",
    "deadline_text",
    "error_from_response",
    "finished_count",
    "is_failed",
    "jsonl_query",
    "parse_result_line",
    "single_result",
    "submit_payload",
]

Json = dict[str, Any]
OnError = Literal["reject", "skip"]
Deadline = str | int | float | timedelta | datetime
StatusCallback = Callable[[Json], None]

DEFAULT_ENDPOINT = "/v1/chat/completions"
JOB_STATUS_HEADER = "x-llmspool-job-status"
JSONL_CONTENT_TYPE = "application/jsonl"
# The daemon's final job statuses (``JOB_TERMINAL``: completed and cancelled); failed and expired
# are listed too so that a client older than a daemon that adds them stops waiting instead of
# hanging forever. Plain strings: it is public, and callers may print or serialise it.
TERMINAL_STATUSES = frozenset({*(status.value for status in JOB_TERMINAL), "failed", "expired"})
# The daemon caps ?wait= at 600 s; asking for more would only be clipped.
MAX_LONG_POLL = 600
# A long poll is a normal request whose answer may take `wait` seconds; allow that much more
# than the client's usual timeout before calling the daemon unresponsive.
LONG_POLL_GRACE = 30.0
UPLOAD_CHUNK = 1024 * 1024
# Long polls shorter than this would mostly fetch partial results to throw away; sleep instead.
LONG_POLL_MIN = 5.0
MIN_POLL = 0.1  # no caller needs fresher news than this; the daemon is shared
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0


# --- errors ------------------------------------------------------------------------------------


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


def _connect_failure(socket: str, exc: BaseException) -> SpoolError:
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


@contextmanager
def _transport_errors(socket: str) -> Iterator[None]:
    """Map httpx2's transport errors to ``SpoolError`` at the boundary where they happen."""
    try:
        yield
    except httpx2.ConnectError as exc:
        raise _connect_failure(socket, exc) from exc
    except httpx2.TimeoutException as exc:
        raise SpoolError(f"the llmspool daemon at {socket} did not answer in time") from exc
    except httpx2.TransportError as exc:
        raise SpoolError(f"lost the connection to the llmspool daemon at {socket}: {exc}") from exc


def _json_or_error(response: httpx2.Response) -> Json:
    """The JSON object of a read response, or the ``SpoolError`` it stands for."""
    if response.status_code >= 400:
        raise error_from_response(response.status_code, response.content, response.headers)
    payload = orjson.loads(response.content)
    if not isinstance(payload, dict):
        raise SpoolError(f"the daemon answered something other than an object: {payload!r}")
    return payload


# --- building requests -------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """Batch input items ready to send, and whether the caller handed over a single request
    (then ``result()`` answers that request's body rather than a list of lines)."""

    items: list[Json]
    single: bool


def build_requests(
    request_or_requests: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    endpoint: str = DEFAULT_ENDPOINT,
) -> Submission:
    """Batch input items for a request body, a Batch item, or an iterable of either.

    A mapping with ``url`` and ``body`` is a Batch item; one with ``model`` is a request body,
    sent to ``endpoint``. Items without a ``custom_id`` get ``request-N`` by their 1-based
    position, the same names the daemon would give them, so a caller can rely on either.
    """
    if isinstance(request_or_requests, Mapping):
        return Submission([_as_item(request_or_requests, endpoint, 1)], single=True)
    if isinstance(request_or_requests, str | bytes):
        raise TypeError("submit() takes a request dict or a list of them, not a string; "
                        "use submit_jsonl() for a JSONL file")
    items = [
        _as_item(entry, endpoint, position)
        for position, entry in enumerate(request_or_requests, start=1)
    ]
    if not items:
        raise ValueError("nothing to submit: the list of requests is empty")
    return Submission(items, single=False)


def _as_item(entry: Mapping[str, Any], endpoint: str, position: int) -> Json:
    if not isinstance(entry, Mapping):
        raise TypeError(f"request {position} is a {type(entry).__name__}, not a dict")
    if "url" in entry and "body" in entry:
        item = dict(entry)
        item.setdefault("method", "POST")
    elif "model" in entry:
        item = {"method": "POST", "url": endpoint, "body": dict(entry)}
    else:
        raise ValueError(
            f"request {position} is neither a request body (with 'model') nor a Batch item "
            "(with 'url' and 'body')"
        )
    if item.get("custom_id") is None:
        item["custom_id"] = f"request-{position}"
    # Batch input puts custom_id first; keeping that order makes files easy to read.
    return {"custom_id": item.pop("custom_id"), **item}


def deadline_text(deadline: Deadline) -> str:
    """The deadline as the daemon reads it: a duration (``"6h"``) or an ISO time with offset.

    Seconds and ``timedelta`` become durations; a naive ``datetime`` is taken as local time.
    """
    if isinstance(deadline, datetime):
        aware = deadline if deadline.tzinfo is not None else deadline.astimezone()
        return aware.isoformat()
    if isinstance(deadline, timedelta):
        deadline = deadline.total_seconds()
    if isinstance(deadline, int | float) and not isinstance(deadline, bool):
        if deadline <= 0:
            raise ValueError(f"a deadline must be in the future, got {deadline} s")
        # Whole seconds: the daemon's duration parser reads "90s" but the deadline need not be
        # finer than that.
        return format_duration(max(1, math.ceil(deadline)))
    if isinstance(deadline, str) and deadline.strip():
        return deadline.strip()
    raise ValueError(f"a deadline is a duration like '6h' or an ISO time, got {deadline!r}")


def submit_payload(
    submission: Submission,
    *,
    deadline: Deadline | None,
    operation: str | None = None,
    tags: Mapping[str, str] | None = None,
    on_error: OnError = "reject",
    best_effort: bool = False,
) -> Json:
    """The JSON body of ``POST /v1/jobs`` for these items."""
    payload: Json = {"requests": submission.items, "on_error": on_error}
    if deadline is not None:  # None: the daemon's default (its operation's, or [jobs])
        payload["deadline"] = deadline_text(deadline)
    if best_effort:
        payload["on_short_deadline"] = "best_effort"
    if operation is not None:
        payload["operation"] = operation
    if tags:
        payload["tags"] = dict(tags)
    return payload


def jsonl_query(
    *,
    deadline: Deadline | None,
    operation: str | None = None,
    tags: Mapping[str, str] | None = None,
    on_error: OnError = "reject",
    best_effort: bool = False,
) -> list[tuple[str, str]]:
    """The query of a JSONL ``POST /v1/jobs``: the options a JSON body would carry.

    ``deadline=None`` leaves it to the daemon (24 h). Tags travel as ``tag.KEY=VALUE``.
    """
    query: list[tuple[str, str]] = []
    if deadline is not None:
        query.append(("deadline", deadline_text(deadline)))
    if operation is not None:
        query.append(("operation", operation))
    query.append(("on_error", on_error))
    if best_effort:
        query.append(("on_short_deadline", "best_effort"))
    query.extend((f"tag.{key}", value) for key, value in (tags or {}).items())
    return query


def _job_url(job_id: str, suffix: str = "") -> str:
    # Quoted so that a mistyped id with a slash or '?' reaches the daemon as an unknown id.
    return f"/v1/jobs/{quote(job_id, safe='')}{suffix}"


def _results_request(job_id: str, wait: float | None, timeout: float) -> tuple[str, float]:
    """The URL of a results request and how long to let it take."""
    if wait is None or wait <= 0:
        return _job_url(job_id, "/results"), timeout
    seconds = min(MAX_LONG_POLL, math.ceil(wait))
    return _job_url(job_id, f"/results?wait={seconds}"), timeout + seconds + LONG_POLL_GRACE


# --- interpreting answers ----------------------------------------------------------------------


def parse_result_line(line: str | bytes) -> Json | None:
    """One Batch output line, or ``None`` for a blank line."""
    if not line.strip():
        return None
    parsed = orjson.loads(line)
    if not isinstance(parsed, dict):
        raise SpoolError(f"a results line is not an object: {line[:200]!r}")
    return parsed


def is_failed(line: Mapping[str, Any]) -> bool:
    """Whether a Batch output line is a failure: an ``error``, or an error status."""
    if line.get("error"):
        return True
    response = line.get("response")
    return not response or int(response.get("status_code", 0)) >= 400


def single_result(lines: list[Json], job: Mapping[str, Any]) -> Any:
    """The response body of a one-request job's line; ``RequestFailed`` when it did not succeed.

    A job cancelled before its request ran has no line at all; that is a failure too.
    """
    if not lines:
        raise RequestFailed({
            "custom_id": None,
            "response": None,
            "error": {"code": "no_result",
                      "message": f"job {job.get('id')} ended {job.get('status')} without a result"},
        })
    line = lines[0]
    if is_failed(line):
        raise RequestFailed(line)
    return line["response"]["body"]


def finished_count(job: Mapping[str, Any]) -> int:
    """How many of a job's requests are done, one way or another."""
    counts = job.get("counts") or {}
    return int(sum(counts.get(state, 0) for state in REQUEST_TERMINAL))


def _is_single(single: bool | None, job: Mapping[str, Any]) -> bool:
    """A handle made by ``submit`` knows; one made from an id goes by the job's size."""
    if single is not None:
        return single
    return int((job.get("counts") or {}).get("total", 0)) == 1


class _WaitClock:
    """When to ask again while waiting for a job; no I/O, so both clients share it.

    Asked to report at most every few seconds (``poll_slice`` below ``LONG_POLL_MIN``, as a
    progress bar does), it sleeps between status requests. Otherwise each round long-polls the
    results endpoint, which the daemon answers as soon as the job finishes; a long poll that is
    not finished is a partial results stream thrown away, so it is worth it only when long.
    Less than a second before the timeout, it sleeps. A daemon that answers long polls early
    while the job still runs (one that does not wait) gets exponential backoff, not a busy loop.
    """

    def __init__(self, job_id: str, timeout: float | None, poll_slice: float) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.poll_slice = max(MIN_POLL, min(float(MAX_LONG_POLL), poll_slice))
        self.long_polls = self.poll_slice >= LONG_POLL_MIN
        self.started = time.monotonic()
        self._backoff = BACKOFF_FIRST

    def remaining(self) -> float | None:
        if self.timeout is None:
            return None
        return self.timeout - (time.monotonic() - self.started)

    def next_round(self, job: Mapping[str, Any]) -> tuple[int, float]:
        """``(seconds to long-poll, seconds to sleep)`` for the next round, one of them zero.

        Raises ``TimeoutError`` once the timeout has run out.
        """
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise TimeoutError(
                f"job {self.job_id} did not finish within {self.timeout:g} s "
                f"(status {job.get('status')}, {finished_count(job)} of "
                f"{(job.get('counts') or {}).get('total', '?')} requests done)"
            )
        budget = self.poll_slice if remaining is None else min(self.poll_slice, remaining)
        if self.long_polls and budget >= 1:
            return int(budget), 0.0
        return 0, budget

    def pause_after(self, asked: int, took: float) -> float:
        """Seconds to sleep after a long poll of ``asked`` seconds that took ``took``."""
        if took >= asked / 2:
            self._backoff = BACKOFF_FIRST
            return 0.0
        pause, self._backoff = self._backoff, min(BACKOFF_MAX, self._backoff * 2)
        remaining = self.remaining()
        return pause if remaining is None else max(0.0, min(pause, remaining))


def _resolve_socket(socket: str | None, config: str | None) -> str:
    # Imported here: llmspool.cli imports the CLI's job commands, which import this module.
    from llmspool.cli import socket_path

    return socket_path(socket, config)


def _client_timeout(timeout: float) -> httpx2.Timeout:
    return httpx2.Timeout(timeout, connect=min(timeout, 10.0))


# --- async -------------------------------------------------------------------------------------


class AsyncResults:
    """An open results stream: the job's status when the daemon answered, then the lines."""

    def __init__(self, response: httpx2.Response) -> None:
        self._response = response
        self.job_status: str | None = response.headers.get(JOB_STATUS_HEADER)

    @property
    def complete(self) -> bool:
        """Whether the job had finished, so that these are all its results."""
        return self.job_status in TERMINAL_STATUSES

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The JSONL body as it arrives, for copying to a file without parsing."""
        async for chunk in self._response.aiter_bytes():
            yield chunk

    async def aiter_lines(self) -> AsyncIterator[Json]:
        """The Batch output lines, parsed, one at a time."""
        async for text in self._response.aiter_lines():
            line = parse_result_line(text)
            if line is not None:
                yield line


class Spool:
    """The async client: one pooled HTTP connection pool on the daemon's Unix socket.

    ``socket`` defaults to what the CLI uses: ``LLMSPOOL_SOCKET``, else the config's (``config``
    or ``LLMSPOOL_CONFIG``) ``[daemon] socket``. ``timeout`` bounds each ordinary request;
    waiting for a job is bounded by ``wait(timeout=...)`` instead.
    """

    def __init__(
        self, socket: str | None = None, *, timeout: float = 60, config: str | None = None
    ) -> None:
        self.socket = _resolve_socket(socket, config)
        self.timeout = float(timeout)
        self._http = httpx2.AsyncClient(
            transport=httpx2.AsyncHTTPTransport(uds=self.socket),
            base_url="http://localhost",
            timeout=_client_timeout(self.timeout),
        )

    async def __aenter__(self) -> Spool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def submit(
        self,
        request_or_requests: Mapping[str, Any] | Iterable[Mapping[str, Any]],
        *,
        deadline: Deadline | None = None,
        operation: str | None = None,
        tags: Mapping[str, str] | None = None,
        endpoint: str = DEFAULT_ENDPOINT,
        on_error: OnError = "reject",
        best_effort: bool = False,
    ) -> JobHandle:
        """Hand over one request (a body, or a Batch item) or many; the job's handle.
        ``best_effort``: run it even if its deadline is shorter than any tier can meet."""
        submission = build_requests(request_or_requests, endpoint)
        payload = submit_payload(submission, deadline=deadline, operation=operation, tags=tags,
                                 on_error=on_error, best_effort=best_effort)
        job = await self._call("POST", "/v1/jobs", content=orjson.dumps(payload),
                               headers={"content-type": "application/json"})
        return JobHandle(self, job, single=submission.single)

    async def submit_jsonl(
        self,
        source: bytes | os.PathLike[str] | AsyncIterable[bytes],
        *,
        deadline: Deadline | None = None,
        operation: str | None = None,
        tags: Mapping[str, str] | None = None,
        on_error: OnError = "reject",
        size: int | None = None,
        best_effort: bool = False,
    ) -> JobHandle:
        """Hand over a Batch input file as it is: its bytes, its path, or its chunks.

        A path or bytes are sent with their length; chunks of unknown ``size`` are sent chunked.
        """
        content, length = _async_upload(source, size)
        headers = {"content-type": JSONL_CONTENT_TYPE}
        if length is not None:
            headers["content-length"] = str(length)
        query = jsonl_query(deadline=deadline, operation=operation, tags=tags, on_error=on_error,
                            best_effort=best_effort)
        job = await self._call("POST", "/v1/jobs", content=content, headers=headers, params=query)
        return JobHandle(self, job, single=None)

    def job(self, job_id: str) -> JobHandle:
        """A handle on a job submitted earlier, by its id (nothing is asked of the daemon yet)."""
        return JobHandle(self, {"id": job_id}, single=None)

    async def jobs(self, limit: int = 20) -> list[Json]:
        """The most recent jobs, newest first."""
        listing = await self._call("GET", "/v1/jobs", params={"limit": limit})
        return list(listing.get("data", []))

    async def _call(self, method: str, url: str, **options: Any) -> Json:
        with _transport_errors(self.socket):
            response = await self._http.request(method, url, **options)
        return _json_or_error(response)

    @asynccontextmanager
    async def _results(self, job_id: str, wait: float | None) -> AsyncIterator[AsyncResults]:
        url, timeout = _results_request(job_id, wait, self.timeout)
        with _transport_errors(self.socket):
            async with self._http.stream("GET", url, timeout=_client_timeout(timeout)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_from_response(response.status_code, response.content,
                                              response.headers)
                yield AsyncResults(response)


def _async_upload(
    source: bytes | os.PathLike[str] | AsyncIterable[bytes], size: int | None
) -> tuple[bytes | AsyncIterable[bytes], int | None]:
    if isinstance(source, bytes):
        return source, len(source)
    if isinstance(source, os.PathLike):
        return _read_file_async(anyio.Path(source)), os.stat(source).st_size
    return source, size


async def _read_file_async(path: anyio.Path) -> AsyncIterator[bytes]:
    async with await path.open("rb") as handle:
        while chunk := await handle.read(UPLOAD_CHUNK):
            yield chunk


class JobHandle:
    """A submitted job. ``submitted`` is the job object the daemon answered at submission
    (``rejected`` lists the lines ``on_error="skip"`` dropped, ``plan`` how many requests
    go to which tier and by when they are expected, ``warnings`` e.g. a best-effort deadline)."""

    def __init__(self, spool: Spool, submitted: Json, *, single: bool | None) -> None:
        self.id: str = str(submitted["id"])
        self.submitted = submitted
        self.rejected: list[Json] = list(submitted.get("rejected") or [])
        self.plan: list[Json] = list(submitted.get("plan") or [])
        self.warnings: list[str] = list(submitted.get("warnings") or [])
        self._spool = spool
        self._single = single

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    async def status(self) -> Json:
        """The job object now: status, counts by state and tier, cost and savings so far."""
        return await self._spool._call("GET", _job_url(self.id))

    # The timeout is a parameter (ASYNC109) so that the async and sync handles read alike and
    # the TimeoutError can say how far the job got; anyio.fail_after around it works as well.
    async def wait(
        self,
        timeout: float | None = None,  # noqa: ASYNC109
        *,
        on_status: StatusCallback | None = None,
        poll_every: float = MAX_LONG_POLL,
    ) -> Json:
        """Wait until the job is completed or cancelled; its final job object.

        ``on_status`` sees the job object each round, at least every ``poll_every`` seconds,
        e.g. to draw progress (below 5 s the client polls the status rather than long-polling).
        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        clock = _WaitClock(self.id, timeout, poll_every)
        while True:
            job = await self.status()
            if on_status is not None:
                on_status(job)
            if job.get("status") in TERMINAL_STATUSES:
                return job
            long_poll, pause = clock.next_round(job)
            if long_poll:
                started = time.monotonic()
                async with self._spool._results(self.id, long_poll):
                    pass  # the answer's arrival is the news; the lines are fetched when wanted
                pause = clock.pause_after(long_poll, time.monotonic() - started)
            if pause:
                await anyio.sleep(pause)

    def open_results(self, wait: float | None = None) -> AbstractAsyncContextManager[AsyncResults]:
        """``async with handle.open_results() as results``: an ``AsyncResults`` stream.

        With ``wait``, the daemon first waits up to that many seconds for the job to finish;
        ``results.complete`` says whether it had.
        """
        return self._spool._results(self.id, wait)

    async def iter_results(self, *, wait: float | None = None) -> AsyncIterator[Json]:
        """The Batch output lines finished so far, in input order, streamed.

        Wrap in ``contextlib.aclosing`` when stopping early, so the stream closes at once.
        """
        async with self._spool._results(self.id, wait) as results:
            async for line in results.aiter_lines():
                yield line

    async def results(self, *, wait: float | None = None) -> list[Json]:
        """All the Batch output lines finished so far, in input order."""
        return [line async for line in self.iter_results(wait=wait)]

    async def result(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Wait for the job; the response body for a one-request job, else all output lines.

        A one-request job whose request failed raises ``RequestFailed``.
        """
        job = await self.wait(timeout)
        lines = await self.results()
        if _is_single(self._single, job):
            return single_result(lines, job)
        return lines

    async def cancel(self) -> Json:
        """Cancel what has not run yet; the job object (a finished job is left as it is, with a
        ``message`` saying so)."""
        return await self._spool._call("POST", _job_url(self.id, "/cancel"))


# --- sync --------------------------------------------------------------------------------------


class SyncResults:
    """An open results stream (sync): the job's status when the daemon answered, then lines."""

    def __init__(self, response: httpx2.Response) -> None:
        self._response = response
        self.job_status: str | None = response.headers.get(JOB_STATUS_HEADER)

    @property
    def complete(self) -> bool:
        """Whether the job had finished, so that these are all its results."""
        return self.job_status in TERMINAL_STATUSES

    def iter_bytes(self) -> Iterator[bytes]:
        """The JSONL body as it arrives, for copying to a file without parsing."""
        yield from self._response.iter_bytes()

    def iter_lines(self) -> Iterator[Json]:
        """The Batch output lines, parsed, one at a time."""
        for text in self._response.iter_lines():
            line = parse_result_line(text)
            if line is not None:
                yield line


class SyncSpool:
    """The sync client, for scripts without an event loop; the same names as ``Spool``."""

    def __init__(
        self, socket: str | None = None, *, timeout: float = 60, config: str | None = None
    ) -> None:
        self.socket = _resolve_socket(socket, config)
        self.timeout = float(timeout)
        self._http = httpx2.Client(
            transport=httpx2.HTTPTransport(uds=self.socket),
            base_url="http://localhost",
            timeout=_client_timeout(self.timeout),
        )

    def __enter__(self) -> SyncSpool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def submit(
        self,
        request_or_requests: Mapping[str, Any] | Iterable[Mapping[str, Any]],
        *,
        deadline: Deadline | None = None,
        operation: str | None = None,
        tags: Mapping[str, str] | None = None,
        endpoint: str = DEFAULT_ENDPOINT,
        on_error: OnError = "reject",
        best_effort: bool = False,
    ) -> SyncJobHandle:
        """Hand over one request (a body, or a Batch item) or many; the job's handle.
        ``best_effort``: run it even if its deadline is shorter than any tier can meet."""
        submission = build_requests(request_or_requests, endpoint)
        payload = submit_payload(submission, deadline=deadline, operation=operation, tags=tags,
                                 on_error=on_error, best_effort=best_effort)
        job = self._call("POST", "/v1/jobs", content=orjson.dumps(payload),
                         headers={"content-type": "application/json"})
        return SyncJobHandle(self, job, single=submission.single)

    def submit_jsonl(
        self,
        source: bytes | os.PathLike[str] | Iterable[bytes],
        *,
        deadline: Deadline | None = None,
        operation: str | None = None,
        tags: Mapping[str, str] | None = None,
        on_error: OnError = "reject",
        size: int | None = None,
        best_effort: bool = False,
    ) -> SyncJobHandle:
        """Hand over a Batch input file as it is: its bytes, its path, or its chunks.

        A path or bytes are sent with their length; chunks of unknown ``size`` are sent chunked.
        """
        content, length = _sync_upload(source, size)
        headers = {"content-type": JSONL_CONTENT_TYPE}
        if length is not None:
            headers["content-length"] = str(length)
        query = jsonl_query(deadline=deadline, operation=operation, tags=tags, on_error=on_error,
                            best_effort=best_effort)
        job = self._call("POST", "/v1/jobs", content=content, headers=headers, params=query)
        return SyncJobHandle(self, job, single=None)

    def job(self, job_id: str) -> SyncJobHandle:
        """A handle on a job submitted earlier, by its id (nothing is asked of the daemon yet)."""
        return SyncJobHandle(self, {"id": job_id}, single=None)

    def jobs(self, limit: int = 20) -> list[Json]:
        """The most recent jobs, newest first."""
        listing = self._call("GET", "/v1/jobs", params={"limit": limit})
        return list(listing.get("data", []))

    def _call(self, method: str, url: str, **options: Any) -> Json:
        with _transport_errors(self.socket):
            response = self._http.request(method, url, **options)
        return _json_or_error(response)

    @contextmanager
    def _results(self, job_id: str, wait: float | None) -> Iterator[SyncResults]:
        url, timeout = _results_request(job_id, wait, self.timeout)
        with (
            _transport_errors(self.socket),
            self._http.stream("GET", url, timeout=_client_timeout(timeout)) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise error_from_response(response.status_code, response.content,
                                          response.headers)
            yield SyncResults(response)


def _sync_upload(
    source: bytes | os.PathLike[str] | Iterable[bytes], size: int | None
) -> tuple[bytes | Iterable[bytes], int | None]:
    if isinstance(source, bytes):
        return source, len(source)
    if isinstance(source, os.PathLike):
        return _read_file(source), os.stat(source).st_size
    return source, size


def _read_file(path: os.PathLike[str]) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(UPLOAD_CHUNK):
            yield chunk


class SyncJobHandle:
    """A submitted job (sync). ``submitted`` is the job object the daemon answered at
    submission (``rejected`` lists the lines ``on_error="skip"`` dropped, ``plan`` how many
    requests go to which tier and by when they are expected, ``warnings`` e.g. a best-effort
    deadline)."""

    def __init__(self, spool: SyncSpool, submitted: Json, *, single: bool | None) -> None:
        self.id: str = str(submitted["id"])
        self.submitted = submitted
        self.rejected: list[Json] = list(submitted.get("rejected") or [])
        self.plan: list[Json] = list(submitted.get("plan") or [])
        self.warnings: list[str] = list(submitted.get("warnings") or [])
        self._spool = spool
        self._single = single

    def __repr__(self) -> str:
        return f"SyncJobHandle({self.id!r})"

    def status(self) -> Json:
        """The job object now: status, counts by state and tier, cost and savings so far."""
        return self._spool._call("GET", _job_url(self.id))

    def wait(
        self,
        timeout: float | None = None,
        *,
        on_status: StatusCallback | None = None,
        poll_every: float = MAX_LONG_POLL,
    ) -> Json:
        """Wait until the job is completed or cancelled; its final job object.

        ``on_status`` sees the job object each round, at least every ``poll_every`` seconds,
        e.g. to draw progress (below 5 s the client polls the status rather than long-polling).
        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        clock = _WaitClock(self.id, timeout, poll_every)
        while True:
            job = self.status()
            if on_status is not None:
                on_status(job)
            if job.get("status") in TERMINAL_STATUSES:
                return job
            long_poll, pause = clock.next_round(job)
            if long_poll:
                started = time.monotonic()
                with self._spool._results(self.id, long_poll):
                    pass  # the answer's arrival is the news; the lines are fetched when wanted
                pause = clock.pause_after(long_poll, time.monotonic() - started)
            if pause:
                time.sleep(pause)

    def open_results(self, wait: float | None = None) -> AbstractContextManager[SyncResults]:
        """``with handle.open_results() as results``: a ``SyncResults`` stream.

        With ``wait``, the daemon first waits up to that many seconds for the job to finish;
        ``results.complete`` says whether it had.
        """
        return self._spool._results(self.id, wait)

    def iter_results(self, *, wait: float | None = None) -> Iterator[Json]:
        """The Batch output lines finished so far, in input order, streamed."""
        with self._spool._results(self.id, wait) as results:
            yield from results.iter_lines()

    def results(self, *, wait: float | None = None) -> list[Json]:
        """All the Batch output lines finished so far, in input order."""
        return list(self.iter_results(wait=wait))

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job; the response body for a one-request job, else all output lines.

        A one-request job whose request failed raises ``RequestFailed``.
        """
        job = self.wait(timeout)
        lines = self.results()
        if _is_single(self._single, job):
            return single_result(lines, job)
        return lines

    def cancel(self) -> Json:
        """Cancel what has not run yet; the job object (a finished job is left as it is, with a
        ``message`` saying so)."""
        return self._spool._call("POST", _job_url(self.id, "/cancel"))
