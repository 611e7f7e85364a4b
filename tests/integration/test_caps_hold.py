"""A daily cap holds under load and across crashes (issue 12).

256 chat calls at once against ``[budgets] daily_usd``: with ``max_tokens``, without it (the
simulator answers long), and streamed without it. A call without ``max_tokens`` reserves the
model's largest answer (``max_output_tokens`` in pricing.toml), so however the calls race,
the day's spend stays within the cap plus one reservation; the others are refused with 402
``budget_day`` before anything is sent upstream.

Then rounds of concurrent calls, each ended by SIGKILL and a restart: calls whose outcome the
daemon never learnt are charged their reservation (``unknown_outcome``), so the ledger never
shows less than the simulator billed, and the cap still holds.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from pathlib import Path

import pytest
from llmspool.core.pricing import load_price_table

from tests.support.capped_calls import (
    PICODOLLARS_PER_USD,
    Shape,
    all_at_once,
    call,
    largest_reservation,
    true_spend,
    usd,
)
from tests.support.money import billed_calls, ledger_entries, spend_by_day
from tests.support.processes import (
    UNLIMITED_SIM,
    start_daemon,
    start_sim,
)

CAP_USD = 0.02
CAP = round(CAP_USD * PICODOLLARS_PER_USD)
CAP_CONFIG = f"[budgets]\ndaily_usd = {CAP_USD}\n"
CONCURRENT = 256
LONG_ANSWER = 2000


# -- 4. 256 calls at once ---------------------------------------------------------------------


SHAPES = {
    "max_tokens": Shape(max_tokens=LONG_ANSWER, stream=False),
    "no_max_tokens": Shape(max_tokens=None, stream=False),
    "streamed_no_max_tokens": Shape(max_tokens=None, stream=True),
}


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_256_calls_at_once_never_spend_past_the_cap(tmp_path: Path, shape: Shape) -> None:
    sim = start_sim(tmp_path, UNLIMITED_SIM + f'output_tokens = {LONG_ANSWER}\nlatency = "300ms"\n')
    daemon = start_daemon(tmp_path, sim.url, config_toml=CAP_CONFIG)
    try:
        outcomes = all_at_once(
            CONCURRENT, lambda i: call(daemon.socket_path, f"call {i} of {CONCURRENT}", shape))
        assert daemon.terminate() == 0
        calls = billed_calls(sim)
        served = sim.stats()["requests"]["by_path"].get("/v1/chat/completions", 0)
    finally:
        daemon.terminate()
        sim.terminate()

    admitted = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 402]
    assert len(admitted) + len(refused) == CONCURRENT, \
        {(o.status, o.code) for o in outcomes if o.status not in (200, 402)}
    assert admitted and refused, "the cap should admit some calls and refuse others"
    assert {o.code for o in refused} == {"budget_day"}
    table = load_price_table()
    bound = CAP + largest_reservation(table, calls, shape.max_tokens)
    days = spend_by_day(ledger_entries(daemon.state_dir))
    spent = max(days.values(), default=0)  # on one UTC day
    assert spent <= bound, f"spent {usd(spent)} > cap {usd(CAP)} + one reservation"
    assert true_spend(calls, table) <= bound * len(days)
    # The simulator served exactly the admitted calls, under their request ids.
    assert served == len(calls) == len(admitted)
    assert all(c["request_id"] for c in calls), "calls went upstream without X-Client-Request-Id"
    assert sorted(c["request_id"] for c in calls) == sorted(str(o.request_id) for o in admitted)


# -- 5. the same cap across kills -------------------------------------------------------------


KILL_SIM = UNLIMITED_SIM + 'latency = "100ms"\nlatency_per_token = "1ms"\n'
ROUNDS = 8
MIN_ROUNDS = 4
ROUNDS_TIME = 20.0
"""Seconds of rounds, after MIN_ROUNDS, before no more are started (restarts are slow on a
loaded machine)."""
THREADS = 16
# Each client thread keeps one shape of call, 0.4 s or 1.1 s long, streamed or not (a stream
# cut by a kill is billed for what was sent). Their reservations are small enough that the cap
# lasts a few rounds.
ROUND_SHAPES = [Shape(300, False), Shape(300, True), Shape(1000, False), Shape(1000, True)]


def calls_until(socket_path: Path, over: threading.Event, name: str, shape: Shape,
                unexpected: list[str]) -> None:
    count = 0
    while not over.is_set():
        count += 1
        try:
            outcome = call(socket_path, f"{name} call {count}", shape)
        except (OSError, http.client.HTTPException):
            return  # the daemon was killed under this call
        if outcome.status == 402 and outcome.code == "budget_day":
            over.wait(0.05)
        elif outcome.status != 200:
            unexpected.append(f"{name}: {outcome}")


def test_the_cap_holds_across_kills_and_the_ledger_never_shows_less_than_was_billed(
    tmp_path: Path,
) -> None:
    sim = start_sim(tmp_path, KILL_SIM)
    daemon = start_daemon(tmp_path, sim.url, config_toml=CAP_CONFIG, process=True)
    rng = random.Random(5)
    unexpected: list[str] = []
    started = time.monotonic()
    try:
        for round_number in range(ROUNDS):
            if round_number >= MIN_ROUNDS and time.monotonic() - started > ROUNDS_TIME:
                break
            over = threading.Event()
            threads = [
                threading.Thread(target=calls_until, daemon=True, args=(
                    daemon.socket_path, over, f"r{round_number}t{i}",
                    ROUND_SHAPES[i % len(ROUND_SHAPES)], unexpected))
                for i in range(THREADS)
            ]
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(0.3, 1.2))
            daemon.process.kill()
            daemon.process.wait(10)
            over.set()
            for thread in threads:
                thread.join(15)
            daemon = start_daemon(tmp_path, sim.url, config_toml=CAP_CONFIG, process=True)
        _status, report = daemon.get("/v1/status")
        assert daemon.terminate() == 0
        calls = billed_calls(sim)
    finally:
        daemon.terminate()
        sim.terminate()

    assert not unexpected, unexpected[:5]
    table = load_price_table()
    entries = ledger_entries(daemon.state_dir)
    ledger_spend = sum(entry["cost_picodollars"] for entry in entries)
    billed = true_spend(calls, table)
    bound = CAP + largest_reservation(table, calls, max(s.max_tokens or 0 for s in ROUND_SHAPES))
    assert billed > 0
    assert ledger_spend >= billed, \
        f"the ledger shows {usd(ledger_spend)}, the provider billed {usd(billed)}"
    days = spend_by_day(entries)
    day_spend = max(days.values())  # on one UTC day
    assert day_spend <= bound, f"spent {usd(day_spend)} > cap {usd(CAP)} + one reservation"
    assert billed <= bound * len(days)
    unknown = sum(1 for entry in entries if entry["flag"] == "unknown_outcome")
    assert report["ledger"].get("unknown_outcome_today") == unknown
