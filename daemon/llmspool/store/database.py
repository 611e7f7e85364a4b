"""The SQLite store's schema and state directory: creating the directory, bringing the schema
up to date, reading its version; and the migrations of both backends (``migrations(backend)``).

SQLite's migrations are the files ``migrations/sqlite/NNNN_name.sql``, applied in order, each in one
transaction, recorded in ``PRAGMA user_version``. A database from a newer llmspool (a higher
version than this code knows) is refused rather than guessed at.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosqlite
import anyio

from llmspool.core.errors import StartupError
from llmspool.store.backend import DATABASE_NAME, Backend
from llmspool.store.connections import AsyncConnection

__all__ = ["DATABASE_NAME", "close_shielded", "connected", "ensure_state_directory",
           "migrate_sqlite", "migrations", "sqlite_schema_version"]

_MIGRATION_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


def migrations(backend: Backend = Backend.SQLITE) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every bundled migration of ``backend``, in order."""
    folder = resources.files("llmspool.store").joinpath("migrations", backend.value)
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [version for version, _name, _sql in found]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..N without gaps, found {versions}")
    return found


@asynccontextmanager
async def connected(target: str | Path, **options: Any) -> AsyncIterator[aiosqlite.Connection]:
    """``aiosqlite.connect(target, **options)``, closed on leaving the block even when the
    block is cancelled. aiosqlite runs each connection in a thread of its own; a close cut
    short by the cancellation would leave that thread answering an event loop that may have
    ended by the time its statement finishes."""
    connection = await aiosqlite.connect(target, **options)
    try:
        yield connection
    finally:
        await close_shielded(connection)


async def close_shielded(connection: AsyncConnection) -> None:
    """Close ``connection`` and wait for its thread, even inside a cancelled scope."""
    with anyio.CancelScope(shield=True):
        await connection.close()


async def ensure_state_directory(state_dir: Path) -> None:
    """Create the state directory (SQLite's store, the cache, files, spools) if needed."""
    try:
        await anyio.Path(state_dir).mkdir(parents=True, exist_ok=True, mode=0o750)
    except OSError as exc:
        raise StartupError(
            f"cannot create the state directory {state_dir}: {exc.strerror}; set "
            "[daemon] state_dir or LLMSPOOL_STATE_DIR to a directory this user can write"
        ) from None


async def migrate_sqlite(path: Path) -> list[str]:
    """Create (if needed) and migrate the SQLite store at ``path``; returns the names of the
    migrations applied."""
    async with connected(path, isolation_level=None, timeout=30.0) as connection:
        await connection.execute("PRAGMA journal_mode=WAL")
        return await _migrate(connection, path)


async def sqlite_schema_version(path: Path) -> int:
    """The schema version of the SQLite store at ``path`` (0: none yet), read without writing."""
    if not await anyio.Path(path).exists():
        return 0
    async with (connected(f"file:{quote(str(path))}?mode=ro", uri=True) as connection,
                connection.execute("PRAGMA user_version") as cursor):
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _migrate(connection: aiosqlite.Connection, path: Path) -> list[str]:
    async with connection.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    current = int(row[0]) if row else 0
    known = migrations()
    if current > len(known):
        raise StartupError(
            f"{path} has schema version {current}, newer than this llmspool knows "
            f"({len(known)}); run the newer llmspool, or move the state directory aside"
        )
    for version, name, sql in known[current:]:
        try:
            script = f"BEGIN;\n{sql}\nPRAGMA user_version={version};\nCOMMIT;"
            await connection.executescript(script)
        except sqlite3.Error as exc:
            if connection.in_transaction:
                await connection.execute("ROLLBACK")
            raise StartupError(f"migration {name} failed on {path}: {exc}") from exc
    return [name for _version, name, _sql in known[current:]]
