"""Checkpoints of the write-ahead log, made in a worker thread after commits (issue 17)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import anyio
import pytest
from llmspool.store.backend import Backend, StoreLocation
from llmspool.store.connections import Connection
from llmspool.store.ledger import LedgerConnection
from llmspool.store.schema import migrate_store
from llmspool.store.wal_checkpoints import RESTART_PAGES, WalCheckpoints


def _writer(path: Path) -> sqlite3.Connection:
    """A connection like the ledger's: WAL, and no checkpoint of its own."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA wal_autocheckpoint=0")
    connection.execute("CREATE TABLE IF NOT EXISTS rows (body TEXT)")
    return connection


def _pages_in_log(path: Path) -> int:
    with sqlite3.connect(path, isolation_level=None) as probe:
        [(_busy, in_log, _copied)] = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return int(in_log)


def _log_generation(path: Path) -> int:
    """The log header's checkpoint sequence number: SQLite adds one each time a write starts
    the log over from its beginning (and writes and syncs that header)."""
    with open(f"{path}-wal", "rb") as log_file:
        return int.from_bytes(log_file.read(16)[12:16], "big")


async def _one_checkpoint(checkpoints: WalCheckpoints) -> None:
    """Run ``checkpoints`` after one commit, until it has made a checkpoint."""
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(checkpoints.run)
        await anyio.sleep(0.01)
        checkpoints.due()
        with anyio.fail_after(10):
            while checkpoints.made < 1:
                await anyio.sleep(0.01)
        tasks.cancel_scope.cancel()


def test_commits_are_checkpointed_and_a_long_log_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    writer = _writer(path)
    for _ in range(RESTART_PAGES * 2):
        writer.execute("INSERT INTO rows VALUES (?)", ("x" * 3000,))  # about a page each
    assert _pages_in_log(path) > RESTART_PAGES
    checkpoints = WalCheckpoints(StoreLocation(Backend.SQLITE, str(path)))

    generation = _log_generation(path)
    anyio.run(_one_checkpoint, checkpoints)
    assert checkpoints.restarts == 1
    assert _log_generation(path) == generation + 1  # started over by the checkpoints' write
    writer.execute("INSERT INTO rows VALUES ('after')")
    assert _pages_in_log(path) < 10  # the commit after the restart began the log anew
    assert writer.execute("SELECT count(*) FROM rows").fetchone() == (RESTART_PAGES * 2 + 1,)


def test_a_wholly_copied_log_is_started_over_by_the_checkpoints_not_by_the_next_commit(
    tmp_path: Path,
) -> None:
    # The write that starts the log over syncs its header: it must not be the ledger's
    # commit, on the event loop.
    path = tmp_path / "store.sqlite3"
    writer = _writer(path)
    for number in range(50):
        writer.execute("INSERT INTO rows VALUES (?)", (str(number),))
    writer.execute("PRAGMA user_version = 15")
    generation = _log_generation(path)
    checkpoints = WalCheckpoints(StoreLocation(Backend.SQLITE, str(path)))

    anyio.run(_one_checkpoint, checkpoints)
    assert (checkpoints.restarts, checkpoints.start_overs) == (0, 1)
    assert _log_generation(path) == generation + 1
    writer.execute("INSERT INTO rows VALUES ('after')")
    assert _log_generation(path) == generation + 1  # the commit appended to the new log
    assert writer.execute("SELECT count(*) FROM rows").fetchone() == (51,)
    assert writer.execute("PRAGMA user_version").fetchone() == (15,)  # rewritten as it was


def test_a_reader_on_the_old_log_keeps_it_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    writer = _writer(path)
    writer.execute("INSERT INTO rows VALUES ('before')")
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM rows").fetchone() == (1,)
    generation = _log_generation(path)
    checkpoints = WalCheckpoints(StoreLocation(Backend.SQLITE, str(path)))

    anyio.run(_one_checkpoint, checkpoints)
    assert _log_generation(path) == generation  # the reader's snapshot still uses the log
    writer.execute("INSERT INTO rows VALUES ('after')")
    assert reader.execute("SELECT count(*) FROM rows").fetchone() == (1,)
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM rows").fetchone() == (2,)


def test_an_idle_store_is_not_checkpointed(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    # Kept open: closing the last connection checkpoints the log itself.
    writer = _writer(path)
    writer.execute("INSERT INTO rows VALUES ('one')")
    checkpoints = WalCheckpoints(StoreLocation(Backend.SQLITE, str(path)))

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(checkpoints.run)
            await anyio.sleep(0.3)
            tasks.cancel_scope.cancel()

    anyio.run(main)
    assert checkpoints.made == 0
    assert _pages_in_log(path) > 0
    writer.close()


def test_commits_a_while_apart_share_a_checkpoint(tmp_path: Path) -> None:
    # A checkpoint syncs both files, so a commit after it writes all its pages to disk again:
    # one a commit took a daemon at 10 calls a second to 80 KB written a call (issue 17).
    path = tmp_path / "store.sqlite3"
    writer = _writer(path)
    checkpoints = WalCheckpoints(StoreLocation(Backend.SQLITE, str(path)), seconds=1.0)
    made_by_then: list[int] = []

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(checkpoints.run)
            await anyio.sleep(0.01)
            for number in range(4):  # a commit every 0.1 s
                writer.execute("INSERT INTO rows VALUES (?)", (str(number),))
                checkpoints.due()
                await anyio.sleep(0.1)
            made_by_then.append(checkpoints.made)
            with anyio.fail_after(5):
                while checkpoints.made < 1:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.3)
            tasks.cancel_scope.cancel()

    anyio.run(main)
    assert made_by_then == [0]  # 0.4 s of commits, none checkpointed yet
    assert checkpoints.made == 1  # then all four in one
    assert checkpoints.start_overs == 1  # wholly copied
    writer.close()


def test_enough_commits_are_checkpointed_without_waiting_for_the_time(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    writer = _writer(path)
    checkpoints = WalCheckpoints(StoreLocation(Backend.SQLITE, str(path)), commits=3,
                                 seconds=60)

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(checkpoints.run)
            await anyio.sleep(0.01)
            for number in range(3):
                writer.execute("INSERT INTO rows VALUES (?)", (str(number),))
                checkpoints.due()
                await anyio.sleep(0.05)
                assert checkpoints.made == 0 or number == 2
            with anyio.fail_after(5):
                while checkpoints.made < 1:
                    await anyio.sleep(0.01)
            tasks.cancel_scope.cancel()

    anyio.run(main)
    assert checkpoints.made == 1
    writer.close()


@pytest.mark.parametrize(("sync_interval", "checkpointed"), [(0.05, True), (None, False)])
def test_the_ledgers_connection_syncs_a_commit_within_its_sync_interval(
    tmp_path: Path, sync_interval: float | None, checkpointed: bool,
) -> None:
    # [store] sync_interval reaches the ledger's checkpoints: 50 ms, then a commit is synced
    # within 0.4 s; the default (1 s) leaves it in the log that long.
    location = StoreLocation(Backend.SQLITE, str(tmp_path / "store.sqlite3"))
    anyio.run(migrate_store, location)
    database = (LedgerConnection.open(location) if sync_interval is None
                else LedgerConnection.open(location, sync_interval))
    assert database.checkpoints is not None
    checkpoints = database.checkpoints

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(checkpoints.run)
            await anyio.sleep(0.01)
            await database.run(lambda connection: connection.execute(
                "UPDATE reservation_journal SET covered = covered + 1"))
            await anyio.sleep(0.4)
            tasks.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        database.close()
    assert (checkpoints.made == 1) is checkpointed


def test_a_checkpoint_that_fails_is_logged_and_the_next_is_tried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    missing = tmp_path / "gone" / "store.sqlite3"
    checkpoints = WalCheckpoints(StoreLocation(Backend.SQLITE, str(missing)), seconds=0.05)

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(checkpoints.run)
            await anyio.sleep(0.01)
            for _ in range(2):
                checkpoints.due()
                await anyio.sleep(0.2)
            tasks.cancel_scope.cancel()

    with caplog.at_level(logging.WARNING, logger="llmspool.store.wal_checkpoints"):
        anyio.run(main)
    assert checkpoints.made == 0
    failures = [r for r in caplog.records if "could not checkpoint" in r.getMessage()]
    assert len(failures) == 2


def test_upkeep_that_fails_is_logged_and_the_checkpoint_still_made(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "store.sqlite3"
    _writer(path).execute("INSERT INTO rows VALUES ('one')")

    def index_a_table_that_is_not_there(connection: Connection) -> None:
        connection.execute("INSERT INTO response_ids VALUES ('chatcmpl-x', 1)")

    checkpoints = WalCheckpoints(StoreLocation(Backend.SQLITE, str(path)),
                                 before=index_a_table_that_is_not_there)

    with caplog.at_level(logging.WARNING, logger="llmspool.store.wal_checkpoints"):
        anyio.run(_one_checkpoint, checkpoints)
    assert [r.getMessage() for r in caplog.records
            if "could not index the response ids" in r.getMessage()]
