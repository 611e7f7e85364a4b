"""Reaching a PostgreSQL store, and bringing its schema up to date.

Migrations are the files ``migrations/postgresql/NNNN_name.sql``, applied in order, each in one
transaction with its row in ``llmspool_schema``. Several daemons may start against one database
at once: a transaction-scoped advisory lock lets one migrate while the others wait, then find
nothing left to do. A database from a newer llmspool is refused rather than guessed at.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from llmspool.core.errors import StartupError
from llmspool.store.backend import Backend, StoreLocation
from llmspool.store.database import migrations

__all__ = ["SCHEMA_TABLE", "connect", "migrate", "schema_version", "unreachable"]

SCHEMA_TABLE = "llmspool_schema"
# The advisory lock every llmspool takes to migrate: any fixed 64-bit number works, as long
# as nothing else on the database uses it ("llmspool" in ASCII).
_MIGRATION_LOCK = int.from_bytes(b"llmspool", "big") >> 1


def connect(location: StoreLocation, **options: Any) -> psycopg.Connection[Any]:
    """A connection in autocommit mode (transactions are begun explicitly), or a
    ``StartupError`` that says what to check."""
    try:
        return psycopg.connect(location.target, autocommit=True, **options)
    except psycopg.Error as exc:
        raise unreachable(location, exc) from None


def unreachable(location: StoreLocation, error: psycopg.Error) -> StartupError:
    """The error to report when ``location`` cannot be connected to."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return StartupError(
        f"cannot reach the PostgreSQL store {location.shown()}: {detail}; check [store] url "
        "(or LLMSPOOL_STORE__URL), that the server runs, and that the user may connect (a "
        "password comes from PGPASSWORD or ~/.pgpass)")


def schema_version(connection: psycopg.Connection[Any]) -> int:
    """The schema version of the database: 0 when llmspool never migrated it."""
    exists = connection.execute("SELECT to_regclass(%s) IS NOT NULL", (SCHEMA_TABLE,)).fetchone()
    if not exists or not exists[0]:
        return 0
    row = connection.execute(f"SELECT COALESCE(MAX(version), 0) FROM {SCHEMA_TABLE}").fetchone()
    return int(row[0]) if row else 0


def migrate(location: StoreLocation) -> list[str]:
    """Apply the migrations the database lacks; returns the names of those applied."""
    known = migrations(Backend.POSTGRESQL)
    applied: list[str] = []
    with connect(location) as connection:
        for version, name, sql in known:
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (version BIGINT PRIMARY KEY, "
                    "name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
                current = schema_version(connection)
                if current > len(known):
                    raise StartupError(
                        f"the PostgreSQL store {location.shown()} has schema version {current}, "
                        f"newer than this llmspool knows ({len(known)}); run the newer llmspool")
                if current >= version:
                    continue
                try:
                    connection.execute(sql.encode())  # bytes: no parameters, no placeholders
                except psycopg.Error as exc:
                    raise StartupError(
                        f"migration {name} failed on {location.shown()}: {exc}") from exc
                connection.execute(
                    f"INSERT INTO {SCHEMA_TABLE} (version, name, applied_at) VALUES (%s, %s, %s)",
                    (version, name, time.time()))
                applied.append(name)
    return applied
