"""The response cache's file: ``cache.sqlite3`` in the state directory, apart from the ledger.

A file of its own because the cache is written at the rate of interactive answers and may be
thrown away at any time: its writes never wait for the ledger's or the job keeper's write lock
(SQLite has one per file), and deleting the file loses no money and no job.

Reads are synchronous, on the event loop: an indexed lookup in a memory-mapped WAL database
costs a few microseconds (``tests/bench/bench_cache.py`` measures it with 1,000,000 entries),
less than the hop to a worker thread would. Writes happen in a worker thread, in group commits,
through a second connection: in WAL mode the reader never waits for them.

Each entry carries a CRC-32 of its body; one that does not match (or does not parse) is
treated as absent and dropped, and the request is served upstream.
"""

from __future__ import annotations

import sqlite3
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmspool.cache.presence import KeyPresence
from llmspool.cache.unwritten import UnwrittenKeys
from llmspool.core.calls import Tier, Usage
from llmspool.store.records import NewEntry

CACHE_DATABASE = "cache.sqlite3"
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id                  INTEGER PRIMARY KEY,
    key                 BLOB    NOT NULL UNIQUE,    -- policy/cache_keys.py: scope and request
    stream              INTEGER NOT NULL,           -- 1: server-sent events, 0: one JSON body
    body                BLOB    NOT NULL,
    checksum            INTEGER NOT NULL,           -- CRC-32 of body
    provider            TEXT    NOT NULL,
    model               TEXT    NOT NULL,
    endpoint            TEXT    NOT NULL,
    tier                TEXT    NOT NULL,           -- the tier that served the original
    input_tokens        INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens       INTEGER NOT NULL,
    reasoning_tokens    INTEGER NOT NULL,
    created_at          REAL    NOT NULL,
    expires_at          REAL    NOT NULL,
    used_at             REAL    NOT NULL,           -- last written or served: eviction order
    hits                INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_used ON entries (used_at);
CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at);
-- Near-duplicate matching: the embedding of an entry's request text, in the group of requests
-- that differ only in wording (cache/similar.py).
CREATE TABLE IF NOT EXISTS vectors (
    entry_id            INTEGER PRIMARY KEY REFERENCES entries (id) ON DELETE CASCADE,
    grp                 BLOB    NOT NULL,
    vector              BLOB    NOT NULL            -- little-endian float32
);
"""
_LOOKUP = (
    "SELECT id, stream, body, checksum, tier, input_tokens, cached_input_tokens, "
    "output_tokens, reasoning_tokens, created_at, expires_at FROM entries WHERE {where}"
)


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One stored answer, as read back."""

    entry_id: int
    stream: bool
    body: bytes
    tier: Tier
    usage: Usage
    created_at: float


class Corrupt(Exception):
    """A stored entry failed its checksum or could not be read; ``entry_id`` names it."""

    def __init__(self, entry_id: int) -> None:
        super().__init__(f"cache entry {entry_id} is corrupt")
        self.entry_id = entry_id


def connect(state_dir: Path, *, writer: bool) -> sqlite3.Connection:
    """A connection to the cache file, created with its schema if needed."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    connection = sqlite3.connect(state_dir / CACHE_DATABASE, isolation_level=None,
                                 check_same_thread=False, timeout=30.0)
    connection.execute("PRAGMA journal_mode=WAL")
    # A lost last commit after a power cut costs a few cache misses, nothing more.
    connection.execute("PRAGMA synchronous=OFF" if writer else "PRAGMA query_only=ON")
    connection.execute("PRAGMA mmap_size=1073741824")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA busy_timeout=30000")
    if writer:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"{state_dir / CACHE_DATABASE} is from a newer llmspool (schema {version}); "
                "delete it (it only holds cached answers)")
        connection.executescript(f"BEGIN;{_SCHEMA}PRAGMA user_version={_SCHEMA_VERSION};COMMIT;")
    return connection


class CacheReader:
    """Lookups, on the caller's thread."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self._by_key = _LOOKUP.format(where="key = ?")
        self._by_id = _LOOKUP.format(where="id = ?")

    def get(self, key: bytes, now: float) -> CachedAnswer | None:
        """The live answer stored under ``key``; raises ``Corrupt`` for a damaged one."""
        return self._read(self._by_key, key, now)

    def has(self, key: bytes, now: float) -> bool:
        """Whether a live answer is stored under ``key`` (its body is checked when it is read)."""
        row = self._connection.execute(
            "SELECT 1 FROM entries WHERE key = ? AND expires_at > ?", (key, now)).fetchone()
        return row is not None

    def get_by_id(self, entry_id: int, now: float) -> CachedAnswer | None:
        return self._read(self._by_id, entry_id, now)

    def _read(self, sql: str, value: bytes | int, now: float) -> CachedAnswer | None:
        row = self._connection.execute(sql, (value,)).fetchone()
        if row is None:
            return None
        (entry_id, stream, body, checksum, tier, input_tokens, cached, output, reasoning,
         created_at, expires_at) = row
        if expires_at <= now:
            return None
        if not isinstance(body, bytes) or zlib.crc32(body) != checksum:
            raise Corrupt(entry_id)
        try:
            served = Tier(tier)
        except ValueError:
            raise Corrupt(entry_id) from None
        return CachedAnswer(entry_id, bool(stream), body, served,
                            Usage(input_tokens, cached, output, reasoning), created_at)

    def vectors(self) -> list[tuple[int, bytes, bytes]]:
        """Every stored (entry id, group, vector), oldest first, for the similarity index."""
        return self._connection.execute(
            "SELECT entry_id, grp, vector FROM vectors ORDER BY entry_id").fetchall()

    def close(self) -> None:
        self._connection.close()


# Writing entries: one statement for up to _ROWS_PER_STATEMENT of them (15 parameters each,
# well under SQLite's 32,766). A later row with the same key overwrites an earlier one.
_ROWS_PER_STATEMENT = 500
_UPSERT_ROW = "(" + ", ".join("?" * 15) + ")"
_UPSERT = (
    "INSERT INTO entries (key, stream, body, checksum, provider, model, endpoint, tier, "
    "input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, created_at, "
    "expires_at, used_at) VALUES {rows} ON CONFLICT (key) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in (
        "stream", "body", "checksum", "provider", "model", "endpoint", "tier", "input_tokens",
        "cached_input_tokens", "output_tokens", "reasoning_tokens", "created_at", "expires_at",
        "used_at"))
    + " RETURNING key, id"
)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one group commit did: the ids of the entries written (in order) and how many
    were evicted, expired or dropped; and the keys it put in the file and took out of it
    (for ``presence.KeyPresence``: a key overwritten in place is in neither)."""

    written: list[int]
    evicted: int
    expired: int
    dropped: int
    inserted: list[bytes]
    deleted: list[bytes]


class CacheWriter:
    """Group commits of new entries, hits and drops, with eviction to ``max_entries``.

    Meant to run in a worker thread (one call at a time); it keeps an exact count of the
    entries so that eviction costs no full count.
    """

    def __init__(self, connection: sqlite3.Connection, max_entries: int) -> None:
        self._connection = connection
        self._max_entries = max_entries
        self.count = connection.execute("SELECT count(*) FROM entries").fetchone()[0]

    def commit(
        self,
        entries: Sequence[NewEntry],
        hits: Iterable[tuple[int, float]],
        drops: Iterable[int],
        now: float | None = None,
    ) -> WriteResult:
        now = time.time() if now is None else now
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        deleted: list[bytes] = []
        try:
            dropped = 0
            for entry_id in drops:
                gone = connection.execute("DELETE FROM entries WHERE id = ? RETURNING key",
                                          (entry_id,)).fetchall()
                deleted += (key for (key,) in gone)
                dropped += len(gone)
            self.count -= dropped
            connection.executemany("UPDATE entries SET used_at = ?, hits = hits + 1 "
                                   "WHERE id = ?", [(at, entry_id) for entry_id, at in hits])
            written, inserted = self._upsert(entries, now)
            expired = self._delete("expires_at <= ?", (now,), 10_000, deleted)
            evicted = 0
            if self.count > self._max_entries:
                # The least recently used go first.
                evicted = self._delete("1 ORDER BY used_at", (), self.count - self._max_entries,
                                       deleted)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return WriteResult(written, evicted, expired, dropped, inserted, deleted)

    def _upsert(self, entries: Sequence[NewEntry], now: float) -> tuple[list[int], list[bytes]]:
        """Write ``entries`` (a key already stored is overwritten): their ids in order, and
        the keys that were not stored before.

        Two statements for up to ``_ROWS_PER_STATEMENT`` entries, not two per entry: the
        commit runs in a worker thread, and each statement hands the interpreter lock back and
        forth with the event loop. With every call a miss at concurrency 1, that took the
        daemon's CPU from about 850 to 800 µs a call."""
        ids: dict[bytes, int] = {}
        inserted: list[bytes] = []
        for start in range(0, len(entries), _ROWS_PER_STATEMENT):
            chunk = entries[start:start + _ROWS_PER_STATEMENT]
            keys = list({entry.key: None for entry in chunk})
            stored = {key for (key,) in self._connection.execute(
                f"SELECT key FROM entries WHERE key IN ({', '.join('?' * len(keys))})",
                keys)}
            values: list[object] = []
            for entry in chunk:
                usage = entry.usage
                values += (entry.key, entry.stream, entry.body, zlib.crc32(entry.body),
                           entry.provider, entry.model, entry.endpoint, entry.tier.value,
                           usage.input_tokens, usage.cached_input_tokens, usage.output_tokens,
                           usage.reasoning_tokens, now, now + entry.ttl, now)
            rows = ", ".join([_UPSERT_ROW] * len(chunk))
            ids.update(self._connection.execute(_UPSERT.format(rows=rows), values).fetchall())
            inserted += (key for key in keys if key not in stored)
            self.count += len(keys) - len(stored)
        vectors = [(ids[entry.key], entry.group, entry.vector) for entry in entries
                   if entry.vector is not None and entry.group is not None]
        if vectors:
            self._connection.executemany(
                "INSERT OR REPLACE INTO vectors (entry_id, grp, vector) VALUES (?, ?, ?)",
                vectors)
        return [ids[entry.key] for entry in entries], inserted

    def _delete(self, where: str, args: tuple[float, ...], limit: int,
                deleted: list[bytes]) -> int:
        """Delete up to ``limit`` entries ``where`` says, their keys added to ``deleted``;
        returns how many."""
        gone = self._connection.execute(
            f"DELETE FROM entries WHERE id IN (SELECT id FROM entries WHERE {where} LIMIT ?) "
            "RETURNING key", (*args, limit)).fetchall()
        deleted += (key for (key,) in gone)
        self.count -= len(gone)
        return len(gone)

    def keys(self) -> Iterator[bytes]:
        """Every key in the file, read as they are iterated (to build
        ``presence.KeyPresence``)."""
        return (key for (key,) in self._connection.execute("SELECT key FROM entries"))

    def clear(self) -> int:
        """Delete every entry; returns how many there were."""
        deleted = self._connection.execute("DELETE FROM entries").rowcount
        self.count = 0
        return deleted

    def close(self) -> None:
        self._connection.close()


class CachedKeys:
    """Whether the cache holds a live answer under a key: the job keeper asks before it puts a
    line in a batch (a cached line is answered for nothing instead). An answer the cache actor
    is about to write (``unwritten``) counts: until the write lands, the actor answers from it
    in memory (``WriteBehind.recent``), or a fleet's from the shared store. Read-only, opened
    on first use (the cache actor creates the file); a file it cannot read answers no. A key
    that ``presence`` knows is not in the file is not looked up."""

    def __init__(self, state_dir: Path, presence: KeyPresence,
                 unwritten: UnwrittenKeys) -> None:
        self._state_dir = state_dir
        self._presence = presence
        self._unwritten = unwritten
        self._reader: CacheReader | None = None

    def has(self, key: bytes, now: float) -> bool:
        if key in self._unwritten:
            return True
        if not self._presence.might_hold(key):
            return False
        try:
            if self._reader is None:
                self._reader = CacheReader(connect(self._state_dir, writer=False))
            return self._reader.has(key, now)
        except sqlite3.Error:
            return False  # the line is batched; the batch's answer fills the cache

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
