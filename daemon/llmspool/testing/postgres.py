"""A real PostgreSQL server for tests: started in a temporary directory, reached only through
a Unix socket there, and stopped (its files removed) on leaving ``running_postgres()``.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
unprivileged user ``nobody`` (``LLMSPOOL_TEST_PG_USER`` names another), in a directory that
user owns. Connections are trusted on the socket, as the superuser ``llmspool``; nothing
listens on TCP. The server is told to die with the process that started it (Linux's parent
death signal), so a test run killed outright leaves no server behind; it skips fsync, since
nothing it holds outlives the test run.

The programs come from ``LLMSPOOL_PG_BIN`` if set, else the newest
``/usr/lib/postgresql/<version>/bin`` (Debian's layout), else ``PATH``.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

__all__ = ["PostgresNotFound", "PostgresServer", "postgres_programs", "running_postgres"]

SUPERUSER = "llmspool"
_PR_SET_PDEATHSIG = 1


class PostgresNotFound(RuntimeError):
    """PostgreSQL's server programs are not installed where the tests look for them."""


def postgres_programs() -> Path:
    """The directory holding ``initdb`` and ``postgres``."""
    named = os.environ.get("LLMSPOOL_PG_BIN")
    candidates = [Path(named)] if named else []
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted((p for p in debian.iterdir() if p.name.isdigit()),
                          key=lambda p: int(p.name), reverse=True)
        candidates += [version / "bin" for version in versions]
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).parent)
    for candidate in candidates:
        if (candidate / "postgres").is_file() and (candidate / "initdb").is_file():
            return candidate
    raise PostgresNotFound(
        "PostgreSQL's server programs (initdb, postgres) were not found; install Debian's "
        "postgresql package, or set LLMSPOOL_PG_BIN to the directory that holds them")


@dataclass
class PostgresServer:
    """A running server: its socket directory, and databases made on it for tests."""

    directory: Path
    process: subprocess.Popen[bytes]
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def socket_dir(self) -> Path:
        return self.directory / "socket"

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL of ``database`` on this server, through its socket."""
        return (f"postgresql://{SUPERUSER}@/{quote(database)}"
                f"?host={quote(str(self.socket_dir), safe='')}")

    def new_database(self, prefix: str = "test") -> str:
        """Create an empty database; returns its URL."""
        import psycopg  # the tests' dependency, imported only by those that start a server

        name = f"{prefix}_{os.getpid()}_{next(self._numbers)}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a PostgreSQL server for the block; stop it and remove its files after."""
    programs = postgres_programs()
    runs_as = _server_user()
    directory = Path(tempfile.mkdtemp(prefix="llmspool-pg-"))
    try:
        (directory / "socket").mkdir()
        if runs_as is not None:
            for path in (directory, directory / "socket"):
                os.chown(path, runs_as.pw_uid, runs_as.pw_gid)
        _run_as(runs_as, [str(programs / "initdb"), "-D", str(directory / "data"),
                          "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--locale=C",
                          "--no-sync", "--no-instructions"], directory / "initdb.log")
        with open(directory / "server.log", "wb") as log:
            process = subprocess.Popen(
                [str(programs / "postgres"), "-D", str(directory / "data"),
                 "-k", str(directory / "socket"), "-c", "listen_addresses=",
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=300"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                user=_uid(runs_as), group=_gid(runs_as), extra_groups=_groups(runs_as),
                # The only way to set the parent death signal; it calls prctl and nothing else.
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        server = PostgresServer(directory, process)
        try:
            _wait_until_accepting(server, directory / "server.log")
            yield server
        finally:
            _stop(process)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _server_user() -> pwd.struct_passwd | None:
    """Whom the server runs as: None (this user) unless the tests run as root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("LLMSPOOL_TEST_PG_USER", "nobody")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise PostgresNotFound(
            f"the tests run as root and PostgreSQL must not: there is no user {name!r} to run "
            "it as; set LLMSPOOL_TEST_PG_USER to an unprivileged user") from None


def _uid(user: pwd.struct_passwd | None) -> int | None:
    return None if user is None else user.pw_uid


def _gid(user: pwd.struct_passwd | None) -> int | None:
    return None if user is None else user.pw_gid


def _groups(user: pwd.struct_passwd | None) -> list[int] | None:
    return None if user is None else []  # none but the user's own


def _run_as(user: pwd.struct_passwd | None, command: list[str], log: Path) -> None:
    with open(log, "wb") as output:
        done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, check=False, timeout=120,
                              user=_uid(user), group=_gid(user), extra_groups=_groups(user))
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}):\n{log.read_text()}")


def _die_with_parent() -> None:
    """In the server's process, before it starts: die when the test process does."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _wait_until_accepting(server: PostgresServer, log: Path, timeout: float = 60.0) -> None:
    import psycopg

    give_up = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited ({server.process.returncode}):\n"
                               f"{log.read_text(errors='replace')}")
        try:
            with psycopg.connect(server.url(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > give_up:
                raise RuntimeError(f"PostgreSQL did not accept connections within {timeout} s:"
                                   f"\n{log.read_text(errors='replace')}") from None
            time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """A fast shutdown (SIGINT: connections are cut, nothing is waited for), then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
