"""The shared store's costs: how long a call waits for its admission (a durable
reservation, checked against the caps), and how fast deferred work runs, on SQLite and on
PostgreSQL, with one daemon and with several sharing one database.

**Admissions.**
Drives real ``Ledger`` actors over their inboxes at a paced rate of calls per second (spread
round robin over the ledgers), each call admitted and then settled, with a daily cap set (so
every admission is decided: in memory on SQLite, in the database for a shared store). It
measures each admission's round trip (Admit sent to the reply), and the process CPU per call
(worker threads included; PostgreSQL's own CPU is not counted). It starts its own PostgreSQL
server (``llmspool.testing.postgres``).

**Deferred work.** ``--lines`` direct-tier job requests (batch off, a 24 h deadline) against
``llmspool sim`` answering at once: the fleet's requests per second from the first submission
to the last job done, with 1 daemon on SQLite and 1, 2 and 4 daemon processes on one
PostgreSQL database, the requests either split into one job per daemon (each submitted to its
own daemon) or in one job submitted to the first daemon, which the others help with (they
claim its queued lines). Figures, not pass/fail.

**The fleet's response cache.** What a daemon of a shared store adds to a call that misses
its own cache file (the fleet's cache is asked, and the daemon starts the fleet's flight), to
its publishing the answer as the flight ends, and to a call the fleet's cache answers: each
``--calls`` times in a row through ``FleetCache`` on one PostgreSQL database.

    python -m tests.bench.bench_fleet [--rate 500] [--seconds 4] [--rounds 3] [--lines 20000]
                                      [--calls 2000] [--part admissions|deferred|cache|both]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import anyio
from anyio.abc import ObjectSendStream
from llmspool.actors.caching.fleet import FleetCache
from llmspool.actors.ledger import Ledger, LedgerMessage
from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.core.config.sections import BudgetsConfig
from llmspool.core.errors import ApiError
from llmspool.core.streams import create_memory_stream
from llmspool.messages import Admit, Call
from llmspool.policy.planner import Planner
from llmspool.store.backend import DATABASE_NAME, Backend, StoreLocation
from llmspool.store.fleet import Member
from llmspool.store.ledger import LedgerConnection
from llmspool.store.records import Caller, NewEntry, Settled
from llmspool.store.schema import migrate_store
from llmspool.testing.postgres import PostgresServer, running_postgres

from tests.bench.bench_jobs import make_jsonl, wait_done
from tests.bench.bench_ledger import paced
from tests.support.processes import (
    UNLIMITED_SIM,
    Daemon,
    start_daemon,
    start_sim,
    unix_request,
)

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
            inbox_in, inbox_out = create_memory_stream[LedgerMessage](4096)
            ledger = Ledger(inbox_out, database, budgets=BUDGETS,
                            member=Member(f"bench-{number}", "bench", number, "bench", 30.0))
            await group.start(ledger.run)
            inboxes.append(inbox_in)

        async def one_call(index: int) -> None:
            inbox = inboxes[index % ledgers]
            request_id = f"bench-{index}-{time.monotonic_ns()}"
            reply_in, reply_out = create_memory_stream[ApiError | None](1)
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
        used = await paced(rate, seconds, one_call)
        await anyio.sleep(0.1)  # the last group commits
        for inbox in inboxes:
            inbox.close()
    return waits, used / count


def deferred(workdir: Path, store_url: str | None, daemons: int, lines: int,
             one_job: bool = False) -> float:
    """Requests per second of ``lines`` job requests over ``daemons`` daemons, each given
    its share as a job of its own (``one_job``: all of them as one job, submitted to the first
    daemon); ``store_url`` None: SQLite (one daemon)."""
    sim = start_sim(workdir, UNLIMITED_SIM, process=True)
    fleet: list[Daemon] = []
    try:
        for number in range(daemons):
            directory = workdir / f"d{number}"
            directory.mkdir()
            store = "" if store_url is None else (
                f'[store]\nurl = "{store_url}"\nname = "bench-{number}"\n')
            fleet.append(start_daemon(directory, sim.url, process=True, config_toml=(
                f"{store}[jobs]\nmax_in_flight = 256\n[batch]\nenabled = false\n")))
        share = lines if one_job else lines // daemons
        started = time.perf_counter()
        jobs = []
        body = make_jsonl(share)
        for daemon in fleet[:1] if one_job else fleet:
            status, job = unix_request(daemon.socket_path, "POST", "/v1/jobs?deadline=24h",
                                       body, {"content-type": "application/jsonl"})
            assert status == 202, job
            jobs.append((daemon, job["id"]))
        succeeded = 0
        for daemon, job_id in jobs:
            done = wait_done(daemon, job_id, timeout=900)
            succeeded += done["counts"].get("succeeded", 0)
        elapsed = time.perf_counter() - started
        assert succeeded == share * len(jobs), f"{succeeded} of {share * len(jobs)} succeeded"
        return succeeded / elapsed
    finally:
        for daemon in fleet:
            daemon.terminate()
        sim.terminate()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=500, help="calls per second, in all")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--part", choices=("admissions", "deferred", "cache", "both"),
                        default="both", help="both: admissions and deferred work")
    args = parser.parse_args()
    with running_postgres() as server:
        if args.part in ("admissions", "both"):
            admissions(server, args.rate, args.seconds, args.rounds)
        if args.part in ("deferred", "both"):
            deferred_work(server, args.lines, args.rounds)
        if args.part == "cache":
            fleet_cache(server, args.calls, args.rounds)
    return 0


async def cache_round_trips(store: StoreLocation, calls: int
                            ) -> tuple[list[float], list[float], list[float]]:
    """Seconds of each miss (ask, start the flight), publish and hit, ``calls`` of each."""
    await migrate_store(store)
    # Only a call's deadline (none here) is read, and the planner only for one.
    fleet = FleetCache(store, "bench", cast(Planner, None))
    call = cast(Call, SimpleNamespace(deadline_at=None, provider="openai", model="gpt-4o-mini"))
    body = b'{"choices":[{"message":{"content":"' + b"x" * 400 + b'"}}]}'
    misses: list[float] = []
    publishes: list[float] = []
    hits: list[float] = []
    async with fleet.opened():
        for number in range(calls):
            key = number.to_bytes(16, "big")
            started = time.perf_counter()
            assert await fleet.answer_or_lead(key, call) is None
            asked = time.perf_counter()
            await fleet.landed(key, NewEntry(key, False, body, "openai", "gpt-4o-mini",
                                             Endpoint.CHAT.value, Tier.STANDARD,
                                             Usage(100, 0, 20, 0), 3600.0))
            misses.append(asked - started)
            publishes.append(time.perf_counter() - asked)
        for number in range(calls):
            started = time.perf_counter()
            assert await fleet.answer_or_lead(number.to_bytes(16, "big"), call) is not None
            hits.append(time.perf_counter() - started)
    return misses, publishes, hits


def fleet_cache(server: PostgresServer, calls: int, rounds: int) -> None:
    results: dict[str, list[tuple[float, float]]] = {}
    for _round in range(rounds):
        store = StoreLocation(Backend.POSTGRESQL, server.new_database("cache"))
        figures = anyio.run(cache_round_trips, store, calls, backend="asyncio",
                            backend_options={"use_uvloop": True})
        for label, values in zip(("miss: ask and lead", "publish as it lands", "hit"),
                                 figures, strict=True):
            results.setdefault(label, []).append(
                (percentile(values, 0.5), percentile(values, 0.99)))
    print(f"the fleet's response cache, {calls} calls each, medians of {rounds} rounds:")
    print(f"{'step':<24} {'p50 ms':>8} {'p99 ms':>8}")
    for label, runs in results.items():
        print(f"{label:<24} {statistics.median(r[0] for r in runs) * 1e3:>8.2f} "
              f"{statistics.median(r[1] for r in runs) * 1e3:>8.2f}")


def admissions(server: PostgresServer, rate: int, seconds: float, rounds: int) -> None:
    results: dict[str, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_number in range(rounds):  # interleaved: the machine's noise is shared
            for label, ledgers in (("sqlite, 1 daemon", 1), ("postgresql, 1 daemon", 1),
                                   ("postgresql, 4 daemons", 4)):
                store = _store(label, server, Path(tmp) / f"{round_number}-{ledgers}")
                waits, cpu = anyio.run(measure, store, ledgers, rate, seconds,
                                       backend="asyncio", backend_options={"use_uvloop": True})
                results.setdefault(label, []).append(
                    (percentile(waits, 0.5), percentile(waits, 0.99), cpu))
    print(f"admission round trip at {rate} calls/s (admit + settle, a daily cap set), "
          f"medians of {rounds} rounds:")
    print(f"{'store':<24} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/call':>12}")
    for label, runs in results.items():
        print(f"{label:<24} {statistics.median(r[0] for r in runs) * 1e3:>8.2f} "
              f"{statistics.median(r[1] for r in runs) * 1e3:>8.2f} "
              f"{statistics.median(r[2] for r in runs) * 1e6:>12.0f}")


def deferred_work(server: PostgresServer, lines: int, rounds: int) -> None:
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_number in range(rounds):
            for label, daemons in (("sqlite, 1 daemon", 1), ("postgresql, 1 daemon", 1),
                                   ("postgresql, 2 daemons", 2),
                                   ("postgresql, 4 daemons", 4),
                                   ("postgresql, 2 daemons, one job", 2),
                                   ("postgresql, 4 daemons, one job", 4)):
                workdir = Path(tmp) / f"{round_number}-{label.replace(', ', '-')}"
                workdir.mkdir()
                url = None if label.startswith("sqlite") else server.new_database("deferred")
                results.setdefault(label, []).append(deferred(
                    workdir, url, daemons, lines, one_job=label.endswith("one job")))
    print(f"deferred work: {lines} direct-tier job requests, instant upstream, "
          f"medians of {rounds} rounds:")
    print(f"{'store':<32} {'requests/s':>11}   runs")
    for label, runs in results.items():
        print(f"{label:<32} {statistics.median(runs):>11.0f}   "
              f"{', '.join(f'{run:.0f}' for run in runs)}")


def _store(label: str, server: PostgresServer, directory: Path) -> StoreLocation:
    if label.startswith("sqlite"):
        directory.mkdir(parents=True)
        return StoreLocation(Backend.SQLITE, str(directory / DATABASE_NAME))
    return StoreLocation(Backend.POSTGRESQL, server.new_database("bench"))


if __name__ == "__main__":
    raise SystemExit(main())
