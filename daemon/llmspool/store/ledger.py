"""SQL of the cost ledger's table; the ledger actor is its only writer."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

import aiosqlite

from llmspool.calls import Tier
from llmspool.messages import Settled

_TIERS = {tier.value for tier in Tier}

INSERT_ENTRY = """
INSERT OR IGNORE INTO ledger_entries (
    request_id, day, started_at, finished_at, provider, model, endpoint, tier, operation, uid,
    status, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, usage_estimated,
    cost_picodollars, standard_cost_picodollars, session, flag, saving_source
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def utc_day(unix_seconds: float) -> str:
    return _day_text(int(unix_seconds // 86400))


@functools.lru_cache(maxsize=8)
def _day_text(day_number: int) -> str:
    """Formatting a date costs ~1 µs; a batch of 50,000 entries shares one or two days."""
    return time.strftime("%Y-%m-%d", time.gmtime(day_number * 86400))


def entry_row(entry: Settled) -> tuple[Any, ...]:
    usage = entry.usage
    return (
        entry.request_id,
        utc_day(entry.finished_at),
        entry.started_at,
        entry.finished_at,
        entry.provider,
        entry.model,
        entry.endpoint.value,
        entry.tier.value,
        entry.operation,
        entry.caller.uid,
        entry.status,
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
        int(usage.estimated),
        entry.cost_picodollars,
        entry.standard_cost_picodollars,
        entry.session,
        entry.flag,
        entry.saving_source,
    )


async def append_entries(connection: aiosqlite.Connection, entries: Sequence[Settled]) -> None:
    """Append ``entries`` in one transaction (a group commit). A repeated request id is ignored."""
    # IMMEDIATE: take the write lock first. A deferred transaction that reads (the unique
    # index) before it writes fails at once with "database is locked" if another connection
    # committed in between; an immediate one just waits its turn.
    await connection.execute("BEGIN IMMEDIATE")
    try:
        await connection.executemany(INSERT_ENTRY, [entry_row(e) for e in entries])
    except BaseException:
        await connection.execute("ROLLBACK")
        raise
    await connection.execute("COMMIT")


async def spend_today_by_scope(
    connection: aiosqlite.Connection, day: str
) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """(cost, standard cost, calls, unpriced calls) on ``day`` in total and per operation,
    calling user and provider, as the ledger's budgets key them; read from the rollup."""
    rows = await connection.execute_fetchall(
        "SELECT operation, uid, provider, SUM(cost_picodollars), "
        "SUM(standard_cost_picodollars), SUM(calls), SUM(unpriced_calls) "
        "FROM ledger_rollup WHERE day = ? GROUP BY operation, uid, provider",
        (day,),
    )
    totals: dict[tuple[str, str], list[int]] = {}
    for operation, uid, provider, cost, standard, calls, unpriced in rows:
        user = "None" if uid == -1 else str(uid)
        for scope in (("day", ""), ("operation", operation), ("user", user),
                      ("provider", provider)):
            sums = totals.setdefault(scope, [0, 0, 0, 0])
            for index, value in enumerate((cost, standard, calls, unpriced)):
                sums[index] += int(value)
    return {scope: (s[0], s[1], s[2], s[3]) for scope, s in totals.items()}


async def spend_of_session(connection: aiosqlite.Connection, session: str) -> int:
    """Picodollars spent so far in the client-chosen ``session``."""
    rows = list(await connection.execute_fetchall(
        "SELECT COALESCE(SUM(cost_picodollars), 0) FROM ledger_entries WHERE session = ?",
        (session,),
    ))
    return int(rows[0][0]) if rows else 0


async def recent_latencies(
    connection: aiosqlite.Connection, limit: int = 20_000
) -> list[tuple[tuple[str, str, Tier], float]]:
    """((provider, model, tier), seconds) of recent successful calls, oldest first: the
    planner's memory across restarts."""
    rows = await connection.execute_fetchall(
        "SELECT provider, model, tier, finished_at - started_at FROM ("
        "SELECT id, provider, model, tier, started_at, finished_at FROM ledger_entries "
        "WHERE status = 200 ORDER BY id DESC LIMIT ?) ORDER BY id",
        (limit,),
    )
    return [((p, m, Tier(t)), float(s)) for p, m, t, s in rows if t in _TIERS]


async def recent_entries(connection: aiosqlite.Connection, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` entries, newest first, as JSON-ready dicts."""
    connection.row_factory = aiosqlite.Row
    try:
        rows = await connection.execute_fetchall(
            "SELECT * FROM ledger_entries ORDER BY id DESC LIMIT ?", (limit,)
        )
    finally:
        connection.row_factory = None
    return [dict(row) for row in rows]
