"""Every message the actors send each other: frozen dataclasses, one module, one picture.

Flow of an interactive call::

    front door --Call--> request queue --Call--> dispatcher --Reply--> front door (call.reply)
                                ^                    |
                                +----SlotFreed-------+---Settled--> ledger

Each message carries its request id, and a ``Call`` carries the OpenTelemetry context of the
span that made it, because contextvars do not cross memory object streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anyio import CancelScope
from anyio.streams.memory import MemoryObjectSendStream
from opentelemetry.context import Context

from llmspool.core.calls import Endpoint, Tier
from llmspool.core.errors import ApiError
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
    """Make ``job`` durable and queue it; the answer is the job's JSON, or an ``ApiError``."""

    job: NewJob = field(repr=False)
    reply: MemoryObjectSendStream[dict[str, Any] | ApiError] = field(repr=False)


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Cancel what of the job has not run yet; the answer is the job's JSON or an error (404
    for a job ``viewer`` may not see)."""

    job_id: str
    reply: MemoryObjectSendStream[dict[str, Any] | ApiError] = field(repr=False)
    viewer: Viewer = field(default_factory=lambda: Viewer(None))


@dataclass(frozen=True, slots=True)
class WaitForJob:
    """Answer (with the job's JSON, or an error) once the job has finished."""

    job_id: str
    reply: MemoryObjectSendStream[dict[str, Any] | ApiError] = field(repr=False)
    viewer: Viewer = field(default_factory=lambda: Viewer(None))


@dataclass(frozen=True, slots=True)
class Query:
    """Ask an actor for a JSON-ready snapshot of its state, answered on ``reply``."""

    what: str
    reply: MemoryObjectSendStream[dict[str, Any]] = field(repr=False)
    params: dict[str, Any] = field(default_factory=dict)


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
