"""On SQLite a call is admitted once its reservation is in the journal, before any commit:
what a crash leaves (the store's files as they are at that moment) still bills a call that was
in flight at its reservation, and never bills a call whose release or entry a commit covered.
The journal begins a new generation once large, and what a crash leaves across that is read
right; a line a crash of the machine cut is passed over."""

from __future__ import annotations

import functools
import logging
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from llmspool.core.config.sections import BudgetsConfig
from llmspool.messages import Release
from llmspool.store import ledger as ledger_sql
from llmspool.store.backend import DATABASE_NAME, Backend, StoreLocation
from llmspool.store.connect import connect
from llmspool.store.ledger import recover_journal as recover
from llmspool.store.reservation_journal import ReservationJournal, journal_path
from llmspool.store.schema import migrate_store

from tests.unit.test_ledger_reservations import USD, admit, entry, rows, run_ledger, status

LONG = 3600.0  # no commit comes by the clock during a test: only the ones a status asks for


@pytest.fixture
def store(tmp_path: Path) -> StoreLocation:
    location = StoreLocation(Backend.SQLITE, str(tmp_path / "state" / DATABASE_NAME))
    anyio.run(migrate_store, location)
    return location


def crash_copy(store: StoreLocation, into: Path) -> StoreLocation:
    """The store's files as a crash at this moment would leave them: the database, its
    write-ahead log and the reservations' journal, copied while the ledger runs."""
    into.mkdir()
    for path in (store.path, store.path.with_name(store.path.name + "-wal"),
                 journal_path(store.path)):
        if path.exists():
            shutil.copy(path, into / path.name)
    return StoreLocation(Backend.SQLITE, str(into / store.path.name))


def run(store: StoreLocation, scenario: Any) -> Any:
    """``scenario`` against a ledger on ``store`` with a $1 daily cap."""
    return anyio.run(functools.partial(run_ledger, store, BudgetsConfig(daily_usd=1.0),
                                       scenario, commit_interval=LONG))


def test_a_call_admitted_before_any_commit_is_billed_after_a_crash(
        store: StoreLocation, tmp_path: Path) -> None:
    crashed: list[StoreLocation] = []

    async def before_the_crash(inbox: Any) -> None:
        assert await admit(inbox, "settled-call", USD // 10) is None
        await inbox.send(entry("settled-call", USD // 20))
        assert await admit(inbox, "released-call", USD // 10) is None
        await inbox.send(Release("released-call"))
        await status(inbox)  # a commit: the settled and the released call are covered
        assert await admit(inbox, "cut-off-call", 3 * USD // 10) is None
        crashed.append(crash_copy(store, tmp_path / "crashed"))

    run(store, before_the_crash)
    # The call in flight was admitted with its reservation in the journal alone.
    assert rows(crashed[0], "SELECT request_id FROM reservations") == []

    report = run(crashed[0], status)
    assert report["unknown_outcome_today"] == 1
    assert report["spend_today_usd"] == 0.35  # $0.05 settled + $0.30 at its reservation
    assert rows(crashed[0], "SELECT request_id, cost_picodollars, flag FROM ledger_entries "
                            "ORDER BY request_id") == [
        ("cut-off-call", 3 * USD // 10, "unknown_outcome"),
        ("settled-call", USD // 20, None),
    ]
    assert rows(crashed[0], "SELECT COUNT(*) FROM reservations") == [(0,)]


def test_a_call_still_in_flight_at_a_commit_is_reserved_in_the_table(
        store: StoreLocation) -> None:
    async def calls(inbox: Any) -> list[tuple[Any, ...]]:
        assert await admit(inbox, "long-call", USD // 10) is None
        assert await admit(inbox, "short-call", USD // 10) is None
        await inbox.send(entry("short-call", USD // 20))
        await status(inbox)
        return rows(store, "SELECT request_id FROM reservations")

    assert run(store, calls) == [("long-call",)]


def sqlite(store: StoreLocation) -> sqlite3.Connection:
    connection = connect(store)
    assert isinstance(connection, sqlite3.Connection)
    return connection


def row(request_id: str) -> tuple[Any, ...]:
    return (request_id, "call", 1.8e9, "openai", "gpt-4o-mini", "/v1/chat/completions",
            "standard", None, 1000, None, USD // 100, None, None)


def test_a_new_generation_after_a_commit_and_what_a_crash_leaves_across_it(
        store: StoreLocation, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    connection = sqlite(store)
    journal = ReservationJournal(journal_path(store.path), rotate_bytes=100)
    try:
        assert recover(connection, journal) == 0
        first = journal.generation
        journal.append([row("in-flight-at-the-commit"), row("settled-before-it"),
                        row("released-before-it")])
        mark = journal.mark
        # Journaled after the mark was taken (were a commit to run beside the ledger).
        journal.append([row("admitted-during-the-commit")])
        ledger_sql.write_group(connection, [row("in-flight-at-the-commit")],
                               [entry("settled-before-it", USD // 200)],
                               ["released-before-it"], None, mark)
        journal.committed(mark)
        assert journal.generation == first + 1  # past 100 bytes: a new file
        journal.append([row("after-the-commit")])
        with journal.path.open("ab") as cut:  # a machine's crash mid-write
            cut.write(b'["cut-off-by-a-power-fail')
        crashed = crash_copy(store, tmp_path / "crashed")
    finally:
        journal.close()
        connection.close()

    connection = sqlite(crashed)
    journal = ReservationJournal(journal_path(crashed.path))
    try:
        with caplog.at_level(logging.WARNING, "llmspool.store.reservation_journal"):
            assert recover(connection, journal) == 2
        assert "not a reservation row" in caplog.text
        assert journal.generation == first + 2
        # Not the released call, which the commit covered: it was never billed.
        assert [tuple(r) for r in connection.execute(
            "SELECT request_id FROM reservations ORDER BY request_id")] == [
            ("admitted-during-the-commit",), ("after-the-commit",),
            ("in-flight-at-the-commit",)]
        # Recovered again (a crash right after start-up): nothing more, nothing twice.
        assert recover(connection, journal) == 0
    finally:
        journal.close()
        connection.close()


def test_a_row_whose_entry_was_stored_is_not_put_back(store: StoreLocation) -> None:
    connection = sqlite(store)
    journal = ReservationJournal(journal_path(store.path))
    try:
        recover(connection, journal)
        journal.append([row("answered"), row("unanswered")])
        # The entry went in without the mark (a job's result, stored with its entry).
        ledger_sql.write_group(connection, [], [entry("answered", USD // 200)], [])
        assert recover(connection, journal) == 1
        assert [tuple(r) for r in connection.execute(
            "SELECT request_id FROM reservations")] == [("unanswered",)]
    finally:
        journal.close()
        connection.close()

