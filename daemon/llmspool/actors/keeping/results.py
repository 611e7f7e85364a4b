"""Each line's result, stored and counted: the job keeper's writer.

- A final reply becomes a ``JobResult``: an answer as a line in the Batch output format (with
  how a cache answered it, and ``late`` when past its deadline), a failure as a failure line.
- Results are stored in group commits by the ledger, each result with the ledger entry of the
  call that produced it (one transaction), each guarded by the request's state, so a request
  is stored once even if its call is repeated after a crash.
- Each stored result (and each one a batch stored) is counted in its job, which completes on
  its last one; results stored after the job's deadline are counted as late. A job other
  daemons of a shared store work too is counted from the store instead (``sharing``).
"""

from __future__ import annotations

import anyio
import orjson
from opentelemetry import metrics

from llmspool.actors.keeping.jobs import JobState, MarkShared
from llmspool.actors.keeping.waiting import Waiters
from llmspool.core.calls import Tier
from llmspool.core.clock import Clock
from llmspool.core.errors import ApiError, UpstreamError
from llmspool.core.states import JobStatus, RequestState
from llmspool.core.streams import MemorySendStream, create_memory_stream
from llmspool.messages import Answer, Failure, Reply, StoreJobResults
from llmspool.policy.cache_keys import HEADER
from llmspool.store import jobs as jobs_sql
from llmspool.store.records import JobResult, Settled


class Results:
    """The results waiting to be stored, the writer that stores them, and the late count."""

    def __init__(self, ledger: MemorySendStream[StoreJobResults],
                 jobs: dict[str, JobState], waiters: Waiters, meter: metrics.Meter,
                 clock: Clock, *, shared: MarkShared | None = None) -> None:
        self._ledger = ledger
        self._shared = shared
        self._clock = clock
        self._jobs = jobs  # the keeper's, shared
        self._waiters = waiters
        self._late_counter = meter.create_counter(
            "llmspool.jobs.requests_late", "{request}",
            "job requests whose result was stored after their deadline")
        self._pending: list[JobResult] = []
        self._pending_entries: list[Settled] = []
        self._wake_writer = anyio.Event()
        self.late = 0  # results stored after their deadline since start

    def add(self, row: jobs_sql.QueuedRequest, reply: Reply, attempts: int) -> None:
        """A line's final reply, as its result, to be stored by the writer."""
        line_id = f"batch_req_{row.id}"
        late = self._clock.now() > row.deadline_at
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

    async def run(self) -> None:
        """The writer: stores what has waited, in one group commit each time it is woken."""
        while True:
            await self._wake_writer.wait()
            self._wake_writer = anyio.Event()
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        outcomes, self._pending = self._pending, []
        entries, self._pending_entries = self._pending_entries, []
        reply_in, reply_out = create_memory_stream[list[int]](1)
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
            self.count(job, outcome.state, outcome.tier, outcome.cost_picodollars,
                       outcome.standard_cost_picodollars)

    def count(self, job: JobState, state: RequestState, tier: str | None, cost: int | None,
              standard: int | None) -> None:
        """A stored result of ``job``, in its counts; completes the job on its last one."""
        late = self._clock.now() > job.deadline_at
        if late:
            self.late += 1
            self._late_counter.add(1, {"llmspool.operation": job.operation or ""})
        if job.shared and self._shared is not None:
            self._shared(job)  # counted from the store, with the other daemons' results
            return
        job.states[RequestState.QUEUED] -= 1
        job.states[state] += 1
        if tier:
            job.tiers[tier] += 1
        job.cost += cost or 0
        job.standard += standard or cost or 0
        if late:
            job.late += 1
        if job.states[RequestState.QUEUED] == 0 and job.status == JobStatus.IN_PROGRESS:
            job.status = JobStatus.COMPLETED
            job.finished_at = self._clock.now()
            self._waiters.job_finished(job)


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
