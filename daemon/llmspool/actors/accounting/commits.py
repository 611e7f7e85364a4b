"""The ledger's writes: entries, reservations and ends in group commits, results with entries.

- ``GroupCommit`` gathers what the ledger must write (settled entries, new reservations, ended
  reservations) and the admitted calls waiting for their reservations to be durable; ``flush``
  commits them in one transaction (``store.ledger.write_group``), then admits those calls.
  On SQLite an admission does not wait for a commit: ``admit_journaled`` writes the
  reservations to the journal (``store.reservation_journal``) and admits the calls at once;
  the next commit inserts those of calls still in flight and marks the journal covered.
  In a store shared by several daemons (PostgreSQL), calls are not decided in memory: they
  wait as candidates, and ``flush`` decides them against the fleet's usage in the same
  transaction that commits their reservations (``store.ledger.admit_shared``).
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

from llmspool.actors.accounting.budgets import Budgets, exceeded
from llmspool.core.errors import ApiError
from llmspool.core.states import RequestState
from llmspool.core.streams import MemorySendStream
from llmspool.messages import GONE, Admit, ReserveLines, StoreBatchChunk, StoreJobResults, answer
from llmspool.store import ledger as ledger_sql
from llmspool.store.batch_results import store_batch_chunk
from llmspool.store.ledger import Candidate, LedgerConnection, Refusal, line_key
from llmspool.store.records import BatchChunkStored, JobResult, Settled


class GroupCommit:
    """What waits for the next commit, the commit itself, and the stores of deferred results."""

    def __init__(self, database: LedgerConnection, budgets: Budgets,
                 clock: Callable[[], float], daemon: str | None = None) -> None:
        self._database = database
        self._budgets = budgets
        self._clock = clock
        self._daemon = daemon
        self._journal = database.journal
        self.pending: list[Settled] = []
        self.new_reservations: list[tuple[Any, ...]] = []
        # Reservations made durable in the journal, not yet in a commit: by request id.
        self.journaled: dict[str, tuple[Any, ...]] = {}
        self.candidates: list[tuple[Candidate, Admit]] = []
        self.ended: list[str] = []
        self.admitted: list[MemorySendStream[ApiError | None]] = []
        self.pending_since = 0.0
        self.commits = 0

    def add(self, entry: Settled) -> None:
        """A settled entry, to be written in the next commit."""
        if not self.waiting:
            self.pending_since = time.monotonic()
        self.pending.append(entry)

    @property
    def waiting(self) -> bool:
        """Something is to be written by a commit within ``COMMIT_INTERVAL`` of
        ``pending_since``."""
        return bool(self.pending or self.ended or self.journaled)

    @property
    def journals(self) -> bool:
        """Admissions are made durable by the journal (SQLite), not by a commit."""
        return self._journal is not None

    @property
    def admitting(self) -> bool:
        """Calls wait for this group's commit to be admitted."""
        return bool(self.new_reservations or self.candidates)

    def admit_journaled(self) -> bool:
        """Admit the calls waiting, their reservations made durable by one write to the
        journal; False when there is no journal (PostgreSQL: they wait for ``flush``)."""
        journal = self._journal
        if journal is None or not self.new_reservations:
            return False
        journal.append(self.new_reservations)
        if not self.waiting:
            self.pending_since = time.monotonic()
        journaled = self.journaled
        for row in self.new_reservations:
            journaled[row[0]] = row
        self.new_reservations = []
        admitted, self.admitted = self.admitted, []
        for reply in admitted:
            with contextlib.suppress(*GONE):
                reply.send_nowait(None)
        return True

    async def flush(self) -> None:
        """Commit what is pending, then admit the calls whose reservations it made durable."""
        if not (self.pending or self.new_reservations or self.ended or self.candidates
                or self.journaled):
            return
        entries, self.pending = self.pending, []
        reservations, self.new_reservations = self.new_reservations, []
        ended, self.ended = self.ended, []
        journaled, self.journaled = self.journaled, {}
        if journaled:  # those of calls still in flight go into the table; the rest never do
            closed = {entry.request_id for entry in entries}
            closed.update(ended)
            reservations = [row for key, row in journaled.items() if key not in closed] + \
                reservations
        journal = self._journal
        mark = journal.mark if journal is not None else None
        admitted, self.admitted = self.admitted, []
        candidates, self.candidates = self.candidates, []
        # Shielded: a commit that has started finishes even while the daemon stops.
        with anyio.CancelScope(shield=True):
            if candidates:
                verdicts, usage = await self._database.run(
                    ledger_sql.admit_shared, [c for c, _admit in candidates], entries, ended,
                    self._daemon)
            else:
                # On the event loop: the admissions that arrive in the loop turn the ledger
                # takes before committing join it, so under load a commit carries dozens of
                # calls. Committing in a worker thread when several calls wait was better
                # while every actor hop cost a loop turn; since they no longer do, the
                # thread only adds its round trip (c=256: about 2,600 req/s with it, 3,000+
                # without, and a lower open-loop p99).
                await self._database.run(ledger_sql.write_group, reservations, entries, ended,
                                         self._daemon, mark)
                if journal is not None and mark is not None:
                    journal.committed(mark)
        self.commits += 1
        for reply in admitted:
            with contextlib.suppress(*GONE):
                reply.send_nowait(None)
        if candidates:
            self._budgets.observe_usage(usage)
            for (candidate, admit), verdict in zip(candidates, verdicts, strict=True):
                self._answer(candidate, admit, verdict)

    def _answer(self, candidate: Candidate, admit: Admit, verdict: Refusal | None) -> None:
        """Tell a candidate the fleet's verdict; an admitted one is held here too."""
        budgets = self._budgets
        if verdict is None:
            budgets.hold(admit.request_id, admit.provider, admit.operation, admit.uid,
                         admit.session, candidate.estimate)
            answer(admit.reply, None)
            return
        budgets.refused += 1
        answer(admit.reply, _fleet_refusal(verdict, candidate))

    # --- deferred results -----------------------------------------------------------------

    async def store_job_results(self, message: StoreJobResults) -> None:
        await self.flush()  # reservations these entries settle are on disk first
        stored, new = await self._database.run(
            ledger_sql.store_job_results, message.results, message.entries, self._clock(),
            (), self._daemon)
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
        candidates: list[Candidate] = []
        refused: list[JobResult] = []
        for line in message.lines:
            error = (budgets.per_request_refusal(line.provider, line.operation, line.uid,
                                                 line.estimate_picodollars)
                     if self._database.shared else
                     budgets.refusal(line.provider, line.operation, line.uid, None,
                                     line.estimate_picodollars))
            if error is not None:
                budgets.refused += 1
                refused.append(_refused_line(line.line_id, line.job_id, line.custom_id, error))
                continue
            key = line_key(line.line_id)
            row = (key, "line", now, line.provider, line.model, line.endpoint.value, "batch",
                   line.operation, line.uid, None, line.estimate_picodollars, line.line_id,
                   self._daemon)
            if self._database.shared:
                candidates.append(Candidate(row, line.estimate_picodollars, budgets.cap_checks(
                    line.provider, line.operation, line.uid, None)))
                continue
            budgets.hold(key, line.provider, line.operation, line.uid, None,
                         line.estimate_picodollars)
            rows.append(row)
        await self.flush()
        if candidates:  # decided against the fleet, and reserved, in one transaction
            verdicts, usage = await self._database.run(ledger_sql.admit_shared, candidates)
            budgets.observe_usage(usage)
            lines = {line_key(line.line_id): line for line in message.lines}
            for candidate, verdict in zip(candidates, verdicts, strict=True):
                line = lines[candidate.reservation[0]]
                if verdict is None:
                    budgets.hold(candidate.reservation[0], line.provider, line.operation,
                                 line.uid, None, candidate.estimate)
                    continue
                budgets.refused += 1
                refused.append(_refused_line(line.line_id, line.job_id, line.custom_id,
                                             _fleet_refusal(verdict, candidate)))
        stored: list[int] = []
        if rows or refused:
            # The lines' reservations and the refused lines' results: one transaction.
            stored, _new = await self._database.run(ledger_sql.store_job_results, refused, [],
                                                    now, rows, self._daemon)
        with contextlib.suppress(*GONE):
            message.reply.send_nowait([r for r in refused if r.request_id in set(stored)])

    async def store_batch_chunk(self, message: StoreBatchChunk) -> None:
        await self.flush()
        try:
            stored: BatchChunkStored = await self._database.run_in_thread(
                store_batch_chunk, message.chunk, self._daemon)
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


def _fleet_refusal(verdict: Refusal, candidate: Candidate) -> ApiError:
    """The error a candidate the fleet's usage refused is told, as a refusal in memory is."""
    cap = verdict.cap
    return exceeded(cap.name, cap.limit, cap.kind, verdict.spent, verdict.reserved,
                    candidate.estimate)


def _refused_line(line_id: int, job_id: str, custom_id: str, error: ApiError) -> JobResult:
    """A batch line a cap refused, as its failed result in the Batch output format."""
    line = orjson.dumps({
        "id": f"batch_req_{line_id}", "custom_id": custom_id, "response": None,
        "error": {"code": error.code, "message": error.message},
    })
    return JobResult(line_id, job_id, RequestState.FAILED, None, None, None, line, 0)
