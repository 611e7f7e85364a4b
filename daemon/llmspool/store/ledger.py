"""SQL of the cost ledger's table; the ledger actor is its only writer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import aiosqlite

from llmspool.calls import Tier
from llmspool.messages import Settled

_TIERS = {tier.value for tier in Tier}

_INSERT = """
INSERT OR IGNORE INTO ledger_entries (
    request_id, day, started_at, finished_at, provider, model, endpoint, tier, operation, uid,
    status, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, usage_estimated,
    cost_picodollars, standard_cost_picodollars
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def utc_day(unix_seconds: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(unix_seconds))


def _row(entry: Settled) -> tuple[Any, ...]:
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
    )


async def append_entries(connection: aiosqlite.Connection, entries: Sequence[Settled]) -> None:
    """Append ``entries`` in one transaction (a group commit). A repeated request id is ignored."""
    # IMMEDIATE: take the write lock first. A deferred transaction that reads (the unique
    # index) before it writes fails at once with "database is locked" if another connection
    # committed in between; an immediate one just waits its turn.
    await connection.execute("BEGIN IMMEDIATE")
    try:
        await connection.executemany(_INSERT, [_row(e) for e in entries])
    except BaseException:
        await connection.execute("ROLLBACK")
        raise
    await connection.execute("COMMIT")


async def spend_on_day(connection: aiosqlite.Connection, day: str) -> tuple[int, int]:
    """(picodollars spent, calls) on the UTC ``day``."""
    rows = list(
        await connection.execute_fetchall(
            "SELECT COALESCE(SUM(cost_picodollars), 0), COUNT(*) FROM ledger_entries "
            "WHERE day = ?",
            (day,),
        )
    )
    return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)


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
