"""The front door's filter of the cache file's keys (``cache/presence.py``) never says a key in
the file is absent, whatever the writer's commits did to it (new entries, answers written
again, expiry, eviction, corrupt entries dropped), and says most absent keys are absent."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from llmspool.cache.presence import KeyPresence
from llmspool.cache.store import CacheWriter, WriteResult, connect
from llmspool.core.calls import Tier, Usage
from llmspool.store.records import NewEntry


def _entry(key: bytes, ttl: float = 3600.0) -> NewEntry:
    return NewEntry(key, False, b'{"answer": 1}', "openai", "gpt-4o-mini",
                    "/v1/chat/completions", Tier.STANDARD, Usage(10, 0, 5, 0), ttl)


def _keys_in(connection: sqlite3.Connection) -> set[bytes]:
    return {key for (key,) in connection.execute("SELECT key FROM entries")}


def _apply(presence: KeyPresence, result: WriteResult) -> None:
    presence.added(result.inserted)
    presence.removed(result.deleted)


def test_no_key_in_the_file_is_ever_said_absent(tmp_path: Path) -> None:
    connection = connect(tmp_path, writer=True)
    writer = CacheWriter(connection, max_entries=300)
    # An old file: its keys are known once the filter is built from it.
    writer.commit([_entry(f"old-{n}".encode()) for n in range(150)], [], [], now=0.0)
    presence = KeyPresence(capacity=300)
    assert presence.might_hold(b"anything")  # not built yet: every key may be there
    presence.install(presence.build(writer.keys()))
    chance = random.Random(7)
    now = 1.0
    for _round in range(60):
        stored = sorted(_keys_in(connection))
        ids = [entry_id for (entry_id,) in connection.execute("SELECT id FROM entries")]
        entries = [_entry(f"key-{chance.randrange(600)}".encode(),
                          ttl=chance.choice((0.5, 3600.0))) for _ in range(chance.randrange(1, 40))]
        if stored:  # an answer written again under a key already there
            entries.append(_entry(chance.choice(stored)))
        drops = chance.sample(ids, min(len(ids), chance.randrange(3)))
        hits = [(entry_id, now) for entry_id in chance.sample(ids, min(len(ids), 5))]
        _apply(presence, writer.commit(entries, hits, drops, now=now))
        now += chance.choice((0.1, 1.0))  # some entries expire by the next commit
        in_file = _keys_in(connection)
        assert all(presence.might_hold(key) for key in in_file)
    assert writer.count == len(in_file) <= 300
    gone = {f"key-{n}".encode() for n in range(600)} - in_file
    said_absent = sum(not presence.might_hold(key) for key in gone)
    assert said_absent >= 0.9 * len(gone)  # the deleted and never written are mostly known
    writer.close()


def test_most_keys_never_written_are_said_absent_with_the_file_full() -> None:
    presence = KeyPresence(capacity=100_000)
    presence.install(presence.build(f"in-{n}".encode() for n in range(100_000)))
    assert all(presence.might_hold(f"in-{n}".encode()) for n in range(0, 100_000, 7))
    false_positives = sum(presence.might_hold(f"out-{n}".encode()) for n in range(20_000))
    assert false_positives < 0.02 * 20_000  # about 1% by design


def test_keys_that_expire_are_said_absent_once_deleted(tmp_path: Path) -> None:
    writer = CacheWriter(connect(tmp_path, writer=True), max_entries=10)
    presence = KeyPresence(capacity=10)
    presence.install(presence.build(writer.keys()))
    _apply(presence, writer.commit([_entry(b"brief", ttl=0.5)], [], [], now=0.0))
    assert presence.might_hold(b"brief")
    result = writer.commit([_entry(b"kept")], [], [], now=1.0)  # "brief" expired meanwhile
    assert result.inserted == [b"kept"] and result.deleted == [b"brief"]
    _apply(presence, result)
    # Written and expired in one commit: added and removed at once.
    result = writer.commit([_entry(b"flash", ttl=0.0), _entry(b"kept")], [], [], now=2.0)
    assert result.inserted == [b"flash"] and result.deleted == [b"flash"]
    _apply(presence, result)
    assert not presence.might_hold(b"brief") and not presence.might_hold(b"flash")
    assert presence.might_hold(b"kept")
    writer.close()


def test_a_counter_full_to_the_brim_stays_full() -> None:
    presence = KeyPresence(capacity=1)
    presence.install(presence.build([]))
    presence.added([b"crowded"] * 300)  # more than a one-byte counter holds
    presence.removed([b"crowded"] * 300)
    assert presence.might_hold(b"crowded")  # it can no longer say, so it says maybe
