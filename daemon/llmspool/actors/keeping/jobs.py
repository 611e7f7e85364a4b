"""One job as the job keeper keeps it in memory: ``JobState``, its counts mirroring the store
(so a status answer on a job of 100,000 requests costs no query), and its status answer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmspool.core.pricing import usd
from llmspool.core.states import JobStatus, RequestState
from llmspool.messages import JobView


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
    # Other daemons of a shared store answer some of its lines: its counts are read from the
    # store (``keeping.sharing.SharedCounts``), not counted here.
    shared: bool = False

    def to_json(self) -> JobView:
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


def job_from_store(row: Mapping[str, Any]) -> JobState:
    """A job as ``store.jobs.load_jobs`` read it, with its counts."""
    job = JobState(row["id"], row["created_at"], row["deadline_at"], row["operation"],
                   row["tags"], row["uid"], row["status"], row["total"], row["finished_at"],
                   traceparent=row["traceparent"])
    job.states.update(row["states"])
    job.tiers.update(row["tiers"])
    job.cost, job.standard, job.late = row["cost"], row["standard"], row["late"]
    return job



# Reports that a job is shared (``keeping.sharing.SharedCounts.mark``).
MarkShared = Callable[[JobState], None]
