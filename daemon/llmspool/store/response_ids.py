"""Response ids to ledger entries, indexed after the group commits instead of in them.

``POST /v1/feedback`` names an answer by its response id (the ``id`` of the upstream's
answer), so the ledger must find the entry that carries one. OpenAI's ids are random: an index
on them puts each new entry on a random page of the index, and on SQLite that page was read and
written in the ledger's group commit, on the event loop. On a ledger of a million entries a
commit of 15 entries took 358 µs with that index and 183 µs without it, and wrote 181 KiB of
log instead of 40 (``tests/bench/bench_ledger_commit.py``); without the index a commit costs
about the same on a ledger of any size.

On SQLite the ids are kept in ``response_ids`` (migration 0015), filled by
``index_new_entries``: one statement a batch, which moves ``response_ids_indexed`` forward and
whose trigger inserts the ids it passes, sorted. The store's upkeep runs it after commits
(``store.wal_checkpoints``) from its own connection in a worker thread, where SQLite works
without holding the interpreter lock. ``response_ids_indexed`` is the last entry
covered; ``answers_with`` reads the entries past it directly, so an answer can be scored the
moment its entry is committed, before it is indexed. PostgreSQL keeps its index on
``ledger_entries (response_id)``: the server maintains it, off the daemon's event loop.

Off the loop is not free: keyed by the random id alone, each entry indexed dirtied a page of
its own once the index outgrew a batch, so the upkeep's writes grew with the ledger (5.3 KiB
of write-ahead log an entry on a ledger of a million). Since migration 0016 the key begins with
the entry's block (``entry_id >> 13``, 8,192 consecutive entries), so new ids land in the newest
block's few pages; a lookup seeks once a block, from the first to the last (``_BLOCKS``).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from llmspool.store.connections import Connection, is_sqlite

__all__ = ["BATCH", "answers_with", "index_all", "index_new_entries"]

BATCH = 500
"""The most entries one indexing statement covers, so that it holds SQLite's write lock
briefly (a ledger commit that finds it held waits in a worker thread, not on the event loop)."""

# The trigger (migrations 0015, 0016) indexes the entries the mark passes, in this one
# statement: the upkeep thread never takes the interpreter lock back while it holds the write
# lock.
# (Several statements, each needing the lock back, took 10 ms a batch under load: the event
# loop holds it for up to a switch interval, and the ledger's commits waited on the store.)
_ADVANCE = """
UPDATE response_ids_indexed
SET entry_id = MIN((SELECT COALESCE(MAX(id), 0) FROM ledger_entries), entry_id + ?)
WHERE entry_id < (SELECT COALESCE(MAX(id), 0) FROM ledger_entries)
"""

# Every block from the first indexed to the last, walked as a recursive CTE, since SQLite
# skips over the leading column of a key only with ANALYZE's statistics. A block with no ids
# (entries deleted) costs one seek that finds nothing.
_BLOCKS = """
WITH RECURSIVE blocks(n) AS (
    SELECT MIN(entry_block) FROM response_ids
    UNION ALL
    SELECT n + 1 FROM blocks WHERE n < (SELECT MAX(entry_block) FROM response_ids)
)"""

_ANSWERS_SQLITE = _BLOCKS + """
SELECT {columns} FROM ledger_entries
WHERE id IN (
    SELECT entry_id FROM blocks CROSS JOIN response_ids
    WHERE entry_block = n AND response_id = ?1
    UNION ALL
    SELECT id FROM ledger_entries
    WHERE id > (SELECT entry_id FROM response_ids_indexed) AND response_id = ?1
) AND {condition}
ORDER BY id
"""

_ANSWERS_POSTGRES = """
SELECT {columns} FROM ledger_entries WHERE response_id = ? AND {condition} ORDER BY id
"""


def index_new_entries(connection: sqlite3.Connection, most: int = BATCH) -> bool:
    """Index the response ids of up to ``most`` entries past the last one covered, in one
    statement (its own transaction); False when every entry was covered already."""
    return bool(connection.execute(_ADVANCE, (most,)).rowcount)


def index_all(connection: Connection) -> int:
    """Index every entry not yet covered, a batch a statement (between them the ledger may
    commit); returns how many batches it took. Nothing to do on PostgreSQL."""
    if not isinstance(connection, sqlite3.Connection):
        return 0
    passes = 0
    while index_new_entries(connection):
        passes += 1
    return passes


def answers_with(connection: Connection, response_id: str, columns: str,
                 condition: str = "1") -> list[tuple[Any, ...]]:
    """``columns`` of the ledger entries with ``response_id`` (and ``condition``), oldest
    first: on SQLite from ``response_ids`` and the entries not yet indexed, in one statement,
    so both are read from the same snapshot."""
    sql = _ANSWERS_SQLITE if is_sqlite(connection) else _ANSWERS_POSTGRES
    return list(connection.execute(
        sql.format(columns=columns, condition=condition), (response_id,)).fetchall())
