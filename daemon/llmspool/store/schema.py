"""The store's schema, whichever the backend: its version, the migrations it lacks, and
bringing it up to date (``llmspool store check``, ``llmspool store migrate``, and the daemon
as it starts)."""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from llmspool.store import postgres
from llmspool.store.backend import Backend, StoreLocation
from llmspool.store.database import (
    ensure_state_directory,
    migrate_sqlite,
    migrations,
    sqlite_schema_version,
)

__all__ = ["SchemaState", "migrate_store", "schema_state"]


@dataclass(frozen=True, slots=True)
class SchemaState:
    """The schema version a store has, against the migrations this llmspool knows."""

    location: StoreLocation
    version: int
    known: tuple[str, ...]  # the names of this llmspool's migrations, in order

    @property
    def latest(self) -> int:
        return len(self.known)

    @property
    def pending(self) -> tuple[str, ...]:
        return self.known[self.version:]

    @property
    def newer(self) -> bool:
        """The store was migrated by a newer llmspool: this one must not use it."""
        return self.version > self.latest


async def schema_state(location: StoreLocation) -> SchemaState:
    """The store's schema state, read without changing anything."""
    if location.backend is Backend.SQLITE:
        version = await sqlite_schema_version(location.path)
    else:
        version = await anyio.to_thread.run_sync(_postgres_version, location)
    known = tuple(name for _version, name, _sql in migrations(location.backend))
    return SchemaState(location, version, known)


async def migrate_store(location: StoreLocation) -> list[str]:
    """Apply the migrations the store lacks (creating it first if it is a new SQLite file);
    returns the names of those applied."""
    if location.backend is Backend.SQLITE:
        await ensure_state_directory(location.path.parent)
        return await migrate_sqlite(location.path)
    return await anyio.to_thread.run_sync(postgres.migrate, location)


def _postgres_version(location: StoreLocation) -> int:
    with postgres.connect(location) as connection:
        return postgres.schema_version(connection)
