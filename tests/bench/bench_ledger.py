"""The ledger's cost per call: admit (a durable reservation, checked against caps) + settle
(the entry, and the reservation's deletion, in one group commit).

Drives the real ledger actor over its real inbox and a real SQLite store, at a paced rate of
calls per second, and measures the process CPU time it takes (worker threads included),
minus the CPU of the same pacing loop with no ledger work. Every call is admitted, caps or
not (the reservation is the durable intent that bills a call cut off by a crash); with no caps
the admission checks nothing. Figures, not pass/fail.

    python -m tests.bench.bench_ledger [--rate 1000] [--seconds 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from llmspool.actors.ledger import Ledger, LedgerMessage
from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.core.config.sections import BudgetsConfig, CapConfig
from llmspool.core.errors import ApiError
from llmspool.core.streams import create_memory_stream
from llmspool.messages import Admit
from llmspool.store.ledger import open_ledger_connection
from llmspool.store.records import Caller, Settled

BUDGETS = BudgetsConfig(
    per_request_usd=1.0, daily_usd=1e6, session_usd=1e6,
    operations={"evals": CapConfig(daily_usd=1e6)},
)


async def paced(rate: int, seconds: float, work: Any) -> float:
    """CPU seconds spent calling ``work(i)`` ``rate`` times a second for ``seconds``."""
    count = int(rate * seconds)
    cpu = time.process_time()
    start = time.monotonic()
    async with anyio.create_task_group() as group:
        for index in range(count):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                await anyio.sleep(delay)
            group.start_soon(work, index)
    return time.process_time() - cpu


async def measure(rate: int, seconds: float, caps: bool = True) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        database = await open_ledger_connection(Path(tmp))
        inbox_in, inbox_out = create_memory_stream[LedgerMessage](4096)
        ledger = Ledger(inbox_out, database, budgets=BUDGETS if caps else BudgetsConfig())

        async def one_call(index: int) -> None:
            request_id = f"bench-{index}-{time.monotonic_ns()}"
            reply_in, reply_out = create_memory_stream[ApiError | None](1)
            with reply_in, reply_out:
                await inbox_in.send(Admit(request_id, "openai", "gpt-5-mini", "evals", 1000,
                                          "session-1", 2_000_000_000, reply_in))
                assert await reply_out.receive() is None
            await inbox_in.send(Settled(
                request_id=request_id, provider="openai", model="gpt-5-mini",
                endpoint=Endpoint.CHAT, tier=Tier.FLEX, usage=Usage(500, 0, 200),
                cost_picodollars=1_200_000_000, standard_cost_picodollars=2_400_000_000,
                caller=Caller(uid=1000), operation="evals", status=200,
                started_at=time.time(), finished_at=time.time(), session="session-1",
                saving_source="tier",
            ))

        async def nothing(_index: int) -> None:
            await anyio.sleep(0)

        try:
            async with anyio.create_task_group() as group:
                await group.start(ledger.run)
                baseline = await paced(rate, seconds, nothing)
                loaded = await paced(rate, seconds, one_call)
                await anyio.sleep(0.2)  # the last group commit
                inbox_in.close()
        finally:
            database.close()
    calls = rate * seconds
    return {
        "cpu_us_per_call": (loaded - baseline) / calls * 1e6,
        "cpu_share_of_one_core": (loaded - baseline) / seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for caps, label in ((True, "admit + settle, durable (caps set)"),
                        (False, "admit + settle, durable (no caps)")):
        runs = [anyio.run(measure, args.rate, args.seconds, caps, backend="asyncio",
                          backend_options={"use_uvloop": True}) for _ in range(args.rounds)]
        per_call = [run["cpu_us_per_call"] for run in runs]
        print(f"ledger {label} at {args.rate}/s, {args.rounds} rounds: "
              f"median {statistics.median(per_call):.1f} µs CPU per call "
              f"(runs: {', '.join(f'{value:.1f}' for value in per_call)}), "
              f"{statistics.median(r['cpu_share_of_one_core'] for r in runs):.1%} of one core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
