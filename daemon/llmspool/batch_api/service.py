"""OpenAI's Files and Batches API, served by the spooler: a batch is a job.

``BatchApi`` owns the ``api_files`` and ``api_batches`` rows (on a connection of its own to the
store, whichever its backend; no money is written here) and the bytes in ``<state_dir>/files``,
which stay on the daemon's disk even when the store is PostgreSQL:

- ``create_batch`` checks the input file line by line, as ``POST /v1/jobs`` does, and as OpenAI
  does: one bad line fails the whole batch (status ``failed``, each bad line in ``errors`` with
  its number), and no job is made. Otherwise the lines become one job, whose deadline is the
  completion window unless the caller gives ``x-llmspool-deadline`` (or
  ``metadata["llmspool_deadline"]``); the spooler then chooses tiers, caches, deduplicates,
  escalates and bills exactly as for any job.
- A watcher task per open batch waits for its job to end, then writes the output file (the
  requests that succeeded) and the error file (the others) in OpenAI's output format, and keeps
  the final counts and token usage: these outlive the job's ``[jobs] retention``.
- An hourly sweep deletes files past their ``expires_at`` and batch objects older than
  ``[files] retention``; at start, files a crash left without a row are removed.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from llmspool.batch_api.files import FileDirectory, file_object, new_file_id
from llmspool.batch_api.objects import batch_object, request_counts
from llmspool.core.calls import Endpoint
from llmspool.core.clock import SYSTEM_CLOCK, Clock
from llmspool.core.config.sections import FilesConfig
from llmspool.core.errors import ApiError, InvalidRequest, NotFound
from llmspool.core.states import BatchStatus, JobStatus
from llmspool.jobs.submission import JobRequest, JobSubmission, ask
from llmspool.messages import CancelJob, JobQuery, JobView, PlanGroupView, WaitForJob
from llmspool.store import api_files as sql
from llmspool.store.api_files import BatchRow, FileRow
from llmspool.store.backend import StoreLocation
from llmspool.store.connect import connected_async
from llmspool.store.connections import AsyncConnection
from llmspool.store.records import Viewer

log = logging.getLogger(__name__)

SWEEP_EVERY = 3600.0
COMPLETION_WINDOWS = {"24h": 86400.0}
BATCH_ENDPOINTS = {endpoint.value: endpoint for endpoint in Endpoint}
OPENAI_ONLY_ENDPOINTS = ("/v1/completions", "/v1/moderations", "/v1/images/generations",
                         "/v1/images/edits", "/v1/videos")
_EVERYONE = Viewer(None, admin=True)


class BatchApi:
    """The Files and Batches API objects of every user, and the watchers of open batches."""

    def __init__(self, state_dir: Path, store: StoreLocation, submission: JobSubmission,
                 config: FilesConfig, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self._clock = clock  # the daemon's: when objects expire, batches end
        self.files = FileDirectory(state_dir)
        self._store = store
        self._submission = submission
        self._connection: AsyncConnection | None = None
        self._write_lock = anyio.Lock()
        self._watchers: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled: resume watching open batches, sweep expired objects."""
        self.files.create()
        async with connected_async(self._store) as connection:
            self._connection = connection
            removed = self.files.remove_orphans(await sql.all_file_ids(connection))
            if removed:
                log.info("removed %d files a crash left without a record", removed)
            async with anyio.create_task_group() as watchers:
                self._watchers = watchers
                for row in await sql.open_batches(connection):
                    watchers.start_soon(self._watch, row)
                task_status.started()
                while True:
                    await self._sweep()
                    await self._clock.sleep(SWEEP_EVERY)

    @property
    def _db(self) -> AsyncConnection:
        if self._connection is None:
            raise RuntimeError("BatchApi.run has not started")
        return self._connection

    # --- files ---------------------------------------------------------------------------

    async def add_file(self, temporary: IO[bytes], *, size: int, filename: str, purpose: str,
                       uid: int | None, expires_in: float | None) -> FileRow:
        """Keep an uploaded file (written to ``temporary``) under a new id."""
        now = self._clock.now()
        row = FileRow(new_file_id(), uid, filename, purpose, size, now,
                      now + (expires_in if expires_in is not None else self.config.retention))
        await anyio.to_thread.run_sync(self.files.keep, temporary, row.id)
        async with self._write_lock:
            await sql.insert_file(self._db, row)
        return row

    async def file(self, file_id: str, viewer: Viewer) -> FileRow:
        row = await sql.get_file(self._db, file_id, viewer)
        if row is None or row.expires_at < self._clock.now():
            raise NotFound(f"no file {file_id!r} (unknown, deleted, expired, or another "
                           "user's)", param="file_id", code="file_not_found")
        return row

    async def list_files(self, viewer: Viewer, *, purpose: str | None, limit: int,
                         ascending: bool, after: str | None) -> dict[str, Any]:
        rows = await sql.list_files(self._db, viewer, purpose=purpose, limit=limit,
                                    ascending=ascending, after=after)
        page = [file_object(row) for row in rows[:limit]]
        # The spec types first_id and last_id as strings, so an empty page names none as "".
        return {"object": "list", "data": page,
                "first_id": page[0]["id"] if page else "",
                "last_id": page[-1]["id"] if page else "",
                "has_more": len(rows) > limit}

    async def delete_file(self, file_id: str, viewer: Viewer) -> dict[str, Any]:
        row = await self.file(file_id, viewer)
        async with self._write_lock:
            await sql.delete_file(self._db, row.id)
        self.files.remove(row.id)
        return {"id": row.id, "object": "file", "deleted": True}

    # --- batches -------------------------------------------------------------------------

    async def create_batch(self, body: dict[str, Any], request: JobRequest,
                           viewer: Viewer) -> tuple[dict[str, Any], dict[str, str]]:
        """The new Batch object and its ``x-llmspool-*`` headers (the job and its plan)."""
        endpoint, window, metadata = _batch_params(body)
        try:
            input_file = await self.file(body["input_file_id"], viewer)
        except NotFound as exc:
            raise NotFound(exc.message, param="input_file_id", code=exc.code) from None
        if input_file.purpose != "batch":
            raise InvalidRequest(
                f"file {input_file.id} was uploaded with purpose {input_file.purpose!r}; a "
                "batch's input file needs purpose 'batch'", param="input_file_id",
                code="invalid_file_purpose")
        metadata = metadata or None
        tags = {k: v for k, v in (metadata or {}).items() if not k.startswith("llmspool_")}
        request = replace(
            request, tags=tags,
            deadline=request.deadline or (metadata or {}).get("llmspool_deadline")
            or f"{int(COMPLETION_WINDOWS[window])}s",
            operation=request.operation or (metadata or {}).get("llmspool_operation"))
        intake = self._submission.intake(request, BATCH_ENDPOINTS[endpoint])
        path = self.files.path_of(input_file.id)
        try:
            with path.open("rb") as stream:
                await anyio.to_thread.run_sync(intake.add_jsonl_file, stream)
        except FileNotFoundError:
            raise NotFound(f"file {input_file.id} was deleted", param="input_file_id",
                           code="file_not_found") from None
        now = self._clock.now()
        row = BatchRow(
            id=f"batch_{secrets.token_hex(12)}", uid=request.uid, job_id=None,
            input_file_id=input_file.id, endpoint=endpoint, completion_window=window,
            metadata=metadata, created_at=now, expires_at=now + COMPLETION_WINDOWS[window],
            deadline_at=None, failed_at=None, errors=None, cancelling_at=None,
            finished_at=None, final_status=None, output_file_id=None, error_file_id=None,
            request_counts=None, usage=None)
        errors = [{"code": error.code, "message": error.message, "param": None,
                   "line": error.line} for error in intake.errors]
        if not errors and not intake.lines:
            errors = [{"code": "empty_file", "message": f"file {input_file.id} has no "
                       "requests", "param": "input_file_id", "line": None}]
        if errors:
            # As OpenAI does: the batch exists, failed at validation, and no request runs.
            row = replace(row, failed_at=now, errors=errors)
            async with self._write_lock:
                await sql.insert_batch(self._db, row)
            return batch_object(row, None), {}
        job, too_short = self._submission.new_job(intake, request)
        # The row first: a crash before the job is stored leaves a batch that reports itself
        # lost (its creator got no answer), never a job no batch shows.
        row = replace(row, job_id=job.id, deadline_at=job.deadline_at)
        async with self._write_lock:
            await sql.insert_batch(self._db, row)
        try:
            answer = await self._submission.submit(job)
        except BaseException:
            with anyio.CancelScope(shield=True):
                async with self._write_lock:
                    await sql.delete_batch(self._db, row.id)
            raise
        if self._watchers is not None:
            self._watchers.start_soon(self._watch, row)
        headers = {"x-llmspool-job-id": job.id,
                   "x-llmspool-plan": _plan_header(answer.get("plan", []))}
        if too_short is not None:
            headers["x-llmspool-warning"] = too_short
        return batch_object(row, answer), headers

    async def batch(self, batch_id: str, viewer: Viewer) -> dict[str, Any]:
        row = await self._batch_row(batch_id, viewer)
        return batch_object(row, await self._job_of(row))

    async def list_batches(self, viewer: Viewer, *, limit: int, after: str | None
                           ) -> dict[str, Any]:
        rows = await sql.list_batches(self._db, viewer, limit=limit, after=after)
        page = [batch_object(row, await self._job_of(row)) for row in rows[:limit]]
        document: dict[str, Any] = {"object": "list", "data": page,
                                    "has_more": len(rows) > limit}
        if page:
            document["first_id"], document["last_id"] = page[0]["id"], page[-1]["id"]
        return document

    async def cancel_batch(self, batch_id: str, viewer: Viewer) -> dict[str, Any]:
        """Stop what has not run: the job is cancelled; the batch reports ``cancelling`` until
        its files are written, then ``cancelled``."""
        row = await self._batch_row(batch_id, viewer)
        if row.job_id is None or row.final_status is not None:
            status = batch_object(row, None)["status"]
            raise InvalidRequest(f"batch {row.id} is {status}; only a batch in progress can "
                                 "be cancelled", param="batch_id", code="batch_not_cancellable")
        job_id = row.job_id
        async with self._write_lock:
            await sql.set_cancelling(self._db, row.id, self._clock.now())
        # A job already ended and forgotten: its watcher finalizes the batch.
        with contextlib.suppress(NotFound):
            await ask(self._submission.keeper, lambda reply: CancelJob(job_id, reply, _EVERYONE))
        return await self.batch(row.id, viewer)

    async def _batch_row(self, batch_id: str, viewer: Viewer) -> BatchRow:
        row = await sql.get_batch(self._db, batch_id, viewer)
        if row is None:
            raise NotFound(f"no batch {batch_id!r} (unknown, deleted after [files] retention, "
                           "or another user's)", param="batch_id", code="batch_not_found")
        return row

    async def _job_of(self, row: BatchRow) -> JobView | None:
        if row.job_id is None or row.final_status is not None:
            return None
        job_id = row.job_id
        try:
            return await ask(self._submission.keeper,
                             lambda reply: JobQuery(job_id, _EVERYONE, reply))
        except NotFound:  # ended and forgotten: its watcher finalizes the batch
            return None

    # --- finishing -----------------------------------------------------------------------

    async def _watch(self, row: BatchRow) -> None:
        """Wait for the batch's job to end, then write its output and error files."""
        assert row.job_id is not None
        job_id = row.job_id
        try:
            job = await ask(self._submission.keeper,
                            lambda reply: WaitForJob(job_id, reply, _EVERYONE))
        except NotFound:
            await self._lost(row)
            return
        except ApiError:
            return  # the daemon is stopping: watched again at the next start
        try:
            await self._finalize(row, job)
        except OSError as exc:
            log.error("could not write the files of batch %s (%s); it stays finalizing "
                      "until the next start", row.id, exc)

    async def _finalize(self, row: BatchRow, job: JobView) -> None:
        assert row.job_id is not None
        now = self._clock.now()
        expires_at = now + self.config.retention
        files: dict[bool, tuple[IO[bytes], list[int]]] = {}
        try:
            async for succeeded, line in sql.iter_result_lines(self._db, row.job_id):
                if succeeded not in files:
                    files[succeeded] = (self.files.temporary(), [0])
                sink, size = files[succeeded]
                sink.write(line)
                sink.write(b"\n")
                size[0] += len(line) + 1
            kept: dict[bool, FileRow] = {}
            for succeeded, (sink, size) in files.items():
                kind = "output" if succeeded else "error"
                kept[succeeded] = FileRow(new_file_id(), row.uid, f"{row.id}_{kind}.jsonl",
                                          "batch_output", size[0], now, expires_at)
                await anyio.to_thread.run_sync(self.files.keep, sink, kept[succeeded].id)
        except BaseException:
            for sink, _size in files.values():
                self.files.discard(sink)
            raise
        usage = await sql.job_usage(self._db, row.job_id)
        counts = request_counts(job)
        status = (BatchStatus.CANCELLED if job["status"] == JobStatus.CANCELLED
                  else BatchStatus.COMPLETED)
        with anyio.CancelScope(shield=True):
            async with self._write_lock:
                await sql.finalize_batch(
                    self._db, row.id, status=status,
                    finished_at=job.get("finished_at") or now,
                    output=kept.get(True), error=kept.get(False), counts=counts, usage=usage)
        log.info("batch %s %s: %d succeeded, %d failed", row.id, status, counts["completed"],
                 counts["failed"])

    async def _lost(self, row: BatchRow) -> None:
        """A batch whose job is gone: never stored (a crash while it was created), or
        deleted by ``[jobs] retention`` before the daemon saw it end."""
        now = self._clock.now()
        error = {"code": "batch_lost", "message": "the batch's job is gone (the daemon stopped "
                 "while creating it, or it ended and was deleted while the daemon was down); "
                 "create the batch again", "param": None, "line": None}
        async with self._write_lock:
            await sql.fail_batch(self._db, row.id, now, [error])

    async def _sweep(self) -> None:
        now = self._clock.now()
        expired = await sql.expired_files(self._db, now)
        old = await sql.batches_created_before(self._db, now - self.config.retention)
        async with self._write_lock:
            for file_id in expired:
                await sql.delete_file(self._db, file_id)
            for batch in old:
                await sql.delete_batch(self._db, batch.id)
        for file_id in expired:
            self.files.remove(file_id)
        if expired or old:
            log.info("deleted %d expired files and %d batches older than [files] retention",
                     len(expired), len(old))


def _batch_params(body: dict[str, Any]) -> tuple[str, str, dict[str, str] | None]:
    """``endpoint``, ``completion_window`` and ``metadata`` of a create request, checked as
    OpenAI checks them."""
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise InvalidRequest(f"missing required parameter: {name!r} (a string)",
                                 param=name, code="missing_required_parameter")
    endpoint = body["endpoint"]
    if endpoint not in BATCH_ENDPOINTS:
        hint = (" (OpenAI batches it, but llmspool does not forward it)"
                if endpoint in OPENAI_ONLY_ENDPOINTS else "")
        raise InvalidRequest(
            f"endpoint {endpoint!r} is not supported{hint}; llmspool batches "
            f"{', '.join(BATCH_ENDPOINTS)}", param="endpoint", code="unsupported_endpoint")
    window = body["completion_window"]
    if window not in COMPLETION_WINDOWS:
        raise InvalidRequest(
            f"completion_window must be '24h' (got {window!r}); for another deadline send the "
            "x-llmspool-deadline header or metadata llmspool_deadline (e.g. '2h')",
            param="completion_window", code="invalid_completion_window")
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and len(metadata) <= 16
        and all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                for k, v in metadata.items())):
        raise InvalidRequest("metadata must be at most 16 string pairs (keys up to 64 "
                             "characters, values up to 512)", param="metadata",
                             code="invalid_metadata")
    return endpoint, window, metadata


def _plan_header(plan: list[PlanGroupView]) -> str:
    """``x-llmspool-plan``: ``tier:model=requests`` groups, comma-separated (the full plan,
    with expected times, is in the ``POST /v1/jobs`` answer's shape)."""
    return ",".join(f"{group['tier']}:{group['model']}={group['requests']}" for group in plan)
