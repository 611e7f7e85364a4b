"""The jobs API on the socket: hand work over with a deadline, then ask for it back.

    POST /v1/jobs                      JSON {"requests": [...], "deadline", "operation", "tags",
                                       "on_error"} or a JSONL body (Batch input format) with
                                       ?deadline=&operation=&on_error=&tag.KEY=VALUE -> 202 job
    GET  /v1/jobs                      recent jobs
    GET  /v1/jobs/{id}                 the job: counts by state and tier, cost, deadline, and
                                       the upstream batches carrying its requests
    GET  /v1/jobs/{id}/results?wait=S  its finished requests, Batch output format (JSONL)
    POST /v1/jobs/{id}/cancel          cancel what has not run

Uploads are validated off the event loop (a worker thread), so a 100,000-line file does not
stall interactive calls while it is checked. Results and carrying batches are read on a
read-only connection of the request's own to the store (SQLite or PostgreSQL), never waiting
on the job keeper's writes.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from llmspool.core.errors import (
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from llmspool.core.json_values import check_values
from llmspool.core.tracing import current_traceparent
from llmspool.jobs.intake import Intake
from llmspool.jobs.submission import JobRequest, JobSubmission, KeeperInbox, ask, list_jobs
from llmspool.messages import CancelJob, JobQuery, JobView, WaitForJob
from llmspool.server.access import Access
from llmspool.server.bodies import read_limited, spool_limited
from llmspool.server.uvicorn_server import caller_of
from llmspool.store import jobs as jobs_sql
from llmspool.store.backend import Backend, StoreLocation
from llmspool.store.connect import connected_async
from llmspool.store.records import Viewer

MAX_WAIT = 600.0
_JSONL_TYPES = ("application/jsonl", "application/x-ndjson", "application/x-jsonlines",
                "application/ndjson", "text/jsonl")


def job_routes(
    submission: JobSubmission,
    store: StoreLocation,
    *,
    max_upload_size: int,
    access: Access | None = None,
    spool_directory: Path | None = None,
) -> list[Route]:
    access = access or Access(())
    # Uploads are spooled in the state directory (the daemon passes it); a caller without
    # one spools next to a SQLite store, or in the system's temporary directory.
    spool_directory = spool_directory or (
        store.path.parent if store.backend is Backend.SQLITE else Path(tempfile.gettempdir()))
    keeper = submission.keeper

    def viewer(request: Request) -> Viewer:
        return access.viewer(caller_of(request.scope))

    async def submit(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in _JSONL_TYPES:
            options: dict[str, Any] = dict(request.query_params)
            options["tags"] = {k[4:]: v for k, v in request.query_params.items()
                               if k.startswith("tag.")}
            asked = _job_request(request, options)
            intake = submission.intake(asked)
            # On disk as it arrives, checked a line at a time: an upload of any size (or one
            # refused) costs a chunk of memory, not its size.
            spool = await spool_limited(request, max_upload_size, _upload_too_large,
                                        spool_directory)
            with spool:
                await anyio.to_thread.run_sync(intake.add_jsonl_file, spool)
        elif content_type in ("application/json", ""):
            data = await read_limited(request, max_upload_size, _upload_too_large)
            options = _json_options(data, submission.max_json_values)
            asked = _job_request(request, options)
            intake = submission.intake(asked)
            await anyio.to_thread.run_sync(intake.add_items, options["requests"])
        else:
            raise UnsupportedMediaType(
                f"send a JSON body ({{\"requests\": [...]}}, content-type application/json) or "
                f"a Batch input file (content-type application/jsonl); got {content_type!r}",
                code="unsupported_content_type",
            )
        _check_errors(intake, options)
        job, too_short = submission.new_job(intake, asked)
        answer = await submission.submit(job)
        if too_short is not None:
            answer["best_effort"] = True
            answer["warnings"] = [too_short]
        if intake.refused:
            answer["rejected"] = [error.to_json() for error in intake.errors]
            answer["rejected_count"] = intake.refused
        return _json(answer, 202)

    async def jobs(request: Request) -> Response:
        limit = _int_param(request, "limit", 20, 1, 1000)
        return _json(await list_jobs(keeper, limit, viewer(request)))

    async def get_job(request: Request) -> Response:
        job = await _job(keeper, request.path_params["job_id"], viewer(request))
        if job["counts"].get("in_batch"):
            job["batches"] = await _carrying_batches(store, job["id"])
        return _json(job)

    async def results(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        wait = _float_param(request, "wait", 0.0, 0.0, MAX_WAIT)
        who = viewer(request)
        if wait > 0:
            with anyio.move_on_after(wait):
                await ask(keeper, lambda reply: WaitForJob(job_id, reply, who))
        job = await _job(keeper, job_id, who)  # 404 for a job the caller may not see
        return StreamingResponse(
            _stream_results(store, job_id),
            media_type="application/jsonl",
            headers={"x-llmspool-job-status": job["status"]},
        )

    async def cancel(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        who = viewer(request)
        return _json(await ask(keeper, lambda reply: CancelJob(job_id, reply, who)))

    return [
        Route("/v1/jobs", submit, methods=["POST"]),
        Route("/v1/jobs", jobs, methods=["GET"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/results", results, methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", cancel, methods=["POST"]),
    ]


def _job_request(request: Request, options: dict[str, Any]) -> JobRequest:
    operation = options.get("operation") or request.headers.get("x-llmspool-operation")
    if operation is not None and not isinstance(operation, str):
        raise InvalidRequest("operation must be a string", param="operation")
    tags = options.get("tags") or {}
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise InvalidRequest("tags must be an object of strings", param="tags")
    deadline = options.get("deadline")
    if deadline is not None and not isinstance(deadline, str | int | float):
        raise InvalidRequest("deadline must be a duration (\"6h\"), a time or seconds",
                             param="deadline", code="invalid_deadline")
    mode = options.get("on_short_deadline")
    return JobRequest(
        uid=caller_of(request.scope).uid, operation=operation, tags=tags, deadline=deadline,
        on_short_deadline=mode if mode is None else str(mode),
        # Batches carrying the job's lines link their spans to the caller's trace.
        traceparent=request.headers.get("traceparent") or current_traceparent(),
    )


def _check_errors(intake: Intake, options: dict[str, Any]) -> None:
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


class _WithLines(InvalidRequest):
    """A 400 whose error object also lists every bad line."""

    def __init__(self, error: InvalidRequest, lines: list[dict[str, object]]) -> None:
        super().__init__(error.message, code=error.code)
        self.lines = lines

    def body(self) -> bytes:
        document = orjson.loads(super().body())
        document["error"]["lines"] = self.lines
        return orjson.dumps(document)


def _json_options(data: bytes, max_values: int) -> dict[str, Any]:
    check_values(data, max_values, advice="; send the requests as a Batch input file "
                 "(content-type application/jsonl), which is read a line at a time")
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


async def _carrying_batches(store: StoreLocation, job_id: str) -> list[dict[str, Any]]:
    async with connected_async(store, read_only=True) as connection:
        return await jobs_sql.carrying_batches(connection, job_id)


async def _stream_results(store: StoreLocation, job_id: str) -> AsyncIterator[bytes]:
    # A read-only connection of its own: reading never waits on the keeper's writes.
    async with connected_async(store, read_only=True) as connection:
        async for chunk in jobs_sql.iter_results(connection, job_id):
            yield chunk


async def _job(keeper: KeeperInbox, job_id: str, viewer: Viewer) -> JobView:
    """The job, or the keeper's 404 for one unknown, forgotten or another user's."""
    return await ask(keeper, lambda reply: JobQuery(job_id, viewer, reply))


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
