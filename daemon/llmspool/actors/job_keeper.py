"""The job keeper actor: deferred work from its acknowledgement to its last result.

- A submitted job is written (job and requests, one transaction) before it is acknowledged.
- Each queued request is routed: to the batch submitter when the planner says its deadline
  leaves room for a batch (``ToBatch``), otherwise into a heap ordered by deadline, from which
  at most ``[jobs] max_in_flight`` are sent at a time, each as a ``Call`` through the request
  queue (so interactive calls and deferred ones share the planner, the flex policy and the
  ledger). Lines a batch gives back (expired, escalated, failed) are routed again.
- A line bound for a batch passes the same gate as every call first: one the response cache
  already answers goes through the cache actor (free, tier ``cache``), and one identical to a
  line already batched (same cache key, a deadline no earlier) waits for that line's answer
  instead of going into a batch again; it is then answered from the cache (``shared``).
- A retryable failure (5xx, 429 rate limit, no connection) is tried again with backoff, up to
  ``[jobs] max_attempts`` and never past the deadline.
- Results are stored in group commits by the ledger, each result with the ledger entry of the
  call that produced it (one transaction), each guarded by the request's state, so a request
  is stored once even if its call is repeated after a crash. A call in flight at a crash
  leaves its request ``queued`` (sent again on the next start) and its reservation, which the
  ledger bills as an unknown outcome: both calls are counted.
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
from opentelemetry import metrics

from llmspool.cache.store import CachedKeys
from llmspool.core.calls import Endpoint, Tier
from llmspool.core.config.sections import BatchConfig, JobsConfig
from llmspool.core.errors import (
    ApiError,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    UpstreamError,
)
from llmspool.core.pricing import usd
from llmspool.core.states import JobStatus, RequestState
from llmspool.core.tracing import linked_context
from llmspool.jobs.plan import JobPlan
from llmspool.messages import (
    Answer,
    BatchLinesDone,
    Call,
    CancelJob,
    Failure,
    Query,
    Reply,
    StoreJobResults,
    SubmitJob,
    ToBatch,
    WaitForJob,
)
from llmspool.policy.cache_keys import HEADER, CachePlan, CacheRules
from llmspool.policy.planner import Planner
from llmspool.resilience.failures import classify
from llmspool.store import jobs as jobs_sql
from llmspool.store.records import BatchCandidate, Caller, JobResult, NewJob, Settled, Viewer

log = logging.getLogger(__name__)

SWEEP_EVERY = 3600.0
_GONE = (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError)
KeeperMessage = SubmitJob | CancelJob | WaitForJob | Query
JobReply = MemoryObjectSendStream[dict[str, Any] | ApiError]


@dataclass
class BatchedTwin:
    """A line in (or on its way to) a batch, and the identical lines waiting for its answer."""

    request_id: int
    job_id: str
    deadline_at: float
    followers: list[jobs_sql.Routable] = field(default_factory=list)


@dataclass
class JobState:
    """One job as status answers show it; ``states`` mirrors the store (in-flight = queued)."""

    id: str
    created_at: float
    deadline_at: float
    operation: str | None
    tags: dict[str, str]
    uid: int | None
    status: JobStatus
    total: int
    finished_at: float | None
    states: Counter[RequestState] = field(default_factory=Counter)
    tiers: Counter[str] = field(default_factory=Counter)
    running: int = 0
    batched: int = 0  # queued requests that a batch carries, or that wait to be batched
    traceparent: str | None = None
    cost: int = 0
    standard: int = 0
    late: int = 0  # results stored after the job's deadline

    def to_json(self) -> dict[str, Any]:
        queued = self.states[RequestState.QUEUED]
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
                "queued": queued - self.running - self.batched,
                "running": self.running,
                "in_batch": self.batched,
                "succeeded": self.states[RequestState.SUCCEEDED],
                "failed": self.states[RequestState.FAILED],
                "cancelled": self.states[RequestState.CANCELLED],
                "late": self.late,
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
        ledger: MemoryObjectSendStream[StoreJobResults],
        database: aiosqlite.Connection,
        planner: Planner,
        config: JobsConfig,
        *,
        batches: MemoryObjectSendStream[ToBatch] | None = None,
        batch_results: MemoryObjectReceiveStream[BatchLinesDone] | None = None,
        batch_providers: frozenset[str] = frozenset(),
        batch_config: BatchConfig | None = None,
        cache: MemoryObjectSendStream[Call] | None = None,
        cache_rules: CacheRules | None = None,
        cached: CachedKeys | None = None,
        meter: metrics.Meter | None = None,
    ) -> None:
        self._inbox = inbox
        meter = meter or metrics.NoOpMeter("llmspool")
        self._late_counter = meter.create_counter(
            "llmspool.jobs.requests_late", "{request}",
            "job requests whose result was stored after their deadline")
        self._cached = cached
        self._twins: dict[bytes, BatchedTwin] = {}  # cache key → the batched line
        self._twin_keys: dict[int, bytes] = {}  # batched line's request id → its cache key
        self._cache = cache
        self._cache_rules = cache_rules
        self._batches = batches
        self._batch_results = batch_results
        self._batch_providers = batch_providers
        self._batch_config = batch_config or BatchConfig()
        self._queue = queue
        self._ledger = ledger
        self._database = database
        self._planner = planner
        self._config = config
        self._jobs: dict[str, JobState] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._in_flight = 0
        self._pending: list[JobResult] = []
        self._pending_entries: list[Settled] = []
        self._waiters: dict[str, list[JobReply]] = {}
        self._write_lock = anyio.Lock()
        self._wake_pump = anyio.Event()
        self._wake_writer = anyio.Event()
        self._closing = False
        self._retries = 0
        self._late = 0  # results stored after their deadline since start

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self._recover()
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._queue)
            await stack.enter_async_context(self._ledger)
            if self._cache is not None:
                await stack.enter_async_context(self._cache)
            if self._batches is not None:  # closed when the keeper ends, ending the submitter
                await stack.enter_async_context(self._batches)
            group = await stack.enter_async_context(anyio.create_task_group())
            pump_done = anyio.Event()
            group.start_soon(self._pump, pump_done)
            group.start_soon(self._writer)
            group.start_soon(self._sweep_expired)
            if self._batch_results is not None:
                # Apart from the inbox, so that the batch actors (which live until the keeper
                # is done) never hold the keeper's inbox open at shutdown.
                group.start_soon(self._take_batch_results, self._batch_results)
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
        if self._cached is not None:
            self._cached.close()

    # --- messages -----------------------------------------------------------------------

    async def _handle(self, message: KeeperMessage) -> None:
        if isinstance(message, SubmitJob):
            await _answer(message.reply, await self._submit(message.job))
        elif isinstance(message, CancelJob):
            await _answer(message.reply, await self._cancel(message.job_id, message.viewer))
        elif isinstance(message, WaitForJob):
            job = self._jobs.get(message.job_id)
            if job is None or not message.viewer.sees(job.uid):
                await _answer(message.reply, _no_such_job(message.job_id))
            elif job.status != JobStatus.IN_PROGRESS:
                await _answer(message.reply, job.to_json())
            else:
                self._waiters.setdefault(job.id, []).append(message.reply)
        else:
            await self._answer_query(message)

    async def _submit(self, job: NewJob) -> dict[str, Any] | ApiError:
        queued = sum(state.states[RequestState.QUEUED] for state in self._jobs.values())
        if queued + len(job.lines) > self._config.max_queued:
            return TooManyRequests(
                f"{queued} requests are already waiting ([jobs] max_queued = "
                f"{self._config.max_queued}); submit again once some have run",
                retry_after=30, code="queue_full",
            )
        async with self._write_lock:
            await jobs_sql.insert_job(self._database, job)
        state = JobState(job.id, job.created_at, job.deadline_at, job.operation, job.tags,
                         job.uid, JobStatus.IN_PROGRESS, len(job.lines), None,
                         traceparent=job.traceparent)
        state.states[RequestState.QUEUED] = len(job.lines)
        self._jobs[job.id] = state
        plan = JobPlan()
        # Read in pages (not all rows at once), handed to the batch submitter in one message
        # (it regroups its pending lines on each).
        to_batch: list[BatchCandidate] = []
        async for rows in jobs_sql.routable_pages(self._database, job.id):
            await self._route(rows, plan=plan, collect=to_batch)
        await self._send_to_batch(to_batch, (job.traceparent,) if job.traceparent else ())
        log.info("job %s: %d requests, deadline in %.0f s", job.id, len(job.lines),
                 job.deadline_at - time.time())
        return {**state.to_json(), "plan": plan.to_json()}

    # --- routing: a batch, or sent from here ----------------------------------------------

    async def _route(self, rows: list[jobs_sql.Routable], *, batch_again: bool = True,
                     plan: JobPlan | None = None,
                     collect: list[BatchCandidate] | None = None) -> None:
        """Hand each request to the batch submitter or push it on the heap; ``plan`` (of a
        new job) gets where each went and when it is expected. With ``collect``, lines for
        the batch submitter are added to it for the caller to send."""
        to_batch: list[BatchCandidate] = [] if collect is None else collect
        traceparents: set[str] = set()
        now = time.time()
        for row in rows:
            job = self._jobs.get(row.job_id)
            if job is None or job.status != JobStatus.IN_PROGRESS:
                continue
            if batch_again and self._batchable(row, job):
                batch_end = now + self._batch_config.max_age + self._planner.batch_expected(
                    row.provider, row.model)
                elsewhere = self._answered_elsewhere(row, job)
                if plan is not None:
                    plan.add("batch" if elsewhere is None else Tier.CACHE.value, row.model,
                             now if elsewhere == "cache" else batch_end)
                if elsewhere is not None:
                    continue
                to_batch.append(BatchCandidate(row.id, row.job_id, row.provider,
                                               Endpoint(row.endpoint), row.model,
                                               row.deadline_at, row.size, row.inputs))
                job.batched += 1
                if job.traceparent:
                    traceparents.add(job.traceparent)
            else:
                if plan is not None:
                    self._plan_direct(plan, row, job, now)
                heapq.heappush(self._heap, (row.deadline_at, row.id, row.job_id))
        if collect is None:
            await self._send_to_batch(to_batch, tuple(sorted(traceparents)))
        self._wake_pump.set()

    async def _send_to_batch(self, lines: list[BatchCandidate],
                             traceparents: tuple[str, ...]) -> None:
        if lines and self._batches is not None:
            await self._batches.send(ToBatch(lines, traceparents))

    def _plan_direct(self, plan: JobPlan, row: jobs_sql.Routable, job: JobState,
                     now: float) -> None:
        """Plan a request sent from here: the tier the planner would choose now, answered
        after the requests ahead of it in the heap (``max_in_flight`` at a time)."""
        policy = self._planner.policy(job.operation, None, deferred=True)
        tier = self._planner.choose(row.provider, row.model, policy, row.deadline_at, now)
        typical = self._planner.book.p50((row.provider, row.model, tier))
        rounds = len(self._heap) // max(1, self._config.max_in_flight) + 1
        plan.add(tier.value, row.model, now + rounds * typical)

    def _answered_elsewhere(self, row: jobs_sql.Routable, job: JobState) -> str | None:
        """How a line bound for a batch is answered without one: ``cache`` (it goes through
        the cache actor now) or ``twin`` (it waits for an identical line already batched);
        None: it goes into a batch."""
        key = row.cache_key
        if key is None:
            return None
        if self._cached is not None and self._cached.has(key, time.time()):
            heapq.heappush(self._heap, (row.deadline_at, row.id, row.job_id))
            return "cache"
        twin = self._twins.get(key)
        if twin is not None and twin.deadline_at <= row.deadline_at:
            twin.followers.append(row)
            job.batched += 1
            return "twin"
        # This line leads: later identical ones wait for it (one due earlier takes over).
        self._twins[key] = BatchedTwin(row.id, row.job_id, row.deadline_at)
        self._twin_keys[row.id] = key
        return None

    def _release_twins(self, request_id: int) -> list[jobs_sql.Routable]:
        """The lines that waited for batched line ``request_id``, which no longer leads."""
        key = self._twin_keys.pop(request_id, None)
        if key is None:
            return []
        twin = self._twins.get(key)
        if twin is None or twin.request_id != request_id:
            return []
        del self._twins[key]
        for row in twin.followers:
            job = self._jobs.get(row.job_id)
            if job is not None:
                job.batched = max(0, job.batched - 1)
        return twin.followers

    def _batchable(self, row: jobs_sql.Routable, job: JobState) -> bool:
        if self._batches is None or row.provider not in self._batch_providers:
            return False
        if row.attempts >= self._batch_config.max_attempts:
            return False
        policy = self._planner.policy(job.operation, None, deferred=True)
        return self._planner.batch_fits(row.provider, row.model, policy, row.deadline_at)

    async def _take_batch_results(
        self, results: MemoryObjectReceiveStream[BatchLinesDone]
    ) -> None:
        async with results:
            async for message in results:
                await self._batch_lines_done(message)

    async def _batch_lines_done(self, message: BatchLinesDone) -> None:
        for outcome in message.outcomes:
            # Its answer is in the cache (or its error is final): the lines that waited for it
            # go through the cache actor, which shares it.
            for row in self._release_twins(outcome.request_id):
                heapq.heappush(self._heap, (row.deadline_at, row.id, row.job_id))
            job = self._jobs.get(outcome.job_id)
            if job is None:
                continue
            if outcome.was_in_batch:
                job.batched = max(0, job.batched - 1)
            self._count_outcome(job, outcome.state,
                                "batch" if outcome.state == RequestState.SUCCEEDED else None,
                                outcome.cost_picodollars, outcome.standard_cost_picodollars)
        followers: list[jobs_sql.Routable] = []
        for line in message.requeued:
            job = self._jobs.get(line.job_id)
            if job is not None:
                job.batched = max(0, job.batched - 1)
            followers += self._release_twins(line.request_id)
        if message.requeued:
            rows = await jobs_sql.routable_requests(
                self._database, ids=[line.request_id for line in message.requeued])
            # Routed with the lines they waited for: the first one batched leads again.
            await self._route(rows + followers, batch_again=message.batch_again)
        else:
            self._wake_pump.set()

    async def _cancel(self, job_id: str, viewer: Viewer) -> dict[str, Any] | ApiError:
        job = self._jobs.get(job_id)
        if job is None or not viewer.sees(job.uid):  # another user's job: as if unknown
            return _no_such_job(job_id)
        if job.status != JobStatus.IN_PROGRESS:
            answer = job.to_json()
            answer["message"] = f"job {job_id} already {job.status}; nothing to cancel"
            return answer
        async with self._write_lock:
            cancelled = await jobs_sql.cancel_job(self._database, job_id)
        job.states[RequestState.QUEUED] -= cancelled
        job.states[RequestState.CANCELLED] += cancelled
        job.batched = 0
        job.status = JobStatus.CANCELLED
        job.finished_at = time.time()
        self._job_finished(job)
        # Lines of other jobs that waited for one of this job's batched lines stop waiting.
        leaders = [twin.request_id for twin in self._twins.values()
                   if twin.followers and twin.job_id == job_id]
        orphans = [row for leader in leaders for row in self._release_twins(leader)]
        if orphans:
            await self._route(orphans)
        log.info("job %s cancelled: %d requests had not run", job_id, cancelled)
        return job.to_json()

    async def _answer_query(self, query: Query) -> None:
        viewer: Viewer = query.params.get("viewer", Viewer(None))
        if query.what == "job":
            job = self._jobs.get(query.params["id"])
            answer: dict[str, Any] = job.to_json() if job and viewer.sees(job.uid) \
                else {"error": "not_found"}
        elif query.what == "jobs":
            newest = sorted((j for j in self._jobs.values() if viewer.sees(j.uid)),
                            key=lambda j: j.created_at, reverse=True)
            answer = {"object": "list",
                      "data": [j.to_json() for j in newest[: int(query.params.get("limit", 20))]]}
        else:
            in_progress = [j for j in self._jobs.values() if j.status == JobStatus.IN_PROGRESS]
            answer = {
                "jobs_in_progress": len(in_progress),
                "requests_queued": sum(j.states[RequestState.QUEUED] - j.running
                                       for j in in_progress),
                "requests_running": self._in_flight,
                "retries": self._retries,
                "requests_late": self._late,
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
                if job is not None and job.status == JobStatus.IN_PROGRESS:
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
                if isinstance(reply, Failure) and isinstance(reply.error, ServiceUnavailable):
                    # Never sent (an open circuit breaker, a full queue): not an attempt. Wait
                    # as long as the daemon hints while the deadline still leaves room for a
                    # standard call after the wait.
                    attempts -= 1
                    hint = max(1.0, getattr(reply.error, "retry_after", 0.0) or 0.0)
                    if time.time() + hint < self._last_moment(row):
                        self._retries += 1
                        await anyio.sleep(hint)
                        continue
                elif isinstance(reply, Failure) and self._should_retry(reply.error, attempts,
                                                                       row):
                    self._retries += 1
                    room = max(0.0, row.deadline_at - time.time())
                    await anyio.sleep(min(room, 60.0, random.uniform(0, 2.0**attempts)))
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
            policy=self._planner.policy(job.operation, None, deferred=True),
            caller=Caller(uid=job.uid),
            operation=job.operation,
            received_at=time.time(),
            # A trace of its own (it may run hours after the submission), linked to the span
            # that submitted the job.
            trace=linked_context(job.traceparent),
            reply=replies_in,
            deadline_at=row.deadline_at,
            cache=self._cache_plan(row, job),
            settle_with_result=True,
            deferred=True,
            submitted_at=job.created_at,
        )
        with replies_out:
            try:
                if call.cache is not None and self._cache is not None:
                    await self._cache.send(call)
                else:
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

    def _cache_plan(self, row: jobs_sql.QueuedRequest, job: JobState) -> CachePlan | None:
        if self._cache_rules is None:
            return None
        try:
            document = orjson.loads(row.body)
        except orjson.JSONDecodeError:
            return None  # checked at intake; the upstream says what is wrong with it
        if not isinstance(document, dict):
            return None
        return self._cache_rules.plan(Endpoint(row.endpoint), row.provider, row.model, document,
                                      header=None, operation=job.operation, uid=job.uid,
                                      stream=False)

    def _last_moment(self, row: jobs_sql.QueuedRequest) -> float:
        """The last moment a request may still be sent and answered by its deadline."""
        return row.deadline_at - self._planner.need(row.provider, row.model, Tier.STANDARD)

    def _should_retry(self, error: ApiError, attempts: int, row: jobs_sql.QueuedRequest) -> bool:
        if attempts >= self._config.max_attempts or time.time() >= row.deadline_at:
            return False
        # The dispatcher already retried it within its budget; the keeper tries again later
        # (its deadline is far off) only what waiting can fix, classified the same way.
        return classify(error).kind.retryable

    def _finish(self, row: jobs_sql.QueuedRequest, reply: Reply, attempts: int) -> None:
        line_id = f"batch_req_{row.id}"
        late = time.time() > row.deadline_at
        if isinstance(reply, Answer):
            if reply.settled is not None:
                self._pending_entries.append(reply.settled)
            # Answered without an upstream call: the line says how (hit, shared).
            cached = reply.headers.get(HEADER) if reply.tier is Tier.CACHE else None
            outcome = JobResult(
                row.id, row.job_id, RequestState.SUCCEEDED, reply.tier.value,
                reply.cost_picodollars, reply.standard_cost_picodollars,
                orjson.dumps({
                    "id": line_id, "custom_id": row.custom_id,
                    "response": {"status_code": reply.status,
                                 "request_id": reply.headers.get("x-request-id", ""),
                                 "body": reply.document},
                    "error": None,
                    **({"cache": cached} if cached else {}),
                    **({"late": True} if late else {}),
                }),
                attempts,
            )
        else:
            outcome = JobResult(
                row.id, row.job_id, RequestState.FAILED, None, None, None,
                _failure_line(line_id, row.custom_id, reply, late=late), attempts,
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
        entries, self._pending_entries = self._pending_entries, []
        reply_in, reply_out = anyio.create_memory_object_stream[list[int]](1)
        # Shielded: results whose calls were answered are stored, even while stopping.
        with anyio.CancelScope(shield=True), reply_in, reply_out:
            await self._ledger.send(StoreJobResults(outcomes, entries, reply_in))
            stored = set(await reply_out.receive())
        for outcome in outcomes:
            if outcome.request_id not in stored:
                continue
            job = self._jobs.get(outcome.job_id)
            if job is None:
                continue
            self._count_outcome(job, outcome.state, outcome.tier, outcome.cost_picodollars,
                                outcome.standard_cost_picodollars)

    def _count_outcome(self, job: JobState, state: RequestState, tier: str | None, cost: int | None,
                       standard: int | None) -> None:
        """A stored result of ``job``, in its counts; completes the job on its last one."""
        job.states[RequestState.QUEUED] -= 1
        job.states[state] += 1
        if tier:
            job.tiers[tier] += 1
        job.cost += cost or 0
        job.standard += standard or cost or 0
        if time.time() > job.deadline_at:
            job.late += 1
            self._late += 1
            self._late_counter.add(1, {"llmspool.operation": job.operation or ""})
        if job.states[RequestState.QUEUED] == 0 and job.status == JobStatus.IN_PROGRESS:
            job.status = JobStatus.COMPLETED
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
            state.late = row["late"]
            state.traceparent = row["traceparent"]
            self._jobs[state.id] = state
        for job_id, count in (await jobs_sql.batched_counts(self._database)).items():
            if job_id in self._jobs:
                self._jobs[job_id].batched = count
        for key, request_id, job_id, deadline_at in await jobs_sql.batched_twins(self._database):
            if key not in self._twins:  # identical lines resumed below wait for these
                self._twins[key] = BatchedTwin(request_id, job_id, deadline_at)
                self._twin_keys[request_id] = key
        rows = await jobs_sql.routable_requests(self._database)
        if rows:
            log.info("resuming %d queued requests of %d jobs", len(rows),
                     len({row.job_id for row in rows}))
            await self._route(rows)

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


def _failure_line(line_id: str, custom_id: str, reply: Reply, *, late: bool = False) -> bytes:
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
            **({"late": True} if late else {}),
        })
    return orjson.dumps({
        "id": line_id, "custom_id": custom_id, "response": None,
        "error": {"code": error.code or error.type, "message": error.message},
        **({"late": True} if late else {}),
    })


def _no_such_job(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id!r} (unknown, or deleted after [jobs] retention)",
                    code="job_not_found", param="id")


async def _answer(reply: JobReply, answer: dict[str, Any] | ApiError) -> None:
    with contextlib.suppress(*_GONE):  # the asker gave up
        reply.send_nowait(answer)
