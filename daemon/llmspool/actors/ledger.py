"""The cost ledger actor: the single writer of money.

It receives ``Settled`` messages, keeps today's totals in memory, and appends the entries to
the store in group commits: whatever arrived while the previous commit ran is written in the
next one, so a busy daemon commits often in few transactions and an idle one at once.
Queries are answered after everything that arrived before them is committed, so a client
that asks for its cost right after its answer sees it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import aiosqlite
import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from llmspool.messages import Query, Settled
from llmspool.pricing import usd
from llmspool.store import ledger as ledger_sql

MAX_GROUP = 512


class Ledger:
    def __init__(
        self,
        inbox: MemoryObjectReceiveStream[Settled | Query],
        database: aiosqlite.Connection,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inbox = inbox
        self._database = database
        self._clock = clock
        self._day = ""
        self._spent_today = 0
        self._saved_today = 0
        self._calls_today = 0
        self._unpriced_today = 0
        self._commits = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self._load_today()
        task_status.started()
        async with self._inbox:
            while True:
                try:
                    first = await self._inbox.receive()
                except anyio.EndOfStream:
                    return
                group = [first]
                while len(group) < MAX_GROUP:
                    try:
                        group.append(self._inbox.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await self._handle(group)

    async def _handle(self, group: list[Settled | Query]) -> None:
        entries = [m for m in group if isinstance(m, Settled)]
        if entries:
            for entry in entries:
                self._count(entry)
            # Shielded: a commit that has started finishes even while the daemon stops.
            with anyio.CancelScope(shield=True):
                await ledger_sql.append_entries(self._database, entries)
            self._commits += 1
        for message in group:
            if isinstance(message, Query):
                await self._answer(message)

    def _count(self, entry: Settled) -> None:
        day = ledger_sql.utc_day(entry.finished_at)
        if day != self._day:
            self._day, self._spent_today, self._saved_today = day, 0, 0
            self._calls_today = self._unpriced_today = 0
        self._calls_today += 1
        if entry.cost_picodollars is None:
            self._unpriced_today += 1
            return
        self._spent_today += entry.cost_picodollars
        if entry.standard_cost_picodollars is not None:
            self._saved_today += max(0, entry.standard_cost_picodollars - entry.cost_picodollars)

    async def _load_today(self) -> None:
        self._day = ledger_sql.utc_day(self._clock())
        self._spent_today, self._calls_today = await ledger_sql.spend_on_day(
            self._database, self._day
        )

    async def _answer(self, query: Query) -> None:
        answer: dict[str, Any] = {
            "day": self._day,
            "spend_today_usd": usd(self._spent_today),
            "saved_today_usd": usd(self._saved_today),
            "calls_today": self._calls_today,
            "unpriced_calls_today": self._unpriced_today,
            "commits": self._commits,
        }
        if query.what == "entries":
            limit = int(query.params.get("limit", 100))
            entries = await ledger_sql.recent_entries(self._database, limit)
            for entry in entries:
                cost = entry.pop("cost_picodollars")
                standard = entry.pop("standard_cost_picodollars")
                entry["cost_usd"] = None if cost is None else usd(cost)
                entry["standard_cost_usd"] = None if standard is None else usd(standard)
                entry["usage_estimated"] = bool(entry["usage_estimated"])
            answer["entries"] = entries
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError,
                                 anyio.WouldBlock):
            query.reply.send_nowait(answer)  # an asker that gave up is not our problem
