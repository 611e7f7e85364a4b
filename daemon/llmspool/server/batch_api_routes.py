"""OpenAI's Files and Batches API on the socket, so an existing Batch API script works unchanged.

    POST   /v1/files                   multipart: file (.jsonl), purpose=batch -> File
    GET    /v1/files?purpose=&limit=&order=&after=
    GET    /v1/files/{id}              File
    GET    /v1/files/{id}/content      its bytes, streamed from disk
    DELETE /v1/files/{id}
    POST   /v1/batches                 {input_file_id, endpoint, completion_window, metadata}
    GET    /v1/batches?limit=&after=
    GET    /v1/batches/{id}
    POST   /v1/batches/{id}/cancel

A batch is a job (``batch_api/service.py``); ``x-llmspool-deadline`` (a duration or a time),
``x-llmspool-operation`` and ``x-llmspool-on-short-deadline`` on ``POST /v1/batches`` work as
for ``POST /v1/jobs``, and its answer names the job (``x-llmspool-job-id``) and its tier plan
(``x-llmspool-plan``). Files and batches are their uploader's: another user gets 404.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from llmspool.batch_api.files import file_object
from llmspool.batch_api.service import BatchApi
from llmspool.core.errors import InvalidRequest, PayloadTooLarge
from llmspool.core.multipart import FormReader
from llmspool.core.tracing import current_traceparent
from llmspool.jobs.submission import JobRequest
from llmspool.server.access import Access
from llmspool.server.bodies import read_limited
from llmspool.server.uvicorn_server import caller_of
from llmspool.store.records import Viewer

MAX_CREATE_BODY = 64 * 1024  # {input_file_id, endpoint, completion_window, metadata}
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MIN_EXPIRY, MAX_EXPIRY = 3600, 30 * 86400


def batch_api_routes(api: BatchApi, access: Access) -> list[Route]:
    def viewer(request: Request) -> Viewer:
        return access.viewer(caller_of(request.scope))

    async def upload(request: Request) -> Response:
        limit = api.config.max_size

        def too_large(_limit: int) -> PayloadTooLarge:
            return PayloadTooLarge(
                f"the file is over the limit of {limit} bytes ([files] max_size); split it "
                "into several batches", param="file", code="file_too_large")

        temporary = api.files.temporary()
        try:
            reader = FormReader(request.headers.get("content-type", "").encode(),
                                lambda: temporary, limit, too_large)
            async for chunk in request.stream():
                reader.write(chunk)
            form = reader.finish()
            filename = _filename(form.filename)
            purpose = _purpose(form.fields.get("purpose"), filename)
            row = await api.add_file(temporary, size=form.size, filename=filename,
                                     purpose=purpose, uid=caller_of(request.scope).uid,
                                     expires_in=_expires_in(form.fields))
        except BaseException:
            api.files.discard(temporary)
            raise
        return _json(file_object(row))

    async def list_files(request: Request) -> Response:
        order = request.query_params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest("order must be 'asc' or 'desc'", param="order")
        return _json(await api.list_files(
            viewer(request), purpose=request.query_params.get("purpose"),
            limit=_limit(request, 10_000, 10_000), ascending=order == "asc",
            after=request.query_params.get("after")))

    async def get_file(request: Request) -> Response:
        return _json(file_object(await api.file(request.path_params["file_id"],
                                                viewer(request))))

    async def file_content(request: Request) -> Response:
        row = await api.file(request.path_params["file_id"], viewer(request))
        return FileResponse(api.files.path_of(row.id), media_type="application/octet-stream")

    async def delete_file(request: Request) -> Response:
        return _json(await api.delete_file(request.path_params["file_id"], viewer(request)))

    async def create_batch(request: Request) -> Response:
        data = await read_limited(request, MAX_CREATE_BODY, _body_too_large)
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"the body is not valid JSON ({exc})",
                                 code="invalid_json") from None
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object with input_file_id, endpoint "
                                 "and completion_window", code="invalid_json")
        headers = request.headers
        asked = JobRequest(
            uid=caller_of(request.scope).uid,
            operation=headers.get("x-llmspool-operation"),
            deadline=headers.get("x-llmspool-deadline"),
            on_short_deadline=headers.get("x-llmspool-on-short-deadline"),
            traceparent=headers.get("traceparent") or current_traceparent(),
        )
        batch, extra = await api.create_batch(body, asked, viewer(request))
        return _json(batch, headers=extra)

    async def list_batches(request: Request) -> Response:
        return _json(await api.list_batches(viewer(request), limit=_limit(request, 100, 20),
                                            after=request.query_params.get("after")))

    async def get_batch(request: Request) -> Response:
        return _json(await api.batch(request.path_params["batch_id"], viewer(request)))

    async def cancel_batch(request: Request) -> Response:
        return _json(await api.cancel_batch(request.path_params["batch_id"], viewer(request)))

    return [
        Route("/v1/files", upload, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", get_file, methods=["GET"]),
        Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
        Route("/v1/batches", create_batch, methods=["POST"]),
        Route("/v1/batches", list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", get_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
    ]


def _filename(filename: str | None) -> str:
    if filename is None:  # no file part
        raise InvalidRequest("missing required parameter: 'file'", param="file",
                             code="missing_required_parameter")
    return filename


def _purpose(purpose: str | None, filename: str) -> str:
    if purpose is None:
        raise InvalidRequest("missing required parameter: 'purpose'", param="purpose",
                             code="missing_required_parameter")
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(f"invalid purpose {purpose!r}; use one of "
                             f"{', '.join(UPLOAD_PURPOSES)}", param="purpose",
                             code="invalid_purpose")
    if purpose != "batch":
        raise InvalidRequest(f"llmspool keeps batch input files only; upload with "
                             f"purpose='batch' (got {purpose!r})", param="purpose",
                             code="unsupported_purpose")
    if not filename.endswith(".jsonl"):
        raise InvalidRequest("invalid file format for the Batch API: the file name must end "
                             f"in .jsonl (got {filename!r})", param="file",
                             code="invalid_file_format")
    return purpose


def _expires_in(fields: dict[str, str]) -> float | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("expires_after.anchor must be 'created_at'",
                             param="expires_after.anchor")
    if seconds is None or not seconds.isdigit() or \
            not MIN_EXPIRY <= int(seconds) <= MAX_EXPIRY:
        raise InvalidRequest(f"expires_after.seconds must be a whole number from {MIN_EXPIRY} "
                             f"to {MAX_EXPIRY}", param="expires_after.seconds")
    return float(seconds)


def _limit(request: Request, high: int, default: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        raise InvalidRequest(f"limit must be a whole number from 1 to {high}", param="limit")
    return int(raw)


def _body_too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the body is {size} bytes or more, over {limit}",
                           code="body_too_large")


def _json(payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), 200, media_type="application/json", headers=headers)
