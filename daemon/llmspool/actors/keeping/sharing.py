"""Deferred work shared by the live daemons of one PostgreSQL store (``[store] url``).

Every queued request is claimed by at most one daemon (``job_requests.claimed_by``), which
alone sends it:

- A job's owner (the daemon that accepted it) claims all its lines when storing them. It keeps
  the lines it routes to a batch, and *offers* to the fleet those it routes to be sent (claimed
  by none); its pump claims each back when it gets to it, unless another daemon was first.
- ``Helper``: a daemon with room to spare (its own heap empty, fewer than ``[jobs]
  max_in_flight`` calls running) claims offered lines of other daemons' jobs, the most urgent
  first (``SKIP LOCKED``: each is claimed once however many ask at once), and sends them with
  a pump of its own; their results are stored by its ledger like any.
- ``SharedCounts``: a job some of whose lines another daemon answered (its owner's pump found
  them claimed, or it was loaded at a start or taken over) is *shared*: its counts are read
  from the store (every ``REFRESH_EVERY`` seconds while it is in progress) instead of counted
  here, and it completes when the store says so.
- A daemon that dies has its claims offered again by the one that takes it over; one that
  stops cleanly offers its own (``store.fleet.leave``).
- Another daemon's job can be looked at, waited for and cancelled from any daemon
  (``stored_job``: read from the store). Its owner notices a cancel, or an end it did not see,
  within ``REFRESH_EVERY``: it checks the status of its jobs in progress in the store.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import anyio
import psycopg
from opentelemetry import metrics

from llmspool.actors.keeping.jobs import JobState, job_from_store
from llmspool.actors.keeping.results import Results
from llmspool.actors.keeping.sending import Pump
from llmspool.actors.keeping.waiting import Waiters
from llmspool.core.clock import Clock
from llmspool.core.config.sections import JobsConfig
from llmspool.core.states import JobStatus, RequestState
from llmspool.core.streams import MemorySendStream
from llmspool.messages import Call, StoreJobResults
from llmspool.policy.cache_keys import CacheRules
from llmspool.policy.planner import Planner
from llmspool.store import jobs as jobs_sql
from llmspool.store.connections import AsyncConnection

log = logging.getLogger("llmspool.actors.job_keeper")  # the keeper's own log

# Seconds between reads of the shared jobs' counts while they are in progress (at least).
REFRESH_EVERY = 1.0
# Seconds between looks for other daemons' offered lines when the last found none: a claim
# is one indexed statement, so an idle fleet of four asks ~8 times a second in all.
HELP_EVERY = 0.5
BUSY_EVERY = 0.05  # seconds between looks while lines are being found (and slots free up)


class SharedCounts:
    """The counts of this daemon's shared jobs, read from the store while they are in
    progress; each completes (its waiters answered) when the store has no line of it queued."""

    def __init__(self, database: AsyncConnection, jobs: dict[str, JobState],
                 waiters: Waiters, clock: Clock) -> None:
        self._database = database
        self._jobs = jobs  # the keeper's, shared
        self._waiters = waiters
        self._clock = clock
        self._changed = anyio.Event()

    def mark(self, job: JobState) -> None:
        """``job`` is shared from now on: its counts are read from the store."""
        job.shared = True
        self._changed.set()

    def wake(self) -> None:
        """Jobs were marked shared elsewhere (taken over, loaded): their counts are read."""
        self._changed.set()

    async def run(self) -> None:
        while True:
            shared = self._in_progress()
            if not shared:
                await self._changed.wait()
                self._changed = anyio.Event()
                continue
            started = time.perf_counter()
            await self.refresh(shared)
            # Reading a big job's counts takes a while (~50 ms for 100,000 lines on PostgreSQL),
            # on the connection the pump reads its lines on: at most a twentieth of the time.
            await self._clock.sleep(max(REFRESH_EVERY, 20 * (time.perf_counter() - started)))

    def _in_progress(self) -> list[str]:
        return [job.id for job in self._jobs.values()
                if job.shared and job.status == JobStatus.IN_PROGRESS]

    async def watch(self) -> None:
        """Every ``REFRESH_EVERY`` seconds, the jobs in progress here that another daemon
        ended in the store (cancelled there) become shared: their counts and status are read."""
        while True:
            await self._clock.sleep(REFRESH_EVERY)
            mine = [job.id for job in self._jobs.values()
                    if job.status == JobStatus.IN_PROGRESS and not job.shared]
            for job_id in await jobs_sql.ended_elsewhere(self._database, mine):
                job = self._jobs.get(job_id)
                if job is not None:
                    self.mark(job)

    async def refresh(self, job_ids: list[str]) -> None:
        for row in await jobs_sql.load_jobs(self._database, None, job_ids):
            job = self._jobs.get(row["id"])
            if job is None or job.status != JobStatus.IN_PROGRESS:
                continue  # cancelled here meanwhile
            job.states = Counter(row["states"])
            job.tiers = Counter(row["tiers"])
            job.cost, job.standard, job.late = row["cost"], row["standard"], row["late"]
            if row["status"] != JobStatus.IN_PROGRESS or job.states[RequestState.QUEUED] == 0:
                job.status = (row["status"] if row["status"] != JobStatus.IN_PROGRESS
                              else JobStatus.COMPLETED)
                job.finished_at = row["finished_at"] or self._clock.now()
                self._waiters.job_finished(job)


class Helper:
    """Sends other daemons' offered lines while this daemon has room to spare: claims them,
    and sends them with a pump (and a results writer) of its own, next to the keeper's."""

    def __init__(self, name: str, own: Pump, queue: MemorySendStream[Call],
                 cache: MemorySendStream[Call] | None, cache_rules: CacheRules | None,
                 ledger: MemorySendStream[StoreJobResults], database: AsyncConnection,
                 planner: Planner, config: JobsConfig, meter: metrics.Meter) -> None:
        self._name = name
        self._own = own
        self._database = database
        self._config = config
        self._clock = planner.clock
        # Other daemons' jobs with lines claimed here: what sending them takes (operation,
        # user, trace). Their counts are their owners' business (read from the store there).
        self._jobs: dict[str, JobState] = {}
        self._results = Results(ledger, self._jobs, Waiters(), meter, planner.clock,
                                shared=_not_counted)
        # Its fetches need no claim: the lines it pushes are claimed already.
        self.pump = Pump(queue, cache, cache_rules, database, planner, config, self._jobs,
                         self._results)
        self.helped = 0  # lines of other daemons' jobs claimed since start

    async def run(self, done: anyio.Event) -> None:
        """Claims and sends until closed (``close``), then lets the calls in flight finish
        and stores their results."""
        pump_done = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(self.pump.run, pump_done)
            group.start_soon(self._results.run)
            try:
                while not self.pump.closing:
                    try:
                        found = await self._claim()
                    except psycopg.Error as exc:  # helping is optional: try again later
                        log.warning("could not claim other daemons' queued requests (%s)",
                                    str(exc).strip() or type(exc).__name__)
                        found = 0
                    await self._clock.sleep(BUSY_EVERY if found else HELP_EVERY)
            finally:
                with anyio.CancelScope(shield=True):
                    self.pump.close()
                    await pump_done.wait()
                    await self._results.flush()
                    group.cancel_scope.cancel()
                    done.set()

    def close(self) -> None:
        self.pump.close()

    async def _claim(self) -> int:
        """Claims as many offered lines as there is room for; how many."""
        room = (self._config.max_in_flight - self._own.in_flight - self.pump.in_flight
                - len(self.pump.heap))
        if self._own.heap or room <= 0:
            return 0
        if self.pump.idle:  # no line of theirs waiting, being read or in flight
            self._jobs.clear()
        rows = await jobs_sql.claim_offered(self._database, self._name, room)
        if not rows:
            return 0
        unknown = sorted({row.job_id for row in rows} - self._jobs.keys())
        if unknown:
            for row in await jobs_sql.load_jobs(self._database, None, unknown):
                job = self._jobs[row["id"]] = job_from_store(row)
                # Sent while claimed lines are left (it may end in the store meanwhile: their
                # results are then not stored), and counted by its owner.
                job.status, job.shared = JobStatus.IN_PROGRESS, True
        self.pump.heap.push((row.deadline_at, row.id, row.job_id) for row in rows)
        self.pump.wake()
        self.helped += len(rows)
        log.debug("claimed %d lines of other daemons' jobs", len(rows))
        return len(rows)


def _not_counted(_job: JobState) -> None:
    """Another daemon's job: its owner reads its counts from the store."""


async def stored_job(database: AsyncConnection, job_id: str) -> JobState | None:
    """Another daemon's job, as the store has it now (None: no such job)."""
    for row in await jobs_sql.load_jobs(database, None, [job_id]):
        job = job_from_store(row)
        job.shared = True
        return job
    return None
