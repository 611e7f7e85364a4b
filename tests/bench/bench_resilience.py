"""Resilience figures: rate-limit use under 3x load, attempts under a half-failing upstream,
and the time from an upstream healing to its breaker closing.

    python -m tests.bench.bench_resilience [--seconds 60] [--rounds 1] [--json OUT]

1. **Rate limits.** The simulator enforces 600 RPM and 200,000 TPM per model, as OpenAI does
   (a bucket per limit, refilled continuously, charged prompt + max_tokens at arrival). The
   daemon is seeded with the same limits (``[limits.openai."gpt-4o-mini"]``). An open-loop
   client offers three times the token limit for ``--seconds``. Figures: tokens the simulator
   admitted as a share of the most it could (the full bucket plus its refill over the run),
   and the share of upstream calls answered 429.
2. **Half-failing upstream.** 50% of upstream calls answer 503; 1,000 requests at concurrency
   16. Figure: upstream attempts per offered request (target <= 1.1), with the breaker on its
   defaults (it opens: half the calls failing is over its failure rate), and again with the
   breaker kept shut, so that only the retry budget holds the attempts down.
3. **Healing.** Every call fails until the upstream heals; a client sends 5 requests a second.
   Figure: seconds from the healing to the breaker closed, with defaults (target <= 120 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from tests.support.processes import Daemon, Sim, start_daemon, start_sim

MODEL = "gpt-4o-mini"
RPM, TPM = 600, 200_000
MAX_TOKENS = 250
PROMPT = "Summarise the quarterly figures for the board in three short bullet points. " * 5


async def post(socket_path: Path, body: bytes) -> int:
    """One chat completion over the Unix socket; its status (0: the daemon did not answer)."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
    except OSError:
        return 0
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\nconnection: close\r\n"
                     b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()
        return int(status_line.split()[1]) if status_line else 0
    except (OSError, ValueError, IndexError):
        return 0
    finally:
        writer.close()


def chat_body(max_tokens: int = MAX_TOKENS) -> bytes:
    return orjson.dumps({"model": MODEL, "max_tokens": max_tokens,
                         "messages": [{"role": "user", "content": PROMPT}]})


def model_stats(sim: Sim) -> dict[str, Any]:
    by_model = sim.stats()["ratelimits"]["by_model"]
    return by_model.get(MODEL, {"admitted": 0, "tokens": 0, "refused_rpm": 0,
                                "refused_tpm": 0, "refused_too_large": 0})


async def offer(socket_path: Path, rate: float, seconds: float) -> list[asyncio.Task[int]]:
    """Open loop: a request every 1/rate seconds for ``seconds``, whatever the answers do."""
    body = chat_body()
    tasks: list[asyncio.Task[int]] = []
    started = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - started) < seconds:
        while sent < elapsed * rate:
            tasks.append(asyncio.create_task(post(socket_path, body)))
            sent += 1
        await asyncio.sleep(0.01)
    return tasks


def bench_rate_limits(workdir: Path, seconds: float) -> dict[str, Any]:
    sim = start_sim(workdir, f'[sim]\nenforce_ratelimits = true\nratelimit_requests = {RPM}\n'
                             f'ratelimit_tokens = {TPM}\nlatency = "300ms"\n', process=True)
    daemon = start_daemon(workdir, sim.url, config_toml=(
        f'[limits.openai."{MODEL}"]\nrpm = {RPM}\ntpm = {TPM}\n'), process=True)
    try:
        # The tokens one request asks for, as the simulator counts them.
        probe = model_stats(sim)["tokens"]
        asyncio.run(post(daemon.socket_path, chat_body()))
        per_request = model_stats(sim)["tokens"] - probe
        rate = 3 * TPM / per_request / 60  # requests per second: 3x the token limit

        async def run() -> dict[str, Any]:
            started = time.monotonic()
            tasks = await offer(daemon.socket_path, rate, seconds)
            stats = model_stats(sim)  # at the end of the window
            elapsed = time.monotonic() - started
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return {"stats": stats, "elapsed": elapsed, "offered": len(tasks)}

        outcome = asyncio.run(run())
        stats, elapsed = outcome["stats"], outcome["elapsed"]
        most = TPM + TPM * elapsed / 60 - per_request  # the probe's tokens came from the bucket
        refused = stats["refused_rpm"] + stats["refused_tpm"] + stats["refused_too_large"]
        calls = stats["admitted"] + refused
        return {
            "offered_rps": round(rate, 2),
            "tokens_per_request": per_request,
            "offered": outcome["offered"],
            "admitted": stats["admitted"],
            "token_use_share": round((stats["tokens"] - per_request) / most, 4),
            "share_429": round(refused / calls, 5) if calls else 0.0,
            "answered_429": refused,
        }
    finally:
        daemon.terminate()
        sim.terminate()


def bench_half_failing(workdir: Path, config: str = "", requests: int = 1000) -> dict[str, Any]:
    sim = start_sim(workdir, '[sim]\nratelimit_requests = 1000000000\n'
                             'ratelimit_tokens = 1000000000000\n', process=True)
    daemon = start_daemon(workdir, sim.url, config_toml=config, process=True)
    try:
        sim.set_faults({"kind": "status", "status": 503, "probability": 0.5})
        body = chat_body(5)

        async def run() -> list[int]:
            limit = asyncio.Semaphore(16)

            async def one() -> int:
                async with limit:
                    return await post(daemon.socket_path, body)

            return list(await asyncio.gather(*(one() for _ in range(requests))))

        statuses = asyncio.run(run())
        attempts = sim.stats()["requests"]["by_path"].get("/v1/chat/completions", 0)
        return {
            "offered": requests,
            "upstream_attempts": attempts,
            "attempts_per_request": round(attempts / requests, 3),
            "answered_200": statuses.count(200),
            "refused_503_circuit_open": _circuit_open_count(daemon),
        }
    finally:
        daemon.terminate()
        sim.terminate()


def _circuit_open_count(daemon: Daemon) -> int:
    _status, body = daemon.get("/v1/status")
    return sum(1 for move in body["dispatcher"]["breaker_transitions"] if move["to"] == "open")


def breaker_state(daemon: Daemon) -> str:
    _status, body = daemon.get("/v1/status")
    for breaker in body["dispatcher"]["breakers"]:
        if breaker["provider"] == "openai" and breaker["tier"] == "standard":
            return str(breaker["state"])
    return "closed"


def bench_heal(workdir: Path) -> dict[str, Any]:
    sim = start_sim(workdir, process=True)
    daemon = start_daemon(workdir, sim.url, process=True)
    try:
        sim.set_faults({"kind": "status", "status": 500})
        body = chat_body(5)

        async def run() -> float:
            healed_at = None
            started = time.monotonic()
            while True:
                await post(daemon.socket_path, body)
                state = breaker_state(daemon)
                if healed_at is None and state == "open":
                    sim.clear_faults()  # the upstream heals right after the breaker opened
                    healed_at = time.monotonic()
                if healed_at is not None and state == "closed":
                    return time.monotonic() - healed_at
                if time.monotonic() - started > 300:
                    return float("nan")
                await asyncio.sleep(0.2)

        return {"heal_to_closed_s": round(asyncio.run(run()), 1)}
    finally:
        daemon.terminate()
        sim.terminate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rounds: list[dict[str, Any]] = []
    for round_number in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="llmspool-bench-") as tmp:
            work = Path(tmp)
            for name in ("limits", "failing", "budget", "heal"):
                (work / name).mkdir()
            figures = {
                "rate_limits": bench_rate_limits(work / "limits", args.seconds),
                "half_failing": bench_half_failing(work / "failing"),
                # The retry budget alone: the breaker's rule on failure rates kept out of it.
                "half_failing_no_breaker": bench_half_failing(
                    work / "budget", "[breaker]\nfailures = 1000000\nmin_calls = 1000000\n"),
                "heal": bench_heal(work / "heal"),
            }
        print(f"round {round_number + 1}: {json.dumps(figures)}", file=sys.stderr)
        rounds.append(figures)

    def median(section: str, key: str) -> float:
        return statistics.median(float(r[section][key]) for r in rounds)

    table = Table(title=f"llmspool resilience (median of {len(rounds)} rounds)")
    for column in ("figure", "target", "measured"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    table.add_row("tokens used / TPM limit, 3x load", ">= 95%",
                  f"{median('rate_limits', 'token_use_share'):.1%}")
    table.add_row("upstream calls answered 429", "<= 0.5%",
                  f"{median('rate_limits', 'share_429'):.2%}")
    table.add_row("upstream attempts / offered, 50% failing", "<= 1.1",
                  f"{median('half_failing', 'attempts_per_request'):.3f}")
    table.add_row("answered 200 of 1,000, 50% failing (the breaker opens)", "",
                  f"{median('half_failing', 'answered_200'):.0f}")
    table.add_row("upstream attempts / offered, 50% failing, breaker kept shut", "<= 1.1",
                  f"{median('half_failing_no_breaker', 'attempts_per_request'):.3f}")
    table.add_row("answered 200 of 1,000, same", "",
                  f"{median('half_failing_no_breaker', 'answered_200'):.0f}")
    table.add_row("upstream healed -> breaker closed", "<= 120 s",
                  f"{median('heal', 'heal_to_closed_s'):.1f} s")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
