"""Where each of the job keeper's lines goes, and when it is expected to be answered.

- A queued line goes to the batch submitter when the planner says its deadline leaves room
  for a batch (``ToBatch``), otherwise onto the pump's heap (``sending``), sent from here.
- A line bound for a batch passes the same gate as every call first: one the response cache
  already answers goes through the cache actor (free, tier ``cache``), and one identical to a
  line already batched (same cache key, a deadline no earlier) waits for that line's answer
  instead of going into a batch again (its *twin*); it is then answered from the cache
  (``shared``).
- A new job's ``JobPlan`` gets where each line went and when it is expected.
- Lines a batch gives back (expired, escalated, failed) are routed again; lines it answered
  are counted in their jobs, and the lines that waited for them go through the cache actor.
- In a store several daemons share, the lines pushed on the heap are offered to the fleet
  (another daemon may claim and send them first); those bound for a batch stay this daemon's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmspool.actors.keeping.jobs import JobState
from llmspool.actors.keeping.results import Results
from llmspool.actors.keeping.sending import Pump
from llmspool.cache.store import CachedKeys
from llmspool.core.calls import Endpoint, Tier
from llmspool.core.config.sections import BatchConfig, JobsConfig
from llmspool.core.states import JobStatus, RequestState
from llmspool.core.streams import MemorySendStream
from llmspool.jobs.plan import JobPlan
from llmspool.messages import BatchLinesDone, ToBatch
from llmspool.policy.planner import Planner
from llmspool.store import jobs as jobs_sql
from llmspool.store.connections import AsyncConnection
from llmspool.store.records import BatchCandidate


@dataclass
class BatchedTwin:
    """A line in (or on its way to) a batch, and the identical lines waiting for its answer."""

    request_id: int
    job_id: str
    deadline_at: float
    followers: list[jobs_sql.Routable] = field(default_factory=list)


class Router:
    """Routes lines to a batch or the pump's heap; owns the batched lines' twins."""

    def __init__(self, *, jobs: dict[str, JobState], pump: Pump, results: Results,
                 database: AsyncConnection, planner: Planner, config: JobsConfig,
                 batches: MemorySendStream[ToBatch] | None,
                 batch_providers: frozenset[str], batch_config: BatchConfig,
                 cached: CachedKeys | None, claimer: str | None = None) -> None:
        self._jobs = jobs  # the keeper's, shared
        self.claimer = claimer  # in a shared store: this daemon, which claims its lines
        self._pump = pump
        self._heap = pump.heap  # the pump's, shared: lines sent from here are pushed on it
        self._results = results
        self._database = database
        self._planner = planner
        self._config = config
        self._batches = batches
        self._batch_providers = batch_providers
        self._batch_config = batch_config
        self._cached = cached
        self._twins: dict[bytes, BatchedTwin] = {}  # cache key → the batched line
        self._twin_keys: dict[int, bytes] = {}  # batched line's request id → its cache key

    def resume_twin(self, key: bytes, request_id: int, job_id: str, deadline_at: float) -> None:
        """A line batched before a restart, which identical lines resumed after it wait for."""
        if key not in self._twins:
            self._twins[key] = BatchedTwin(request_id, job_id, deadline_at)
            self._twin_keys[request_id] = key

    def orphans(self, job_id: str) -> list[jobs_sql.Routable]:
        """The lines of other jobs that waited for a batched line of cancelled ``job_id``:
        they stop waiting, to be routed again."""
        leaders = [twin.request_id for twin in self._twins.values()
                   if twin.followers and twin.job_id == job_id]
        return [row for leader in leaders for row in self._release_twins(leader)]

    async def route(self, rows: list[jobs_sql.Routable], *, batch_again: bool = True,
                     plan: JobPlan | None = None,
                     collect: list[BatchCandidate] | None = None) -> None:
        """Hand each request to the batch submitter or push it on the heap; ``plan`` (of a
        new job) gets where each went and when it is expected. With ``collect``, lines for
        the batch submitter are added to it for the caller to send."""
        to_batch: list[BatchCandidate] = [] if collect is None else collect
        # Pushed on the heap together at the end: the page's lines of a job make one run.
        direct: list[tuple[float, int, str]] = []
        traceparents: set[str] = set()
        now = self._planner.clock.now()
        for row in rows:
            job = self._jobs.get(row.job_id)
            if job is None or job.status != JobStatus.IN_PROGRESS:
                continue
            if batch_again and self._batchable(row, job):
                batch_end = now + self._batch_config.max_age + self._planner.batch_expected(
                    row.provider, row.model)
                elsewhere = self._answered_elsewhere(row, job, direct)
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
                    self._plan_direct(plan, row, job, now, len(direct))
                direct.append((row.deadline_at, row.id, row.job_id))
        if self.claimer is not None:
            await jobs_sql.offer(self._database, self.claimer, [line[1] for line in direct])
        self._heap.push(direct)
        if collect is None:
            await self.send_to_batch(to_batch, tuple(sorted(traceparents)))
        self._pump.wake()

    async def send_to_batch(self, lines: list[BatchCandidate],
                             traceparents: tuple[str, ...]) -> None:
        if lines and self._batches is not None:
            await self._batches.send(ToBatch(lines, traceparents))

    def _plan_direct(self, plan: JobPlan, row: jobs_sql.Routable, job: JobState,
                     now: float, routed: int) -> None:
        """Plan a request sent from here: the tier the planner would choose now, answered
        after the requests ahead of it in the heap and the ``routed`` before it in its page
        (``max_in_flight`` at a time)."""
        policy = self._planner.policy(job.operation, None, deferred=True)
        tier = self._planner.choose(row.provider, row.model, policy, row.deadline_at, now)
        typical = self._planner.book.p50((row.provider, row.model, tier))
        rounds = (len(self._heap) + routed) // max(1, self._config.max_in_flight) + 1
        plan.add(tier.value, row.model, now + rounds * typical)

    def _answered_elsewhere(self, row: jobs_sql.Routable, job: JobState,
                            direct: list[tuple[float, int, str]]) -> str | None:
        """How a line bound for a batch is answered without one: ``cache`` (it goes through
        the cache actor now: added to ``direct``) or ``twin`` (it waits for an identical line
        already batched); None: it goes into a batch."""
        key = row.cache_key
        if key is None:
            return None
        if self._cached is not None and self._cached.has(key, self._planner.clock.now()):
            direct.append((row.deadline_at, row.id, row.job_id))
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

    async def batch_lines_done(self, message: BatchLinesDone) -> None:
        """Lines a batch answered (stored by the ledger), and lines it gave back."""
        for outcome in message.outcomes:
            # Its answer is in the cache (or its error is final): the lines that waited for it
            # go through the cache actor, which shares it.
            self._heap.push((row.deadline_at, row.id, row.job_id)
                            for row in self._release_twins(outcome.request_id))
            job = self._jobs.get(outcome.job_id)
            if job is None:
                continue
            if outcome.was_in_batch:
                job.batched = max(0, job.batched - 1)
            self._results.count(job, outcome.state,
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
                self._database, [line.request_id for line in message.requeued], self.claimer)
            # Routed with the lines they waited for: the first one batched leads again.
            await self.route(rows + followers, batch_again=message.batch_again)
        else:
            self._pump.wake()
