"""A whole daemon's store for tests that run on each backend (the ``daemon_store`` fixture)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmspool.store.backend import DATABASE_NAME, Backend, StoreLocation
from llmspool.store.connect import connect


@dataclass(frozen=True)
class DaemonStore:
    """Where a daemon under test keeps its store: ``toml`` goes into its config ("": SQLite
    in its state directory), and ``rows`` reads the store as the daemon left it."""

    backend: Backend
    toml: str
    url: str | None = None

    def rows(self, state_dir: Path, sql: str, parameters: tuple[Any, ...] = ()
             ) -> list[tuple[Any, ...]]:
        location = (StoreLocation(Backend.SQLITE, str(state_dir / DATABASE_NAME))
                    if self.url is None else StoreLocation(Backend.POSTGRESQL, self.url))
        connection = connect(location, read_only=True)
        try:
            return [tuple(row) for row in connection.execute(sql, parameters).fetchall()]
        finally:
            connection.close()
