"""Every message the actors send each other: frozen dataclasses, one module, one picture.

Flow of an interactive call::

    front door --Call--> request queue --Call--> dispatcher --Reply--> front door (call.reply)
                                ^                    |
                                +----SlotFreed-------+---Settled--> ledger

Each message carries its request id, and a ``Call`` carries the OpenTelemetry context of the
span that made it, because contextvars do not cross memory object streams.

A question to an actor is a message of its own with typed fields (``StatusQuery``,
``LedgerEntriesQuery``, ``JobQuery``, ``JobListQuery``), and its answer a typed value: each
actor's status snapshot is a ``TypedDict`` whose keys are exactly what ``/v1/status`` serves
(the CLI reads them), and a job is a ``JobView``. An actor's inbox type lists the questions it
answers, so mypy refuses a question sent to an actor that does not answer it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, NotRequired, TypedDict, TypeVar

from anyio import CancelScope
from anyio.streams.memory import MemoryObjectSendStream
from opentelemetry.context import Context

from llmspool.core.calls import Endpoint, Tier
from llmspool.core.errors import ApiError
from llmspool.core.states import JobStatus
from llmspool.policy.billing import PriceBook
from llmspool.policy.cache_keys import CachePlan
from llmspool.policy.planner import TierPolicy
from llmspool.store.records import (
    BatchCandidate,
    BatchChunk,
    BatchChunkStored,
    Caller,
    JobResult,
    LineOutcome,
    NewEntry,
    NewJob,
    RequeuedLine,
    Settled,
    Viewer,
)

if TYPE_CHECKING:
    from llmspool.store.batches import BatchRow


class Abort:
    """How the front door stops a call whose client went away (the one mutable thing a
    ``Call`` carries): the dispatcher binds the cancel scope the call runs in, and ``fire``
    cancels it, which stops the upstream call and releases its reservation."""

    __slots__ = ("_scope", "fired")

    def __init__(self) -> None:
        self._scope: CancelScope | None = None
        self.fired = False

    def bind(self, scope: CancelScope) -> None:
        self._scope = scope
        if self.fired:  # the client left while the call waited in the queue
            scope.cancel()

    def fire(self) -> None:
        self.fired = True
        if self._scope is not None:
            self._scope.cancel()


@dataclass(frozen=True, slots=True)
class Call:
    """One interactive request on its way to a provider; answers go to ``reply``.

    ``body`` is the JSON to send upstream, already rewritten where the daemon needs to (the
    upstream model name, ``stream_options.include_usage``); ``strip_usage_chunk`` says the
    client did not ask for the usage chunk we added, so it must not see it. ``policy`` and
    ``deadline_at`` (unix seconds, None: no deadline) let the planner choose the tier.
    ``cache`` says how the response cache takes part (the front door and the job keeper send
    a call that has a plan to the cache actor, the others straight to the request queue).
    """

    request_id: str
    endpoint: Endpoint
    provider: str
    model: str
    body: bytes
    stream: bool
    policy: TierPolicy
    caller: Caller
    operation: str | None
    received_at: float
    trace: Context
    reply: MemoryObjectSendStream[Reply] = field(repr=False)
    strip_usage_chunk: bool = False
    deadline_at: float | None = None
    session: str | None = None
    abort: Abort = field(default_factory=Abort, repr=False, compare=False)
    cache: CachePlan | None = None  # None: the cache leaves this call alone
    # Set on the cache's own embedding calls: their cost is taken off that source's savings.
    overhead_of: str | None = None
    # Set by the job keeper: the answer carries its ``Settled`` instead of the ledger being
    # sent it, so the keeper stores the result and its ledger entry in one transaction.
    settle_with_result: bool = False
    # A job's request: its deadline steers the tier, but an answer that comes late is still
    # kept (and flagged late); an interactive call's deadline bounds how long it is waited on.
    deferred: bool = False
    # Seconds from submission (a job's creation) to the deadline; None: from ``received_at``.
    submitted_at: float | None = None

    def deadline_window(self) -> float | None:
        """Seconds its caller gave it, from submission to deadline (None: no deadline)."""
        if self.deadline_at is None:
            return None
        return self.deadline_at - (self.submitted_at if self.submitted_at is not None
                                   else self.received_at)


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole (non-streamed) upstream answer."""

    status: int
    headers: dict[str, str]
    body: bytes
    tier: Tier
    cost_picodollars: int | None
    standard_cost_picodollars: int | None = None
    document: Any = field(default=None, repr=False)  # ``body`` parsed
    # For a call with ``settle_with_result``: its ledger entry, for the caller to store.
    settled: Settled | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class StreamStart:
    """A streamed answer begins with ``first``, its first events; ``StreamChunk``s and one
    ``StreamEnd`` follow. Carrying the first events here saves a hop on the time to first token.
    """

    status: int
    headers: dict[str, str]
    first: bytes = b""


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """Bytes of one or more whole server-sent events, to write to the client as they are."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The stream finished (cleanly, or cut by the upstream: ``error`` says so)."""

    error: ApiError | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """The call failed before any answer reached the client."""

    error: ApiError


Reply = Answer | StreamStart | StreamChunk | StreamEnd | Failure


@dataclass(frozen=True, slots=True)
class SlotFreed:
    """The dispatcher finished a call; the request queue may hand it another."""

    request_id: str


@dataclass(frozen=True, slots=True)
class CacheFill:
    """Answers to keep in the response cache (batch results; the cache's own flights)."""

    entries: list[NewEntry] = field(repr=False)


@dataclass(frozen=True, slots=True)
class CacheUsed:
    """The front door answered a call from cache entry ``entry_id`` at ``at`` (for the
    eviction order and the hit count), or found it ``corrupt`` (drop it)."""

    entry_id: int
    at: float
    corrupt: bool = False


@dataclass(frozen=True, slots=True)
class NewPrices:
    """The operator reloaded the price book (SIGHUP); calls settled from now use it."""

    prices: PriceBook


@dataclass(frozen=True, slots=True)
class Admit:
    """Reserve ``estimate_picodollars`` against every cap that applies, or refuse.

    The answer is None (admitted: a reservation now exists under ``request_id``, durable, so
    a crash while the call runs leaves it billed as an unknown outcome) or the ``ApiError``
    naming the cap that would break. A ``Settled`` or ``Release`` with the same
    ``request_id`` ends the reservation.
    """

    request_id: str
    provider: str
    model: str
    operation: str | None
    uid: int | None
    session: str | None
    estimate_picodollars: int
    reply: MemoryObjectSendStream[ApiError | None] = field(repr=False)
    endpoint: Endpoint = Endpoint.CHAT
    tier: Tier = Tier.STANDARD


@dataclass(frozen=True, slots=True)
class Release:
    """The call reserved for ``request_id`` ended without a bill (failed, refused, cancelled)."""

    request_id: str


@dataclass(frozen=True, slots=True)
class StoreJobResults:
    """Job keeper → ledger: store ``results`` with the ledger ``entries`` of the calls that
    produced them, in one transaction; the answer is the ids of the results stored (a result
    already stored, after a crash, is not stored or billed again)."""

    results: list[JobResult] = field(repr=False)
    entries: list[Settled] = field(repr=False)
    reply: MemoryObjectSendStream[list[int]] = field(repr=False)


@dataclass(frozen=True, slots=True)
class LineReservation:
    """A batch line to reserve against the caps before it is put into a batch."""

    line_id: int  # job_requests.id
    job_id: str
    custom_id: str
    provider: str
    model: str
    endpoint: Endpoint
    operation: str | None
    uid: int | None
    estimate_picodollars: int


@dataclass(frozen=True, slots=True)
class ReserveLines:
    """Batch submitter → ledger: reserve ``lines`` (durably) or refuse those a cap would not
    allow; a refused line is stored as a failed result (``budget_*``) in the same transaction.
    The answer lists the refused lines' results."""

    lines: list[LineReservation] = field(repr=False)
    reply: MemoryObjectSendStream[list[JobResult]] = field(repr=False)


@dataclass(frozen=True, slots=True)
class ReleaseLines:
    """Batch actors → ledger: these lines left their batch without a result (given back to be
    sent again, or the batch was never made): their reservations end."""

    line_ids: list[int] = field(repr=False)


@dataclass(frozen=True, slots=True)
class SubmitJob:
    """Make ``job`` durable and queue it; the answer is the job's view with its ``plan``, or
    an ``ApiError``."""

    job: NewJob = field(repr=False)
    reply: MemoryObjectSendStream[JobView | ApiError] = field(repr=False)


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Cancel what of the job has not run yet; the answer is the job's view (with a
    ``message`` if it had already ended) or an error (404 for a job ``viewer`` may not see)."""

    job_id: str
    reply: MemoryObjectSendStream[JobView | ApiError] = field(repr=False)
    viewer: Viewer = field(default_factory=lambda: Viewer(None))


@dataclass(frozen=True, slots=True)
class WaitForJob:
    """Answer (with the job's view, or an error) once the job has finished."""

    job_id: str
    reply: MemoryObjectSendStream[JobView | ApiError] = field(repr=False)
    viewer: Viewer = field(default_factory=lambda: Viewer(None))


# --- the Batch API pipeline -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToBatch:
    """Send these requests through the Batch API; ``traceparents`` of the jobs they belong to."""

    candidates: list[BatchCandidate] = field(repr=False)
    traceparents: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchLinesDone:
    """Batch actors → job keeper: results stored, and lines given back to send otherwise.

    ``batch_again`` says whether a given-back line may be batched again (the planner still
    decides); escalated lines may not.
    """

    outcomes: list[LineOutcome] = field(default_factory=list, repr=False)
    requeued: list[RequeuedLine] = field(default_factory=list, repr=False)
    batch_again: bool = True


@dataclass(frozen=True, slots=True)
class StoreBatchChunk:
    """Batch poller → ledger: store ``chunk`` in one transaction; the answer says what was new."""

    chunk: BatchChunk
    reply: MemoryObjectSendStream[BatchChunkStored | BaseException] = field(repr=False)


@dataclass(frozen=True, slots=True)
class BatchOpened:
    """Batch submitter → batch poller: the batch now exists upstream; poll it.

    It carries the submitter's row rather than an id to look up: the poller's connection may
    be inside a long transaction (mapping another batch's results), whose snapshot predates
    this batch's creation."""

    batch: BatchRow = field(repr=False)


@dataclass(frozen=True, slots=True)
class BatchClosed:
    """Batch poller → batch submitter: a batch of ``model`` left the provider's queue, so its
    enqueued tokens are free; ``token_limit_hit`` says it failed on the enqueued-token cap."""

    provider: str
    model: str
    token_limit_hit: bool = False
    enqueued_at_failure: int = 0


# --- questions to the actors ----------------------------------------------------------------

Snapshot = TypeVar("Snapshot")


# Not slots: a slotted frozen generic dataclass cannot be built as ``StatusQuery[X](...)``
# (typing sets ``__orig_class__`` on the instance, which a slotted frozen class refuses).
@dataclass(frozen=True)
class StatusQuery(Generic[Snapshot]):
    """Ask an actor for its status snapshot (what ``/v1/status`` shows under its name); an
    actor's inbox names the snapshot it answers with, e.g. ``StatusQuery[QueueStatus]``."""

    reply: MemoryObjectSendStream[Snapshot] = field(repr=False)


@dataclass(frozen=True, slots=True)
class LedgerEntriesQuery:
    """Ask the ledger for its status and its last ``limit`` entries, newest first: everyone's
    (``everyone``), or only those of ``uid`` (None: calls of unknown origin)."""

    limit: int
    everyone: bool
    uid: int | None
    reply: MemoryObjectSendStream[LedgerEntries] = field(repr=False)


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Ask the job keeper for a job's view; a job unknown, forgotten or not ``viewer``'s to
    see is answered ``NotFound`` (the same 404 as ``CancelJob``'s)."""

    job_id: str
    viewer: Viewer
    reply: MemoryObjectSendStream[JobView | ApiError] = field(repr=False)


@dataclass(frozen=True, slots=True)
class JobListQuery:
    """Ask the job keeper for the newest ``limit`` jobs that ``viewer`` may see."""

    limit: int
    viewer: Viewer
    reply: MemoryObjectSendStream[JobList] = field(repr=False)


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


class FlexStatus(TypedDict):
    """The dispatcher's calls on the flex tier."""

    requests: int
    tokens: int
    standard_fallbacks: int
    resource_unavailable_errors: int
    estimated_savings_usd: float


class DispatcherStatus(TypedDict):
    """The dispatcher's snapshot. The nested parts are the snapshots of the planner's latency
    book, the retrier, the breakers, the rate limits and the providers' connection pools."""

    in_flight: int
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
    budgets: list[BudgetStatus]
    warnings: list[dict[str, Any]]


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
