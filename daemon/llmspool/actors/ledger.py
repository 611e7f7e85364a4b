"""The cost ledger actor: the one writer of money, and the keeper of budgets.

- ``Admit`` reserves a call's worst-case cost against every cap that applies (per request;
  per day overall and per operation, calling user and provider; per session) and refuses the
  call, naming the cap, if the reservation would break one. Because this one actor handles
  admissions one at a time, concurrent calls cannot race past a cap. Every reservation, caps
  or not, is committed (a group commit for all that arrived together) before the call is
  admitted: it is the durable intent that makes a crash mid-call visible.
- ``Settled`` ends the reservation and adds the actual cost; ``Release`` ends it without a
  bill. Entries are written in group commits (what arrived while the previous commit ran goes
  in the next one), each deleting the reservations it settles in the same transaction.
- ``StoreJobResults`` and ``StoreBatchChunk`` store deferred results together with their
  entries, in one transaction; ``ReserveLines`` reserves batch lines before they are put into a
  batch, storing the refused ones as ``budget_*`` failures; ``ReleaseLines`` ends those.
- At start, every call reservation left by a crash becomes an ``unknown_outcome`` entry at its
  reserved cost, and batch lines' reservations count against the caps again: spend after a
  crash is never lower than what may have been spent.
- Crossing ``[budgets] warn_fraction`` of a cap logs a warning, emits an OpenTelemetry event,
  and shows in status, once per crossing.
- Every entry it counts also goes to the OpenTelemetry counters ``llmspool.spend`` (USD billed,
  by provider, model, tier and operation) and ``llmspool.savings`` (USD saved against standard
  prices, by ``llmspool.saving.source``: tier, cache, dedup, routing), whatever path made it
  (a call, a job's result, a batch line, a cache hit, an unknown outcome after a crash).

Queries are answered after everything that arrived before them is committed, so a client that
asks for its cost right after its answer sees it.

This module is the actor: its inbox loop, admissions and start-up. Its parts, made once and
owned by it, are in ``llmspool.actors.accounting``: ``caps`` (the configured caps), ``budgets``
(spent and reserved by scope, refusals, warnings, metrics), ``commits`` (the group commit and
the stores of deferred results) and ``status`` (the answers to ``StatusQuery`` and
``LedgerEntriesQuery``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream
from opentelemetry import metrics, trace

from llmspool.actors.accounting.budgets import Budgets
from llmspool.actors.accounting.caps import Cap, Caps, Scope
from llmspool.actors.accounting.commits import GroupCommit
from llmspool.actors.accounting.status import answer_query
from llmspool.core.config.sections import BudgetsConfig
from llmspool.core.pricing import usd
from llmspool.core.tracing import active
from llmspool.messages import (
    Admit,
    LedgerEntriesQuery,
    LedgerStatus,
    Release,
    ReleaseLines,
    ReserveLines,
    StatusQuery,
    StoreBatchChunk,
    StoreJobResults,
    answer,
)
from llmspool.store import ledger as ledger_sql
from llmspool.store.ledger import LedgerConnection, line_key
from llmspool.store.records import Settled

__all__ = ["COMMIT_INTERVAL", "MAX_GROUP", "Cap", "Caps", "Ledger", "LedgerMessage", "Scope"]

log = logging.getLogger(__name__)

MAX_GROUP = 512
# Entries wait at most this long for company before they are committed together: at 1,000
# calls/s a commit per handful of entries cost ~370 µs of CPU per call (py-spy: a third in
# SQLite); one commit per 10 ms is cheap. Counters move at once, so budgets never wait.
COMMIT_INTERVAL = 0.010
LedgerMessage = (Settled | Admit | Release | StoreJobResults | ReserveLines | ReleaseLines
                 | StoreBatchChunk | StatusQuery[LedgerStatus] | LedgerEntriesQuery)


class Ledger:
    """The actor: its inbox loop, admissions, and start-up; its parts are in ``accounting``."""

    def __init__(
        self,
        inbox: MemoryObjectReceiveStream[LedgerMessage],
        database: LedgerConnection,
        *,
        budgets: BudgetsConfig | None = None,
        tracer: trace.Tracer | None = None,
        meter: metrics.Meter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inbox = inbox
        self._database = database
        caps = Caps(budgets or BudgetsConfig())
        meter = meter or active().meter  # without one given, the daemon's
        self._budgets = Budgets(caps, database, tracer or trace.NoOpTracer(), meter, clock)
        self._group = GroupCommit(database, self._budgets, clock)
        self._clock = clock
        self._closed = False

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self._reconcile()
        await self._budgets.load_today()
        task_status.started()
        try:
            async with self._inbox:
                while True:
                    first = await self._next()
                    if first is None:
                        if self._closed:
                            return
                        await self._group.flush()  # the oldest pending entry has waited enough
                        continue
                    group = [first]
                    while len(group) < MAX_GROUP:
                        try:
                            group.append(self._inbox.receive_nowait())
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                    await self._handle(group)
                    if self._group.new_reservations and len(group) < MAX_GROUP:
                        # One turn of the event loop first: admissions from calls that are
                        # a step behind join this commit instead of waiting for the next.
                        await anyio.lowlevel.checkpoint()
                        await self._handle(self._drain(MAX_GROUP - len(group)))
                    if self._group.new_reservations or len(self._group.pending) >= MAX_GROUP:
                        await self._group.flush()
        finally:
            with anyio.CancelScope(shield=True):
                await self._group.flush()

    def _drain(self, most: int) -> list[LedgerMessage]:
        """Up to ``most`` messages already waiting, without waiting for any."""
        waiting: list[LedgerMessage] = []
        while len(waiting) < most:
            try:
                waiting.append(self._inbox.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
        return waiting

    async def _next(self) -> LedgerMessage | None:
        """The next message; None when the commit window of pending entries has closed."""
        try:
            return self._inbox.receive_nowait()  # the busy case: no timer, no checkpoint
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            self._closed = True
            return None
        if not self._group.pending and not self._group.ended:
            try:
                return await self._inbox.receive()
            except anyio.EndOfStream:
                self._closed = True
                return None
        wait = self._group.pending_since + COMMIT_INTERVAL - time.monotonic()
        with anyio.move_on_after(max(0.0, wait)):
            try:
                return await self._inbox.receive()
            except anyio.EndOfStream:
                self._closed = True
        return None

    async def _handle(self, group: list[LedgerMessage]) -> None:
        for message in group:
            if isinstance(message, Settled):
                self._group.add(message)
                self._budgets.count(message)
            elif isinstance(message, Admit):
                await self._admit(message)
            elif isinstance(message, Release):
                if self._budgets.release(message.request_id):
                    self._group.ended.append(message.request_id)
            elif isinstance(message, StoreJobResults):
                await self._group.store_job_results(message)
            elif isinstance(message, ReserveLines):
                await self._group.reserve_lines(message)
            elif isinstance(message, ReleaseLines):
                for line_id in message.line_ids:
                    self._budgets.release(line_key(line_id))
                    self._group.ended.append(line_key(line_id))
            elif isinstance(message, StoreBatchChunk):
                await self._group.store_batch_chunk(message)
            else:
                await answer_query(message, self._budgets, self._group, self._database)

    async def _admit(self, admit: Admit) -> None:
        now = self._clock()
        self._budgets.roll_day(now)
        await self._budgets.know_session(admit.session)
        error = self._budgets.refusal(admit.provider, admit.operation, admit.uid,
                                      admit.session, admit.estimate_picodollars)
        if error is not None:
            self._budgets.refused += 1
            answer(admit.reply, error)
            return
        self._budgets.hold(admit.request_id, admit.provider, admit.operation, admit.uid,
                           admit.session, admit.estimate_picodollars)
        self._group.new_reservations.append((
            admit.request_id, "call", now, admit.provider, admit.model, admit.endpoint.value,
            admit.tier.value, admit.operation, admit.uid, admit.session,
            admit.estimate_picodollars, None,
        ))
        self._group.admitted.append(admit.reply)  # told once the reservation is committed

    async def _reconcile(self) -> None:
        unknown, kept = await self._database.run_in_thread(ledger_sql.reconcile, self._clock())
        for entry in unknown:  # billed now, at their reservations
            self._budgets.measure(entry, entry.cost_picodollars or 0, 0)
        if unknown:
            log.warning(
                "%d calls were in flight when the daemon stopped without settling them; each "
                "is billed at its reservation as an unknown outcome ($%.6f in all; "
                "`llmspool costs` and status count them)", len(unknown),
                usd(sum(e.cost_picodollars or 0 for e in unknown)))
        for held in kept:
            self._budgets.hold(held.request_id, held.provider, held.operation, held.uid,
                               held.session, held.estimate_picodollars)

