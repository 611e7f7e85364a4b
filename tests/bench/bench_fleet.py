"""The shared store's cost at the ledger: how long a call waits for its admission (a durable
reservation, checked against the caps), on SQLite and on PostgreSQL, with one daemon and with
four sharing one database.

Drives real ``Ledger`` actors over their inboxes at a paced rate of calls per second (spread
round robin over the ledgers), each call admitted and then settled, with a daily cap set (so
every admission is decided: in memory on SQLite, in the database for a shared store). It
measures each admission's round trip (Admit sent to the reply), and the process CPU per call
(worker threads included; PostgreSQL's own CPU is not counted). It starts its own PostgreSQL
server (``llmspool.testing.postgres``). Figures, not pass/fail.

    python -m tests.bench.bench_fleet [--rate 500] [--seconds 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from anyio.abc import ObjectSendStream
from llmspool.actors.ledger import Ledger, LedgerMessage
from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.core.config.sections import BudgetsConfig
from llmspool.core.errors import ApiError
from llmspool.messages import Admit
from llmspool.store.backend import DATABASE_NAME, Backend, StoreLocation
from llmspool.store.fleet import Member
from llmspool.store.ledger import LedgerConnection
from llmspool.store.records import Caller, Settled
from llmspool.store.schema import migrate_store
from llmspool.testing.postgres import PostgresServer, running_postgres

BUDGETS = BudgetsConfig(daily_usd=1e6)


async def measure(store: StoreLocation, ledgers: int, rate: int, seconds: float
                  ) -> tuple[list[float], float]:
    """(admission round trips in seconds, CPU seconds per call) of one run."""
    await migrate_store(store)
    waits: list[float] = []
    async with AsyncExitStack() as stack, anyio.create_task_group() as group:
        inboxes: list[ObjectSendStream[LedgerMessage]] = []
        for number in range(ledgers):
            database = LedgerConnection.open(store)
            stack.callback(database.close)
            inbox_in, inbox_out = anyio.create_memory_object_stream[LedgerMessage](4096)
            ledger = Ledger(inbox_out, database, budgets=BUDGETS,
                            member=Member(f"bench-{number}", "bench", number, "bench", 30.0))
            await group.start(ledger.run)
            inboxes.append(inbox_in)

        async def one_call(index: int) -> None:
            inbox = inboxes[index % ledgers]
            request_id = f"bench-{index}-{time.monotonic_ns()}"
            reply_in, reply_out = anyio.create_memory_object_stream[ApiError | None](1)
            with reply_in, reply_out:
                sent = time.perf_counter()
                await inbox.send(Admit(request_id, "openai", "gpt-5-mini", "evals", 1000,
                                       None, 2_000_000_000, reply_in, Endpoint.CHAT,
                                       Tier.STANDARD))
                assert await reply_out.receive() is None
                waits.append(time.perf_counter() - sent)
            now = time.time()
            await inbox.send(Settled(
                request_id=request_id, provider="openai", model="gpt-5-mini",
                endpoint=Endpoint.CHAT, tier=Tier.STANDARD, usage=Usage(500, 0, 200),
                cost_picodollars=1_200_000_000, standard_cost_picodollars=1_200_000_000,
                caller=Caller(uid=1000), operation="evals", status=200, started_at=now,
                finished_at=now))

        count = int(rate * seconds)
        cpu = time.process_time()
        start = time.monotonic()
        async with anyio.create_task_group() as calls:
            for index in range(count):
                delay = start + index / rate - time.monotonic()
                if delay > 0:
                    await anyio.sleep(delay)
                calls.start_soon(one_call, index)
        used = time.process_time() - cpu
        await anyio.sleep(0.1)  # the last group commits
        for inbox in inboxes:
            inbox.close()
    return waits, used / count


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=500, help="calls per second, in all")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float, float]]] = {}
    with running_postgres() as server, tempfile.TemporaryDirectory() as tmp:
        for round_number in range(args.rounds):  # interleaved: the machine's noise is shared
            for label, ledgers in (("sqlite, 1 daemon", 1), ("postgresql, 1 daemon", 1),
                                   ("postgresql, 4 daemons", 4)):
                store = _store(label, server, Path(tmp) / f"{round_number}-{ledgers}")
                waits, cpu = anyio.run(measure, store, ledgers, args.rate, args.seconds,
                                       backend="asyncio", backend_options={"use_uvloop": True})
                results.setdefault(label, []).append(
                    (percentile(waits, 0.5), percentile(waits, 0.99), cpu))
    print(f"admission round trip at {args.rate} calls/s (admit + settle, a daily cap set), "
          f"medians of {args.rounds} rounds:")
    print(f"{'store':<24} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/call':>12}")
    for label, runs in results.items():
        print(f"{label:<24} {statistics.median(r[0] for r in runs) * 1e3:>8.2f} "
              f"{statistics.median(r[1] for r in runs) * 1e3:>8.2f} "
              f"{statistics.median(r[2] for r in runs) * 1e6:>12.0f}")
    return 0


def _store(label: str, server: PostgresServer, directory: Path) -> StoreLocation:
    if label.startswith("sqlite"):
        directory.mkdir(parents=True)
        return StoreLocation(Backend.SQLITE, str(directory / DATABASE_NAME))
    return StoreLocation(Backend.POSTGRESQL, server.new_database("bench"))


if __name__ == "__main__":
    raise SystemExit(main())
