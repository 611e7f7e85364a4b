"""Opening connections to the store, whichever the backend (``StoreLocation``).

``connect`` gives a synchronous connection (for transactions run in a worker thread, or, for
SQLite, right on the event loop when short); ``connect_async`` an asynchronous one, and
``connected_async`` the same as a block that closes it even when cancelled. They do not
migrate: the daemon (``store.schema.migrate_store``) and ``llmspool store migrate`` do, once.

SQLite connections get the settings every part of the daemon relies on: WAL (readers never
block the writer), ``synchronous=NORMAL`` (a commit survives a crash of the daemon; only a
power loss can take the last ones, those since the last checkpoint: up to a second's, as
``store.wal_checkpoints`` makes them), foreign keys, and a busy timeout: two writers take turns
on SQLite's write lock, a turn is one short transaction, so 30 s of waiting means something is
truly stuck. ``read_only`` opens SQLite's file read-only, and a PostgreSQL session whose
transactions cannot write.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

import aiosqlite
import psycopg

from llmspool.core.errors import StartupError
from llmspool.store.backend import Backend, StoreLocation
from llmspool.store.connections import (
    AsyncConnection,
    Connection,
    PgAsyncConnection,
    PgConnection,
)
from llmspool.store.database import close_shielded
from llmspool.store.postgres import connect as connect_postgres
from llmspool.store.postgres import unreachable

__all__ = ["LOCK_WAIT_MS", "connect", "connect_async", "connected_async"]

LOCK_WAIT_MS = 30_000


def connect(location: StoreLocation, *, lock_wait_ms: int = LOCK_WAIT_MS,
            read_only: bool = False) -> Connection:
    """A synchronous connection, usable from any one thread at a time."""
    if location.backend is Backend.POSTGRESQL:
        connection = PgConnection(connect_postgres(location))
        if read_only:
            connection.execute("SET default_transaction_read_only = on")
        return connection
    target, uri = _sqlite_target(location, read_only)
    try:
        sqlite = sqlite3.connect(target, uri=uri, isolation_level=None,
                                 check_same_thread=False)
    except sqlite3.Error as exc:
        raise StartupError(f"cannot open the database {location.target}: {exc}") from None
    for pragma in _sqlite_pragmas(lock_wait_ms, read_only):
        sqlite.execute(pragma)
    return sqlite


async def connect_async(location: StoreLocation, *, read_only: bool = False) -> AsyncConnection:
    """An asynchronous connection (aiosqlite's, or psycopg's with the same face)."""
    if location.backend is Backend.POSTGRESQL:
        try:
            raw = await psycopg.AsyncConnection.connect(location.target, autocommit=True)
        except psycopg.Error as exc:
            raise unreachable(location, exc) from None
        connection = PgAsyncConnection(raw)
        if read_only:
            await connection.execute("SET default_transaction_read_only = on")
        return connection
    target, uri = _sqlite_target(location, read_only)
    try:
        sqlite = await aiosqlite.connect(target, uri=uri, isolation_level=None, timeout=30.0)
    except sqlite3.Error as exc:
        raise StartupError(f"cannot open the database {location.target}: {exc}") from None
    try:
        for pragma in _sqlite_pragmas(LOCK_WAIT_MS, read_only):
            await sqlite.execute(pragma)
    except BaseException:
        await close_shielded(sqlite)
        raise
    return sqlite


@asynccontextmanager
async def connected_async(location: StoreLocation, *, read_only: bool = False
                          ) -> AsyncIterator[AsyncConnection]:
    """``connect_async`` for the block; closed on leaving it, even when it is cancelled (an
    aiosqlite connection's thread must not be left answering an event loop that ended)."""
    connection = await connect_async(location, read_only=read_only)
    try:
        yield connection
    finally:
        await close_shielded(connection)


def _sqlite_target(location: StoreLocation, read_only: bool) -> tuple[str, bool]:
    if read_only:
        return f"file:{quote(str(location.path))}?mode=ro", True
    return str(location.path), False


def _sqlite_pragmas(lock_wait_ms: int, read_only: bool) -> list[str]:
    pragmas: list[str] = [] if read_only else ["PRAGMA journal_mode=WAL",
                                               "PRAGMA synchronous=NORMAL"]
    return [*pragmas, "PRAGMA foreign_keys=ON", f"PRAGMA busy_timeout={lock_wait_ms}"]
