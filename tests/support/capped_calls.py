"""Calls against a budget cap, for the money tests: chat calls of a given shape through a
daemon's socket (what they got back, under which request id), released together from many
threads, and the sums a test bounds spend by (what the simulator billed at the bundled prices,
the most one call may reserve)."""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from llmspool.core.calls import Tier, Usage
from llmspool.core.pricing import PriceTable, TierPrice

from tests.support.processes import unix_exchange

JSON = {"content-type": "application/json"}
MODEL = "gpt-4o-mini"
MAX_OUTPUT_TOKENS = 16384
"""gpt-4o-mini's largest answer, if pricing.toml does not say (``max_output_tokens``)."""
PICODOLLARS_PER_USD = 10**12


@dataclass(frozen=True)
class Shape:
    """How the concurrent calls ask: their ``max_tokens`` (None: none) and streaming."""

    max_tokens: int | None
    stream: bool


def chat_body(content: str, shape: Shape) -> bytes:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    if shape.max_tokens is not None:
        body["max_tokens"] = shape.max_tokens
    if shape.stream:
        body["stream"] = True
    return orjson.dumps(body)


@dataclass(frozen=True)
class Outcome:
    status: int
    code: str | None
    request_id: str | None


def call(socket_path: Path, content: str, shape: Shape) -> Outcome:
    status, answer, headers = unix_exchange(socket_path, "POST", "/v1/chat/completions",
                                            chat_body(content, shape), JSON)
    code = answer["error"].get("code") if isinstance(answer, dict) and "error" in answer \
        else None
    return Outcome(status, code, headers.get("x-llmspool-request-id"))


def all_at_once(count: int, work: Callable[[int], Outcome]) -> list[Outcome]:
    """``work(0..count-1)`` from ``count`` threads released together."""
    start = threading.Barrier(count)

    def released(index: int) -> Outcome:
        start.wait(30)
        return work(index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(released, range(count)))


def standard_price(table: PriceTable) -> TierPrice:
    price = table.price("openai", MODEL, Tier.STANDARD)
    assert price is not None
    return price


def true_spend(calls: list[dict[str, Any]], table: PriceTable) -> int:
    """What the simulator billed, in picodollars, at pricing.toml's prices."""
    total = 0
    for billed in calls:
        price = table.price("openai", MODEL, Tier(billed["tier"]))
        assert price is not None
        total += price.cost(Usage(input_tokens=billed["input_tokens"],
                                  output_tokens=billed["output_tokens"]))
    return total


def max_output_tokens() -> int:
    """``MODEL``'s largest answer by the bundled pricing.toml (``max_output_tokens``)."""
    text = resources.files("llmspool").joinpath("defaults/pricing.toml").read_text()
    limit: int = tomllib.loads(text)["openai"][MODEL].get("max_output_tokens", MAX_OUTPUT_TOKENS)
    return limit


def largest_reservation(table: PriceTable, calls: list[dict[str, Any]],
                        max_tokens: int | None) -> int:
    """The most one call may reserve: its largest answer, and twice the largest prompt the
    simulator counted (room for the daemon's offline estimate of the prompt, which errs high)."""
    output = max_tokens or max_output_tokens()
    prompt = 2 * max((billed["input_tokens"] for billed in calls), default=0) + 16
    # gpt-4o-mini has no dearer price for cached or reasoning tokens: its cost is its worst.
    return standard_price(table).cost(Usage(input_tokens=prompt, output_tokens=output))


def usd(picodollars: int) -> str:
    return f"${picodollars / PICODOLLARS_PER_USD:.6f}"
