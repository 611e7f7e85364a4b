"""A connection for the front door's own small writes (feedback, captured answers, their
sweep): one synchronous connection to the store, used from a worker thread, one statement
group at a time.

These writes are rare next to the ledger's (a score; a call of an operation that captures), so
they wait for the store's write lock (SQLite's; PostgreSQL's row locks) in a thread rather than
on the event loop, and never hold up the ledger for longer than one short transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio

from llmspool.store.backend import StoreLocation
from llmspool.store.connect import connect
from llmspool.store.connections import Connection, PgConnection

__all__ = ["SideWriter"]

_T = TypeVar("_T")


class SideWriter:
    """Runs ``function(connection, *args)`` in one transaction, in a worker thread."""

    def __init__(self, location: StoreLocation) -> None:
        self._location = location
        self._connection: Connection | None = None
        self._lock = anyio.Lock()

    async def run(self, function: Callable[..., _T], *args: Any) -> _T:
        async with self._lock:
            # Shielded: a transaction that has begun always ends, even while the daemon stops.
            with anyio.CancelScope(shield=True):
                result = await anyio.to_thread.run_sync(self._in_transaction, function, *args)
        return result

    def _in_transaction(self, function: Callable[..., _T], *args: Any) -> _T:
        connection = self._connection
        if connection is None:
            connection = self._connection = connect(self._location)
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = function(connection, *args)
            except BaseException:
                if not _lost(connection):
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except BaseException:
            if _lost(connection):
                # The PostgreSQL session ended (a server restart, a dropped network): the
                # next write connects again.
                connection.close()
                self._connection = None
            raise
        return result

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _lost(connection: Connection) -> bool:
    return isinstance(connection, PgConnection) and connection.raw.closed
