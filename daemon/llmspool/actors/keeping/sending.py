"""The lines the job keeper sends itself: a heap ordered by deadline (``lines.LineHeap``: it
holds ids only; each line is read from the store when sent), and its pump.

- At most ``[jobs] max_in_flight`` lines are sent at a time, the most urgent first, each as a
  ``Call`` through the request queue (so interactive calls and deferred ones share the
  planner, the flex policy and the ledger), or through the cache actor when the line may be
  cached.
- A retryable failure (5xx, 429 rate limit, no connection) is tried again with backoff, up to
  ``[jobs] max_attempts`` and never past the deadline; a call never sent (an open breaker, a
  full queue) waits as long as the daemon hints while the deadline leaves room.
- A call in flight at a crash leaves its request ``queued`` (sent again on the next start)
  and its reservation, which the ledger bills as an unknown outcome: both calls are counted.
- In a store several daemons share, a line is claimed as it is read to be sent; one another
  daemon claimed first is its to send, and its job becomes shared (``sharing``).
"""

from __future__ import annotations

import random
import secrets

import anyio
import anyio.abc
import orjson

from llmspool.actors.keeping.jobs import JobState, MarkShared
from llmspool.actors.keeping.lines import LineHeap
from llmspool.actors.keeping.results import Results
from llmspool.core.calls import Endpoint, Tier
from llmspool.core.config.sections import JobsConfig
from llmspool.core.errors import ApiError, ServiceUnavailable
from llmspool.core.states import JobStatus
from llmspool.core.streams import MemorySendStream, create_memory_stream
from llmspool.core.tracing import linked_context
from llmspool.messages import Call, Failure, Reply
from llmspool.policy.cache_keys import CachePlan, CacheRules
from llmspool.policy.planner import Planner
from llmspool.resilience.failures import classify
from llmspool.store import jobs as jobs_sql
from llmspool.store.connections import AsyncConnection
from llmspool.store.records import Caller


class Pump:
    """The heap of lines to send (``heap``: deadline, request id, job id) and their calls."""

    def __init__(self, queue: MemorySendStream[Call],
                 cache: MemorySendStream[Call] | None, cache_rules: CacheRules | None,
                 database: AsyncConnection, planner: Planner, config: JobsConfig,
                 jobs: dict[str, JobState], results: Results, *,
                 claimer: str | None = None, shared: MarkShared | None = None) -> None:
        # In a shared store: this daemon, which claims each line it sends, and what is told
        # of a job one of whose lines another daemon claimed.
        self._claimer = claimer
        self._shared = shared
        self._queue = queue
        self._cache = cache
        self._cache_rules = cache_rules
        self._database = database
        self._planner = planner
        self._config = config
        self._jobs = jobs  # the keeper's, shared
        self._results = results
        self.heap = LineHeap()
        self.in_flight = 0
        self.retries = 0
        self._wake_pump = anyio.Event()
        self.closing = False
        self._fetching = False  # lines popped from the heap, being read to be sent

    @property
    def idle(self) -> bool:
        """No line waiting, being read or in flight."""
        return not self.heap and not self._fetching and self.in_flight == 0

    def wake(self) -> None:
        self._wake_pump.set()

    def close(self) -> None:
        """Send nothing new: ``run`` ends once the calls in flight are answered."""
        self.closing = True
        self._wake_pump.set()

    async def run(self, done: anyio.Event) -> None:
        try:
            async with anyio.create_task_group() as calls:
                while True:
                    await self._wake_pump.wait()
                    self._wake_pump = anyio.Event()
                    if self.closing:
                        break
                    await self._dispatch_some(calls)
        finally:
            done.set()

    async def _dispatch_some(self, calls: anyio.abc.TaskGroup) -> None:
        while self.heap and self.in_flight < self._config.max_in_flight:
            picked: dict[int, str] = {}
            while self.heap and len(picked) < self._config.max_in_flight - self.in_flight:
                _deadline, row_id, job_id = self.heap.pop()
                job = self._jobs.get(job_id)
                if job is not None and job.status == JobStatus.IN_PROGRESS:
                    picked[row_id] = job_id
            if not picked:
                return
            self._fetching = True
            try:
                rows = await jobs_sql.fetch_requests(self._database, list(picked),
                                                     self._claimer)
            finally:
                self._fetching = False
            for row in rows:
                self.in_flight += 1
                self._jobs[row.job_id].running += 1
                calls.start_soon(self._send, row)
            if self._shared is not None and len(rows) < len(picked):
                self._mark_shared(picked, rows)

    def _mark_shared(self, picked: dict[int, str], sent: list[jobs_sql.QueuedRequest]) -> None:
        """The jobs of lines picked but not sent (another daemon claimed them, or they ended
        meanwhile) are shared: their counts come from the store from now on."""
        assert self._shared is not None
        missing = picked.keys() - {row.id for row in sent}
        for job_id in {picked[row_id] for row_id in missing}:
            job = self._jobs.get(job_id)
            if job is not None and not job.shared:
                self._shared(job)

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
                    if self._planner.clock.now() + hint < self._last_moment(row):
                        self.retries += 1
                        await anyio.sleep(hint)
                        continue
                elif isinstance(reply, Failure) and self._should_retry(reply.error, attempts,
                                                                       row):
                    self.retries += 1
                    room = max(0.0, row.deadline_at - self._planner.clock.now())
                    await anyio.sleep(min(room, 60.0, random.uniform(0, 2.0**attempts)))
                    continue
                self._results.add(row, reply, attempts)
                return
        finally:
            self.in_flight -= 1
            job.running -= 1
            self._wake_pump.set()

    async def _call_once(self, row: jobs_sql.QueuedRequest, job: JobState) -> Reply | None:
        replies_in, replies_out = create_memory_stream[Reply](1)
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
            received_at=self._planner.clock.now(),
            # A trace of its own (it may run hours after the submission), linked to the span
            # that submitted the job.
            trace=linked_context(job.traceparent),
            reply=replies_in,
            deadline_at=row.deadline_at,
            cache=self._cache_plan(row, job),
            settle_with_result=True,
            deferred=True,
            submitted_at=job.created_at,
            routed_from=row.routed_from,
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
        if attempts >= self._config.max_attempts or self._planner.clock.now() >= row.deadline_at:
            return False
        # The dispatcher already retried it within its budget; the keeper tries again later
        # (its deadline is far off) only what waiting can fix, classified the same way.
        return classify(error).kind.retryable
