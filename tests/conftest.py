"""Fixtures shared by every test: a real simulator, a real daemon in front of it, and the
store on each backend (a SQLite file; a real PostgreSQL server the session starts)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from llmspool.store.backend import DATABASE_NAME, Backend, StoreLocation
from llmspool.store.connect import connect
from llmspool.store.connections import Connection
from llmspool.store.schema import migrate_store
from llmspool.testing.postgres import PostgresServer, running_postgres

from tests.support.processes import Daemon, Sim, start_daemon, start_sim
from tests.support.stores import DaemonStore


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist's workers start with COLUMNS=80 and LINES=24 set, which nobody running the
    # suite asked for; the CLI honours COLUMNS, so its output would wrap where it does not for
    # a user whose environment leaves it unset.
    if "PYTEST_XDIST_WORKER" in os.environ:
        for name in ("COLUMNS", "LINES"):
            os.environ.pop(name, None)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    started = start_sim(tmp_path)
    try:
        yield started
    finally:
        started.terminate()


@pytest.fixture
def daemon(tmp_path: Path, sim: Sim) -> Iterator[Daemon]:
    started = start_daemon(tmp_path, sim.url)
    try:
        yield started
    finally:
        started.terminate()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server, one per test worker (started in ~2 s), stopped at the end."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the workers' PostgreSQL server."""
    return postgres_server.new_database()


@pytest.fixture(params=[Backend.SQLITE, Backend.POSTGRESQL], ids=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> StoreLocation:
    """A new, migrated store on each backend in turn: a SQLite file in the test's directory,
    then a fresh database on the workers' PostgreSQL server. Tests of the store's behaviour
    take this, so both backends run the same assertions."""
    if request.param is Backend.POSTGRESQL:
        location = StoreLocation(Backend.POSTGRESQL, request.getfixturevalue("postgres_url"))
    else:
        location = StoreLocation(Backend.SQLITE, str(tmp_path / "state" / DATABASE_NAME))
    anyio.run(migrate_store, location)
    return location


@pytest.fixture
def store_connection(store_location: StoreLocation) -> Iterator[Connection]:
    """A synchronous connection to ``store_location``'s store (sqlite3's API on both)."""
    connection = connect(store_location)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture(params=[Backend.SQLITE, Backend.POSTGRESQL], ids=["sqlite", "postgresql"])
def daemon_store(request: pytest.FixtureRequest) -> DaemonStore:
    """Each backend in turn for a whole daemon's store: SQLite in its state directory, then a
    fresh database on the workers' PostgreSQL server (``[store] url``)."""
    if request.param is Backend.POSTGRESQL:
        url: str = request.getfixturevalue("postgres_url")
        return DaemonStore(Backend.POSTGRESQL, f'[store]\nurl = "{url}"\n', url)
    return DaemonStore(Backend.SQLITE, "")
