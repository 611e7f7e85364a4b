"""The job keeper actor: deferred work from its acknowledgement to its last result.

- A submitted job is written (job and requests, one transaction) before it is acknowledged.
- Queued requests wait in a heap ordered by deadline; at most ``[jobs] max_in_flight`` of them
  are sent at a time, each as a ``Call`` through the request queue (so interactive calls and
  deferred ones share the planner, the flex policy and the ledger).
- A retryable failure (5xx, 429 rate limit, no connection) is tried again with backoff, up to
  ``[jobs] max_attempts`` and never past the deadline.
- Results are stored in group commits, each guarded by the request's state, so a request is
  stored once even if its call is repeated after a crash: calls in flight at a crash are
  simply still ``queued`` in the store, and are sent again on the next start.
- Counts per job are kept in memory, mirroring the store, so a status answer on a job of
  100,000 requests costs no query.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
import anyio
import orjson
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from opentelemetry.context import Context

from llmspool.calls import Endpoint
from llmspool.config import JobsConfig
from llmspool.errors import (
    ApiError,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    UpstreamError,
    UpstreamUnreachable,
)
from llmspool.jobs.model import NewJob
from llmspool.messages import (
    Answer,
    Call,
    Caller,
    CancelJob,
    Failure,
    Query,
    Reply,
    SubmitJob,
    WaitForJob,
)
from llmspool.planner import Planner
from llmspool.pricing import usd
from llmspool.store import jobs as jobs_sql

log = logging.getLogger(__name__)

SWEEP_EVERY = 3600.0
_GONE = (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError)
KeeperMessage = SubmitJob | CancelJob | WaitForJob | Query
JobReply = MemoryObjectSendStream[dict[str, Any] | ApiError]


@dataclass
class JobState:
    """One job as status answers show it; ``states`` mirrors the store (in-flight = queued)."""

    id: str
    created_at: float
    deadline_at: float
    operation: str | None
    tags: dict[str, str]
    uid: int | None
    status: str
    total: int
    finished_at: float | None
    states: Counter[str] = field(default_factory=Counter)
    tiers: Counter[str] = field(default_factory=Counter)
    running: int = 0
    cost: int = 0
    standard: int = 0

    def to_json(self) -> dict[str, Any]:
        queued = self.states["queued"]
        return {
            "id": self.id,
            "object": "llmspool.job",
            "status": self.status,
            "created_at": self.created_at,
            "deadline_at": self.deadline_at,
            "finished_at": self.finished_at,
            "operation": self.operation,
            "tags": self.tags,
            "counts": {
                "total": self.total,
                "queued": queued - self.running,
                "running": self.running,
                "succeeded": self.states["succeeded"],
                "failed": self.states["failed"],
                "cancelled": self.states["cancelled"],
            },
            "by_tier": dict(self.tiers),
            "cost_usd": usd(self.cost),
            "saved_usd": usd(max(0, self.standard - self.cost)),
        }


class JobKeeper:
    def __init__(
        self,
        inbox: MemoryObjectReceiveStream[KeeperMessage],
        queue: MemoryObjectSendStream[Call | Query],
        database: aiosqlite.Connection,
        planner: Planner,
        config: JobsConfig,
    ) -> None:
        self._inbox = inbox
        self._queue = queue
        self._database = database
        self._planner = planner
        self._config = config
        self._jobs: dict[str, JobState] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._in_flight = 0
        self._pending: list[jobs_sql.Outcome] = []
        self._waiters: dict[str, list[JobReply]] = {}
        self._write_lock = anyio.Lock()
        self._wake_pump = anyio.Event()
        self._wake_writer = anyio.Event()
        self._closing = False
        self._retries = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self._recover()
        async with self._queue, anyio.create_task_group() as group:
            pump_done = anyio.Event()
            group.start_soon(self._pump, pump_done)
            group.start_soon(self._writer)
            group.start_soon(self._sweep_expired)
            task_status.started()
            async with self._inbox:
                async for message in self._inbox:
                    await self._handle(message)
            # The front door is closed: send nothing new, let calls in flight finish (the
            # daemon bounds how long), store their results, and stop.
            self._closing = True
            self._wake_pump.set()
            await pump_done.wait()
            await self._flush()
            group.cancel_scope.cancel()

    # --- messages -----------------------------------------------------------------------

    async def _handle(self, message: KeeperMessage) -> None:
        if isinstance(message, SubmitJob):
            await _answer(message.reply, await self._submit(message.job))
        elif isinstance(message, CancelJob):
            await _answer(message.reply, await self._cancel(message.job_id))
        elif isinstance(message, WaitForJob):
            job = self._jobs.get(message.job_id)
            if job is None:
                await _answer(message.reply, _no_such_job(message.job_id))
            elif job.status != "in_progress":
                await _answer(message.reply, job.to_json())
            else:
                self._waiters.setdefault(job.id, []).append(message.reply)
        else:
            await self._answer_query(message)

    async def _submit(self, job: NewJob) -> dict[str, Any] | ApiError:
        queued = sum(state.states["queued"] for state in self._jobs.values())
        if queued + len(job.lines) > self._config.max_queued:
            return TooManyRequests(
                f"{queued} requests are already waiting ([jobs] max_queued = "
                f"{self._config.max_queued}); submit again once some have run",
                retry_after=30, code="queue_full",
            )
        async with self._write_lock:
            await jobs_sql.insert_job(self._database, job)
        state = JobState(job.id, job.created_at, job.deadline_at, job.operation, job.tags,
                         job.uid, "in_progress", len(job.lines), None)
        state.states["queued"] = len(job.lines)
        self._jobs[job.id] = state
        # Rows were numbered in insertion order; their ids come back from the store when the
        # pump asks, so push placeholders keyed on the deadline and resolve ids lazily.
        for row_id in await self._ids_of(job.id):
            heapq.heappush(self._heap, (job.deadline_at, row_id, job.id))
        self._wake_pump.set()
        log.info("job %s: %d requests, deadline in %.0f s", job.id, len(job.lines),
                 job.deadline_at - time.time())
        return state.to_json()

    async def _ids_of(self, job_id: str) -> list[int]:
        rows = await self._database.execute_fetchall(
            "SELECT id FROM job_requests WHERE job_id = ? AND state = 'queued'", (job_id,)
        )
        return [int(row[0]) for row in rows]

    async def _cancel(self, job_id: str) -> dict[str, Any] | ApiError:
        job = self._jobs.get(job_id)
        if job is None:
            return _no_such_job(job_id)
        if job.status != "in_progress":
            answer = job.to_json()
            answer["message"] = f"job {job_id} already {job.status}; nothing to cancel"
            return answer
        async with self._write_lock:
            cancelled = await jobs_sql.cancel_job(self._database, job_id)
        job.states["queued"] -= cancelled
        job.states["cancelled"] += cancelled
        job.status = "cancelled"
        job.finished_at = time.time()
        self._job_finished(job)
        log.info("job %s cancelled: %d requests had not run", job_id, cancelled)
        return job.to_json()

    async def _answer_query(self, query: Query) -> None:
        if query.what == "job":
            job = self._jobs.get(query.params["id"])
            answer: dict[str, Any] = job.to_json() if job else {"error": "not_found"}
        elif query.what == "jobs":
            newest = sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)
            answer = {"object": "list",
                      "data": [j.to_json() for j in newest[: int(query.params.get("limit", 20))]]}
        else:
            in_progress = [j for j in self._jobs.values() if j.status == "in_progress"]
            answer = {
                "jobs_in_progress": len(in_progress),
                "requests_queued": sum(j.states["queued"] - j.running for j in in_progress),
                "requests_running": self._in_flight,
                "retries": self._retries,
            }
        query.reply.send_nowait(answer)

    # --- sending ------------------------------------------------------------------------

    async def _pump(self, done: anyio.Event) -> None:
        try:
            async with anyio.create_task_group() as calls:
                while True:
                    await self._wake_pump.wait()
                    self._wake_pump = anyio.Event()
                    if self._closing:
                        break
                    await self._dispatch_some(calls)
        finally:
            done.set()

    async def _dispatch_some(self, calls: anyio.abc.TaskGroup) -> None:
        while self._heap and self._in_flight < self._config.max_in_flight:
            picked: list[int] = []
            while self._heap and len(picked) < self._config.max_in_flight - self._in_flight:
                _deadline, row_id, job_id = heapq.heappop(self._heap)
                job = self._jobs.get(job_id)
                if job is not None and job.status == "in_progress":
                    picked.append(row_id)
            if not picked:
                return
            for row in await jobs_sql.fetch_requests(self._database, picked):
                self._in_flight += 1
                self._jobs[row.job_id].running += 1
                calls.start_soon(self._send, row)

    async def _send(self, row: jobs_sql.QueuedRequest) -> None:
        job = self._jobs[row.job_id]
        attempts = row.attempts
        try:
            while True:
                attempts += 1
                reply = await self._call_once(row, job)
                if reply is None:
                    return  # the daemon is stopping: the request stays queued for next start
                if isinstance(reply, Failure) and self._should_retry(reply.error, attempts, row):
                    self._retries += 1
                    await anyio.sleep(min(60.0, random.uniform(0, 2.0**attempts)))
                    continue
                self._finish(row, reply, attempts)
                return
        finally:
            self._in_flight -= 1
            job.running -= 1
            self._wake_pump.set()

    async def _call_once(self, row: jobs_sql.QueuedRequest, job: JobState) -> Reply | None:
        replies_in, replies_out = anyio.create_memory_object_stream[Reply](1)
        call = Call(
            request_id=f"{row.job_id}.{row.id}.{secrets.token_hex(3)}",
            endpoint=Endpoint(row.endpoint),
            provider=row.provider,
            model=row.model,
            body=row.body,
            stream=False,
            policy=self._planner.policy(job.operation, None),
            caller=Caller(uid=job.uid),
            operation=job.operation,
            received_at=time.time(),
            trace=Context(),
            reply=replies_in,
            deadline_at=row.deadline_at,
        )
        with replies_out:
            try:
                await self._queue.send(call)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                replies_in.close()
                return None
            try:
                reply = await replies_out.receive()
            except anyio.EndOfStream:
                return None
        if isinstance(reply, Failure) and reply.error.code == "shutting_down":
            return None
        return reply

    def _should_retry(self, error: ApiError, attempts: int, row: jobs_sql.QueuedRequest) -> bool:
        if attempts >= self._config.max_attempts or time.time() >= row.deadline_at:
            return False
        if isinstance(error, UpstreamUnreachable | ServiceUnavailable):
            return True
        if isinstance(error, UpstreamError):
            quota = error.type == "insufficient_quota" or error.code == "insufficient_quota"
            return error.status >= 500 or (error.status == 429 and not quota)
        return False

    def _finish(self, row: jobs_sql.QueuedRequest, reply: Reply, attempts: int) -> None:
        line_id = f"batch_req_{row.id}"
        if isinstance(reply, Answer):
            outcome = jobs_sql.Outcome(
                row.id, row.job_id, "succeeded", reply.tier.value, reply.cost_picodollars,
                reply.standard_cost_picodollars,
                orjson.dumps({
                    "id": line_id, "custom_id": row.custom_id,
                    "response": {"status_code": reply.status,
                                 "request_id": reply.headers.get("x-request-id", ""),
                                 "body": reply.document},
                    "error": None,
                }),
                attempts,
            )
        else:
            outcome = jobs_sql.Outcome(
                row.id, row.job_id, "failed", None, None, None,
                _failure_line(line_id, row.custom_id, reply), attempts,
            )
        self._pending.append(outcome)
        self._wake_writer.set()

    # --- storing ------------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer = anyio.Event()
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        outcomes, self._pending = self._pending, []
        with anyio.CancelScope(shield=True):  # a started commit finishes, even at shutdown
            async with self._write_lock:
                stored = set(await jobs_sql.record_outcomes(self._database, outcomes))
        for outcome in outcomes:
            if outcome.request_id not in stored:
                continue
            job = self._jobs.get(outcome.job_id)
            if job is None:
                continue
            job.states["queued"] -= 1
            job.states[outcome.state] += 1
            if outcome.tier:
                job.tiers[outcome.tier] += 1
            job.cost += outcome.cost_picodollars or 0
            job.standard += outcome.standard_cost_picodollars or outcome.cost_picodollars or 0
            if job.states["queued"] == 0 and job.status == "in_progress":
                job.status = "completed"
                job.finished_at = time.time()
                self._job_finished(job)

    def _job_finished(self, job: JobState) -> None:
        for waiter in self._waiters.pop(job.id, []):
            with contextlib.suppress(*_GONE):  # a waiter that gave up
                waiter.send_nowait(job.to_json())

    # --- start and retention --------------------------------------------------------------

    async def _recover(self) -> None:
        await self._delete_expired()
        async with self._write_lock:
            await self._database.execute("BEGIN IMMEDIATE")
            await jobs_sql.complete_finished_jobs(self._database, time.time())
            await self._database.execute("COMMIT")
        for row in await jobs_sql.load_jobs(self._database):
            state = JobState(row["id"], row["created_at"], row["deadline_at"], row["operation"],
                             row["tags"], row["uid"], row["status"], row["total"],
                             row["finished_at"])
            state.states.update(row["states"])
            state.tiers.update(row["tiers"])
            state.cost, state.standard = row["cost"], row["standard"]
            self._jobs[state.id] = state
        self._heap = await jobs_sql.queued_requests(self._database)
        heapq.heapify(self._heap)
        if self._heap:
            log.info("resuming %d queued requests of %d jobs", len(self._heap),
                     len({job_id for _d, _i, job_id in self._heap}))
            self._wake_pump.set()

    async def _sweep_expired(self) -> None:
        while True:
            await anyio.sleep(SWEEP_EVERY)
            await self._delete_expired()

    async def _delete_expired(self) -> None:
        """Forget jobs finished longer ago than ``[jobs] retention``, results and all."""
        before = time.time() - self._config.retention
        async with self._write_lock:
            deleted = await jobs_sql.delete_jobs_finished_before(self._database, before)
        expired = [j.id for j in self._jobs.values()
                   if j.finished_at is not None and j.finished_at < before]
        for job_id in expired:
            del self._jobs[job_id]
        if deleted:
            log.info("deleted %d jobs finished more than %.0f s ago", deleted,
                     self._config.retention)


def _failure_line(line_id: str, custom_id: str, reply: Reply) -> bytes:
    """A failed request in the Batch output format: HTTP errors as a response, others as error."""
    error = reply.error if isinstance(reply, Failure) else ApiError("no answer", code="no_answer")
    if isinstance(error, UpstreamError):
        try:
            body = orjson.loads(error.body())
        except orjson.JSONDecodeError:
            body = {"error": {"message": error.message}}
        return orjson.dumps({
            "id": line_id, "custom_id": custom_id,
            "response": {"status_code": error.status,
                         "request_id": error.upstream_headers.get("x-request-id", ""),
                         "body": body},
            "error": None,
        })
    return orjson.dumps({
        "id": line_id, "custom_id": custom_id, "response": None,
        "error": {"code": error.code or error.type, "message": error.message},
    })


def _no_such_job(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id!r} (unknown, or deleted after [jobs] retention)",
                    code="job_not_found", param="id")


async def _answer(reply: JobReply, answer: dict[str, Any] | ApiError) -> None:
    with contextlib.suppress(*_GONE):  # the asker gave up
        reply.send_nowait(answer)
