"""One simulated batch (``SimBatch``): its statuses, what it was created with, when its status
changes next, how many of its lines are done at a given time, and its ``Batch`` object.

The lifecycle that moves it from status to status is ``batches``' (``BatchRegistry``); this
module only answers questions about a batch at a moment, so the registry (and Anthropic's
``anthropic_batches``, which extends ``SimBatch``) can play its events in time order.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from llmspool.sim.batch_config import BatchSettings
from llmspool.sim.batch_lines import LineError, Plan

COMPLETION_WINDOW = "24h"


class Status(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


ENDED = frozenset({Status.FAILED, Status.COMPLETED, Status.EXPIRED, Status.CANCELLED})
"""The statuses a batch never leaves."""


@dataclass(slots=True)
class SimBatch:
    """One batch: what it was created with, and how far it got (times in epoch seconds)."""

    id: str
    endpoint: str
    input_file_id: str
    metadata: dict[str, str] | None
    created: float
    settings: BatchSettings
    """The settings it was created with, in real time (divided by the sim's speed)."""
    turnaround: float
    """Its time ``in_progress`` (real seconds), drawn at creation."""
    content: bytes | None
    """The input file's bytes, until validation reads them."""
    status: Status = Status.VALIDATING
    model: str | None = None
    errors: list[LineError] | None = None
    plan: Plan | None = None
    """Every line answered, from validation until the batch ends."""
    total: int = 0
    completed: int = 0
    failed: int = 0
    done_at_cancel: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None

    @property
    def expires_at(self) -> float:
        return self.created + self.settings.expire_after

    def expiry(self) -> float | None:
        """When this in-progress batch expires, if before its lines are all done."""
        assert self.in_progress_at is not None
        processed = self.in_progress_at + self.turnaround
        expiry = max(self.expires_at, self.in_progress_at)
        return expiry if expiry < processed else None

    def next_event(self) -> float | None:
        """When the status changes next, if it ever does."""
        settings = self.settings
        if self.status is Status.VALIDATING:
            return self.created + settings.validating
        if self.status is Status.IN_PROGRESS:
            assert self.in_progress_at is not None
            expiry = self.expiry()
            return self.in_progress_at + self.turnaround if expiry is None else expiry
        if self.status is Status.FINALIZING:
            assert self.finalizing_at is not None
            return self.finalizing_at + settings.finalizing
        if self.status is Status.CANCELLING:
            assert self.cancelling_at is not None
            return self.cancelling_at + settings.cancel_delay
        return None

    def lines_done(self, now: float) -> int:
        """Lines finished by ``now`` while the batch still has its plan."""
        if self.plan is None:
            return 0
        if self.status is Status.CANCELLING:
            return self.done_at_cancel
        if self.status is Status.FINALIZING:
            return self.total
        assert self.in_progress_at is not None
        if self.turnaround <= 0:
            return self.total
        share = (now - self.in_progress_at) / self.turnaround
        return max(0, min(self.total, int(self.total * share)))

    def counts(self, now: float) -> tuple[int, int]:
        """``request_counts`` completed and failed as of ``now``."""
        if self.plan is None:
            return self.completed, self.failed
        done = self.lines_done(now)
        failed = bisect.bisect_left(self.plan.bad, done)
        return done - failed, failed

    def to_json(self, now: float) -> dict[str, Any]:
        """The ``Batch`` object as of ``now``."""
        completed, failed = self.counts(now)
        document: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": (
                None
                if self.errors is None
                else {"object": "list", "data": [error.to_json() for error in self.errors]}
            ),
            "input_file_id": self.input_file_id,
            "completion_window": COMPLETION_WINDOW,
            "status": self.status.value,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created),
            "in_progress_at": _epoch(self.in_progress_at),
            "expires_at": int(self.expires_at),
            "finalizing_at": _epoch(self.finalizing_at),
            "completed_at": _epoch(self.completed_at),
            "failed_at": _epoch(self.failed_at),
            "expired_at": _epoch(self.expired_at),
            "cancelling_at": _epoch(self.cancelling_at),
            "cancelled_at": _epoch(self.cancelled_at),
            "request_counts": {"total": self.total, "completed": completed, "failed": failed},
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
            "metadata": self.metadata,
        }
        # The spec types ``model`` as a string: it is left out until validation finds it.
        if self.model is not None:
            document["model"] = self.model
        return document


def _epoch(moment: float | None) -> int | None:
    return None if moment is None else int(moment)
