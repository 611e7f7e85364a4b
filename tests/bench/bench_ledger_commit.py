"""What one group commit of the ledger costs on a big ledger, with response ids like OpenAI's.

The ledger commits on the event loop, so a commit's time is time no call is served. An entry
carries the id of the upstream's answer (``chatcmpl-…``, random), which feedback looks up. This
bench builds one ledger of ``--entries`` entries with random response ids (the real ledger
SQL: ``store.ledger.write_group``), copies it, and times group commits of ``--group`` entries
alternately on:

- ``now``: the schema as it is: response ids indexed after the commits, by the store's upkeep
  in a worker thread (``store.response_ids``), which is timed too, per entry indexed;
- ``entry_index``: the same file with the index on ``ledger_entries (response_id)`` that each
  commit maintained before migration 0015: a random page of it for every entry.

Prints each one's median and p90 commit time and the write-ahead log it writes per commit,
the upkeep's time and log per entry it indexes, and how long feedback's lookup of one response
id takes. Keyed by the random id alone (migration 0015), the upkeep's log grew with the ledger:
once the index had more pages than a pass has entries, each entry dirtied a page of its own
(2.4 KiB an entry on a ledger of 20,000 entries, 5.3 KiB on one of a million, 10.7 µs).
Keyed by block of entries first (0016): 0.6 KiB and 2.1 µs an entry on a million, for a lookup
of 0.29 ms instead of 0.014. Figures, not pass/fail.

    python -m tests.bench.bench_ledger_commit [--entries 1000000] [--group 15] [--commits 600]
"""

from __future__ import annotations

import argparse
import itertools
import secrets
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.store.backend import DATABASE_NAME, Backend, StoreLocation
from llmspool.store.connect import connect
from llmspool.store.ledger import write_group
from llmspool.store.records import Caller, Settled
from llmspool.store.response_ids import answers_with, index_all
from llmspool.store.schema import migrate_store

VARIANTS = ("now", "entry_index")
CHECKPOINT_EVERY = 50  # commits between checkpoints and indexing passes (the upkeep's pace)


def entries(request_ids: Iterator[int], count: int) -> list[Settled]:
    """``count`` entries with request ids as the daemon makes them and random response ids."""
    now = time.time()
    return [Settled(
        request_id=f"llmspool-bench-{next(request_ids):x}", provider="openai",
        model="gpt-4o-mini", endpoint=Endpoint.CHAT, tier=Tier.STANDARD,
        usage=Usage(120, 0, 40), cost_picodollars=42_000_000, standard_cost_picodollars=42_000_000,
        caller=Caller(uid=1000), operation=None, status=200, started_at=now, finished_at=now,
        response_id=f"chatcmpl-{secrets.token_urlsafe(22)}") for _ in range(count)]


def build(path: Path, count: int, request_ids: Iterator[int]) -> None:
    location = StoreLocation(Backend.SQLITE, str(path))
    anyio.run(migrate_store, location)
    connection = connect(location)
    try:
        for start in range(0, count, 5000):
            write_group(connection, [], entries(request_ids, min(5000, count - start)), [])
            if (start + 5000) % 200_000 == 0:
                print(f"  built {start + 5000:,} of {count:,} entries", flush=True)
        index_all(connection)
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()


def wal_bytes(path: Path) -> int:
    log = path.with_name(path.name + "-wal")
    return log.stat().st_size if log.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--group", type=int, default=15, help="entries a commit")
    parser.add_argument("--commits", type=int, default=600, help="commits timed per variant")
    args = parser.parse_args()
    request_ids = itertools.count(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        built = work / DATABASE_NAME
        build(built, args.entries, request_ids)
        paths = {}
        for name in VARIANTS:
            (work / name).mkdir()
            paths[name] = shutil.copy(built, work / name / DATABASE_NAME)
        connections: dict[str, sqlite3.Connection] = {}
        for name, path in paths.items():
            connection = connect(StoreLocation(Backend.SQLITE, str(path)))
            assert isinstance(connection, sqlite3.Connection)
            connection.execute("PRAGMA wal_autocheckpoint=0")  # as the ledger's connection
            connections[name] = connection
        connections["entry_index"].execute(
            "CREATE INDEX ledger_entries_response_id ON ledger_entries (response_id) "
            "WHERE response_id IS NOT NULL")
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        logged: dict[str, list[int]] = {name: [] for name in VARIANTS}
        indexing: list[float] = []
        indexing_logged = 0  # bytes of write-ahead log the upkeep's passes wrote
        indexed = 0
        for commit in range(args.commits):
            for name in VARIANTS:
                connection, path = connections[name], Path(paths[name])
                group = entries(request_ids, args.group)
                before = wal_bytes(path)
                started = time.perf_counter()
                write_group(connection, [], group, [])
                times[name].append(time.perf_counter() - started)
                logged[name].append(wal_bytes(path) - before)
                if (commit + 1) % CHECKPOINT_EVERY == 0:
                    if name == "now":
                        mark = "SELECT entry_id FROM response_ids_indexed"
                        (before_mark,) = connection.execute(mark).fetchone()
                        log_before, started = wal_bytes(path), time.perf_counter()
                        index_all(connection)
                        indexing.append(time.perf_counter() - started)
                        indexing_logged += wal_bytes(path) - log_before
                        indexed += connection.execute(mark).fetchone()[0] - before_mark
                    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        lookups = time_lookups(connections["now"])
        for connection in connections.values():
            connection.close()
    print(f"{args.entries:,} entries in the ledger, {args.group} entries a commit, "
          f"{args.commits} commits each, interleaved")
    print(f"{'variant':<12} {'median µs':>10} {'p90 µs':>8} {'log KiB a commit':>17}")
    for name in VARIANTS:
        grown = [size for size in logged[name] if size > 0]
        print(f"{name:<12} {statistics.median(times[name]) * 1e6:>10.0f} "
              f"{statistics.quantiles(times[name], n=10)[-1] * 1e6:>8.0f} "
              f"{statistics.median(grown) / 1024 if grown else 0:>17.0f}")
    if indexed:
        print(f"upkeep (worker thread): {sum(indexing) / indexed * 1e6:.1f} µs and "
              f"{indexing_logged / indexed / 1024:.1f} KiB of log an entry indexed, "
              f"{len(indexing)} passes of {indexed // len(indexing)} entries")
    print(f"feedback's lookup of a response id (warm): median {statistics.median(lookups):.3f} "
          f"ms, p90 {statistics.quantiles(lookups, n=10)[-1]:.3f} ms, {len(lookups)} ids")


def time_lookups(connection: sqlite3.Connection) -> list[float]:
    """Milliseconds ``answers_with`` takes to find each of 200 ids spread over the ledger."""
    (count,) = connection.execute("SELECT MAX(id) FROM ledger_entries").fetchone()
    ids = [row[0] for row in connection.execute(
        "SELECT response_id FROM ledger_entries WHERE id % ? = 0", (max(1, count // 200),))]
    timings = []
    for response_id in ids:
        started = time.perf_counter()
        found = answers_with(connection, response_id, "id")
        timings.append((time.perf_counter() - started) * 1e3)
        assert found, response_id
    return timings


if __name__ == "__main__":
    main()
