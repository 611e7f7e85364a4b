"""An answer is found by its response id whether or not its id is indexed yet (issue 17).

On SQLite the ids are indexed after the ledger's group commits, by the store's upkeep, not in
them (``store.response_ids``); a lookup reads the entries past the last indexed one directly.
On PostgreSQL the index on the entries stays. Each test of the lookup runs on both backends.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.store.backend import Backend, StoreLocation
from llmspool.store.connect import connect
from llmspool.store.connections import Connection
from llmspool.store.database import migrations
from llmspool.store.feedback import find_answer
from llmspool.store.ledger import write_group
from llmspool.store.records import Caller, Settled, Viewer
from llmspool.store.response_ids import _ANSWERS_SQLITE, index_all, index_new_entries

from tests.support.ledgers import add_entries_like_the_first, seed_sqlite_store

NOW = 1.8e9


def entry(request_id: str, response_id: str | None, uid: int = 1000,
          model: str = "gpt-4o-mini") -> Settled:
    return Settled(
        request_id=request_id, provider="openai", model=model, endpoint=Endpoint.CHAT,
        tier=Tier.STANDARD, usage=Usage(10, 0, 10), cost_picodollars=1000,
        standard_cost_picodollars=1000, caller=Caller(uid=uid), operation=None, status=200,
        started_at=NOW, finished_at=NOW, response_id=response_id,
    )


def rows(connection: Connection, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in connection.execute(sql).fetchall()]


def found_model(connection: Connection, response_id: str, uid: int = 1000) -> str | None:
    answer = find_answer(connection, response_id, Viewer(uid))
    return None if answer is None else answer.model


def test_an_answer_is_found_before_and_after_its_id_is_indexed(
    store_connection: Connection, store_location: StoreLocation,
) -> None:
    lite = store_location.backend is Backend.SQLITE
    write_group(store_connection, [], [entry("r1", "chatcmpl-b", model="m-one"),
                                       entry("r2", "chatcmpl-a", model="m-two"),
                                       entry("r3", None)], [])
    assert found_model(store_connection, "chatcmpl-b") == "m-one"  # not indexed yet
    assert index_all(store_connection) == (1 if lite else 0)  # batches
    if lite:
        assert rows(store_connection, "SELECT * FROM response_ids") == [
            (0, "chatcmpl-a", 2), (0, "chatcmpl-b", 1)]  # block, response id, entry
        assert rows(store_connection, "SELECT entry_id FROM response_ids_indexed") == [(3,)]
    assert found_model(store_connection, "chatcmpl-b") == "m-one"  # from the index
    assert found_model(store_connection, "chatcmpl-a") == "m-two"

    write_group(store_connection, [], [entry("r4", "chatcmpl-c", model="m-three")], [])
    assert found_model(store_connection, "chatcmpl-c") == "m-three"  # past the indexed ones
    assert found_model(store_connection, "chatcmpl-zz") is None
    assert found_model(store_connection, "chatcmpl-b", uid=1001) is None  # another user's
    assert index_all(store_connection) == (1 if lite else 0)
    assert index_all(store_connection) == 0
    assert found_model(store_connection, "chatcmpl-c") == "m-three"


def test_a_repeated_id_is_one_answer_the_viewers_own_first_indexed_or_not(
    store_connection: Connection,
) -> None:
    # A job line retried after a crash: two entries with one response id, the first indexed,
    # the second not yet; each viewer finds their own.
    write_group(store_connection, [], [entry("r1", "chatcmpl-same", uid=1000, model="first")],
                [])
    index_all(store_connection)
    write_group(store_connection, [], [entry("r2", "chatcmpl-same", uid=1001, model="second")],
                [])
    assert found_model(store_connection, "chatcmpl-same", uid=1001) == "second"
    assert found_model(store_connection, "chatcmpl-same", uid=1000) == "first"
    admin = find_answer(store_connection, "chatcmpl-same", Viewer(None, admin=True))
    assert admin is not None and admin.model == "first"  # the oldest, for one who sees all


def test_ids_are_indexed_a_batch_a_statement(tmp_path: Path) -> None:
    location = StoreLocation(Backend.SQLITE, str(tmp_path / "store.sqlite3"))
    connection = _migrated(location)
    write_group(connection, [], [entry(f"r{n}", f"chatcmpl-{n}") for n in range(5)], [])
    assert isinstance(connection, sqlite3.Connection)
    assert [index_new_entries(connection, most=2) for _ in range(4)] == [True, True, True,
                                                                           False]
    assert rows(connection, "SELECT entry_id FROM response_ids ORDER BY entry_id") == [
        (1,), (2,), (3,), (4,), (5,)]
    # Entries without an id are passed over all the same: the mark never stalls on them.
    write_group(connection, [], [entry("r5", None), entry("r6", None)], [])
    assert index_all(connection) == 1
    assert rows(connection, "SELECT entry_id FROM response_ids_indexed") == [(7,)]
    assert not connection.in_transaction
    connection.close()


def test_a_lookup_reads_no_more_than_the_index_and_the_entries_past_it() -> None:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    for _version, _name, sql in migrations():
        connection.executescript(sql)
    plan = [row[3] for row in connection.execute(
        "EXPLAIN QUERY PLAN " + _ANSWERS_SQLITE.format(columns="uid", condition="status = 200"),
        ("chatcmpl-x",))]
    assert "SEARCH response_ids USING PRIMARY KEY (entry_block=? AND response_id=?)" in plan
    assert "SEARCH ledger_entries USING INTEGER PRIMARY KEY (rowid>?)" in plan
    assert not [step for step in plan if step.startswith("SCAN ledger_entries")], plan


def test_the_migration_indexes_the_ids_already_in_the_ledger(tmp_path: Path) -> None:
    connection = sqlite3.connect(tmp_path / "old.sqlite3", isolation_level=None)
    steps = migrations()
    for version, _name, sql in steps:
        if version < 15:
            connection.executescript(sql)
    write_group(connection, [], [entry("r1", "chatcmpl-old"), entry("r2", None),
                                 entry("r3", "chatcmpl-older")], [])
    for version, _name, sql in steps:
        if version >= 15:
            connection.executescript(sql)
    assert rows(connection, "SELECT response_id, entry_id FROM response_ids") == [
        ("chatcmpl-old", 1), ("chatcmpl-older", 3)]
    assert rows(connection, "SELECT entry_id FROM response_ids_indexed") == [(3,)]
    assert rows(connection, "SELECT name FROM sqlite_master "
                            "WHERE name = 'ledger_entries_response_id'") == []
    assert found_model(connection, "chatcmpl-older") == "gpt-4o-mini"
    assert index_all(connection) == 0
    connection.close()


def _migrated(location: StoreLocation) -> Connection:
    connection = connect(location)
    for _version, _name, sql in migrations():
        assert isinstance(connection, sqlite3.Connection)
        connection.executescript(sql)
    return connection


def test_migration_0016_keys_the_ids_by_block_of_entries(tmp_path: Path) -> None:
    connection = sqlite3.connect(tmp_path / "0015.sqlite3", isolation_level=None)
    steps = migrations()
    for version, _name, sql in steps:
        if version <= 15:
            connection.executescript(sql)
    write_group(connection, [], [entry("r1", "chatcmpl-z", model="first"),
                                 entry("r2", "chatcmpl-a", model="third block")], [])
    connection.execute("UPDATE ledger_entries SET id = 20000 WHERE id = 2")  # block 2
    index_all(connection)
    write_group(connection, [], [entry("r3", "chatcmpl-new", model="not indexed")], [])
    for version, _name, sql in steps:
        if version > 15:
            connection.executescript(sql)
    assert rows(connection, "SELECT * FROM response_ids") == [
        (0, "chatcmpl-z", 1), (2, "chatcmpl-a", 20000)]
    assert [found_model(connection, name) for name in ("chatcmpl-z", "chatcmpl-a",
                                                       "chatcmpl-new")] == [
        "first", "third block", "not indexed"]
    assert index_all(connection) == 1  # the new trigger indexes by block too
    assert rows(connection, "SELECT * FROM response_ids WHERE entry_id = 20001") == [
        (2, "chatcmpl-new", 20001)]
    assert found_model(connection, "chatcmpl-new") == "not indexed"
    connection.close()


def test_indexing_new_entries_writes_no_more_on_a_big_ledger_than_on_a_small_one(
    tmp_path: Path,
) -> None:
    # Keyed by the random id alone, each entry indexed went to a page of its own once the
    # index outgrew a batch: the log a batch wrote grew with the ledger, 20 times over from
    # the small ledger to the big one here (issue 17). Keyed by block, a batch writes the
    # newest block's pages; both ledgers' newest blocks hold 1,000 entries (ids 1-1,000 in
    # block 0, 57,344-58,344 in block 7 of 8,192 entries each).
    logged = {size: _log_indexing_a_batch(tmp_path / f"{size}.sqlite3", size)
              for size in (1_000, 1_000 + 7 * 8_192)}
    assert logged[58_344] < 1.5 * logged[1_000], logged


def _log_indexing_a_batch(path: Path, ledger_size: int) -> int:
    """Bytes of write-ahead log that indexing 500 new entries writes on a ledger of
    ``ledger_size`` indexed entries with random response ids."""
    seed_sqlite_store(path, ledger_size)
    connection = connect(StoreLocation(Backend.SQLITE, str(path)))
    assert isinstance(connection, sqlite3.Connection)
    connection.execute("PRAGMA wal_autocheckpoint=0")  # the log is read as it grows
    add_entries_like_the_first(connection, 500)
    wal = Path(f"{path}-wal")
    before = wal.stat().st_size
    index_all(connection)
    logged = wal.stat().st_size - before
    connection.close()
    return logged
