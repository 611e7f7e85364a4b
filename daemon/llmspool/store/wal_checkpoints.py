"""Checkpoints of SQLite's write-ahead log in a worker thread, not in the ledger's commits.

SQLite copies its write-ahead log back into the database file (a checkpoint: the pages, then
an fsync of each file) inside the commit of whichever connection takes the log past 1,000
pages. The ledger commits on the event loop, so about one call's commit in a hundred held the
whole daemon through a checkpoint and its fsyncs: open-loop p99 added at 1,400 req/s was
7.8 ms with that, 3.3 ms without (medians of 4 interleaved rounds).

So the ledger's connection turns automatic checkpoints off (``PRAGMA wal_autocheckpoint=0``),
tells ``WalCheckpoints`` after each transaction (``due``), and ``run`` checkpoints from a
connection of its own in a worker thread, once ``CHECKPOINT_COMMITS`` commits are in the log
or ``CHECKPOINT_SECONDS`` after the first of them, whichever comes first; an idle daemon makes
none. Upkeep that must follow commits but not be in them (``before``: the ledger's indexing of
new response ids, ``store.response_ids``) runs first, from the same connection and thread.

Why not sooner: a checkpoint syncs both files, so the next commit's pages all count again
(the log starts over on pages just written out, and the database's pages are clean). When a
checkpoint followed 50 ms after a commit, a daemon serving 10 calls a second checkpointed after
every call, and wrote 80 KB to disk a call (its four or five pages of log, the upkeep's, and
the database's copies of each, all synced); at 100 calls a second, 38 KB. Under load the count
decides: 58 commits a second at 4,000 calls a second, so about half a second a checkpoint.
With ``synchronous=NORMAL`` a commit survives a crash of the daemon as soon as it is made; a
crash of the machine can take the commits since the last checkpoint, up to
``CHECKPOINT_SECONDS`` of them (the reservations' journal is never synced: its rows wait for the
kernel's writeback, seconds, as before).

A PASSIVE checkpoint copies the log without holding anyone up, but the log only starts over
from its beginning when a commit finds it wholly copied, and with checkpoints made by another
connection that never happened (measured: 3,000 commits left a 30 MB log). So once the log is
past ``RESTART_PAGES`` after a passive checkpoint, a RESTART checkpoint follows: it has little
left to copy, holds new writes for that moment (the ledger's commit then waits in its worker
thread, not on the loop), and makes the next commit start the log over. In a stand-alone
measurement of 3,000 commits the longest took 1.5 ms this way, 6.2 ms with SQLite's automatic
checkpoints. Durability is SQLite's as before: with ``synchronous=NORMAL`` a commit is in the
log, and a checkpoint syncs both files.

The commit that starts the log over writes its header anew and syncs it (an fdatasync: 0.3 to
2 ms here), whatever ``synchronous`` says. Left to the ledger, that was a commit on the event
loop about a dozen times a second under load: 96 syncs of the log on the loop's thread in 8 s
at 2,500 req/s, 45 ms in all. So once a checkpoint has copied the whole log, this connection
starts it over itself (``_start_over``: one write of one page, the schema's version as it
is), and the ledger's next commit appends to it: 8 such syncs on the loop's thread in the same
run, from commits that came between a checkpoint and its write.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

import anyio

from llmspool.core.errors import StartupError
from llmspool.store.backend import StoreLocation
from llmspool.store.connect import connect
from llmspool.store.connections import Connection

__all__ = ["CHECKPOINT_COMMITS", "CHECKPOINT_SECONDS", "RESTART_PAGES", "WalCheckpoints"]

log = logging.getLogger(__name__)

CHECKPOINT_COMMITS = 32
"""Commits in the log that call for a checkpoint at once: under load, about 1,500 pages of log
(a commit of the ledger's then holds some 70 entries in about 45 pages)."""

CHECKPOINT_SECONDS = 1.0
"""The longest a commit waits for its checkpoint, what a crash of the machine can take: the
default of ``[store] sync_interval``, which the ledger's connection passes as ``seconds``."""

RESTART_PAGES = 4000
"""A log longer than this after a passive checkpoint is started over with a RESTART
checkpoint: about three times what ``CHECKPOINT_COMMITS`` gathers under load, so that it is
for a log that passive checkpoints could not copy (a reader held it), not for every one."""


class WalCheckpoints:
    """Checkpoints of one SQLite database's log, made off the event loop after commits."""

    def __init__(self, location: StoreLocation,
                 before: Callable[[Connection], object] | None = None, *,
                 commits: int = CHECKPOINT_COMMITS, seconds: float = CHECKPOINT_SECONDS,
                 ) -> None:
        self._location = location
        self._before = before  # upkeep done first, from the same connection and thread
        self._commits = commits
        self._seconds = seconds
        self._due: anyio.Event | None = None  # set by the first commit not covered
        self._enough: anyio.Event | None = None  # set by the ``commits``-th
        self._uncovered = 0
        self._connection: Connection | None = None
        self.made = 0
        self.restarts = 0
        self.start_overs = 0  # writes made to start a wholly copied log over
        self._schema_version: int | None = None

    def due(self) -> None:
        """A transaction has ended: its pages are in the log, for the next checkpoint."""
        if self._due is None or self._enough is None:
            return  # not running
        self._uncovered += 1
        if self._uncovered == 1:
            self._due.set()
        if self._uncovered == self._commits:
            self._enough.set()

    async def run(self) -> None:
        """Checkpoint after commits, until cancelled; the own connection closes at the end."""
        try:
            self._due, self._enough = anyio.Event(), anyio.Event()
            while True:
                await self._due.wait()
                with anyio.move_on_after(self._seconds):
                    await self._enough.wait()
                # Commits from here on call for the next one.
                self._due, self._enough, self._uncovered = anyio.Event(), anyio.Event(), 0
                await anyio.to_thread.run_sync(self._checkpoint)
        finally:
            self._due = self._enough = None
            if self._connection is not None:
                self._connection.close()

    def _checkpoint(self) -> None:
        try:
            if self._connection is None:
                self._connection = connect(self._location)
            if self._before is not None:
                self._upkeep(self._before, self._connection)
            # fetchall: each statement ends, and with it any hold it has on the log.
            connection = self._connection
            [(busy, in_log, copied)] = connection.execute(
                "PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            if in_log > RESTART_PAGES:
                [(busy, in_log, copied)] = connection.execute(
                    "PRAGMA wal_checkpoint(RESTART)").fetchall()
                self.restarts += 1
            # Busy: a reader still had the log; the next checkpoint tries again.
            if not busy and 0 < in_log == copied:
                self._start_over(connection)
        except (sqlite3.Error, StartupError) as exc:
            # The log only grows until the next one succeeds; the ledger is not held up.
            log.warning("could not checkpoint the store's write-ahead log: %s", exc)
            return
        self.made += 1

    def _start_over(self, connection: Connection) -> None:
        """Write one page, so that the log (wholly copied) starts over from here, with its
        header's sync in this thread. One statement: SQLite holds the write lock only inside
        it, never while this thread waits for the interpreter lock. The page is the
        database's header, rewritten with the schema version it already has (read once:
        migrations run before the daemon starts checkpointing). A reader still on the old
        log, or a commit that came first, leaves the log as it is; nothing is lost."""
        if self._schema_version is None:
            [(version,)] = connection.execute("PRAGMA user_version").fetchall()
            self._schema_version = int(version)
        connection.execute(f"PRAGMA user_version = {self._schema_version}").fetchall()
        self.start_overs += 1

    @staticmethod
    def _upkeep(before: Callable[[Connection], object], connection: Connection) -> None:
        try:
            before(connection)
        except sqlite3.Error as exc:  # tried again after the next commit; the checkpoint goes on
            log.warning("could not index the response ids of new ledger entries (feedback "
                        "still finds them; tried again after the next commit): %s", exc)
