"""What the actors tell and ask the ledger: reservations (``Admit``, ``Release``, the batch
lines' ``ReserveLines``/``ReleaseLines``), stores made with results in one transaction
(``StoreJobResults``), and new prices (``NewPrices``, for every actor that prices)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from llmspool.core.calls import Endpoint, Tier
from llmspool.core.errors import ApiError
from llmspool.core.streams import MemorySendStream
from llmspool.policy.billing import PriceBook
from llmspool.store.records import (
    JobResult,
    Settled,
)


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
    reply: MemorySendStream[ApiError | None] = field(repr=False)
    endpoint: Endpoint = Endpoint.CHAT
    tier: Tier = Tier.STANDARD


class NotNow(enum.Enum):
    """The ledger could not decide an admission in the caller's task (``AdmitNow``): send
    the ``Admit`` to its inbox."""

    NOT_NOW = "not now"


NOT_NOW = NotNow.NOT_NOW
AdmitNow = Callable[[Admit], ApiError | NotNow | None]
"""``Ledger.admit_now``: an admission decided without the hop to the ledger, when it can be."""
SettleNow = Callable[[Settled], bool]
"""``Ledger.settle_now``: an entry taken without the hop to the ledger, when it can be."""


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
    reply: MemorySendStream[list[int]] = field(repr=False)


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
    reply: MemorySendStream[list[JobResult]] = field(repr=False)


@dataclass(frozen=True, slots=True)
class ReleaseLines:
    """Batch actors → ledger: these lines left their batch without a result (given back to be
    sent again, or the batch was never made): their reservations end."""

    line_ids: list[int] = field(repr=False)


