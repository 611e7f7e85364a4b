"""The records the store writes and reads: plain frozen values, below the actors' messages.

A job and its requests as the front door hands them to the job keeper; who called and who may
look; a settled call; a job's result; the batch lines and chunks the batch actors store; an
answer to keep in the response cache. ``llmspool.messages`` carries them between actors; they
live here so that the store never imports the messages (the layer above it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.core.states import RequestState


@dataclass(frozen=True, slots=True)
class JobLine:
    """One request of a job: where it goes and the JSON to send."""

    line: int
    custom_id: str
    endpoint: Endpoint
    provider: str
    model: str
    body: bytes
    cache_key: bytes | None = None  # the response cache's key (None: not cacheable)
    cache_ttl: float | None = None
    # (provider, model) asked for, when the operation's route rules chose ``model`` instead.
    routed_from: tuple[str, str] | None = None


class JobLines(Protocol):
    """A job's lines as the job keeper takes them: a list, or a spool on disk
    (``llmspool.jobs.spool``) that gives them back one at a time."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[JobLine]: ...

    def clear(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LineError:
    """Why one input line was refused (``line`` counts from 1, as editors do)."""

    line: int
    custom_id: str | None
    message: str
    code: str = "invalid_request"

    def to_json(self) -> dict[str, object]:
        return {"line": self.line, "custom_id": self.custom_id, "message": self.message,
                "code": self.code}


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated job, not yet durable."""

    id: str
    created_at: float
    deadline_at: float
    operation: str | None
    tags: dict[str, str]
    uid: int | None
    # Handed over to the job keeper, which empties the list once the lines are stored.
    lines: JobLines = field(repr=False)
    traceparent: str | None = None  # of the request that submitted it


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request, from the Unix socket's peer credentials (None when unknown)."""

    pid: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True, slots=True)
class Viewer:
    """Whose work a request may see: its own (``uid``), or everyone's for an ``admin``."""

    uid: int | None
    admin: bool = False

    def sees(self, owner: int | None) -> bool:
        return self.admin or owner == self.uid


@dataclass(frozen=True, slots=True)
class Settled:
    """A call ended; the ledger records what it used and cost.

    ``cost_picodollars`` is None when the model has no price on the served tier.
    """

    request_id: str
    provider: str
    model: str
    endpoint: Endpoint
    tier: Tier
    usage: Usage
    cost_picodollars: int | None
    standard_cost_picodollars: int | None
    caller: Caller
    operation: str | None
    status: int
    started_at: float
    finished_at: float
    session: str | None = None
    # Billed on a guess: unknown_tier, unpriced, broken_answer (cut mid-body or mid-stream),
    # unknown_outcome (a crash hid whether it was answered: billed at its reservation).
    flag: str | None = None
    saving_source: str | None = None  # tier, cache, dedup, routing
    price_version: str | None = None  # the price book it was billed with
    # Seconds its caller gave it, from submission (a job's creation) to its deadline; None:
    # no deadline. ``late``: it finished after its deadline.
    deadline_window: float | None = None
    late: bool = False
    response_id: str | None = None  # the answer's ``id``, which feedback names it by


@dataclass(frozen=True, slots=True)
class JobResult:
    """A deferred request's final result, as the job keeper stores it (Batch output line)."""

    request_id: int  # job_requests.id
    job_id: str
    state: RequestState  # succeeded or failed
    tier: str | None
    cost_picodollars: int | None
    standard_cost_picodollars: int | None
    result: bytes = field(repr=False)
    attempts: int


@dataclass(frozen=True, slots=True)
class BatchCandidate:
    """A queued deferred request that may go through a batch (job keeper → batch submitter)."""

    request_id: int
    job_id: str
    provider: str
    endpoint: Endpoint
    model: str
    deadline_at: float
    size: int  # bytes of its body
    inputs: int = 1  # embeddings inputs it carries (the Batch API caps them per batch)


@dataclass(frozen=True, slots=True)
class BatchChunk:
    """One chunk of a batch's mapped results, for the ledger to store with their entries.

    ``results``: (line id, state, Batch output line, cost, list cost, attempts);
    ``lines``: line id → (job id, whether the batch still carried it).
    """

    batch_id: int
    results: list[tuple[int, RequestState, bytes, int | None, int | None, int]] = field(
        repr=False)
    entries: list[Settled] = field(repr=False)
    lines: dict[int, tuple[str, bool]] = field(repr=False)
    now: float


@dataclass(frozen=True, slots=True)
class BatchChunkStored:
    """What the ledger stored of a ``BatchChunk``: outcomes, new entries, answers paid twice."""

    outcomes: list[LineOutcome] = field(default_factory=list, repr=False)
    billed: list[Settled] = field(default_factory=list, repr=False)
    paid_twice: int = 0


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """A batch line whose result was stored: what the job keeper counts."""

    request_id: int
    job_id: str
    state: RequestState  # succeeded or failed
    cost_picodollars: int | None
    standard_cost_picodollars: int | None
    was_in_batch: bool  # False: it had been given back (escalated) before its answer came


@dataclass(frozen=True, slots=True)
class RequeuedLine:
    """A line a batch gave back to the job keeper, as its heap keeps it, with its attempts."""

    deadline_at: float
    request_id: int
    job_id: str
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class NewEntry:
    """An answer to keep under ``key`` for ``ttl`` seconds (``vector``: its request's
    embedding in near-duplicate group ``group``, when near-duplicate matching is on)."""

    key: bytes
    stream: bool
    body: bytes
    provider: str
    model: str
    endpoint: str
    tier: Tier
    usage: Usage
    ttl: float
    group: bytes | None = None
    vector: bytes | None = None
