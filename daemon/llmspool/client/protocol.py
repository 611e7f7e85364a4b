"""The jobs API without I/O: the requests to send, and what the daemon's answers mean.

Both clients (``llmspool.client.aio``, ``llmspool.client.sync``) build every request here, as a
``Call`` or a results URL, and read every answer with the functions here; they only move bytes.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Required, TypedDict, Unpack
from urllib.parse import quote

import orjson

from llmspool.client.errors import Json, RequestFailed, SpoolError
from llmspool.core.states import JOB_TERMINAL, REQUEST_TERMINAL
from llmspool.core.units import format_duration

OnError = Literal["reject", "skip"]
Deadline = str | int | float | timedelta | datetime
StatusCallback = Callable[[Json], None]
# What a request body may be: bytes, or chunks from a sync or an async source, as httpx2 takes.
Content = bytes | Iterable[bytes] | AsyncIterable[bytes]

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


@dataclass(frozen=True)
class Call:
    """One ordinary request to the daemon, answered by a JSON object (or an error)."""

    method: str
    url: str
    content: Content | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    params: tuple[tuple[str, str | int], ...] = ()


class JobOptions(TypedDict, total=False):
    """How a job is to be run, as ``submit`` and ``submit_jsonl`` take it."""

    deadline: Required[Deadline | None]
    operation: str | None
    tags: Mapping[str, str] | None
    on_error: OnError
    best_effort: bool


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


def submit_call(submission: Submission, **options: Unpack[JobOptions]) -> Call:
    """``POST /v1/jobs`` with these items as a Batch input file, which the daemon checks a
    line at a time: a JSON body (``submit_payload``) is parsed whole, so the daemon refuses
    one of more than ``[daemon] max_json_values`` values (some 100,000 requests)."""
    lines = b"".join(orjson.dumps(item) + b"\n" for item in submission.items)
    return jsonl_call(lines, None, _unused, **options)


def _unused(_path: os.PathLike[str]) -> Content:
    raise AssertionError("submit_call sends bytes, never a file")


def jsonl_call(
    source: Content | os.PathLike[str],
    size: int | None,
    read_file: Callable[[os.PathLike[str]], Content],
    **options: Unpack[JobOptions],
) -> Call:
    """``POST /v1/jobs`` with a Batch input file as the body: its bytes, its chunks, or a path
    read with the transport's ``read_file``. Bytes and files are sent with their length; chunks
    of unknown ``size`` are sent chunked."""
    headers = {"content-type": JSONL_CONTENT_TYPE}
    if isinstance(source, bytes):
        size = len(source)
    elif isinstance(source, os.PathLike):
        size = os.stat(source).st_size
        source = read_file(source)
    if size is not None:
        headers["content-length"] = str(size)
    return Call("POST", "/v1/jobs", content=source, headers=headers,
                params=tuple(jsonl_query(**options)))


def jobs_call(limit: int) -> Call:
    """``GET /v1/jobs``: the most recent jobs."""
    return Call("GET", "/v1/jobs", params=(("limit", limit),))


def status_call(job_id: str) -> Call:
    """``GET /v1/jobs/{id}``: the job object now."""
    return Call("GET", job_url(job_id))


def cancel_call(job_id: str) -> Call:
    """``POST /v1/jobs/{id}/cancel``."""
    return Call("POST", job_url(job_id, "/cancel"))


def job_url(job_id: str, suffix: str = "") -> str:
    """The URL of a job, or of one of its parts (``suffix``)."""
    # Quoted so that a mistyped id with a slash or '?' reaches the daemon as an unknown id.
    return f"/v1/jobs/{quote(job_id, safe='')}{suffix}"


def results_request(job_id: str, wait: float | None, timeout: float) -> tuple[str, float]:
    """The URL of a results request and how long to let it take."""
    if wait is None or wait <= 0:
        return job_url(job_id, "/results"), timeout
    seconds = min(MAX_LONG_POLL, math.ceil(wait))
    return job_url(job_id, f"/results?wait={seconds}"), timeout + seconds + LONG_POLL_GRACE


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


def is_single(single: bool | None, job: Mapping[str, Any]) -> bool:
    """A handle made by ``submit`` knows; one made from an id goes by the job's size."""
    if single is not None:
        return single
    return int((job.get("counts") or {}).get("total", 0)) == 1


class SubmittedJob:
    """What a job handle, async or sync, knows without asking the daemon (see ``JobHandle``);
    ``_single`` is ``None`` for a handle made from an id, which cannot know."""

    def __init__(self, submitted: Json, *, single: bool | None) -> None:
        self.id: str = str(submitted["id"])
        self.submitted = submitted
        self.rejected: list[Json] = list(submitted.get("rejected") or [])
        self.plan: list[Json] = list(submitted.get("plan") or [])
        self.warnings: list[str] = list(submitted.get("warnings") or [])
        self._single = single

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"
