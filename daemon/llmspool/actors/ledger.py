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
"""

from __future__ import annotations

import contextlib
import logging
import pwd
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from opentelemetry import metrics, trace

from llmspool.core.config.sections import BudgetsConfig
from llmspool.core.errors import ApiError, BudgetExceeded, ConfigError
from llmspool.core.pricing import PICODOLLARS_PER_USD, usd
from llmspool.core.states import RequestState
from llmspool.core.tracing import active
from llmspool.messages import (
    Admit,
    Query,
    Release,
    ReleaseLines,
    ReserveLines,
    StoreBatchChunk,
    StoreJobResults,
)
from llmspool.store import ledger as ledger_sql
from llmspool.store.batch_results import store_batch_chunk
from llmspool.store.ledger import LedgerConnection, line_key
from llmspool.store.records import BatchChunkStored, JobResult, Settled

log = logging.getLogger(__name__)

MAX_GROUP = 512
# Entries wait at most this long for company before they are committed together: at 1,000
# calls/s a commit per handful of entries cost ~370 µs of CPU per call (py-spy: a third in
# SQLite); one commit per 10 ms is cheap. Counters move at once, so budgets never wait.
COMMIT_INTERVAL = 0.010
LedgerMessage = (Settled | Query | Admit | Release | StoreJobResults | ReserveLines
                 | ReleaseLines | StoreBatchChunk)
Scope = tuple[str, str]  # (kind, key): ("day", ""), ("operation", "evals"), ("session", "s1")
_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock)


@dataclass(frozen=True, slots=True)
class Cap:
    scope: Scope
    limit: int  # picodollars
    name: str  # how an operator names it: "[budgets] daily_usd"


class Caps:
    """The configured caps, compiled once: which apply to a call, and their limits."""

    def __init__(self, config: BudgetsConfig) -> None:
        self.config = config
        self._users = {self._uid(name): cap for name, cap in config.users.items()}
        self._scoped: dict[tuple[str, str | None, int | None, str | None], list[Cap]] = {}

    @staticmethod
    def _uid(name: str) -> int:
        if name.isdigit():
            return int(name)
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            raise ConfigError(f"budgets.users.{name}", "no such user on this machine") from None

    def per_request(self, provider: str, operation: str | None, uid: int | None
                    ) -> list[tuple[int, str]]:
        found = []
        budgets = self.config
        for value, name in (
            (budgets.per_request_usd, "[budgets] per_request_usd"),
            (_cap_of(budgets.operations, operation, "per_request_usd"),
             f"[budgets.operations.{operation}] per_request_usd"),
            (_cap_of(self._users, uid, "per_request_usd"), f"per_request_usd of user {uid}"),
            (_cap_of(budgets.providers, provider, "per_request_usd"),
             f"[budgets.providers.{provider}] per_request_usd"),
        ):
            if value is not None:
                found.append((_picodollars(value), name))
        return found

    def scoped(self, provider: str, operation: str | None, uid: int | None,
               session: str | None) -> list[Cap]:
        key = (provider, operation, uid, session)
        found = self._scoped.get(key)
        if found is None:
            if len(self._scoped) > 10_000:
                self._scoped.clear()  # sessions come and go; keep the cache bounded
            found = self._scoped[key] = self._compute_scoped(provider, operation, uid, session)
        return found

    def _compute_scoped(self, provider: str, operation: str | None, uid: int | None,
                        session: str | None) -> list[Cap]:
        budgets = self.config
        candidates: list[tuple[Scope, float | None, str]] = [
            (("day", ""), budgets.daily_usd, "[budgets] daily_usd"),
            (("operation", operation or ""), _cap_of(budgets.operations, operation, "daily_usd"),
             f"[budgets.operations.{operation}] daily_usd"),
            (("user", str(uid)), _cap_of(self._users, uid, "daily_usd"),
             f"daily_usd of user {uid}"),
            (("provider", provider), _cap_of(budgets.providers, provider, "daily_usd"),
             f"[budgets.providers.{provider}] daily_usd"),
        ]
        if session is not None:
            candidates.append((("session", session), budgets.session_usd,
                               "[budgets] session_usd"))
        return [Cap(scope, _picodollars(value), name)
                for scope, value, name in candidates if value is not None]


class Ledger:
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
        self._caps = Caps(budgets or BudgetsConfig())
        self._tracer = tracer or trace.NoOpTracer()
        meter = meter or active().meter  # without one given, the daemon's
        self._spend = meter.create_counter(
            "llmspool.spend", "USD", "billed, at the tier that served (every path)")
        self._savings = meter.create_counter(
            "llmspool.savings", "USD", "saved against standard prices, by what saved it")
        self._clock = clock
        self._day = ""
        self._spent: defaultdict[Scope, int] = defaultdict(int)
        self._reserved: defaultdict[Scope, int] = defaultdict(int)
        self._reservations: dict[str, tuple[int, list[Scope]]] = {}
        self._known_sessions: set[str] = set()
        self._warned: set[Scope] = set()
        self._warnings: list[dict[str, Any]] = []
        self._saved_today = 0
        self._calls_today = 0
        self._unpriced_today = 0
        self._refused = 0
        self._commits = 0
        self._pending: list[Settled] = []
        self._new_reservations: list[tuple[Any, ...]] = []
        self._ended: list[str] = []
        self._admitted: list[MemoryObjectSendStream[ApiError | None]] = []
        self._day_start = self._day_end = 0.0
        self._closed = False
        self._pending_since = 0.0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self._reconcile()
        await self._load_today()
        task_status.started()
        try:
            async with self._inbox:
                while True:
                    first = await self._next()
                    if first is None:
                        if self._closed:
                            return
                        await self._flush()  # the oldest pending entry has waited enough
                        continue
                    group = [first]
                    while len(group) < MAX_GROUP:
                        try:
                            group.append(self._inbox.receive_nowait())
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                    await self._handle(group)
                    if self._new_reservations or len(self._pending) >= MAX_GROUP:
                        await self._flush()
        finally:
            with anyio.CancelScope(shield=True):
                await self._flush()

    async def _next(self) -> LedgerMessage | None:
        """The next message; None when the commit window of pending entries has closed."""
        try:
            return self._inbox.receive_nowait()  # the busy case: no timer, no checkpoint
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            self._closed = True
            return None
        if not self._pending and not self._ended:
            try:
                return await self._inbox.receive()
            except anyio.EndOfStream:
                self._closed = True
                return None
        wait = self._pending_since + COMMIT_INTERVAL - time.monotonic()
        with anyio.move_on_after(max(0.0, wait)):
            try:
                return await self._inbox.receive()
            except anyio.EndOfStream:
                self._closed = True
        return None

    async def _flush(self) -> None:
        """Commit what is pending, then admit the calls whose reservations it made durable."""
        if not (self._pending or self._new_reservations or self._ended):
            return
        entries, self._pending = self._pending, []
        reservations, self._new_reservations = self._new_reservations, []
        ended, self._ended = self._ended, []
        admitted, self._admitted = self._admitted, []
        # Shielded: a commit that has started finishes even while the daemon stops.
        with anyio.CancelScope(shield=True):
            await self._database.run(ledger_sql.write_group, reservations, entries, ended)
        self._commits += 1
        for reply in admitted:
            with contextlib.suppress(*_GONE):
                reply.send_nowait(None)

    async def _handle(self, group: list[LedgerMessage]) -> None:
        for message in group:
            if isinstance(message, Settled):
                if not self._pending:
                    self._pending_since = time.monotonic()
                self._pending.append(message)
                self._count(message)
            elif isinstance(message, Admit):
                await self._admit(message)
            elif isinstance(message, Release):
                if self._release(message.request_id):
                    self._ended.append(message.request_id)
            elif isinstance(message, StoreJobResults):
                await self._store_job_results(message)
            elif isinstance(message, ReserveLines):
                await self._reserve_lines(message)
            elif isinstance(message, ReleaseLines):
                for line_id in message.line_ids:
                    self._release(line_key(line_id))
                    self._ended.append(line_key(line_id))
            elif isinstance(message, StoreBatchChunk):
                await self._store_batch_chunk(message)
            else:
                await self._answer(message)

    # --- budgets ------------------------------------------------------------------------

    async def _admit(self, admit: Admit) -> None:
        now = self._clock()
        self._roll_day(now)
        await self._know_session(admit.session)
        error = self._refusal(admit.provider, admit.operation, admit.uid, admit.session,
                              admit.estimate_picodollars)
        if error is not None:
            self._refused += 1
            with contextlib.suppress(*_GONE):
                admit.reply.send_nowait(error)
            return
        self._hold(admit.request_id, admit.provider, admit.operation, admit.uid, admit.session,
                   admit.estimate_picodollars)
        self._new_reservations.append((
            admit.request_id, "call", now, admit.provider, admit.model, admit.endpoint.value,
            admit.tier.value, admit.operation, admit.uid, admit.session,
            admit.estimate_picodollars, None,
        ))
        self._admitted.append(admit.reply)  # told once the reservation is committed

    async def _know_session(self, session: str | None) -> None:
        if session is not None and session not in self._known_sessions:
            self._spent[("session", session)] += ledger_sql.spend_of_session(
                self._database.connection, session)
            self._known_sessions.add(session)

    def _hold(self, key: str, provider: str, operation: str | None, uid: int | None,
              session: str | None, estimate: int) -> None:
        scopes = [cap.scope for cap in self._caps.scoped(provider, operation, uid, session)]
        for scope in scopes:
            self._reserved[scope] += estimate
        self._reservations[key] = (estimate, scopes)

    def _refusal(self, provider: str, operation: str | None, uid: int | None,
                 session: str | None, estimate: int) -> BudgetExceeded | None:
        for limit, name in self._caps.per_request(provider, operation, uid):
            if estimate > limit:
                return BudgetExceeded(
                    f"this request may cost up to ${usd(estimate):.6f}, more than {name} = "
                    f"${usd(limit):.6f}; lower max_tokens or raise the cap",
                    code="budget_per_request",
                )
        for cap in self._caps.scoped(provider, operation, uid, session):
            spent, reserved = self._spent[cap.scope], self._reserved[cap.scope]
            if spent + reserved + estimate > cap.limit:
                return BudgetExceeded(
                    f"{cap.name} = ${usd(cap.limit):.6f} would be exceeded: ${usd(spent):.6f} "
                    f"spent and ${usd(reserved):.6f} reserved by calls in flight "
                    f"{'in this session' if cap.scope[0] == 'session' else 'today (UTC)'}, and "
                    f"this request may cost up to ${usd(estimate):.6f}",
                    code=f"budget_{cap.scope[0]}",
                )
        return None

    def _release(self, request_id: str) -> bool:
        """End a reservation in memory; False if there was none (settled, or never made)."""
        held = self._reservations.pop(request_id, None)
        if held is None:
            return False
        estimate, scopes = held
        for scope in scopes:
            self._reserved[scope] -= estimate
        return True

    # --- deferred results -----------------------------------------------------------------

    async def _store_job_results(self, message: StoreJobResults) -> None:
        await self._flush()  # reservations these entries settle are on disk first
        stored, new = await self._database.run(
            ledger_sql.store_job_results, message.results, message.entries, self._clock())
        fresh = {entry.request_id for entry in new}
        for entry in message.entries:
            if entry.request_id in fresh:
                self._count(entry)
            else:
                self._release(entry.request_id)
        with contextlib.suppress(*_GONE):
            message.reply.send_nowait(stored)

    async def _reserve_lines(self, message: ReserveLines) -> None:
        now = self._clock()
        self._roll_day(now)
        rows: list[tuple[Any, ...]] = []
        refused: list[JobResult] = []
        for line in message.lines:
            error = self._refusal(line.provider, line.operation, line.uid, None,
                                  line.estimate_picodollars)
            if error is not None:
                self._refused += 1
                refused.append(_refused_line(line.line_id, line.job_id, line.custom_id, error))
                continue
            key = line_key(line.line_id)
            self._hold(key, line.provider, line.operation, line.uid, None,
                       line.estimate_picodollars)
            rows.append((key, "line", now, line.provider, line.model, line.endpoint.value,
                         "batch", line.operation, line.uid, None, line.estimate_picodollars,
                         line.line_id))
        await self._flush()
        stored: list[int] = []
        if rows or refused:
            # The lines' reservations and the refused lines' results: one transaction.
            stored, _new = await self._database.run(ledger_sql.store_job_results, refused, [],
                                                    now, rows)
        with contextlib.suppress(*_GONE):
            message.reply.send_nowait([r for r in refused if r.request_id in set(stored)])

    async def _store_batch_chunk(self, message: StoreBatchChunk) -> None:
        await self._flush()
        try:
            stored: BatchChunkStored = await self._database.run_in_thread(
                store_batch_chunk, message.chunk)
        except Exception as exc:  # the poller reports it; the ledger keeps serving
            with contextlib.suppress(*_GONE):
                message.reply.send_nowait(exc)
            return
        for entry in stored.billed:
            self._count(entry)
        for outcome in stored.outcomes:
            self._release(line_key(outcome.request_id))
        with contextlib.suppress(*_GONE):
            message.reply.send_nowait(stored)

    def _count(self, entry: Settled) -> None:
        self._roll_day(entry.finished_at)
        self._release(entry.request_id)
        self._calls_today += 1
        if entry.flag == "unpriced" or entry.cost_picodollars is None:
            self._unpriced_today += 1
        cost = entry.cost_picodollars or 0
        saved = 0
        if entry.standard_cost_picodollars is not None:
            saved = max(0, entry.standard_cost_picodollars - cost)
            self._saved_today += saved
        self._measure(entry, cost, saved)
        caps = self._caps.scoped(entry.provider, entry.operation, entry.caller.uid, entry.session)
        for scope in self._scopes_of(entry):
            self._spent[scope] += cost
        for cap in caps:
            self._maybe_warn(cap)

    def _measure(self, entry: Settled, cost: int, saved: int) -> None:
        """The entry in ``llmspool.spend`` and ``llmspool.savings``."""
        if cost:
            self._spend.add(usd(cost), {
                "llmspool.provider": entry.provider, "gen_ai.response.model": entry.model,
                "llmspool.tier": entry.tier.value, "llmspool.operation": entry.operation or ""})
        if saved:
            self._savings.add(usd(saved), {
                "llmspool.provider": entry.provider,
                "llmspool.saving.source": entry.saving_source or "other"})

    def _scopes_of(self, entry: Settled) -> list[Scope]:
        scopes: list[Scope] = [
            ("day", ""),
            ("operation", entry.operation or ""),
            ("user", str(entry.caller.uid)),
            ("provider", entry.provider),
        ]
        if entry.session is not None:
            scopes.append(("session", entry.session))
        return scopes

    def _maybe_warn(self, cap: Cap) -> None:
        spent = self._spent[cap.scope]
        fraction = spent / cap.limit if cap.limit else 1.0
        if fraction < self._caps.config.warn_fraction or cap.scope in self._warned:
            return
        self._warned.add(cap.scope)
        warning = {
            "cap": cap.name, "scope": f"{cap.scope[0]}:{cap.scope[1]}",
            "limit_usd": usd(cap.limit), "spent_usd": usd(spent),
            "fraction": round(fraction, 4), "at": self._clock(),
        }
        self._warnings.append(warning)
        del self._warnings[:-50]
        log.warning("budget warning: %s is %.0f%% used ($%.6f of $%.6f)",
                    cap.name, fraction * 100, usd(spent), usd(cap.limit))
        with self._tracer.start_as_current_span("llmspool.budget.warning") as span:
            span.add_event("budget.warning", {k: v for k, v in warning.items()
                                              if isinstance(v, str | int | float)})

    def _roll_day(self, now: float) -> None:
        if self._day_start <= now < self._day_end:
            return  # the common case, without formatting a date per call
        day = ledger_sql.utc_day(now)
        self._day_start = now - now % 86400
        self._day_end = self._day_start + 86400
        if day == self._day:
            return
        self._day = day
        for scope in [s for s in self._spent if s[0] != "session"]:
            del self._spent[scope]
        self._warned = {s for s in self._warned if s[0] == "session"}
        self._saved_today = self._calls_today = self._unpriced_today = 0

    async def _reconcile(self) -> None:
        unknown, kept = await self._database.run_in_thread(ledger_sql.reconcile, self._clock())
        for entry in unknown:  # billed now, at their reservations
            self._measure(entry, entry.cost_picodollars or 0, 0)
        if unknown:
            log.warning(
                "%d calls were in flight when the daemon stopped without settling them; each "
                "is billed at its reservation as an unknown outcome ($%.6f in all; "
                "`llmspool costs` and status count them)", len(unknown),
                usd(sum(e.cost_picodollars or 0 for e in unknown)))
        for held in kept:
            self._hold(held.request_id, held.provider, held.operation, held.uid, held.session,
                       held.estimate_picodollars)

    async def _load_today(self) -> None:
        self._day = ledger_sql.utc_day(self._clock())
        totals = ledger_sql.spend_today_by_scope(self._database.connection, self._day)
        for (kind, key), (cost, standard, calls, unpriced) in totals.items():
            self._spent[(kind, key)] += cost
            if kind == "day":
                self._saved_today = max(0, standard - cost)
                self._calls_today, self._unpriced_today = calls, unpriced

    # --- queries ------------------------------------------------------------------------

    async def _answer(self, query: Query) -> None:
        await self._flush()  # what the asker was told is settled is in the store when it reads
        unknown_calls, unknown_cost = ledger_sql.unknown_outcomes_on(self._database.connection,
                                                                     self._day)
        answer: dict[str, Any] = {
            "day": self._day,
            "spend_today_usd": usd(self._spent[("day", "")]),
            "saved_today_usd": usd(self._saved_today),
            "calls_today": self._calls_today,
            "unpriced_calls_today": self._unpriced_today,
            "reserved_usd": usd(sum(e for e, _s in self._reservations.values())),
            "calls_reserved": len(self._reservations),
            "refused_by_budget": self._refused,
            "unknown_outcome_today": unknown_calls,
            "unknown_outcome_today_usd": usd(unknown_cost),
            "commits": self._commits,
            "budgets": self._budget_report(),
            "warnings": list(self._warnings),
        }
        if query.what == "entries":
            limit = int(query.params.get("limit", 100))
            entries = ledger_sql.recent_entries(
                self._database.connection, limit, everyone=query.params.get("everyone", True),
                uid=query.params.get("uid"))
            for entry in entries:
                cost = entry.pop("cost_picodollars")
                standard = entry.pop("standard_cost_picodollars")
                entry["cost_usd"] = None if cost is None else usd(cost)
                entry["standard_cost_usd"] = None if standard is None else usd(standard)
                entry["usage_estimated"] = bool(entry["usage_estimated"])
            answer["entries"] = entries
        with contextlib.suppress(*_GONE):
            query.reply.send_nowait(answer)  # an asker that gave up is not our problem

    def _budget_report(self) -> list[dict[str, Any]]:
        budgets = self._caps.config
        report = []
        for scope, value, name in (
            (("day", ""), budgets.daily_usd, "[budgets] daily_usd"),
            *((("operation", op), cap.daily_usd, f"[budgets.operations.{op}] daily_usd")
              for op, cap in budgets.operations.items()),
            *((("provider", p), cap.daily_usd, f"[budgets.providers.{p}] daily_usd")
              for p, cap in budgets.providers.items()),
        ):
            if value is None:
                continue
            limit = _picodollars(value)
            report.append({
                "cap": name, "limit_usd": value, "spent_usd": usd(self._spent[scope]),
                "reserved_usd": usd(self._reserved[scope]),
                "fraction": round(self._spent[scope] / limit, 4) if limit else None,
            })
        return report


def _cap_of(table: Any, key: Any, field_name: str) -> float | None:
    if key is None:
        return None
    cap = table.get(key)
    return None if cap is None else getattr(cap, field_name)


def _picodollars(usd_value: float) -> int:
    return round(usd_value * PICODOLLARS_PER_USD)


def _refused_line(line_id: int, job_id: str, custom_id: str, error: ApiError) -> JobResult:
    """A batch line a cap refused, as its failed result in the Batch output format."""
    line = orjson.dumps({
        "id": f"batch_req_{line_id}", "custom_id": custom_id, "response": None,
        "error": {"code": error.code, "message": error.message},
    })
    return JobResult(line_id, job_id, RequestState.FAILED, None, None, None, line, 0)
