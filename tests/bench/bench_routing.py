"""What routing and cascades save on an 80/20 workload, and how many answers still pass.

The workload: ``--requests`` chat completions, one in five *hard*. The simulator is told which
(a fault rule: ``gpt-4o-mini`` refuses every request whose body contains ``HARD``), so the small
model fails exactly the hard ones and the large model answers everything. Half of the hard
requests say what they are about (``contract``), which a route rule can see; the other half
look like the easy ones.

Strategies, each through a fresh daemon (a process) in front of a fresh simulator:

- **all large**: every request to ``gpt-4o``;
- **all small**: every request to ``gpt-4o-mini``;
- **route**: a rule sends ``contract`` requests to ``gpt-4o``, the rest to ``gpt-4o-mini``;
- **cascade**: ``gpt-4o-mini`` first, ``gpt-4o`` when its answer is a refusal;
- **route + cascade**: the rule's requests straight to ``gpt-4o``, the rest through the cascade.

Cost is what the simulator billed (``GET /_sim/requests``, priced by the daemon's one billing
function), never the daemon's own count; an answer *passes* when the client got content that
is no refusal and finished with ``stop``. Figures, not pass/fail::

    python -m tests.bench.bench_routing [--requests 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import random
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from llmspool.core.calls import Tier, Usage
from llmspool.policy.billing import bill, load_price_book
from rich.console import Console
from rich.table import Table

from tests.support.money import billed_calls
from tests.support.processes import start_daemon, start_sim, unix_exchange

LARGE, SMALL = "gpt-4o", "gpt-4o-mini"
STRATEGIES: dict[str, tuple[str, str]] = {  # name: (model asked for, operation config)
    "all large": (LARGE, ""),
    "all small": (SMALL, ""),
    "route": (LARGE, f'route = [{{ model = "{LARGE}", when = {{ matches = "contract" }} }}, '
                     f'{{ model = "{SMALL}" }}]\n'),
    "cascade": (LARGE, f'cascade = {{ first = "{SMALL}" }}\n'),
    "route + cascade": (LARGE, f'route = [{{ model = "{LARGE}", when = {{ matches = "contract" '
                               f'}} }}]\ncascade = {{ first = "{SMALL}" }}\n'),
}
REFUSE_HARD = {"kind": "refusal", "model": SMALL, "contains": "HARD"}


@dataclass
class Result:
    strategy: str
    cost_usd: float
    calls: int
    passed: int
    requests: int


def workload(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    for number in range(count):
        kind = rng.random()
        if kind < 0.1:
            prompts.append(f"HARD {number}: find the flaw in this contract clause")
        elif kind < 0.2:
            prompts.append(f"HARD {number}: untangle what this customer means")
        else:
            prompts.append(f"easy {number}: what are your opening hours?")
    return prompts


def run(strategy: str, prompts: list[str], concurrency: int) -> Result:
    asked, operation = STRATEGIES[strategy]
    with tempfile.TemporaryDirectory() as tmp:
        sim = start_sim(Path(tmp), "[sim]\nlatency = \"20ms\"\n", process=True)
        daemon = None
        try:
            sim.set_faults(REFUSE_HARD)
            daemon = start_daemon(Path(tmp), sim.url, process=True,
                                  config_toml=f"[operations.work]\n{operation}")

            def one(prompt: str) -> bool:
                body = orjson.dumps({"model": asked,
                                     "messages": [{"role": "user", "content": prompt}]})
                assert daemon is not None
                status, answer, _headers = unix_exchange(
                    daemon.socket_path, "POST", "/v1/chat/completions", body,
                    {"content-type": "application/json", "x-llmspool-operation": "work"})
                return status == 200 and _passes(answer)

            with ThreadPoolExecutor(concurrency) as pool:
                passed = sum(pool.map(one, prompts))
            calls = billed_calls(sim)
        finally:
            if daemon is not None:
                daemon.terminate()
            sim.terminate()
    prices = load_price_book()
    cost = 0
    for call in calls:
        billed = bill(prices, "openai", call["model"], Tier(call["tier"]),
                      Usage(input_tokens=call["input_tokens"],
                            output_tokens=call["output_tokens"])).cost_picodollars
        assert billed is not None, f"{call['model']} has no price"
        cost += billed
    return Result(strategy, cost / 10**12, len(calls), passed, len(prompts))


def _passes(answer: Any) -> bool:
    choice = answer["choices"][0]
    message = choice["message"]
    return bool(message.get("content")) and not message.get("refusal") \
        and choice["finish_reason"] == "stop"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    prompts = workload(args.requests)
    results = [run(name, prompts, args.concurrency) for name in STRATEGIES]
    large = results[0].cost_usd
    table = Table(title=f"{args.requests} requests, "
                        f"{sum(p.startswith('HARD') for p in prompts)} hard")
    for column in ("strategy", "cost (USD)", "vs all large", "upstream calls", "passed"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for result in results:
        table.add_row(result.strategy, f"{result.cost_usd:.6f}",
                      f"{result.cost_usd / large:.3f}", str(result.calls),
                      f"{100 * result.passed / result.requests:.1f}%")
    Console().print(table)


if __name__ == "__main__":
    main()
