"""The jobs API on the socket: hand work over with a deadline, then ask for it back.

    POST /v1/jobs                      JSON {"requests": [...], "deadline", "operation", "tags",
                                       "on_error"} or a JSONL body (Batch input format) with
                                       ?deadline=&operation=&on_error=&tag.KEY=VALUE -> 202 job
    GET  /v1/jobs                      recent jobs
    GET  /v1/jobs/{id}                 the job: counts by state and tier, cost, deadline
    GET  /v1/jobs/{id}/results?wait=S  its finished requests, Batch output format (JSONL)
    POST /v1/jobs/{id}/cancel          cancel what has not run

Uploads are validated off the event loop (a worker thread), so a 100,000-line file does not
stall interactive calls while it is checked.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import orjson
from anyio.streams.memory import MemoryObjectSendStream
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from llmspool.cache.keys import CacheRules
from llmspool.deadlines import parse_deadline
from llmspool.errors import (
    ApiError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from llmspool.jobs.intake import Intake
from llmspool.jobs.model import NewJob
from llmspool.messages import CancelJob, Query, SubmitJob, Viewer, WaitForJob
from llmspool.planner import Planner
from llmspool.routing import ModelRouter
from llmspool.server.access import Access
from llmspool.server.bodies import read_limited, spool_limited
from llmspool.server.uvicorn_server import caller_of
from llmspool.store import jobs as jobs_sql
from llmspool.tracing import current_traceparent

MAX_WAIT = 600.0
KeeperInbox = MemoryObjectSendStream[Any]
_JSONL_TYPES = ("application/jsonl", "application/x-ndjson", "application/x-jsonlines",
                "application/ndjson", "text/jsonl")


def job_routes(
    keeper: KeeperInbox,
    router: ModelRouter,
    planner: Planner,
    database_path: Path,
    *,
    max_upload_size: int,
    max_line_size: int,
    cache_rules: CacheRules | None = None,
    on_short_deadline: str = "refuse",
    access: Access | None = None,
    spool_directory: Path | None = None,
) -> list[Route]:
    access = access or Access(())
    spool_directory = spool_directory or database_path.parent

    def viewer(request: Request) -> Viewer:
        return access.viewer(caller_of(request.scope))

    def _intake(request: Request, options: dict[str, Any]) -> Intake:
        # The cache key of each line depends on the job's operation and its caller.
        operation = _operation(request, options)
        return Intake(router, max_line_size=max_line_size, cache_rules=cache_rules,
                      operation=operation if isinstance(operation, str) else None,
                      uid=caller_of(request.scope).uid)

    async def submit(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in _JSONL_TYPES:
            options: dict[str, Any] = dict(request.query_params)
            options["tags"] = {k[4:]: v for k, v in request.query_params.items()
                               if k.startswith("tag.")}
            intake = _intake(request, options)
            # On disk as it arrives, checked a line at a time: an upload of any size (or one
            # refused) costs a chunk of memory, not its size.
            spool = await spool_limited(request, max_upload_size, _upload_too_large,
                                        spool_directory)
            with spool:
                await anyio.to_thread.run_sync(intake.add_jsonl_file, spool)
        elif content_type in ("application/json", ""):
            data = await read_limited(request, max_upload_size, _upload_too_large)
            options = _json_options(data)
            intake = _intake(request, options)
            await anyio.to_thread.run_sync(intake.add_items, options["requests"])
        else:
            raise UnsupportedMediaType(
                f"send a JSON body ({{\"requests\": [...]}}, content-type application/json) or "
                f"a Batch input file (content-type application/jsonl); got {content_type!r}",
                code="unsupported_content_type",
            )
        job = _new_job(request, intake, options, planner)
        too_short = _short_deadline(job, planner, options.get("on_short_deadline")
                                    or on_short_deadline)
        answer = await _ask(keeper, lambda reply: SubmitJob(job, reply))
        if too_short is not None:
            answer["best_effort"] = True
            answer["warnings"] = [too_short]
        if intake.refused:
            answer["rejected"] = [error.to_json() for error in intake.errors]
            answer["rejected_count"] = intake.refused
        return _json(answer, 202)

    async def list_jobs(request: Request) -> Response:
        limit = _int_param(request, "limit", 20, 1, 1000)
        return _json(await _query(keeper, "jobs", limit=limit, viewer=viewer(request)))

    async def get_job(request: Request) -> Response:
        return _json(await _job(keeper, request.path_params["job_id"], viewer(request)))

    async def results(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        wait = _float_param(request, "wait", 0.0, 0.0, MAX_WAIT)
        who = viewer(request)
        if wait > 0:
            with anyio.move_on_after(wait):
                await _ask(keeper, lambda reply: WaitForJob(job_id, reply, who))
        job = await _job(keeper, job_id, who)  # 404 for a job the caller may not see
        return StreamingResponse(
            _stream_results(database_path, job_id),
            media_type="application/jsonl",
            headers={"x-llmspool-job-status": job["status"]},
        )

    async def cancel(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        who = viewer(request)
        return _json(await _ask(keeper, lambda reply: CancelJob(job_id, reply, who)))

    return [
        Route("/v1/jobs", submit, methods=["POST"]),
        Route("/v1/jobs", list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/results", results, methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", cancel, methods=["POST"]),
    ]


def _operation(request: Request, options: dict[str, Any]) -> Any:
    return options.get("operation") or request.headers.get("x-llmspool-operation")


def _new_job(request: Request, intake: Intake, options: dict[str, Any], planner: Planner) -> NewJob:
    on_error = options.get("on_error", "reject")
    if on_error not in ("reject", "skip"):
        raise InvalidRequest("on_error must be 'reject' or 'skip'", param="on_error")
    if intake.errors and on_error == "reject":
        error = InvalidRequest(
            f"{intake.refused} of {intake.refused + len(intake.lines)} requests are invalid "
            "(every one is listed in error.lines); fix them, or pass on_error=skip to submit "
            "the valid ones",
            code="invalid_requests",
        )
        raise _WithLines(error, [e.to_json() for e in intake.errors])
    if not intake.lines:
        raise InvalidRequest("the job has no valid requests", code="empty_job")
    operation = _operation(request, options)
    if operation is not None and not isinstance(operation, str):
        raise InvalidRequest("operation must be a string", param="operation")
    tags = options.get("tags") or {}
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise InvalidRequest("tags must be an object of strings", param="tags")
    now = time.time()
    deadline = options.get("deadline")
    try:
        deadline_at = (
            parse_deadline(deadline, now) if isinstance(deadline, str)
            else now + planner.operation_deadline(operation) if deadline is None
            else parse_deadline(str(deadline), now)
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="deadline", code="invalid_deadline") from None
    return NewJob(
        id=f"job_{secrets.token_hex(12)}",
        created_at=now,
        deadline_at=deadline_at,
        operation=operation,
        tags=tags,
        uid=caller_of(request.scope).uid,
        lines=intake.lines,
        # Batches carrying the job's lines link their spans to the caller's trace.
        traceparent=request.headers.get("traceparent") or current_traceparent(),
    )


def _short_deadline(job: NewJob, planner: Planner, mode: Any) -> str | None:
    """Refuse a job whose deadline no tier can be expected to meet (the fastest tier's typical
    time for one of its models is longer); with ``best_effort``, the warning to answer with."""
    if mode not in ("refuse", "best_effort"):
        raise InvalidRequest("on_short_deadline must be 'refuse' or 'best_effort'",
                             param="on_short_deadline")
    room = job.deadline_at - job.created_at
    slowest = max({(line.provider, line.model) for line in job.lines},
                  key=lambda target: planner.fastest_expected(*target))
    needed = planner.fastest_expected(*slowest)
    if room >= needed:
        return None
    message = (f"the deadline leaves {room:.1f} s, but a {slowest[1]} request typically takes "
               f"{needed:.1f} s on the fastest tier allowed")
    if mode == "best_effort":
        return f"{message}; run as soon as possible, results may be flagged late"
    raise InvalidRequest(
        f"{message}, so no tier can be expected to meet it; give a longer deadline, set "
        "[planner] allow_priority = true if the model has a priority price, or pass "
        "on_short_deadline=best_effort (llmspool submit --best-effort) to run it anyway",
        param="deadline", code="deadline_too_short",
    )


class _WithLines(InvalidRequest):
    """A 400 whose error object also lists every bad line."""

    def __init__(self, error: InvalidRequest, lines: list[dict[str, object]]) -> None:
        super().__init__(error.message, code=error.code)
        self.lines = lines

    def body(self) -> bytes:
        document = orjson.loads(super().body())
        document["error"]["lines"] = self.lines
        return orjson.dumps(document)


def _json_options(data: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(document, dict) or not isinstance(document.get("requests"), list):
        raise InvalidRequest(
            'the body must be {"requests": [...], "deadline": "6h", ...}; for a Batch input '
            "file send it with content-type application/jsonl",
            param="requests", code="invalid_json",
        )
    return document


def _upload_too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the upload is {size} bytes or more, over the limit of {limit} bytes "
        "([jobs] max_upload_size); split it into several jobs",
        code="upload_too_large",
    )


async def _stream_results(database_path: Path, job_id: str) -> AsyncIterator[bytes]:
    # A read-only connection of its own: reading never waits on the keeper's writes (WAL).
    async with aiosqlite.connect(f"file:{database_path}?mode=ro", uri=True) as connection:
        async for chunk in jobs_sql.iter_results(connection, job_id):
            yield chunk


async def _ask(keeper: KeeperInbox, make: Any) -> dict[str, Any]:
    reply_in, reply_out = anyio.create_memory_object_stream[dict[str, Any] | ApiError](1)
    with reply_in, reply_out:
        try:
            await keeper.send(make(reply_in))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise ServiceUnavailable("llmspool is shutting down", code="shutting_down") from None
        answer = await reply_out.receive()
    if isinstance(answer, ApiError):
        raise answer
    return answer


async def _query(keeper: KeeperInbox, what: str, **params: Any) -> dict[str, Any]:
    return await _ask(keeper, lambda reply: Query(what, reply, params))


async def _job(keeper: KeeperInbox, job_id: str, viewer: Viewer) -> dict[str, Any]:
    answer = await _query(keeper, "job", id=job_id, viewer=viewer)
    if answer.get("error") == "not_found":
        raise NotFound(f"no job {job_id!r} (unknown, or deleted after [jobs] retention)",
                       code="job_not_found", param="id")
    return answer


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type="application/json")


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    return int(_float_param(request, name, default, low, high))


def _float_param(request: Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number from {low:g} to {high:g}",
                             param=name) from None
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be a number from {low:g} to {high:g}", param=name)
    return value
