"""``llmspool costs`` over a large ledger: figures, not a pass/fail timing (target <= 1 s).

Builds a state directory holding ``--entries`` ledger entries (default 1,000,000) spread over
the last 30 UTC days, several providers, models, tiers, operations, users and saving sources,
written through the migration's trigger as the ledger writes them. Then, with a daemon running
on that state directory (its upstream is never called):

- ``llmspool costs --by day,tier,model,operation,user --since 30d --json`` end to end: a new
  CLI process each time, its start-up included;
- the same as a table;
- ``GET /v1/ledger?by=...&since=30d`` alone, over the socket;
- ``cost_report()`` alone, on a read-only connection;

each the median of ``--runs`` runs (default 5).

    python -m tests.bench.bench_costs [--entries 1000000] [--runs 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
from llmspool.store.backend import DATABASE_NAME, Backend, StoreLocation
from llmspool.store.reports import cost_report, open_reader
from llmspool.store.schema import migrate_store

from tests.support.processes import python_command, start_daemon, unix_request

DAYS = 30
BY = "day,tier,model,operation,user"
UNUSED_UPSTREAM = "http://127.0.0.1:9/v1"  # discard port: the daemon never calls it here
MODELS = (("openai", "gpt-5-mini", 250_000, 2_000_000), ("openai", "gpt-5", 1_250_000, 10_000_000),
          ("openai", "gpt-4o-mini", 150_000, 600_000), ("ollama", "llama3", None, None))
OPERATIONS = ("summarise", "classify", "extract", "translate", None)
USERS = (0, 1000, 1001, None)

_INSERT = """
INSERT INTO ledger_entries (
    request_id, day, started_at, finished_at, provider, model, endpoint, tier, operation, uid,
    status, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, usage_estimated,
    cost_picodollars, standard_cost_picodollars, session, flag, saving_source
) VALUES (?, ?, ?, ?, ?, ?, '/v1/chat/completions', ?, ?, ?, 200, ?, ?, ?, 0, ?, ?, ?, NULL,
          NULL, ?)
"""


def entries(count: int, now: float, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    """``count`` plausible ledger rows, over the last ``DAYS`` UTC days."""
    pick = random.Random(seed)
    today = int(now // 86400) * 86400
    for index in range(count):
        finished = today - pick.randrange(DAYS) * 86400 + pick.randrange(86400)
        provider, model, input_price, output_price = pick.choice(MODELS)
        tier = "standard" if provider == "ollama" else pick.choice(
            ("standard", "standard", "flex", "batch"))
        input_tokens, output_tokens = pick.randrange(50, 4000), pick.randrange(10, 800)
        source: str | None = None
        if input_price is None or output_price is None:
            cost = standard = None
        else:
            standard = input_tokens * input_price + output_tokens * output_price
            cost = standard // 2 if tier != "standard" else standard
            if tier != "standard":
                source = "tier"
            elif pick.random() < 0.1:
                source, cost = pick.choice(("cache", "dedup")), 0
        yield (
            f"bench_{index}", time.strftime("%Y-%m-%d", time.gmtime(finished)), finished - 1.5,
            finished, provider, model, tier, pick.choice(OPERATIONS), pick.choice(USERS),
            input_tokens, 0, output_tokens, int(pick.random() < 0.01), cost, standard, source,
        )


def build_state(state_dir: Path, count: int) -> dict[str, Any]:
    """Create and migrate the database, then write ``count`` entries in one transaction."""

    path = state_dir / DATABASE_NAME
    anyio.run(migrate_store, StoreLocation(Backend.SQLITE, str(path)))
    started = time.perf_counter()
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("BEGIN")
        connection.executemany(_INSERT, entries(count, time.time()))
        connection.execute("COMMIT")
        rollup_rows = connection.execute("SELECT COUNT(*) FROM ledger_rollup").fetchone()[0]
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    return {
        "entries": count,
        "rollup_rows": rollup_rows,
        "build_s": round(time.perf_counter() - started, 1),
        "database_mib": round(path.stat().st_size / 2**20, 1),
    }


def median_seconds(run: Callable[[], object], runs: int) -> tuple[float, object]:
    """The median wall time of ``runs`` calls of ``run``, and the last call's result."""
    times = []
    result: object = None
    for _ in range(runs):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def bench(tmp: Path, count: int, runs: int) -> dict[str, Any]:
    figures = build_state(tmp / "state", count)
    print(f"built {count:,} entries ({figures['rollup_rows']:,} rollup rows) in "
          f"{figures['build_s']} s", file=sys.stderr)
    daemon = start_daemon(tmp, UNUSED_UPSTREAM, process=True)
    try:
        def cli(*output: str) -> Callable[[], bytes]:
            def run() -> bytes:
                done = subprocess.run(
                    python_command("costs", "--by", BY, "--since", f"{DAYS}d", *output),
                    env=daemon.env, capture_output=True, check=True, timeout=60,
                )
                return done.stdout
            return run

        seconds, output = median_seconds(cli("--json"), runs)
        assert isinstance(output, bytes)
        report = orjson.loads(output)
        assert report["total"]["requests"] == count, report["total"]
        figures["cli_json_s"] = round(seconds, 3)
        figures["report_rows"] = len(report["rows"])
        figures["cli_table_s"] = round(median_seconds(cli(), runs)[0], 3)

        url = f"/v1/ledger?by={BY}&since={DAYS}d"
        figures["http_s"] = round(median_seconds(
            lambda: unix_request(daemon.socket_path, "GET", url), runs)[0], 3)
        figures["startup_cli_s"] = round(median_seconds(
            lambda: subprocess.run(python_command("--version"), check=True,
                                   capture_output=True), runs)[0], 3)
    finally:
        daemon.terminate()

    database = tmp / "state" / DATABASE_NAME

    async def report_alone() -> dict[str, Any]:
        async with open_reader(StoreLocation(Backend.SQLITE, str(database))) as connection:
            return await cost_report(connection, by=BY.split(","),
                                     since_day=_day_back(DAYS))

    figures["report_function_s"] = round(
        median_seconds(lambda: anyio.run(report_alone), runs)[0], 4)
    figures["runs"] = runs
    return figures


def _day_back(days: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() - days * 86400))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmspool-bench-costs-") as tmp:
        figures = bench(Path(tmp), args.entries, args.runs)
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
