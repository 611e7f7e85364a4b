"""The cost ledger actor: the one writer of money, and the keeper of budgets.

- ``Admit`` reserves a call's worst-case cost against every cap that applies (per request;
  per day overall and per operation, calling user and provider; per session) and refuses the
  call, naming the cap, if the reservation would break one. Because this one actor handles
  admissions one at a time, concurrent calls cannot race past a cap. Every reservation, caps
  or not, is durable before the call is admitted: it is the intent that makes a crash
  mid-call visible. On SQLite it is written to the reservations' journal (one write for all
  admitted together, ``store.reservation_journal``), and the next group commit puts it into
  the table if the call is still in flight; in a shared store it is committed (a group
  commit for all that arrived together) before the call is admitted. On SQLite, while a
  commit is due anyway, the dispatcher's task decides its admission itself (``admit_now``),
  without the hop here and back: same caps, same journal, one at a time all the same.
- ``Settled`` ends the reservation and adds the actual cost (from the dispatcher, taken in
  its task while a commit is due: ``settle_now``); ``Release`` ends it without a bill.
  Entries are written in group commits (what arrived while the previous commit ran goes in
  the next one), each deleting the reservations it settles in the same transaction. Before
  committing admissions (in a shared store) the ledger lets the event loop turn once, so
  under load the calls a step behind join the commit (dozens of calls a commit, not two). On
  SQLite the commits run on the event loop, and the write-ahead log's checkpoints in a worker
  thread beside them (``store.wal_checkpoints``).
- ``StoreJobResults`` and ``StoreBatchChunk`` store deferred results together with their
  entries, in one transaction; ``ReserveLines`` reserves batch lines before they are put into a
  batch, storing the refused ones as ``budget_*`` failures; ``ReleaseLines`` ends those.
- At start, the journal's reservations past the last commit go into the table; every call
  reservation left by a crash becomes an ``unknown_outcome`` entry at its reserved cost, and
  batch lines' reservations count against the caps again: spend after a crash is never lower
  than what may have been spent.
- In a store several daemons share (PostgreSQL), admissions are decided in the database, in
  the transaction that commits their reservations, against what the whole fleet has spent and
  reserved (``GroupCommit``), so caps hold for the fleet. The ledger keeps this daemon's lease
  (``[store] lease``) and, when it renews it, takes over any daemon whose lease ran out: that
  daemon's calls in flight are billed at their reservations, as after a crash, and its jobs
  and open batches go to this daemon's job keeper (``AdoptWork``). A lease found lost (this
  daemon was stalled and taken over) stops the daemon (``LeaseLost``). At start it settles
  only its own leftovers; the others' calls may still be running.
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
from typing import Any

import anyio
from anyio.abc import TaskStatus
from opentelemetry import metrics, trace

from llmspool.actors.accounting.budgets import Budgets
from llmspool.actors.accounting.caps import Cap, Caps, Scope
from llmspool.actors.accounting.commits import GroupCommit
from llmspool.actors.accounting.status import answer_query
from llmspool.core.config.sections import BudgetsConfig
from llmspool.core.errors import ApiError, StartupError
from llmspool.core.pricing import usd
from llmspool.core.streams import MemoryReceiveStream, MemorySendStream
from llmspool.core.tracing import active
from llmspool.messages import (
    NOT_NOW,
    Admit,
    AdoptWork,
    LedgerEntriesQuery,
    LedgerStatus,
    NotNow,
    Release,
    ReleaseLines,
    ReserveLines,
    StatusQuery,
    StoreBatchChunk,
    StoreJobResults,
    answer,
)
from llmspool.store import fleet
from llmspool.store import ledger as ledger_sql
from llmspool.store.fleet import Member
from llmspool.store.ledger import Candidate, LedgerConnection, line_key
from llmspool.store.records import Settled

__all__ = ["COMMIT_INTERVAL", "MAX_GROUP", "Cap", "Caps", "LeaseLost", "Ledger", "LedgerMessage",
           "Scope"]

log = logging.getLogger(__name__)

MAX_GROUP = 512
# Entries wait at most this long for company before they are committed together: at 1,000
# calls/s a commit per handful of entries cost ~370 µs of CPU per call (py-spy: a third in
# SQLite); one commit per 10 ms is cheap. Counters move at once, so budgets never wait.
COMMIT_INTERVAL = 0.010
LedgerMessage = (Settled | Admit | Release | StoreJobResults | ReserveLines | ReleaseLines
                 | StoreBatchChunk | StatusQuery[LedgerStatus] | LedgerEntriesQuery)


class LeaseLost(StartupError):
    """This daemon's lease on a shared store ran out and others took its work over."""


class Ledger:
    """The actor: its inbox loop, admissions, and start-up; its parts are in ``accounting``."""

    def __init__(
        self,
        inbox: MemoryReceiveStream[LedgerMessage],
        database: LedgerConnection,
        *,
        budgets: BudgetsConfig | None = None,
        tracer: trace.Tracer | None = None,
        meter: metrics.Meter | None = None,
        clock: Callable[[], float] = time.time,
        member: Member | None = None,
        adopt: MemorySendStream[AdoptWork] | None = None,
        commit_interval: float = COMMIT_INTERVAL,
    ) -> None:
        self._inbox = inbox
        self._commit_interval = commit_interval
        self._database = database
        caps = Caps(budgets or BudgetsConfig())
        meter = meter or active().meter  # without one given, the daemon's
        self._budgets = Budgets(caps, database, tracer or trace.NoOpTracer(), meter, clock)
        self._member = member
        self._daemon = member.name if member is not None else None
        self._group = GroupCommit(database, self._budgets, clock, self._daemon)
        self._clock = clock
        self._closed = False
        self._serving = False  # the inbox loop runs: ``admit_now`` may decide in its stead
        # A shared store: this daemon's lease, renewed three times a lease (monotonic time),
        # and where the deferred work of daemons it takes over goes (the job keeper).
        self._fleet = member if database.shared else None
        self._renew_at = float("inf")
        self._adopt = adopt
        self._adopted: list[AdoptWork] = []

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if self._fleet is not None:
            await self._database.run(fleet.register, self._fleet)
            self._renew_at = time.monotonic() + self._fleet.lease / 3
        await self._reconcile()
        await self._budgets.load_today()
        task_status.started()
        failed: Exception | None = None
        async with anyio.create_task_group() as background:
            if self._database.checkpoints is not None:
                background.start_soon(self._database.checkpoints.run)
            try:
                await self._serve()
            except Exception as exc:  # raised below, not wrapped in an exception group
                failed = exc
            finally:
                background.cancel_scope.cancel()
        if failed is not None:
            raise failed

    async def _serve(self) -> None:
        self._serving = True
        try:
            async with self._inbox:
                while True:
                    first = await self._next()
                    if first is None:
                        if self._closed:
                            return
                        await self._group.flush()  # the oldest pending entry has waited enough
                        if time.monotonic() >= self._renew_at:
                            await self._renew()
                        continue
                    group = [first]
                    while len(group) < MAX_GROUP:
                        try:
                            group.append(self._inbox.receive_nowait())
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                    await self._handle(group)
                    if self._group.admit_journaled():
                        pass  # durable in the journal (SQLite): no commit to wait for
                    elif self._group.admitting and len(group) < MAX_GROUP:
                        # One turn of the event loop first: admissions from calls that are
                        # a step behind join this commit instead of waiting for the next.
                        await anyio.lowlevel.checkpoint()
                        await self._handle(self._drain(MAX_GROUP - len(group)))
                    if self._group.admitting or len(self._group.pending) >= MAX_GROUP:
                        await self._group.flush()
                    if time.monotonic() >= self._renew_at:
                        await self._renew()
        finally:
            self._serving = False
            if self._adopt is not None:
                self._adopt.close()
            with anyio.CancelScope(shield=True):
                await self._group.flush()
                if self._fleet is not None and self._closed:  # a clean stop: nothing in flight
                    await self._database.run(fleet.leave, self._fleet)

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
        """The next message; None when the commit window of pending entries has closed, or
        this daemon's lease is due for renewal."""
        try:
            return self._inbox.receive_nowait()  # the busy case: no timer, no checkpoint
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            self._closed = True
            return None
        wake = self._renew_at
        if self._group.waiting:
            wake = min(wake, self._group.pending_since + self._commit_interval)
        if wake == float("inf"):
            try:
                return await self._inbox.receive()
            except anyio.EndOfStream:
                self._closed = True
                return None
        delay = wake - time.monotonic()
        if delay <= 0:
            # The window closed while the ledger was busy. Not a scope that is cancelled as
            # it is entered: anyio then formats the task's repr into the cancel reason, some
            # 20 µs, and under load this is most of the ledger's commits.
            return None
        with anyio.move_on_after(delay):
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
        budgets = self._budgets
        budgets.roll_day(now)
        await budgets.know_session(admit.session)
        if self._database.shared:  # decided against the fleet when the group commits
            error = budgets.per_request_refusal(admit.provider, admit.operation, admit.uid,
                                                admit.estimate_picodollars)
            if error is None:
                caps = budgets.cap_checks(admit.provider, admit.operation, admit.uid,
                                          admit.session)
                self._group.candidates.append(
                    (Candidate(self._reservation_row(admit, now), admit.estimate_picodollars,
                               caps), admit))
                return
            budgets.refused += 1
            answer(admit.reply, error)
            return
        refusal = self._reserve(admit, now)
        if refusal is not None:
            answer(admit.reply, refusal)
            return
        self._group.admitted.append(admit.reply)  # told once the reservation is durable

    def admit_now(self, admit: Admit) -> ApiError | NotNow | None:
        """Decide ``admit`` in the caller's own task, without its hop to the ledger's task and
        back: None (admitted, its reservation written to the journal) or the ``ApiError``
        that refuses it, as through the inbox (``admit.reply`` is not used).

        Only when that changes nothing but the wait: the store is this daemon's own (SQLite,
        with the journal), the caller's session's spend is known, and a commit is already
        due within the window (``GroupCommit.waiting``: the ledger's task has its timer set,
        or is running, and commits what this journals as soon as if it had come through the
        inbox). Otherwise ``NOT_NOW``: send it. Admissions stay one at a time, since this
        never awaits, so the caps hold. What the inbox still holds may be decided after this
        one: its entries and releases only free money (a decision made before them is the
        stricter one), and an admission waiting there was not yet answered either."""
        if not self._decides_here() or not self._budgets.knows_session(admit.session):
            return NOT_NOW
        now = self._clock()
        self._budgets.roll_day(now)
        error = self._reserve(admit, now)
        if error is None:
            self._group.admit_journaled()
        return error

    def settle_now(self, entry: Settled) -> bool:
        """Take ``entry`` in the caller's own task, as ``admit_now`` takes an admission and
        when it may: its spend counted and its reservation ended at once, the entry written
        by the commit already due. False: send it."""
        if not self._decides_here():
            return False
        self._group.add(entry)
        self._budgets.count(entry)
        return True

    def _decides_here(self) -> bool:
        """Whether a caller's task may act for the ledger now: the inbox loop runs, the
        store is this daemon's own (SQLite, with the journal), and a commit is already due."""
        group = self._group
        return self._serving and group.journals and group.waiting

    def _reserve(self, admit: Admit, now: float) -> ApiError | None:
        """Hold ``admit``'s reservation against this daemon's caps, its row for the journal
        (or the next commit); or the error of the cap it would break."""
        budgets = self._budgets
        error = budgets.refusal(admit.provider, admit.operation, admit.uid, admit.session,
                                admit.estimate_picodollars)
        if error is not None:
            budgets.refused += 1
            return error
        budgets.hold(admit.request_id, admit.provider, admit.operation, admit.uid,
                     admit.session, admit.estimate_picodollars)
        self._group.new_reservations.append(self._reservation_row(admit, now))
        return None

    def _reservation_row(self, admit: Admit, now: float) -> tuple[Any, ...]:
        return (admit.request_id, "call", now, admit.provider, admit.model,
                admit.endpoint.value, admit.tier.value, admit.operation, admit.uid,
                admit.session, admit.estimate_picodollars, None, self._daemon)

    async def _renew(self) -> None:
        """Renew this daemon's lease, and take over the daemons whose lease ran out."""
        member = self._fleet
        if member is None:
            return
        self._renew_at = time.monotonic() + member.lease / 3
        if not await self._database.run(fleet.renew, member):
            # Another daemon took this one for dead and took its work over: going on would do
            # that work twice. Stop; a restart (systemd's) rejoins with nothing of its own.
            raise LeaseLost(
                f"this daemon's lease on the shared store ran out (was it stopped, or cut off "
                f"from the database, for longer than [store] lease = {member.lease:.0f}s?) and "
                "another daemon has taken its calls and deferred work over; stopping so that "
                "nothing is done twice")
        dead = [name for name in await self._database.run(fleet.expired) if name != member.name]
        if not dead:
            return
        taken = await self._database.run(ledger_sql.take_over, self._clock(), dead,
                                         member.name)
        for entry in taken.unknown:
            self._budgets.count(entry)
        if not taken.daemons:
            return
        log.warning(
            "took over %s, whose lease ran out: %d calls it had in flight are billed at their "
            "reservations as unknown outcomes ($%.6f); %d jobs in progress and %d open batches "
            "are this daemon's now", ", ".join(taken.daemons), len(taken.unknown),
            usd(sum(e.cost_picodollars or 0 for e in taken.unknown)), len(taken.job_ids),
            len(taken.batch_ids))
        if taken.job_ids or taken.batch_ids:
            self._adopted.append(AdoptWork(tuple(taken.job_ids), tuple(taken.batch_ids)))
        self._hand_over()

    def _hand_over(self) -> None:
        """Hand the work taken over to the job keeper; never waits (the keeper may be waiting
        on this ledger): what does not fit in its stream now goes at the next renewal."""
        while self._adopted and self._adopt is not None:
            try:
                self._adopt.send_nowait(self._adopted[0])
            except anyio.WouldBlock:
                return
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._adopted.clear()  # the keeper is gone: the daemon is stopping
                return
            self._adopted.pop(0)

    async def _reconcile(self) -> None:
        journal = self._database.journal
        if journal is not None:  # its rows past the last commit are reservations too
            put_back = await self._database.run_in_thread(ledger_sql.recover_journal, journal)
            if put_back:
                log.info("%d reservations made after the last commit were in the journal",
                         put_back)
        mine = None if self._fleet is None else [self._fleet.name]
        unknown, kept = await self._database.run_in_thread(ledger_sql.reconcile, self._clock(),
                                                           mine)
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

