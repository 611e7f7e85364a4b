"""Which database the store is: SQLite in the state directory (the default) or PostgreSQL
(``[store] url``), and the one thing its SQL must be told about the difference.

The store's statements are written once, in the SQL both understand, with ``?`` for a
parameter (sqlite3's style). ``for_postgresql`` rewrites a statement for psycopg, whose
placeholder is ``%s`` (a literal ``%`` is doubled); it is cached, since the store sends the
same few hundred statements over and over.
"""

from __future__ import annotations

import enum
import functools
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from llmspool.core.config.sections import Config

__all__ = ["Backend", "StoreLocation", "daemon_name", "for_postgresql"]

DATABASE_NAME = "llmspool.sqlite3"


class Backend(enum.Enum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """Where the store is: a SQLite file, or a PostgreSQL URL."""

    backend: Backend
    target: str  # the SQLite file's path, or the PostgreSQL URL as configured

    @classmethod
    def of(cls, config: Config) -> StoreLocation:
        if config.store.url:
            return cls(Backend.POSTGRESQL, config.store.url)
        return cls(Backend.SQLITE, str(config.state_path / DATABASE_NAME))

    @property
    def path(self) -> Path:
        """The SQLite file (only for the SQLite backend)."""
        if self.backend is not Backend.SQLITE:
            raise ValueError("a PostgreSQL store has no file")
        return Path(self.target)

    def shown(self) -> str:
        """The location as it may be printed and logged: a URL's password is masked."""
        if self.backend is Backend.SQLITE:
            return self.target
        parts = urlsplit(self.target)
        if parts.password is None:
            return self.target
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))


@functools.lru_cache(maxsize=1024)
def for_postgresql(statement: str) -> str:
    """``statement`` with psycopg's placeholders: ``?`` becomes ``%s``, ``%`` becomes ``%%``.
    The store's SQL has no ``?`` or ``%`` inside string literals, so a plain rewrite is exact."""
    return statement.replace("%", "%%").replace("?", "%s")


def daemon_name(config: Config) -> str:
    """This daemon's name in the store: ``[store] name``, else the host and the socket path
    (unique on a host, since two daemons cannot serve one socket)."""
    return config.store.name or f"{socket.gethostname()}:{config.daemon.socket}"
