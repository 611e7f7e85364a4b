"""When an open batch is cancelled before it finishes: for its deadline, or as a straggler.

Stragglers: a batch still open ``[batch] rebatch_after`` after its submission is cancelled while
a new batch is still expected to end before its escalation point; its unfinished lines then go
into a new batch (only what it finished is billed). Batch turnaround has a long tail, and a new
batch is expected to take its median.

Deadline escalation: when a batch is still open ``[batch] cancel_wait`` plus the time of a
standard call before the earliest deadline it carries, it is cancelled; once it is
``cancelled`` only the lines it did not finish go back, so nothing is paid twice. If the cancel
has not taken effect by the time a standard call is the only way to meet the deadline, the
unfinished lines go back anyway (the deadline wins); a line the batch then still answers is
billed (the provider charges it) and counted as paid twice.
"""

from __future__ import annotations

import logging
import math

from llmspool.batches.context import BatchContext
from llmspool.core.calls import Tier
from llmspool.core.errors import ApiError
from llmspool.core.provider import BatchProvider
from llmspool.store import batches as batch_sql
from llmspool.store.records import RequeuedLine

log = logging.getLogger(__name__)


class Escalation:
    """The batch poller's decisions on batches that run late; counts those ``rebatched``."""

    def __init__(self, store: batch_sql.ThreadedConnection, context: BatchContext) -> None:
        self._store = store
        self._planner = context.planner
        self._config = context.config
        self.rebatched = 0

    def escalate_at(self, batch: batch_sql.BatchRow) -> float:
        return batch.deadline_at - self._planner.escalation_reserve(batch.provider, batch.model)

    def _hard_at(self, batch: batch_sql.BatchRow) -> float:
        return batch.deadline_at - self._planner.need(batch.provider, batch.model, Tier.STANDARD)

    def _straggling_at(self, batch: batch_sql.BatchRow) -> float:
        after = self._config.rebatch_after
        if after <= 0 or batch.submitted_at is None:
            return math.inf
        return batch.submitted_at + after

    async def rebatch_if_straggling(self, batch: batch_sql.BatchRow, provider: BatchProvider,
                                    now: float) -> None:
        """Cancel a straggler whose lines a new batch can still carry in time."""
        assert batch.remote_id is not None
        if now < self._straggling_at(batch) or batch.cancel_requested_at is not None:
            return
        # The cancel may take cancel_wait; the new batch must then fit before escalation.
        if now + self._config.cancel_wait > self._planner.latest_batch_submit(
                batch.provider, batch.model, batch.deadline_at):
            return
        log.info("batch %s: still open %.0f s after submission (a straggler); cancelling it so "
                 "its unfinished requests go into a new batch", batch.remote_id,
                 now - (batch.submitted_at or now))
        try:
            await provider.cancel_batch(batch.remote_id)
        except ApiError as error:
            log.warning("batch %s: cancel failed: %s", batch.remote_id, error.message)
            return
        await self._store.run(batch_sql.mark_cancel_requested, batch, now)
        self.rebatched += 1

    async def escalate_if_late(self, batch: batch_sql.BatchRow, provider: BatchProvider,
                               now: float) -> list[RequeuedLine] | None:
        """Cancel a batch past its escalation point; past the point where only a standard call
        meets the deadline, return its unfinished lines, released from the batch (None
        before)."""
        assert batch.remote_id is not None
        if now >= self.escalate_at(batch) and batch.cancel_requested_at is None:
            log.warning("batch %s: will not finish before its deadline in %.0f s; cancelling "
                        "it so its unfinished requests can be sent otherwise", batch.remote_id,
                        batch.deadline_at - now)
            try:
                await provider.cancel_batch(batch.remote_id)
            except ApiError as error:
                log.warning("batch %s: cancel failed: %s", batch.remote_id, error.message)
            else:
                await self._store.run(batch_sql.mark_cancel_requested, batch, now)
        if now >= self._hard_at(batch) and batch.escalated_at is None:
            return await self._store.run(batch_sql.release_lines, batch, None, now,
                                         escalated=True)
        return None
