"""The money the ledger counts in memory, and the admission decisions made against it.

``Budgets`` keeps, for every scope a cap can have, what was spent (today, or in a session)
and what is reserved by calls and batch lines in flight; it refuses what would break a cap
(naming it), holds and releases reservations, counts each entry (and measures it in the
OpenTelemetry counters ``llmspool.spend`` and ``llmspool.savings``), warns once per crossing
of ``[budgets] warn_fraction`` of a cap, and starts a new UTC day. The ledger makes it once
and is the only one to call it, one message at a time.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from opentelemetry import metrics, trace

from llmspool.actors.accounting.caps import Cap, Caps, Scope
from llmspool.core.errors import BudgetExceeded
from llmspool.core.pricing import usd
from llmspool.core.tracing import Tally
from llmspool.store import ledger as ledger_sql
from llmspool.store.ledger import CapCheck, LedgerConnection, UsageKey
from llmspool.store.records import Settled

log = logging.getLogger("llmspool.actors.ledger")  # the ledger's, as before the split


def exceeded(name: str, limit: int, kind: str, spent: int, reserved: int,
             estimate: int) -> BudgetExceeded:
    """The refusal of a call whose ``estimate`` would take the cap ``name`` past ``limit``."""
    return BudgetExceeded(
        f"{name} = ${usd(limit):.6f} would be exceeded: ${usd(spent):.6f} "
        f"spent and ${usd(reserved):.6f} reserved by calls in flight "
        f"{'in this session' if kind == 'session' else 'today (UTC)'}, and "
        f"this request may cost up to ${usd(estimate):.6f}",
        code=f"budget_{kind}",
    )


class Budgets:
    """Spent and reserved by scope, the reservations held, today's counts and warnings."""

    def __init__(self, caps: Caps, database: LedgerConnection, tracer: trace.Tracer,
                 meter: metrics.Meter, clock: Callable[[], float]) -> None:
        self.caps = caps
        self._database = database
        self._tracer = tracer
        self._spend = Tally(meter, "llmspool.spend", "USD",
                            "billed, at the tier that served (every path)")
        self._savings = Tally(meter, "llmspool.savings", "USD",
                              "saved against standard prices, by what saved it")
        self._clock = clock
        self.day = ""
        self.spent: defaultdict[Scope, int] = defaultdict(int)
        self.reserved: defaultdict[Scope, int] = defaultdict(int)
        self.reservations: dict[str, tuple[int, list[Scope]]] = {}
        self._known_sessions: set[str] = set()
        self._warned: set[Scope] = set()
        self.warnings: list[dict[str, Any]] = []
        self.saved_today = 0
        self.calls_today = 0
        self.unpriced_today = 0
        self.refused = 0
        self._day_start = self._day_end = 0.0

    def knows_session(self, session: str | None) -> bool:
        """Whether ``know_session`` has nothing to read for ``session``."""
        return session is None or session in self._known_sessions

    async def know_session(self, session: str | None) -> None:
        if session is not None and session not in self._known_sessions:
            self.spent[("session", session)] += await self._database.run(
                ledger_sql.spend_of_session, session)
            self._known_sessions.add(session)

    def hold(self, key: str, provider: str, operation: str | None, uid: int | None,
             session: str | None, estimate: int) -> None:
        scopes = [cap.scope for cap in self.caps.scoped(provider, operation, uid, session)]
        for scope in scopes:
            self.reserved[scope] += estimate
        self.reservations[key] = (estimate, scopes)

    def refusal(self, provider: str, operation: str | None, uid: int | None,
                session: str | None, estimate: int) -> BudgetExceeded | None:
        """Why a call of ``estimate`` must be refused, counting what this daemon knows."""
        error = self.per_request_refusal(provider, operation, uid, estimate)
        if error is not None:
            return error
        for cap in self.caps.scoped(provider, operation, uid, session):
            spent, reserved = self.spent[cap.scope], self.reserved[cap.scope]
            if spent + reserved + estimate > cap.limit:
                return exceeded(cap.name, cap.limit, cap.scope[0], spent, reserved, estimate)
        return None

    def per_request_refusal(self, provider: str, operation: str | None, uid: int | None,
                            estimate: int) -> BudgetExceeded | None:
        """Why one call of ``estimate`` is too dear whatever was spent (a per-request cap)."""
        for limit, name in self.caps.per_request(provider, operation, uid):
            if estimate > limit:
                return BudgetExceeded(
                    f"this request may cost up to ${usd(estimate):.6f}, more than {name} = "
                    f"${usd(limit):.6f}; lower max_tokens or raise the cap",
                    code="budget_per_request",
                )
        return None

    def cap_checks(self, provider: str, operation: str | None, uid: int | None,
                   session: str | None) -> tuple[CapCheck, ...]:
        """The scoped caps of a call, as a shared store checks them (today's, or the
        session's), for ``store.ledger.admit_shared``."""
        return tuple(
            CapCheck("" if cap.scope[0] == "session" else self.day, cap.scope[0], cap.scope[1],
                     cap.limit, cap.name)
            for cap in self.caps.scoped(provider, operation, uid, session))

    def observe_usage(self, usage: dict[UsageKey, tuple[int, int]]) -> None:
        """Take the fleet's spend from a shared store's usage, as read at an admission."""
        for (period, kind, key), (spent, _reserved) in usage.items():
            if period == ("" if kind == "session" else self.day):
                self.spent[(kind, key)] = spent

    def release(self, request_id: str) -> bool:
        """End a reservation in memory; False if there was none (settled, or never made)."""
        held = self.reservations.pop(request_id, None)
        if held is None:
            return False
        estimate, scopes = held
        for scope in scopes:
            self.reserved[scope] -= estimate
        return True

    def count(self, entry: Settled) -> None:
        self.roll_day(entry.finished_at)
        self.release(entry.request_id)
        self.calls_today += 1
        if entry.flag == "unpriced" or entry.cost_picodollars is None:
            self.unpriced_today += 1
        cost = entry.cost_picodollars or 0
        saved = 0
        if entry.standard_cost_picodollars is not None:
            saved = max(0, entry.standard_cost_picodollars - cost)
            self.saved_today += saved
        self.measure(entry, cost, saved)
        caps = self.caps.scoped(entry.provider, entry.operation, entry.caller.uid, entry.session)
        for scope in self._scopes_of(entry):
            self.spent[scope] += cost
        for cap in caps:
            self._maybe_warn(cap)

    def measure(self, entry: Settled, cost: int, saved: int) -> None:
        """The entry in ``llmspool.spend`` and ``llmspool.savings``."""
        if cost:
            self._spend.add(usd(cost), (
                ("llmspool.provider", entry.provider), ("gen_ai.response.model", entry.model),
                ("llmspool.tier", entry.tier.value),
                ("llmspool.operation", entry.operation or "")))
        if saved:
            self._savings.add(usd(saved), (
                ("llmspool.provider", entry.provider),
                ("llmspool.saving.source", entry.saving_source or "other")))

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
        spent = self.spent[cap.scope]
        fraction = spent / cap.limit if cap.limit else 1.0
        if fraction < self.caps.config.warn_fraction or cap.scope in self._warned:
            return
        self._warned.add(cap.scope)
        warning = {
            "cap": cap.name, "scope": f"{cap.scope[0]}:{cap.scope[1]}",
            "limit_usd": usd(cap.limit), "spent_usd": usd(spent),
            "fraction": round(fraction, 4), "at": self._clock(),
        }
        self.warnings.append(warning)
        del self.warnings[:-50]
        log.warning("budget warning: %s is %.0f%% used ($%.6f of $%.6f)",
                    cap.name, fraction * 100, usd(spent), usd(cap.limit))
        with self._tracer.start_as_current_span("llmspool.budget.warning") as span:
            span.add_event("budget.warning", {k: v for k, v in warning.items()
                                              if isinstance(v, str | int | float)})

    def roll_day(self, now: float) -> None:
        if self._day_start <= now < self._day_end:
            return  # the common case, without formatting a date per call
        day = ledger_sql.utc_day(now)
        self._day_start = now - now % 86400
        self._day_end = self._day_start + 86400
        if day == self.day:
            return
        self.day = day
        for scope in [s for s in self.spent if s[0] != "session"]:
            del self.spent[scope]
        self._warned = {s for s in self._warned if s[0] == "session"}
        self.saved_today = self.calls_today = self.unpriced_today = 0

    async def load_today(self) -> None:
        self.day = ledger_sql.utc_day(self._clock())
        totals = await self._database.run(ledger_sql.spend_today_by_scope, self.day)
        for (kind, key), (cost, standard, calls, unpriced) in totals.items():
            self.spent[(kind, key)] += cost
            if kind == "day":
                self.saved_today = max(0, standard - cost)
                self.calls_today, self.unpriced_today = calls, unpriced
