"""The job keeper's start and retention: what a restart resumes, and what is forgotten.

- On start, jobs whose requests all ended are completed, every job kept is loaded into memory
  with its counts, batched lines become twins again (identical lines resumed after them wait
  for them), and the requests still queued are routed again, a job and a page at a time.
- In a store several daemons share, the daemon first claims back its jobs' offered lines
  (those another daemon claimed stay its), and the jobs it resumes are shared: other daemons
  may be answering some of their lines (``sharing``).
- Jobs finished longer ago than ``[jobs] retention`` are deleted, results and all, at start
  and then every ``SWEEP_EVERY`` seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from llmspool.actors.keeping.jobs import JobState, job_from_store
from llmspool.actors.keeping.routing import Router
from llmspool.core.states import JobStatus
from llmspool.store import jobs as jobs_sql
from llmspool.store.connections import AsyncConnection
from llmspool.store.records import BatchCandidate

log = logging.getLogger("llmspool.actors.job_keeper")  # the keeper's own log

SWEEP_EVERY = 3600.0


async def recover(database: AsyncConnection, write_lock: anyio.Lock,
                  jobs: dict[str, JobState], router: Router, now: float,
                  owner: str | None = None, only: Sequence[str] | None = None) -> None:
    """Loads the jobs kept in ``database`` into ``jobs`` and routes their queued requests;
    ``owner``: in a store several daemons share, only this daemon's jobs; ``only``: just
    these jobs (taken over from a dead daemon while this one runs)."""
    async with write_lock:
        await database.execute("BEGIN IMMEDIATE")
        try:
            await jobs_sql.complete_finished_jobs(database, now,
                                                  None if only is None else set(only))
        except BaseException:
            await database.execute("ROLLBACK")
            raise
        await database.execute("COMMIT")
        if owner is not None:
            await jobs_sql.claim_unclaimed(database, owner, only)
    loaded: list[JobState] = []
    for row in await jobs_sql.load_jobs(database, owner, only):
        state = job_from_store(row)
        state.shared = owner is not None and state.status == JobStatus.IN_PROGRESS
        jobs[state.id] = state
        loaded.append(state)
    loaded_ids = {state.id for state in loaded}
    for job_id, count in (await jobs_sql.batched_counts(database)).items():
        if job_id in loaded_ids:
            jobs[job_id].batched = count
    for key, request_id, job_id, deadline_at in await jobs_sql.batched_twins(database, owner,
                                                                             only):
        router.resume_twin(key, request_id, job_id, deadline_at)
    # A job at a time, a page at a time: a million queued requests are resumed without all
    # their rows in memory at once (~450 MB). Lines for a batch go in one message, as a new
    # job's do (the batch submitter regroups its pending lines on each).
    to_batch: list[BatchCandidate] = []
    traceparents: set[str] = set()
    resumed = resumed_jobs = 0
    for state in loaded:
        if state.status != JobStatus.IN_PROGRESS:
            continue
        before = resumed
        async for rows in jobs_sql.routable_pages(database, state.id, claimer=owner):
            batched = len(to_batch)
            await router.route(rows, collect=to_batch)
            if state.traceparent and len(to_batch) > batched:
                traceparents.add(state.traceparent)
            resumed += len(rows)
        resumed_jobs += resumed > before
    await router.send_to_batch(to_batch, tuple(sorted(traceparents)))
    if resumed:
        log.info("resuming %d queued requests of %d jobs", resumed, resumed_jobs)


async def delete_expired(database: AsyncConnection, write_lock: anyio.Lock,
                         jobs: dict[str, JobState], retention: float, now: float) -> None:
    """Forget jobs finished longer ago than ``[jobs] retention`` before ``now``, results and
    all."""
    before = now - retention
    async with write_lock:
        deleted = await jobs_sql.delete_jobs_finished_before(database, before)
    expired = [j.id for j in jobs.values() if j.finished_at is not None and j.finished_at < before]
    for job_id in expired:
        del jobs[job_id]
    if deleted:
        log.info("deleted %d jobs finished more than %.0f s ago", deleted, retention)
