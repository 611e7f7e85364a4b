"""The interactive path's messages: a ``Call``, its replies, and the queue's ``SlotFreed``;
the cache's ``CacheFill``, ``CacheUsed`` and ``Missed``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from anyio import CancelScope
from opentelemetry.context import Context

from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.core.errors import ApiError
from llmspool.policy.cache_keys import CachePlan
from llmspool.policy.model_choice import Verdict
from llmspool.policy.planner import TierPolicy
from llmspool.store.records import (
    Caller,
    NewEntry,
    Settled,
)


class Abort:
    """How the front door stops a call whose client went away (the one mutable thing a
    ``Call`` carries): the dispatcher binds the cancel scope the call runs in, and ``fire``
    cancels it, which stops the upstream call and releases its reservation. A flight's
    leader is watched with a callback instead (``on_fire``): no task waits for it."""

    __slots__ = ("_callback", "_scope", "fired")

    def __init__(self) -> None:
        self._scope: CancelScope | None = None
        self._callback: Callable[[], None] | None = None
        self.fired = False

    def bind(self, scope: CancelScope) -> None:
        self._scope = scope
        if self.fired:  # the client left while the call waited in the queue
            scope.cancel()

    def on_fire(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` (a plain call on the event loop) when fired, at once if fired
        already; None: no longer."""
        self._callback = callback
        if callback is not None and self.fired:
            callback()

    def fire(self) -> None:
        self.fired = True
        if self._scope is not None:
            self._scope.cancel()
        if self._callback is not None:
            self._callback()


class ReplySink(Protocol):
    """Where a call's replies go: the stream its front door (or job keeper) reads, or a cache
    flight's ``flights.LeaderTee``. Its owner (the dispatcher, or whoever fails the call
    before it) closes it after the last reply."""

    async def send(self, item: Reply, /) -> None: ...

    def send_nowait(self, item: Reply, /) -> None: ...

    def close(self) -> None: ...


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
    reply: ReplySink = field(repr=False)
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
    # Set when a route or cascade chose ``model`` instead of the one asked for: (provider,
    # model) asked for, whose standard price the call's saving is measured against.
    routed_from: tuple[str, str] | None = None
    # Set on a cascade's first call: the verdict on its answer, taken where it is billed, so
    # that an answer not kept is billed as routing's overhead (a list price of 0) and one kept
    # saves what ``routed_from`` would have cost. The verdict travels on with the ``Answer``.
    cascade_check: Callable[[Mapping[str, Any]], Verdict] | None = field(
        default=None, repr=False, compare=False)
    # ``body`` as the front door parsed it (read, never changed): the reservation's estimate
    # reads it instead of parsing the body again, which for a 25 KB prompt was a sixth of
    # the daemon's CPU a call. None (a job's line, a cache's own call): parse ``body``.
    document: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

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
    # For a cascade's first call (``Call.cascade_check``): whether its answer is kept.
    verdict: Verdict | None = None
    # The usage ``document`` reports (None: it reports none), as read when it was billed.
    usage: Usage | None = field(default=None, repr=False)


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
class Missed:
    """A call the front door looked up in the cache file at ``at`` (``time.time()``) and found
    nothing live for: the cache actor reads the file again only if its writes landed since."""

    call: Call
    at: float


@dataclass(frozen=True, slots=True)
class CacheUsed:
    """The front door answered a call from cache entry ``entry_id`` at ``at`` (for the
    eviction order and the hit count), or found it ``corrupt`` (drop it)."""

    entry_id: int
    at: float
    corrupt: bool = False


