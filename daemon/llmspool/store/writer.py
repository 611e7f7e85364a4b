"""A connection for the front door's own small writes (feedback, captured answers, their
sweep): one ``sqlite3`` connection, used from a worker thread, one statement group at a time.

These writes are rare next to the ledger's (a score; a call of an operation that captures), so
they wait for SQLite's write lock in a thread rather than on the event loop, and never hold up
the ledger for longer than one short transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

__all__ = ["SideWriter"]

_T = TypeVar("_T")
LOCK_WAIT_MS = 30_000


class SideWriter:
    """Runs ``function(connection, *args)`` in one transaction, in a worker thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None
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
            connection = self._connection = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False)
            connection.execute(f"PRAGMA busy_timeout={LOCK_WAIT_MS}")
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = function(connection, *args)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return result

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
