"""The job keeper's messages (``SubmitJob``, ``CancelJob``, ``WaitForJob``) and the Batch API
pipeline's (``ToBatch``, ``BatchLinesDone``, ``StoreBatchChunk``, ``BatchOpened``,
``BatchClosed``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmspool.core.errors import ApiError
from llmspool.core.streams import MemorySendStream
from llmspool.messages.questions import JobView
from llmspool.store.records import (
    BatchCandidate,
    BatchChunk,
    BatchChunkStored,
    LineOutcome,
    NewJob,
    RequeuedLine,
    Viewer,
)

if TYPE_CHECKING:
    from llmspool.store.batches import BatchRow


@dataclass(frozen=True, slots=True)
class SubmitJob:
    """Make ``job`` durable and queue it; the answer is the job's view with its ``plan``, or
    an ``ApiError``."""

    job: NewJob = field(repr=False)
    reply: MemorySendStream[JobView | ApiError] = field(repr=False)


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Cancel what of the job has not run yet; the answer is the job's view (with a
    ``message`` if it had already ended) or an error (404 for a job ``viewer`` may not see)."""

    job_id: str
    reply: MemorySendStream[JobView | ApiError] = field(repr=False)
    viewer: Viewer = field(default_factory=lambda: Viewer(None))


@dataclass(frozen=True, slots=True)
class WaitForJob:
    """Answer (with the job's view, or an error) once the job has finished."""

    job_id: str
    reply: MemorySendStream[JobView | ApiError] = field(repr=False)
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
    reply: MemorySendStream[BatchChunkStored | BaseException] = field(repr=False)


@dataclass(frozen=True, slots=True)
class BatchOpened:
    """Batch submitter → batch poller: the batch now exists upstream; poll it.

    It carries the submitter's row rather than an id to look up: the poller's connection may
    be inside a long transaction (mapping another batch's results), whose snapshot predates
    this batch's creation."""

    batch: BatchRow = field(repr=False)


@dataclass(frozen=True, slots=True)
class AdoptWork:
    """Ledger → job keeper, in a store several daemons share: the deferred work of daemons
    taken over (their lease ran out) is this daemon's now. The keeper loads and routes the
    jobs, then hands the batches to the batch submitter (``AdoptBatches``)."""

    job_ids: tuple[str, ...]
    batch_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AdoptBatches:
    """Job keeper → batch submitter: open batches taken over from a dead daemon. The
    submitter resumes those not yet submitted and hands the others to the poller."""

    batch_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BatchClosed:
    """Batch poller → batch submitter: a batch of ``model`` left the provider's queue, so its
    enqueued tokens are free; ``token_limit_hit`` says it failed on the enqueued-token cap."""

    provider: str
    model: str
    token_limit_hit: bool = False
    enqueued_at_failure: int = 0


