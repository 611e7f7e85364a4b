"""Questions to the actors and their typed answers: each actor's status snapshot is a
``TypedDict`` whose keys are exactly what ``/v1/status`` serves (the CLI reads them), a job is
a ``JobView``; an actor's inbox type lists the questions it answers."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, NotRequired, TypedDict, TypeVar

import anyio

from llmspool.core.errors import ApiError
from llmspool.core.states import JobStatus
from llmspool.core.streams import MemorySendStream
from llmspool.store.records import (
    Viewer,
)

# --- questions to the actors ----------------------------------------------------------------

Snapshot = TypeVar("Snapshot")
Answer = TypeVar("Answer")

GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock)
"""What sending an answer raises when its asker is gone (it gave up after its timeout, or
its client left, and closed the reply stream)."""


def answer(reply: MemorySendStream[Answer], value: Answer) -> None:
    """Send ``value`` to the asker waiting on ``reply``; an asker that gave up is not the
    actor's problem (raising here would end the actor, and the daemon with it)."""
    with contextlib.suppress(*GONE):
        reply.send_nowait(value)


# Not slots: a slotted frozen generic dataclass cannot be built as ``StatusQuery[X](...)``
# (typing sets ``__orig_class__`` on the instance, which a slotted frozen class refuses).
@dataclass(frozen=True)
class StatusQuery(Generic[Snapshot]):
    """Ask an actor for its status snapshot (what ``/v1/status`` shows under its name); an
    actor's inbox names the snapshot it answers with, e.g. ``StatusQuery[QueueStatus]``."""

    reply: MemorySendStream[Snapshot] = field(repr=False)


@dataclass(frozen=True, slots=True)
class LedgerEntriesQuery:
    """Ask the ledger for its status and its last ``limit`` entries, newest first: everyone's
    (``everyone``), or only those of ``uid`` (None: calls of unknown origin)."""

    limit: int
    everyone: bool
    uid: int | None
    reply: MemorySendStream[LedgerEntries] = field(repr=False)


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Ask the job keeper for a job's view; a job unknown, forgotten or not ``viewer``'s to
    see is answered ``NotFound`` (the same 404 as ``CancelJob``'s)."""

    job_id: str
    viewer: Viewer
    reply: MemorySendStream[JobView | ApiError] = field(repr=False)


@dataclass(frozen=True, slots=True)
class JobListQuery:
    """Ask the job keeper for the newest ``limit`` jobs that ``viewer`` may see."""

    limit: int
    viewer: Viewer
    reply: MemorySendStream[JobList] = field(repr=False)


# --- the answers: JSON-ready, their keys exactly what the HTTP API serves --------------------


class JobCounts(TypedDict):
    """A job's requests by where they are (``queued`` excludes running and batched ones)."""

    total: int
    queued: int
    running: int
    in_batch: int
    succeeded: int
    failed: int
    cancelled: int
    late: int


class PlanGroupView(TypedDict):
    """One group of a new job's plan: ``requests`` of ``model`` planned on ``tier``."""

    tier: str
    model: str
    requests: int
    expected_by: float


class JobView(TypedDict):
    """A job as the job keeper answers it and ``/v1/jobs`` serves it.

    The keys that are not always there are added on the way: ``plan`` by the keeper to a new
    job's acknowledgement, ``message`` to a cancel of a job already ended, ``best_effort``,
    ``warnings``, ``rejected`` and ``rejected_count`` by the front door to a submission, and
    ``batches`` (the upstream batches carrying its lines) to ``GET /v1/jobs/{id}``.
    """

    id: str
    object: Literal["llmspool.job"]
    status: JobStatus
    created_at: float
    deadline_at: float
    finished_at: float | None
    operation: str | None
    tags: dict[str, str]
    counts: JobCounts
    by_tier: dict[str, int]
    cost_usd: float
    saved_usd: float
    plan: NotRequired[list[PlanGroupView]]
    message: NotRequired[str]
    best_effort: NotRequired[bool]
    warnings: NotRequired[list[str]]
    rejected: NotRequired[list[dict[str, object]]]
    rejected_count: NotRequired[int]
    batches: NotRequired[list[dict[str, Any]]]


class JobList(TypedDict):
    """``GET /v1/jobs``: the newest jobs first."""

    object: Literal["list"]
    data: list[JobView]


class QueueStatus(TypedDict):
    """The request queue's snapshot."""

    in_flight: int
    waiting: int
    slots: int
    admitted: int
    refused_full: int
    oldest_wait_s: float


class NearDuplicateStatus(TypedDict):
    """The response cache's near-duplicate matching."""

    vectors: int
    hits: int
    shared: int
    embedding_calls: int
    embedding_failures: int


class CacheStatus(TypedDict):
    """The response cache's snapshot (``near_duplicates`` None: no operation matches them)."""

    enabled: bool
    entries: int
    max_entries: int
    hits: int
    misses: int
    hit_ratio: float | None
    shared: int
    in_flight: int
    waiting_on_flights: int
    written: int
    evicted: int
    expired: int
    too_large: int
    corrupt_dropped: int
    dropped_writes: int
    write_errors: int
    waited_for_batch: int
    batch_wait_gave_up: int
    near_duplicates: NearDuplicateStatus | None
    # A fleet's daemons (a shared store): calls answered by another daemon's cached answer
    # (hits) or call in flight (shared), and failed round trips to the store (errors).
    fleet: FleetCacheStatus | None


class FleetCacheStatus(TypedDict):
    """This daemon's part in the fleet's response cache."""

    hits: int
    shared: int
    errors: int


class FlexStatus(TypedDict):
    """The dispatcher's calls on the flex tier."""

    requests: int
    tokens: int
    standard_fallbacks: int
    resource_unavailable_errors: int
    estimated_savings_usd: float


class DispatcherStatus(TypedDict):
    """The dispatcher's snapshot. The nested parts are the snapshots of the planner's latency
    book, the retrier, the breakers, the rate limits and the providers' connection pools.

    ``in_flight`` counts every call the dispatcher holds; ``in_flight_by_tier`` those whose
    attempts have begun, by the tier they are on (a flex call that fell back to standard counts
    as standard), only tiers with calls on them; ``served_by_tier`` the calls answered since
    the daemon started; ``workers`` the dispatcher's tasks serving calls or waiting for one
    (one a call in flight, and a few more: see ``Dispatcher._work``)."""

    in_flight: int
    workers: int
    in_flight_by_tier: dict[str, int]
    served_by_tier: dict[str, int]
    failed: int
    flex: FlexStatus
    latency: dict[str, dict[str, float | int]]
    upstream_attempts: int
    failed_over: int
    aborted_by_client: int
    retries: dict[str, object]
    breakers: list[dict[str, Any]]
    breaker_transitions: list[dict[str, Any]]
    rate_limits: dict[str, Any]
    connections: dict[str, dict[str, Any]]


class BudgetStatus(TypedDict):
    """One daily cap: its limit, what is spent and reserved against it, and how full it is."""

    cap: str
    limit_usd: float
    spent_usd: float
    reserved_usd: float
    fraction: float | None


class LedgerStatus(TypedDict):
    """The ledger's snapshot: today's money, the caps, warnings and commits."""

    day: str
    spend_today_usd: float
    saved_today_usd: float
    calls_today: int
    unpriced_calls_today: int
    reserved_usd: float
    calls_reserved: int
    refused_by_budget: int
    unknown_outcome_today: int
    unknown_outcome_today_usd: float
    commits: int
    # SQLite: checkpoints of the write-ahead log made in a worker thread (store.wal_checkpoints).
    wal_checkpoints: NotRequired[int]
    budgets: list[BudgetStatus]
    warnings: list[dict[str, Any]]
    # A store several daemons share: each daemon, its lease and the calls it holds
    # (store.fleet.fleet_report); the money figures above are then the whole fleet's.
    fleet: NotRequired[list[dict[str, Any]]]


class LedgerEntries(LedgerStatus):
    """``GET /v1/ledger``: the ledger's snapshot and its recent entries (the columns of
    ``ledger_entries``, costs in USD)."""

    entries: list[dict[str, Any]]


class KeeperStatus(TypedDict):
    """The job keeper's snapshot."""

    jobs_in_progress: int
    requests_queued: int
    requests_running: int
    retries: int
    requests_late: int
    # Lines of other daemons' jobs this one claimed (to send them) since start (a shared store).
    requests_helped: int


class WaitingGroupStatus(TypedDict):
    """Lines of one provider, endpoint and model waiting to be put in a batch."""

    provider: str
    endpoint: str
    model: str
    requests: int
    oldest_s: float
    held: str | None


class SubmitterStatus(TypedDict):
    """The batch submitter's snapshot."""

    waiting: list[WaitingGroupStatus]
    submitted: int
    given_back: int


class PollerStatus(TypedDict):
    """The batch poller's snapshot: its open batches (their rows' JSON) and counts."""

    open: list[dict[str, Any]]
    finished: int
    paid_twice: int
    rebatched: int
