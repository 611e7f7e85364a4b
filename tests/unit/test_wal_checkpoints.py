"""Checkpoints of the write-ahead log, made in a worker thread after commits (issue 17)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import anyio
import pytest
from llmspool.store.backend import Backend, StoreLocation
from llmspool.store.connections import Connection
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

    anyio.run(_one_checkpoint, checkpoints)
    assert checkpoints.restarts == 1
    writer.execute("INSERT INTO rows VALUES ('after')")
    assert _pages_in_log(path) < 10  # the commit after the restart began the log anew
    assert writer.execute("SELECT count(*) FROM rows").fetchone() == (RESTART_PAGES * 2 + 1,)


def test_an_idle_store_is_not_checkpointed(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    _writer(path).execute("INSERT INTO rows VALUES ('one')")
    checkpoints = WalCheckpoints(StoreLocation(Backend.SQLITE, str(path)))

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(checkpoints.run)
            await anyio.sleep(0.3)
            tasks.cancel_scope.cancel()

    anyio.run(main)
    assert checkpoints.made == 0
    assert _pages_in_log(path) > 0


def test_a_checkpoint_that_fails_is_logged_and_the_next_is_tried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    missing = tmp_path / "gone" / "store.sqlite3"
    checkpoints = WalCheckpoints(StoreLocation(Backend.SQLITE, str(missing)))

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
