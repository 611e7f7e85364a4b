"""The ledger's writes: entries, reservations and ends in group commits, results with entries.

- ``GroupCommit`` gathers what the ledger must write (settled entries, new reservations, ended
  reservations) and the admitted calls waiting for their reservations to be durable; ``flush``
  commits them in one transaction (``store.ledger.write_group``), then admits those calls.
- ``StoreJobResults`` and ``StoreBatchChunk`` store deferred results together with their
  entries, in one transaction, after what is pending; ``ReserveLines`` reserves batch lines
  before they are put into a batch, storing the refused ones as ``budget_*`` failures.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import anyio
import orjson
from anyio.streams.memory import MemoryObjectSendStream

from llmspool.actors.accounting.budgets import Budgets
from llmspool.core.errors import ApiError
from llmspool.core.states import RequestState
from llmspool.messages import GONE, ReserveLines, StoreBatchChunk, StoreJobResults
from llmspool.store import ledger as ledger_sql
from llmspool.store.batch_results import store_batch_chunk
from llmspool.store.ledger import LedgerConnection, line_key
from llmspool.store.records import BatchChunkStored, JobResult, Settled


class GroupCommit:
    """What waits for the next commit, the commit itself, and the stores of deferred results."""

    def __init__(self, database: LedgerConnection, budgets: Budgets,
                 clock: Callable[[], float]) -> None:
        self._database = database
        self._budgets = budgets
        self._clock = clock
        self.pending: list[Settled] = []
        self.new_reservations: list[tuple[Any, ...]] = []
        self.ended: list[str] = []
        self.admitted: list[MemoryObjectSendStream[ApiError | None]] = []
        self.pending_since = 0.0
        self.commits = 0

    def add(self, entry: Settled) -> None:
        """A settled entry, to be written in the next commit."""
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending.append(entry)

    async def flush(self) -> None:
        """Commit what is pending, then admit the calls whose reservations it made durable."""
        if not (self.pending or self.new_reservations or self.ended):
            return
        entries, self.pending = self.pending, []
        reservations, self.new_reservations = self.new_reservations, []
        ended, self.ended = self.ended, []
        admitted, self.admitted = self.admitted, []
        # Shielded: a commit that has started finishes even while the daemon stops.
        with anyio.CancelScope(shield=True):
            await self._database.run(ledger_sql.write_group, reservations, entries, ended)
        self.commits += 1
        for reply in admitted:
            with contextlib.suppress(*GONE):
                reply.send_nowait(None)

    # --- deferred results -----------------------------------------------------------------

    async def store_job_results(self, message: StoreJobResults) -> None:
        await self.flush()  # reservations these entries settle are on disk first
        stored, new = await self._database.run(
            ledger_sql.store_job_results, message.results, message.entries, self._clock())
        fresh = {entry.request_id for entry in new}
        for entry in message.entries:
            if entry.request_id in fresh:
                self._budgets.count(entry)
            else:
                self._budgets.release(entry.request_id)
        with contextlib.suppress(*GONE):
            message.reply.send_nowait(stored)

    async def reserve_lines(self, message: ReserveLines) -> None:
        budgets = self._budgets
        now = self._clock()
        budgets.roll_day(now)
        rows: list[tuple[Any, ...]] = []
        refused: list[JobResult] = []
        for line in message.lines:
            error = budgets.refusal(line.provider, line.operation, line.uid, None,
                                    line.estimate_picodollars)
            if error is not None:
                budgets.refused += 1
                refused.append(_refused_line(line.line_id, line.job_id, line.custom_id, error))
                continue
            key = line_key(line.line_id)
            budgets.hold(key, line.provider, line.operation, line.uid, None,
                         line.estimate_picodollars)
            rows.append((key, "line", now, line.provider, line.model, line.endpoint.value,
                         "batch", line.operation, line.uid, None, line.estimate_picodollars,
                         line.line_id))
        await self.flush()
        stored: list[int] = []
        if rows or refused:
            # The lines' reservations and the refused lines' results: one transaction.
            stored, _new = await self._database.run(ledger_sql.store_job_results, refused, [],
                                                    now, rows)
        with contextlib.suppress(*GONE):
            message.reply.send_nowait([r for r in refused if r.request_id in set(stored)])

    async def store_batch_chunk(self, message: StoreBatchChunk) -> None:
        await self.flush()
        try:
            stored: BatchChunkStored = await self._database.run_in_thread(
                store_batch_chunk, message.chunk)
        except Exception as exc:  # the poller reports it; the ledger keeps serving
            with contextlib.suppress(*GONE):
                message.reply.send_nowait(exc)
            return
        for entry in stored.billed:
            self._budgets.count(entry)
        for outcome in stored.outcomes:
            self._budgets.release(line_key(outcome.request_id))
        with contextlib.suppress(*GONE):
            message.reply.send_nowait(stored)


def _refused_line(line_id: int, job_id: str, custom_id: str, error: ApiError) -> JobResult:
    """A batch line a cap refused, as its failed result in the Batch output format."""
    line = orjson.dumps({
        "id": f"batch_req_{line_id}", "custom_id": custom_id, "response": None,
        "error": {"code": error.code, "message": error.message},
    })
    return JobResult(line_id, job_id, RequestState.FAILED, None, None, None, line, 0)
