"""Big SQLite ledgers made in seconds, for tests and benches of how the store ages.

A ledger's first entry is written by the real ledger SQL (``store.ledger.write_group``); the
rest are copies of it made in one statement, each with a request id and a random response id
of its own (OpenAI's ids are random, which is what makes an index on them costly).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import anyio
from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.store.backend import Backend, StoreLocation
from llmspool.store.connect import connect
from llmspool.store.ledger import write_group
from llmspool.store.records import Caller, Settled
from llmspool.store.response_ids import index_all
from llmspool.store.schema import migrate_store

__all__ = ["add_entries_like_the_first", "seed_sqlite_store"]


def add_entries_like_the_first(connection: sqlite3.Connection, count: int) -> None:
    """``count`` more entries like the ledger's first, in one statement (not indexed yet)."""
    names = [row[1] for row in connection.execute("PRAGMA table_info(ledger_entries)")
             if row[1] not in ("id", "request_id", "response_id")]
    columns = ", ".join(names)
    connection.execute(
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        f"INSERT INTO ledger_entries (request_id, response_id, {columns}) "
        f"SELECT 'copy-' || hex(randomblob(12)), 'chatcmpl-' || hex(randomblob(16)), {columns} "
        f"FROM n, (SELECT * FROM ledger_entries ORDER BY id LIMIT 1)", (count,))


def seed_sqlite_store(path: Path, entries: int) -> None:
    """A migrated SQLite store at ``path`` whose ledger holds ``entries`` entries, their
    response ids indexed and the write-ahead log checkpointed, as a daemon leaves it."""
    location = StoreLocation(Backend.SQLITE, str(path))
    anyio.run(migrate_store, location)
    connection = connect(location)
    assert isinstance(connection, sqlite3.Connection)
    try:
        now = time.time()
        write_group(connection, [], [Settled(
            request_id="llmspool-seed-0", provider="openai", model="gpt-4o-mini",
            endpoint=Endpoint.CHAT, tier=Tier.STANDARD, usage=Usage(120, 0, 40),
            cost_picodollars=42_000_000, standard_cost_picodollars=42_000_000,
            caller=Caller(uid=1000), operation=None, status=200, started_at=now,
            finished_at=now, response_id="chatcmpl-seed-0")], [])
        if entries > 1:
            add_entries_like_the_first(connection, entries - 1)
        index_all(connection)
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
