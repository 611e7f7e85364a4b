"""SQL of the response cache the daemons of a shared store share (PostgreSQL only; the tables
are made by ``store/migrations/postgresql/0004_fleet_cache.sql``).

- ``cache_entries``: every answer a daemon of the fleet cached, under its cache key, until it
  expires; each daemon still keeps its own cache file, which answers first.
- ``cache_flights``: the daemon calling upstream for a key, so that the others with the same
  call wait for its answer instead of paying for it again. A flight ends when its daemon
  publishes the answer (in the same transaction) or gives up; a dead daemon's end when it is
  taken over, a stopped one's when it leaves (``store.ledger.take_over``, ``store.fleet.leave``);
  any ends by itself at ``until``.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmspool.cache.store import CachedAnswer
from llmspool.core.calls import Tier, Usage
from llmspool.store.connections import AsyncConnection
from llmspool.store.records import NewEntry

_UPSERT_ENTRY = (
    "INSERT INTO cache_entries (key, stream, body, provider, model, endpoint, tier, "
    "input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, created_at, "
    "expires_at, daemon) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET stream = excluded.stream, body = excluded.body, "
    "provider = excluded.provider, model = excluded.model, endpoint = excluded.endpoint, "
    "tier = excluded.tier, input_tokens = excluded.input_tokens, "
    "cached_input_tokens = excluded.cached_input_tokens, "
    "output_tokens = excluded.output_tokens, reasoning_tokens = excluded.reasoning_tokens, "
    "created_at = excluded.created_at, expires_at = excluded.expires_at, "
    "daemon = excluded.daemon"
)


async def find(connection: AsyncConnection, key: bytes, now: float) -> CachedAnswer | None:
    """The fleet's live answer under ``key``."""
    rows = list(await connection.execute_fetchall(
        "SELECT stream, body, tier, input_tokens, cached_input_tokens, output_tokens, "
        "reasoning_tokens, created_at FROM cache_entries WHERE key = ? AND expires_at > ?",
        (key, now)))
    if not rows:
        return None
    stream, body, tier, input_tokens, cached, output, reasoning, created_at = rows[0]
    try:
        served = Tier(tier)
    except ValueError:
        return None  # written by a newer llmspool: not one this daemon can serve
    return CachedAnswer(0, bool(stream), bytes(body), served,
                        Usage(int(input_tokens), int(cached), int(output), int(reasoning)),
                        float(created_at))


async def start_flight(connection: AsyncConnection, key: bytes, daemon: str, now: float,
                       until: float) -> bool:
    """Whether ``daemon`` now leads the fleet's flight for ``key`` (none was under way, or
    the one under way had run out); False: another daemon's is under way."""
    rows = await connection.execute_fetchall(
        "INSERT INTO cache_flights (key, daemon, started_at, until) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET daemon = excluded.daemon, "
        "started_at = excluded.started_at, until = excluded.until "
        "WHERE cache_flights.until < excluded.started_at "
        "OR cache_flights.daemon = excluded.daemon RETURNING daemon",
        (key, daemon, now, until))
    return bool(rows)


async def land(connection: AsyncConnection, key: bytes, daemon: str,
               entry: NewEntry | None, now: float) -> None:
    """``daemon``'s flight for ``key`` ends, publishing its answer ``entry`` (None: nothing
    the others can use) in the same statement: a daemon that waited finds one or the other.
    (One statement, not a transaction: the connection is shared by the cache's flights, whose
    statements would otherwise run inside it.)"""
    if entry is None:
        await connection.execute("DELETE FROM cache_flights WHERE key = ? AND daemon = ?",
                                 (key, daemon))
        return
    await connection.execute(
        "WITH ended AS (DELETE FROM cache_flights WHERE key = ? AND daemon = ?) "
        + _UPSERT_ENTRY, (key, daemon, *_entry_row(entry, daemon, now)))


async def publish(connection: AsyncConnection, entries: Sequence[NewEntry], daemon: str,
                  now: float) -> None:
    """Answers cached without a flight of this daemon's (a batch's), for the fleet."""
    await connection.executemany(_UPSERT_ENTRY, [_entry_row(e, daemon, now) for e in entries])


async def sweep(connection: AsyncConnection, now: float) -> int:
    """Deletes expired answers and flights run out; how many answers."""
    cursor = await connection.execute("DELETE FROM cache_entries WHERE expires_at <= ?", (now,))
    await connection.execute("DELETE FROM cache_flights WHERE until < ?", (now,))
    return int(cursor.rowcount)


def _entry_row(entry: NewEntry, daemon: str, now: float) -> tuple[object, ...]:
    usage = entry.usage
    return (entry.key, int(entry.stream), entry.body, entry.provider, entry.model,
            entry.endpoint, entry.tier.value, usage.input_tokens, usage.cached_input_tokens,
            usage.output_tokens, usage.reasoning_tokens, now, now + entry.ttl, daemon)
