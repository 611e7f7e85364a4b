"""The job keeper actor: deferred work from its acknowledgement to its last result.

- A submitted job is written (job and requests, one transaction) before it is acknowledged.
- Each queued request is routed by deadline: into a batch, or sent from here, at most
  ``[jobs] max_in_flight`` at a time, each as a ``Call`` through the request queue.
- Results are stored in group commits by the ledger, each with the ledger entry of its call.
- Counts per job are kept in memory, mirroring the store, so a status answer on a job of
  100,000 requests costs no query.

This module is the actor: its inbox (submit, cancel, wait, queries), the jobs it keeps, and
its tasks from start to shutdown. The work is done by the parts in ``llmspool.actors.keeping``,
made once here and kept for the daemon's life (nothing is made per line): where each line goes
(``routing``), the heap of lines sent from here and their calls (``sending``), the results
stored and counted (``results``), the waiters (``waiting``), what a restart resumes and
retention forgets (``recovery``), and, in a store several daemons share, the lines this daemon
sends for the others and the counts of jobs they help with (``sharing``). ``JobState``
(``keeping.jobs``) is one job's counts.
"""

from __future__ import annotations

import contextlib
import logging

import anyio
from anyio.abc import TaskGroup, TaskStatus
from opentelemetry import metrics

from llmspool.actors.keeping.jobs import JobState
from llmspool.actors.keeping.recovery import SWEEP_EVERY, delete_expired, recover
from llmspool.actors.keeping.results import Results
from llmspool.actors.keeping.routing import Router
from llmspool.actors.keeping.sending import Pump
from llmspool.actors.keeping.sharing import REFRESH_EVERY, Helper, SharedCounts, stored_job
from llmspool.actors.keeping.waiting import Waiters, no_such_job, reply_to
from llmspool.cache.store import CachedKeys
from llmspool.core.config.sections import BatchConfig, JobsConfig
from llmspool.core.errors import ApiError, TooManyRequests
from llmspool.core.states import JobStatus, RequestState
from llmspool.core.streams import MemoryReceiveStream, MemorySendStream
from llmspool.jobs.plan import JobPlan
from llmspool.messages import (
    AdoptBatches,
    AdoptWork,
    BatchLinesDone,
    Call,
    CancelJob,
    JobList,
    JobListQuery,
    JobQuery,
    JobView,
    KeeperStatus,
    StatusQuery,
    StoreJobResults,
    SubmitJob,
    ToBatch,
    WaitForJob,
    answer,
)
from llmspool.policy.cache_keys import CacheRules
from llmspool.policy.planner import Planner
from llmspool.store import jobs as jobs_sql
from llmspool.store.connections import AsyncConnection
from llmspool.store.records import BatchCandidate, NewJob, Viewer

log = logging.getLogger(__name__)

# Seconds a wait for another daemon's job lasts at most (the results route waits 10 minutes).
WAIT_ELSEWHERE = 600.0

KeeperMessage = (SubmitJob | CancelJob | WaitForJob | JobQuery | JobListQuery
                 | StatusQuery[KeeperStatus])


class JobKeeper:
    def __init__(
        self,
        inbox: MemoryReceiveStream[KeeperMessage],
        queue: MemorySendStream[Call],
        ledger: MemorySendStream[StoreJobResults],
        database: AsyncConnection,
        planner: Planner,
        config: JobsConfig,
        *,
        batches: MemorySendStream[ToBatch | AdoptBatches] | None = None,
        batch_results: MemoryReceiveStream[BatchLinesDone] | None = None,
        batch_providers: frozenset[str] = frozenset(),
        batch_config: BatchConfig | None = None,
        cache: MemorySendStream[Call] | None = None,
        cache_rules: CacheRules | None = None,
        cached: CachedKeys | None = None,
        meter: metrics.Meter | None = None,
        owner: str | None = None,
        adoptions: MemoryReceiveStream[AdoptWork] | None = None,
    ) -> None:
        self._inbox = inbox
        self._tasks: TaskGroup | None = None  # the keeper's task group, while it runs
        self._adoptions = adoptions
        # In a store several daemons share: this daemon, which owns the jobs it accepted (and
        # those it took over), and claims the lines it sends. None: the one daemon of the store.
        self._owner = owner
        self._cached = cached
        self._cache = cache
        self._batches = batches
        self._batch_results = batch_results
        self._queue = queue
        self._ledger = ledger
        self._database = database
        self._config = config
        self._clock = planner.clock
        self._jobs: dict[str, JobState] = {}
        self._write_lock = anyio.Lock()
        self._waiters = Waiters()
        meter = meter or metrics.NoOpMeter("llmspool")
        # In a shared store: the counts of jobs other daemons help with, read from the store.
        self._shared = (None if owner is None
                        else SharedCounts(database, self._jobs, self._waiters, planner.clock))
        mark_shared = None if self._shared is None else self._shared.mark
        self._results = Results(ledger, self._jobs, self._waiters, meter, planner.clock,
                                shared=mark_shared)
        self._pump = Pump(queue, cache, cache_rules, database, planner, config, self._jobs,
                          self._results, claimer=owner, shared=mark_shared)
        # In a shared store: the sender of other daemons' lines, when this one has room.
        self._helper = (None if owner is None else Helper(
            owner, self._pump, queue, cache, cache_rules, ledger, database, planner, config,
            meter))
        self._router = Router(
            jobs=self._jobs, pump=self._pump, results=self._results, database=database,
            planner=planner, config=config, batches=batches, batch_providers=batch_providers,
            batch_config=batch_config or BatchConfig(), cached=cached, claimer=owner)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await delete_expired(self._database, self._write_lock, self._jobs, self._config.retention,
                             self._clock.now())
        await recover(self._database, self._write_lock, self._jobs, self._router,
                      self._clock.now(), self._owner)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._queue)
            await stack.enter_async_context(self._ledger)
            if self._cache is not None:
                await stack.enter_async_context(self._cache)
            if self._batches is not None:  # closed when the keeper ends, ending the submitter
                await stack.enter_async_context(self._batches)
            group = await stack.enter_async_context(anyio.create_task_group())
            pump_done, helper_done = anyio.Event(), anyio.Event()
            group.start_soon(self._pump.run, pump_done)
            group.start_soon(self._results.run)
            group.start_soon(self._sweep_expired)
            self._tasks = group
            if self._shared is not None:
                group.start_soon(self._shared.run)
                group.start_soon(self._shared.watch)
            if self._helper is not None:
                group.start_soon(self._helper.run, helper_done)
            else:
                helper_done.set()
            if self._batch_results is not None:
                # Apart from the inbox, so that the batch actors (which live until the keeper
                # is done) never hold the keeper's inbox open at shutdown.
                group.start_soon(self._take_batch_results, self._batch_results)
            if self._adoptions is not None:  # apart from the inbox too: the ledger's
                group.start_soon(self._take_adoptions, self._adoptions)
            task_status.started()
            async with self._inbox:
                async for message in self._inbox:
                    await self._handle(message)
                    # Not kept until the next message: a submission holds its job's lines.
                    del message
            # The front door is closed: send nothing new, let calls in flight finish (the
            # daemon bounds how long), store their results, and stop.
            self._pump.close()
            if self._helper is not None:
                self._helper.close()
            await pump_done.wait()
            await helper_done.wait()
            await self._results.flush()
            group.cancel_scope.cancel()
        if self._cached is not None:
            self._cached.close()

    # --- messages -----------------------------------------------------------------------

    async def _handle(self, message: KeeperMessage) -> None:
        if isinstance(message, SubmitJob):
            await reply_to(message.reply, await self._submit(message.job))
        elif isinstance(message, CancelJob):
            await reply_to(message.reply, await self._cancel(message.job_id, message.viewer))
        elif isinstance(message, WaitForJob):
            job = await self._fresh(message.job_id)
            if job is None and self._owner is not None and self._tasks is not None:
                self._tasks.start_soon(self._wait_elsewhere, message)
            elif job is None or not message.viewer.sees(job.uid):
                await reply_to(message.reply, no_such_job(message.job_id))
            elif job.status != JobStatus.IN_PROGRESS:
                await reply_to(message.reply, job.to_json())
            else:
                self._waiters.add(job.id, message.reply)
        elif isinstance(message, JobQuery):
            job = await self._fresh(message.job_id) or await self._elsewhere(message.job_id)
            await reply_to(message.reply, job.to_json() if job and message.viewer.sees(job.uid)
                           else no_such_job(message.job_id))
        elif isinstance(message, JobListQuery):
            answer(message.reply, self._job_list(message.limit, message.viewer))
        else:
            answer(message.reply, self._status())

    async def _submit(self, job: NewJob) -> JobView | ApiError:
        queued = sum(state.states[RequestState.QUEUED] for state in self._jobs.values())
        if queued + len(job.lines) > self._config.max_queued:
            return TooManyRequests(
                f"{queued} requests are already waiting ([jobs] max_queued = "
                f"{self._config.max_queued}); submit again once some have run",
                retry_after=30, code="queue_full",
            )
        async with self._write_lock:
            await jobs_sql.insert_job(self._database, job, self._owner)
        # Stored: the lines are read back from the store a page at a time from here on, so
        # they are let go now rather than with the upload's request (~45 MB for 100,000).
        total = len(job.lines)
        job.lines.clear()
        state = JobState(job.id, job.created_at, job.deadline_at, job.operation, job.tags,
                         job.uid, JobStatus.IN_PROGRESS, total, None,
                         traceparent=job.traceparent)
        state.states[RequestState.QUEUED] = total
        self._jobs[job.id] = state
        plan = JobPlan()
        # Read in pages (not all rows at once), handed to the batch submitter in one message
        # (it regroups its pending lines on each).
        to_batch: list[BatchCandidate] = []
        async for rows in jobs_sql.routable_pages(self._database, job.id,
                                                   claimer=self._owner):
            await self._router.route(rows, plan=plan, collect=to_batch)
        await self._router.send_to_batch(to_batch, (job.traceparent,) if job.traceparent else ())
        log.info("job %s: %d requests, deadline in %.0f s", job.id, total,
                 job.deadline_at - self._clock.now())
        return {**state.to_json(), "plan": plan.to_json()}

    async def _cancel(self, job_id: str, viewer: Viewer) -> JobView | ApiError:
        job = self._jobs.get(job_id)
        if job is None and self._owner is not None:
            return await self._cancel_elsewhere(job_id, viewer)
        if job is None or not viewer.sees(job.uid):  # another user's job: as if unknown
            return no_such_job(job_id)
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
        job.finished_at = self._clock.now()
        self._waiters.job_finished(job)
        # Lines of other jobs that waited for one of this job's batched lines stop waiting.
        orphans = self._router.orphans(job_id)
        if orphans:
            await self._router.route(orphans)
        log.info("job %s cancelled: %d requests had not run", job_id, cancelled)
        return job.to_json()

    # --- another daemon's jobs (a shared store) -------------------------------------------

    async def _fresh(self, job_id: str) -> JobState | None:
        """The job kept here, its counts read from the store first if other daemons help
        with it (they are read every second otherwise): an answer is never behind the
        results."""
        job = self._jobs.get(job_id)
        if (job is not None and job.shared and job.status == JobStatus.IN_PROGRESS
                and self._shared is not None):
            await self._shared.refresh([job_id])
        return job

    async def _elsewhere(self, job_id: str) -> JobState | None:
        """In a shared store, a job another daemon works, as the store has it now."""
        return None if self._owner is None else await stored_job(self._database, job_id)

    async def _wait_elsewhere(self, message: WaitForJob) -> None:
        """Answers ``message`` when another daemon's job ends (read from the store every
        ``REFRESH_EVERY`` seconds), or as it stands after ``WAIT_ELSEWHERE``."""
        give_up_at = self._clock.now() + WAIT_ELSEWHERE
        while True:
            job = await self._elsewhere(message.job_id)
            if job is None or not message.viewer.sees(job.uid):
                await reply_to(message.reply, no_such_job(message.job_id))
                return
            if job.status != JobStatus.IN_PROGRESS or self._clock.now() >= give_up_at:
                await reply_to(message.reply, job.to_json())
                return
            await self._clock.sleep(REFRESH_EVERY)

    async def _cancel_elsewhere(self, job_id: str, viewer: Viewer) -> JobView | ApiError:
        """Cancels another daemon's job in the store; its owner sees it within
        ``REFRESH_EVERY`` seconds, and sends none of its lines after."""
        job = await self._elsewhere(job_id)
        if job is None or not viewer.sees(job.uid):
            return no_such_job(job_id)
        if job.status == JobStatus.IN_PROGRESS:
            async with self._write_lock:
                cancelled = await jobs_sql.cancel_job(self._database, job_id)
            log.info("job %s (another daemon's) cancelled: %d requests had not run", job_id,
                     cancelled)
            job = await self._elsewhere(job_id) or job
        answer = job.to_json()
        if job.status != JobStatus.CANCELLED:
            answer["message"] = f"job {job_id} already {job.status}; nothing to cancel"
        return answer

    def _job_list(self, limit: int, viewer: Viewer) -> JobList:
        newest = sorted((j for j in self._jobs.values() if viewer.sees(j.uid)),
                        key=lambda j: j.created_at, reverse=True)
        return {"object": "list", "data": [j.to_json() for j in newest[:limit]]}

    def _status(self) -> KeeperStatus:
        in_progress = [j for j in self._jobs.values() if j.status == JobStatus.IN_PROGRESS]
        return {
            "jobs_in_progress": len(in_progress),
            "requests_queued": sum(j.states[RequestState.QUEUED] - j.running
                                   for j in in_progress),
            "requests_running": self._pump.in_flight + (
                0 if self._helper is None else self._helper.pump.in_flight),
            "retries": self._pump.retries,
            "requests_late": self._results.late,
            "requests_helped": 0 if self._helper is None else self._helper.helped,
        }

    async def _take_adoptions(self, adoptions: MemoryReceiveStream[AdoptWork]) -> None:
        """Deferred work of daemons the ledger took over (a shared store): their jobs are
        loaded and routed as at a restart, then their open batches go to the submitter."""
        async with adoptions:
            async for work in adoptions:
                if work.job_ids:
                    await recover(self._database, self._write_lock, self._jobs, self._router,
                                  self._clock.now(), self._owner, work.job_ids)
                    if self._shared is not None:
                        self._shared.wake()  # they are shared: their counts are read
                    log.info("took over %d jobs in progress", len(work.job_ids))
                if work.batch_ids and self._batches is not None:
                    await self._batches.send(AdoptBatches(work.batch_ids))
                elif work.batch_ids:
                    log.warning("took over %d open batches, but the batch tier is off here "
                                "([batch] enabled): they wait until it is on",
                                len(work.batch_ids))

    async def _take_batch_results(
        self, results: MemoryReceiveStream[BatchLinesDone]
    ) -> None:
        async with results:
            async for message in results:
                await self._router.batch_lines_done(message)

    async def _sweep_expired(self) -> None:
        while True:
            await self._clock.sleep(SWEEP_EVERY)
            await delete_expired(self._database, self._write_lock, self._jobs,
                                 self._config.retention, self._clock.now())
