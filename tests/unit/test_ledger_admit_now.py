"""The dispatcher's admissions are decided in its own task (``Ledger.admit_now``), and its
entries taken there (``Ledger.settle_now``), when nothing but the wait would differ: on SQLite,
with a commit already due. Such an admission refuses past a cap exactly as one sent to the
ledger, is durable before it is answered (a crash right after bills it as an unknown outcome),
and reaches the reservations table with the next commit; such an entry counts at once and
ends its reservation. When no commit is due, for a session whose spend is not read yet, or in
a store shared by a fleet, they are sent to the ledger's inbox instead."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from llmspool.actors.ledger import Ledger
from llmspool.core.calls import Endpoint, Tier
from llmspool.core.config.sections import BudgetsConfig
from llmspool.core.errors import ApiError
from llmspool.core.streams import create_memory_stream
from llmspool.messages import NOT_NOW, Admit, NotNow
from llmspool.store.backend import DATABASE_NAME, Backend, StoreLocation
from llmspool.store.schema import migrate_store

from tests.unit.test_ledger_reservations import USD, admit, entry, rows, run_ledger_with, status
from tests.unit.test_reservation_journal import crash_copy

COMMIT_INTERVAL = 0.05
Scenario = Callable[[Ledger, Any], Awaitable[Any]]


@pytest.fixture
def sqlite_store(tmp_path: Path) -> StoreLocation:
    location = StoreLocation(Backend.SQLITE, str(tmp_path / "state" / DATABASE_NAME))
    anyio.run(migrate_store, location)
    return location


async def run(store: StoreLocation, budgets: BudgetsConfig, scenario: Scenario) -> Any:
    """A ledger on ``store`` for ``scenario``, left without a clean stop (as by a crash)."""
    return await run_ledger_with(store, budgets, scenario, COMMIT_INTERVAL)


def now(ledger: Ledger, request_id: str, estimate: int,
        session: str | None = None) -> ApiError | NotNow | None:
    """``admit_now`` as the dispatcher calls it (the reply stream is never used)."""
    reply_in, _reply_out = create_memory_stream[ApiError | None](1)
    return ledger.admit_now(Admit(request_id, "openai", "gpt-4o-mini", None, 1000, session,
                                  estimate, reply_in, Endpoint.CHAT, Tier.STANDARD))


def test_a_direct_admission_refuses_past_a_cap_like_one_sent(
        sqlite_store: StoreLocation) -> None:
    store_location = sqlite_store

    async def scenario(ledger: Ledger, inbox: Any) -> list[Any]:
        # Nothing waits for a commit yet: the ledger's task must see this one.
        first_now = now(ledger, "first", USD // 10)
        assert await admit(inbox, "first", USD // 10) is None
        decided = [first_now, now(ledger, "fits", 5 * USD // 10),
                   now(ledger, "too-much", 5 * USD // 10)]
        report = await status(inbox)
        return [*decided, report["reserved_usd"]]

    first, fits, refused, reserved = anyio.run(run, store_location,
                                               BudgetsConfig(daily_usd=1.0), scenario)
    assert first is NOT_NOW
    assert fits is None
    assert isinstance(refused, ApiError) and refused.code == "budget_day"
    assert reserved == 0.6  # $0.10 sent, $0.50 decided here; the refused one holds nothing


def test_a_direct_admission_is_durable_at_once_and_committed_with_the_next_commit(
        sqlite_store: StoreLocation, tmp_path: Path) -> None:
    crashed: list[StoreLocation] = []

    async def scenario(ledger: Ledger, inbox: Any) -> None:
        assert await admit(inbox, "sent", USD // 100) is None
        assert now(ledger, "direct", 3 * USD // 10) is None
        # The files as a crash right now leaves them: no commit has run since.
        crashed.append(crash_copy(sqlite_store, tmp_path / "crashed"))
        await anyio.sleep(COMMIT_INTERVAL * 4)  # no message: the ledger's timer commits
        assert sorted(rows(sqlite_store, "SELECT request_id FROM reservations")) == [
            ("direct",), ("sent",)]

    anyio.run(run, sqlite_store, BudgetsConfig(), scenario)

    async def restart(ledger: Ledger, inbox: Any) -> Any:
        return await status(inbox)

    report = anyio.run(run, crashed[0], BudgetsConfig(), restart)
    assert report["unknown_outcome_today"] == 2
    assert sorted(rows(crashed[0], "SELECT request_id, cost_picodollars FROM ledger_entries "
                                   "WHERE flag = 'unknown_outcome'")) == [
        ("direct", 3 * USD // 10), ("sent", USD // 100)]


def test_a_session_whose_spend_is_unread_goes_to_the_ledger(
        sqlite_store: StoreLocation) -> None:
    store_location = sqlite_store

    async def scenario(ledger: Ledger, inbox: Any) -> list[Any]:
        assert await admit(inbox, "first", USD // 100) is None
        unread = now(ledger, "new-session", USD // 100, session="s-1")
        return [unread, now(ledger, "no-session", USD // 100)]

    unread, plain = anyio.run(run, store_location, BudgetsConfig(), scenario)
    assert unread is NOT_NOW
    assert plain is None


def test_only_a_daemon_of_its_own_store_decides_in_the_callers_task(
        store_location: StoreLocation) -> None:
    """A fleet's admissions (PostgreSQL) are decided in the database, never here."""
    async def scenario(ledger: Ledger, inbox: Any) -> list[Any]:
        assert await admit(inbox, "first", USD // 100) is None
        direct = now(ledger, "second", USD // 100)
        sent = await admit(inbox, "second", USD // 100) if direct is NOT_NOW else direct
        return [direct, sent]

    direct, sent = anyio.run(run, store_location, BudgetsConfig(daily_usd=1.0), scenario)
    assert (direct is NOT_NOW) is (store_location.backend is Backend.POSTGRESQL)
    assert sent is None


def test_an_entry_taken_in_the_callers_task_counts_at_once_and_is_committed(
        sqlite_store: StoreLocation) -> None:
    async def scenario(ledger: Ledger, inbox: Any) -> list[Any]:
        idle = ledger.settle_now(entry("nothing-due", USD // 100))  # no commit due: send it
        assert await admit(inbox, "call", 3 * USD // 10) is None
        taken = ledger.settle_now(entry("call", USD // 10))
        report = await status(inbox)
        await anyio.sleep(COMMIT_INTERVAL * 4)
        return [idle, taken, report["spend_today_usd"], report["reserved_usd"]]

    idle, taken, spent, reserved = anyio.run(run, sqlite_store, BudgetsConfig(daily_usd=1.0),
                                             scenario)
    assert idle is False
    assert taken is True
    assert spent == 0.1
    assert reserved == 0  # the entry ended the call's reservation
    assert rows(sqlite_store, "SELECT request_id, cost_picodollars FROM ledger_entries") == [
        ("call", USD // 10)]
    assert rows(sqlite_store, "SELECT request_id FROM reservations") == []
