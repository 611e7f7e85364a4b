"""The cache file's writer puts a whole group of entries in with a few statements: each entry
gets its id in order, a key written twice (in one group, or again later) keeps one row with
the newest answer, the count of entries stays exact for eviction, and near-duplicate vectors
land beside their entries."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from llmspool.cache.store import CacheReader, CacheWriter, connect
from llmspool.core.calls import Tier, Usage
from llmspool.store.records import NewEntry


def _entry(key: bytes, body: bytes = b'{"answer": 1}', *, ttl: float = 3600.0,
           vector: bytes | None = None) -> NewEntry:
    return NewEntry(key, False, body, "openai", "gpt-4o-mini", "/v1/chat/completions",
                    Tier.STANDARD, Usage(10, 2, 5, 1), ttl,
                    b"group" if vector is not None else None, vector)


def _rows(connection: sqlite3.Connection) -> int:
    count: int = connection.execute("SELECT count(*) FROM entries").fetchone()[0]
    return count


def test_each_entry_gets_its_own_id_in_order_and_reads_back(tmp_path: Path) -> None:
    connection = connect(tmp_path, writer=True)
    writer = CacheWriter(connection, max_entries=10_000)
    entries = [_entry(f"key-{n}".encode(), f'{{"n": {n}}}'.encode()) for n in range(1_234)]
    result = writer.commit(entries, [], [])
    assert len(result.written) == 1_234
    assert len(set(result.written)) == 1_234
    assert writer.count == _rows(connection) == 1_234
    reader = CacheReader(connect(tmp_path, writer=False))
    now = time.time()
    for n in (0, 499, 500, 1_233):  # either side of a statement's rows
        found = reader.get_by_id(result.written[n], now)
        assert found is not None and found.body == f'{{"n": {n}}}'.encode()
        assert found.usage == Usage(10, 2, 5, 1)
    reader.close()
    writer.close()


def test_a_key_written_again_keeps_one_row_with_the_newest_answer(tmp_path: Path) -> None:
    connection = connect(tmp_path, writer=True)
    writer = CacheWriter(connection, max_entries=10_000)
    first = writer.commit([_entry(b"same", b'"old"'), _entry(b"other")], [], [])
    again = writer.commit([_entry(b"same", b'"newer"'), _entry(b"new"),
                           _entry(b"same", b'"newest"')], [], [])
    assert again.written[0] == again.written[2] == first.written[0]
    assert writer.count == _rows(connection) == 3
    reader = CacheReader(connect(tmp_path, writer=False))
    found = reader.get(b"same", time.time())
    assert found is not None and found.body == b'"newest"'
    reader.close()
    writer.close()


def test_the_exact_count_evicts_the_least_recently_used(tmp_path: Path) -> None:
    connection = connect(tmp_path, writer=True)
    writer = CacheWriter(connection, max_entries=3)
    writer.commit([_entry(b"a"), _entry(b"b")], [], [], now=100.0)
    result = writer.commit([_entry(b"a"), _entry(b"c"), _entry(b"d")], [], [], now=200.0)
    assert result.evicted == 1
    assert writer.count == _rows(connection) == 3
    keys = {key for (key,) in connection.execute("SELECT key FROM entries")}
    assert keys == {b"a", b"c", b"d"}  # "b" was used longest ago
    writer.close()


def test_vectors_land_beside_their_entries(tmp_path: Path) -> None:
    connection = connect(tmp_path, writer=True)
    writer = CacheWriter(connection, max_entries=100)
    result = writer.commit([_entry(b"plain"), _entry(b"near", vector=b"\x00" * 8)], [], [])
    reader = CacheReader(connection)
    assert reader.vectors() == [(result.written[1], b"group", b"\x00" * 8)]
    writer.close()
