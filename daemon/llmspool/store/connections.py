"""The store's connections, whichever the backend, with one API: sqlite3's (synchronous, for
transactions run in a worker thread) and aiosqlite's (asynchronous, on the event loop).

The store's functions take a ``Connection`` or an ``AsyncConnection`` and send the SQL both
backends understand (``llmspool.store.backend``). For SQLite these are simply ``sqlite3`` and
``aiosqlite`` connections. For PostgreSQL, ``PgConnection`` and ``PgAsyncConnection`` wrap
psycopg's, translating what differs:

- placeholders: ``?`` becomes ``%s`` (``for_postgresql``);
- ``BEGIN IMMEDIATE``, SQLite's "take the write lock first", becomes ``BEGIN``: PostgreSQL
  locks rows as they are written, so a plain transaction is the equivalent;
- values: Python's ``bool`` is sent as an integer (the schema's flags are integers, as in
  SQLite), and a ``numeric`` result (what ``SUM`` of integers gives) comes back as an ``int``
  when whole, else a ``float``, as SQLite's would.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Generator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol

import aiosqlite
import psycopg
from psycopg.adapt import Dumper, Loader
from psycopg.pq import TransactionStatus

from llmspool.store.backend import for_postgresql

__all__ = ["AsyncConnection", "Connection", "Cursor", "PgAsyncConnection", "PgConnection",
           "is_sqlite", "prepare_postgresql"]

Params = Sequence[Any]


class Cursor(Protocol):
    """What the store reads of a statement it ran, typed as loosely as sqlite3's cursor."""

    @property
    def rowcount(self) -> int: ...

    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class _IntegerBool(Dumper):
    """A Python bool as the integer 0 or 1 (the schema's flags are integers, as in SQLite)."""

    oid = psycopg.postgres.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


class _WholeOrFloat(Loader):
    """A ``numeric`` (what SUM of integers gives) as an int when whole, else a float."""

    def load(self, data: Any) -> int | float:
        text = bytes(data)
        if b"." in text or b"e" in text or b"N" in text:
            return float(text)
        return int(text)


def prepare_postgresql(connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]
                       ) -> None:
    """Make ``connection`` hand values back and forth as the store's SQLite code expects."""
    connection.adapters.register_dumper(bool, _IntegerBool)
    connection.adapters.register_loader("numeric", _WholeOrFloat)


def _sql(statement: str, parameters: Params) -> str:
    """``statement`` for psycopg. Without parameters psycopg reads no placeholders (and
    turns no ``%%`` back into ``%``), so the statement goes as written."""
    if statement.strip().upper() == "BEGIN IMMEDIATE":
        return "BEGIN"
    return for_postgresql(statement) if parameters else statement


class PgConnection:
    """A psycopg connection (in autocommit mode) with sqlite3's face."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        prepare_postgresql(connection)
        self.raw = connection

    def execute(self, sql: str, parameters: Params = (), /) -> Cursor:
        return self.raw.execute(_sql(sql, parameters), parameters or None)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Params], /) -> Cursor:
        cursor = self.raw.cursor()
        rows = list(seq_of_parameters)
        if len(rows) == 1:  # one round trip: executemany's pipeline costs three (~0.3 ms)
            cursor.execute(for_postgresql(sql), rows[0])
        elif rows:
            cursor.executemany(for_postgresql(sql), rows)
        return cursor

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()


class _Pending:
    """What ``PgAsyncConnection.execute`` returns: awaitable for a cursor, or usable as
    ``async with connection.execute(...) as cursor``, as aiosqlite's is."""

    def __init__(self, running: Awaitable[psycopg.AsyncCursor[Any]]) -> None:
        self._running = running
        self._cursor: psycopg.AsyncCursor[Any] | None = None

    def __await__(self) -> Generator[Any, None, psycopg.AsyncCursor[Any]]:
        return self._running.__await__()

    async def __aenter__(self) -> psycopg.AsyncCursor[Any]:
        self._cursor = await self._running
        return self._cursor

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        if self._cursor is not None:
            await self._cursor.close()


class PgAsyncConnection:
    """A psycopg async connection (in autocommit mode) with aiosqlite's face."""

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        prepare_postgresql(connection)
        self.raw = connection

    def execute(self, sql: str, parameters: Params = ()) -> _Pending:
        return _Pending(self.raw.execute(_sql(sql, parameters), parameters or None))

    async def executemany(self, sql: str, seq_of_parameters: Iterable[Params]) -> None:
        rows = list(seq_of_parameters)
        if rows:
            async with self.raw.cursor() as cursor:
                if len(rows) == 1:  # one round trip, as in PgConnection.executemany
                    await cursor.execute(for_postgresql(sql), rows[0])
                else:
                    await cursor.executemany(for_postgresql(sql), rows)

    async def execute_fetchall(self, sql: str, parameters: Params = ()) -> list[Any]:
        async with self.raw.cursor() as cursor:
            await cursor.execute(_sql(sql, parameters), parameters or None)
            return await cursor.fetchall()

    async def executescript(self, script: str) -> None:
        await self.raw.execute(script.encode())

    async def commit(self) -> None:
        if self.in_transaction:
            await self.raw.execute("COMMIT")

    async def rollback(self) -> None:
        if self.in_transaction:
            await self.raw.execute("ROLLBACK")

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    async def close(self) -> None:
        await self.raw.close()


Connection = sqlite3.Connection | PgConnection
AsyncConnection = aiosqlite.Connection | PgAsyncConnection


def is_sqlite(connection: object) -> bool:
    """Whether ``connection`` is SQLite's (for the few statements that differ, e.g. PRAGMAs)."""
    return isinstance(connection, sqlite3.Connection | aiosqlite.Connection)
