"""Money across crashes, under caps on the batch tier, and across a price reload (issue 12).

A real daemon is killed (SIGKILL) at random moments while interactive (standard and flex),
streamed and job calls (direct on standard, on flex, and through the Batch API) are in flight,
and started again on the same state directory. Afterwards the simulator's log of
the calls it answered and billed (``GET /_sim/requests``) is set against the daemon's ledger,
read straight from its SQLite file: every call the "provider" billed has exactly one ledger
entry under the request id the daemon sent upstream (``X-Client-Request-Id``), with the same
tokens and the price of pricing.toml, or an ``unknown_outcome`` entry at its reservation when
the daemon died before it settled. No call the provider never answered is billed, apart from
those unknown outcomes.

Then the Batch API with a daily cap (lines past the cap fail with ``budget_day`` and are never
uploaded; the others go at batch prices), and SIGHUP with a changed price file (the next direct
call and the next batch line are billed at the new prices, under another ``price_version``).
"""

from __future__ import annotations

import http.client
import random
import re
import signal
import threading
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import tomli_w
from llmspool.core.calls import Tier, Usage
from llmspool.core.pricing import PriceTable, load_price_table

from tests.support.money import (
    QUICK_BATCHES,
    billed_calls,
    ledger_entries,
    reservations,
)
from tests.support.processes import (
    UNLIMITED_SIM,
    Daemon,
    Sim,
    start_daemon,
    start_sim,
    unix_exchange,
    unix_request,
)
from tests.support.waiting import wait_for

JSON = {"content-type": "application/json"}
MODEL = "gpt-4o-mini"
FLEX_MODEL = "gpt-5-mini"  # priced on flex
_BATCH_ENTRY = re.compile(r"\.(\d+)\.b\d+$")  # a batch line's entry: <job>.<line id>.b<batch>
PICODOLLARS_PER_USD = 10**12

# Calls take 60-200 ms at the simulator, so a kill nearly always finds some in flight.
CRASH_SIM = (UNLIMITED_SIM + 'latency = "20ms"\nlatency_per_token = "4ms"\n'
             '\n[sim.batch]\nturnaround = "1s"\n')
# Jobs of operation "direct" go on standard, "cheap" on flex, the others (an hour's deadline)
# through quick batches; a few direct calls at a time.
CRASH_DAEMON = """
[jobs]
max_in_flight = 6

[operations.direct]
tier = "standard"

[operations.cheap]
tier = "flex"

""" + QUICK_BATCHES
KILLS = 8
MIN_KILLS = 4
KILLS_TIME = 30.0
"""Seconds of kills, after MIN_KILLS, before no more are made (restarts are slow on a loaded
machine)."""
JOBS = 4
JOB_LINES = 30

FAST = QUICK_BATCHES.replace("[batch]\n", "[batch]\ndelete_files = false\n")
BATCH_SIM = '[sim.batch]\nturnaround = "1s"\n'


# -- talking to the daemon and the simulator ------------------------------------------------


def chat_body(content: str, max_tokens: int, *, stream: bool = False,
              flex: bool = False) -> bytes:
    body: dict[str, Any] = {"model": FLEX_MODEL if flex else MODEL, "max_tokens": max_tokens,
                            "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
    if flex:
        body["service_tier"] = "flex"
    return orjson.dumps(body)


def job_lines(prefix: str, count: int, max_tokens: int, model: str = MODEL) -> bytes:
    return b"".join(
        orjson.dumps({
            "custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "max_tokens": max_tokens,
                     "messages": [{"role": "user", "content": f"question {prefix}{i}"}]},
        }) + b"\n"
        for i in range(count)
    )


def submit(daemon: Daemon, body: bytes, deadline: str, operation: str | None = None) -> str:
    tagged = f"&operation={operation}" if operation else ""
    status, job = unix_request(daemon.socket_path, "POST",
                               f"/v1/jobs?deadline={deadline}{tagged}",
                               body, {"content-type": "application/jsonl"})
    assert status == 202, job
    job_id: str = job["id"]
    return job_id


def job_results(daemon: Daemon, job_id: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The job's result lines, once it has finished (within ``timeout``)."""
    def finished() -> bool:
        status, job = daemon.get(f"/v1/jobs/{job_id}")
        assert status == 200, job
        return job["status"] in ("completed", "failed", "cancelled")

    wait_for(finished, timeout=timeout, every=0.1, what=f"job {job_id} to finish")
    status, raw = unix_request(daemon.socket_path, "GET", f"/v1/jobs/{job_id}/results")
    assert status == 200, raw
    text = raw if isinstance(raw, bytes) else orjson.dumps(raw)
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def job_of(daemon: Daemon, job_id: str) -> dict[str, Any]:
    status, job = daemon.get(f"/v1/jobs/{job_id}")
    assert status == 200, job
    return dict(job)


def kill_9(daemon: Daemon) -> None:
    daemon.process.kill()
    daemon.process.wait(10)


def cost(table: PriceTable, tier: str, input_tokens: int, output_tokens: int,
         model: str = MODEL) -> int:
    """Picodollars that ``model`` costs on ``tier`` for these tokens, by ``table``."""
    price = table.price("openai", model, Tier(tier))
    assert price is not None, (model, tier)
    return price.cost(Usage(input_tokens=input_tokens, output_tokens=output_tokens))


# -- 1. kill -9 at random moments under mixed traffic -----------------------------------------


@dataclass
class Traffic:
    """What the client threads saw: the request ids of the answers they got."""

    answered: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def keep_calling(socket_path: Path, stop: threading.Event, traffic: Traffic, name: str,
                 stream: bool, flex: bool = False) -> None:
    """Chat calls one after another until ``stop``; a dead daemon is waited out."""
    rng = random.Random(name)
    count = 0
    while not stop.is_set():
        count += 1
        body = chat_body(f"{name} call {count}", rng.randint(10, 40), stream=stream, flex=flex)
        try:
            status, answer, headers = unix_exchange(
                socket_path, "POST", "/v1/chat/completions", body, JSON)
        except (OSError, http.client.HTTPException):
            stop.wait(0.05)  # killed mid-call, or not listening yet
            continue
        with traffic.lock:
            if status == 200:
                traffic.answered.append(headers["x-llmspool-request-id"])
            elif status != 503:  # 503: the daemon is stopping or its queue is full
                traffic.unexpected.append(f"{name}: {status} {answer!r:.300}")


def ledger_problems(entries: list[dict[str, Any]], calls: list[dict[str, Any]],
                    table: PriceTable) -> list[str]:
    """How the ledger and the simulator's bill disagree, call by call."""
    problems: list[str] = []
    by_id = {ledger_id(entry): entry for entry in entries}
    billed = Counter(call["request_id"] for call in calls)
    problems += [f"the sim billed {n} calls under {rid}" for rid, n in billed.items() if n > 1]
    for call in calls:
        entry = by_id.get(call["request_id"])
        if entry is None:
            problems.append(f"billed by the sim, not in the ledger: {call}")
        elif entry["flag"] == "unknown_outcome":
            # Charged its reservation: never less than what the provider billed.
            if entry["cost_picodollars"] < cost(table, call["tier"], call["input_tokens"],
                                                call["output_tokens"], call["model"]):
                problems.append(f"an unknown outcome charged less than billed: {entry} {call}")
        elif not call["complete"]:
            if entry["flag"] != "broken_answer":
                problems.append(f"cut at the sim, not billed as such: {call} {entry}")
        elif (entry["input_tokens"], entry["output_tokens"], entry["usage_estimated"]) \
                != (call["input_tokens"], call["output_tokens"], 0):
            problems.append(f"tokens differ: sim {call}, ledger {entry}")
        elif entry["tier"] != call["tier"]:
            problems.append(f"tier differs: sim {call}, ledger {entry}")
        elif entry["cost_picodollars"] != cost(table, call["tier"], call["input_tokens"],
                                               call["output_tokens"], call["model"]):
            problems.append(f"not billed at pricing.toml's price: {entry}")
    for entry in entries:
        if entry["flag"] == "unknown_outcome":
            if entry["usage_estimated"] != 1 or not entry["cost_picodollars"]:
                problems.append(f"an unknown outcome not charged its reservation: {entry}")
        elif ledger_id(entry) not in billed:
            problems.append(f"billed though the sim never answered it: {entry}")
    return problems


def ledger_id(entry: dict[str, Any]) -> str:
    """The id the simulator knows an entry's call by: the request id sent upstream, or for a
    batch line its ``custom_id`` (``r<line id>``)."""
    request_id: str = entry["request_id"]
    line = _BATCH_ENTRY.search(request_id)
    return f"r{line.group(1)}" if line and entry["tier"] == "batch" else request_id


def test_kill_9_at_random_moments_bills_every_answered_call_once(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, CRASH_SIM)
    daemon = start_daemon(tmp_path, sim.url, config_toml=CRASH_DAEMON, process=True)
    stop = threading.Event()
    traffic = Traffic()
    clients = [
        threading.Thread(target=keep_calling, daemon=True,
                         args=(daemon.socket_path, stop, traffic, f"client{i}", i % 2 == 1,
                               i >= 4))
        for i in range(6)  # two plain, two streamed, two on flex (one streamed)
    ]
    jobs: dict[str, str] = {}  # job id -> the prefix of its custom ids
    rng = random.Random(12)
    started = time.monotonic()
    try:
        for client in clients:
            client.start()
        for cycle in range(KILLS):
            if cycle >= MIN_KILLS and time.monotonic() - started > KILLS_TIME:
                break
            if len(jobs) < JOBS:
                prefix = f"j{cycle}-"
                # Direct on standard, on flex, and through a batch, in turn.
                kind = ("direct", "cheap", None)[cycle % 3]
                model = FLEX_MODEL if kind == "cheap" else MODEL
                jobs[submit(daemon, job_lines(prefix, JOB_LINES, 12, model), "1h",
                            kind)] = prefix
            time.sleep(rng.uniform(0.2, 0.8))
            kill_9(daemon)
            daemon = start_daemon(tmp_path, sim.url, config_toml=CRASH_DAEMON, process=True)
        time.sleep(0.5)  # some calls on the last daemon too
        stop.set()
        for client in clients:
            client.join(15)
        lines = {job_id: job_results(daemon, job_id) for job_id in jobs}
        finished = {job_id: job_of(daemon, job_id) for job_id in jobs}
        _status, report = daemon.get("/v1/status")
        assert daemon.terminate() == 0, daemon.log()[-3000:]
        calls = billed_calls(sim)
    finally:
        stop.set()
        daemon.terminate()
        sim.terminate()

    assert not traffic.unexpected, traffic.unexpected[:5]
    assert traffic.answered, "no interactive call was answered"
    # Every job request has exactly one result, and every job finished.
    for job_id, prefix in jobs.items():
        assert [line["custom_id"] for line in lines[job_id]] == \
            [f"{prefix}{i}" for i in range(JOB_LINES)]
        assert all(line["response"]["status_code"] == 200 for line in lines[job_id])
        assert finished[job_id]["status"] == "completed"
        assert finished[job_id]["counts"]["succeeded"] == JOB_LINES
    # Every call the simulator answered went out under the daemon's request id.
    assert calls and all(call["request_id"] for call in calls), \
        f"calls without X-Client-Request-Id: {[c for c in calls if not c['request_id']][:3]}"
    entries = ledger_entries(daemon.state_dir)
    table = load_price_table()
    problems = ledger_problems(entries, calls, table)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:15])
    # The answers the clients got are in the ledger too (settled, or unknown at a kill).
    recorded = {entry["request_id"] for entry in entries}
    assert not set(traffic.answered) - recorded
    unknown = [entry for entry in entries if entry["flag"] == "unknown_outcome"]
    assert unknown, "no kill caught a call in flight: the crash path was not exercised"
    assert report["ledger"].get("unknown_outcome_today") == len(unknown)
    # A clean stop leaves no call reserved; the totals add up to the simulator's bill.
    assert [r for r in reservations(daemon.state_dir) if r["kind"] == "call"] == []
    settled = {ledger_id(entry) for entry in entries if entry["flag"] is None}
    true_cost = sum(cost(table, call["tier"], call["input_tokens"], call["output_tokens"],
                         call["model"])
                    for call in calls if call["request_id"] in settled)
    tiers = Counter(call["tier"] for call in calls)
    assert tiers["flex"] and tiers["batch"] and tiers["standard"], tiers
    assert sum(e["cost_picodollars"] for e in entries if e["flag"] is None) == true_cost


# -- 2. the Batch API under a daily cap -------------------------------------------------------


def error_code(line: dict[str, Any]) -> str | None:
    """A failed result line's error code: ``error.code``, else the response body's."""
    error = line.get("error")
    if isinstance(error, dict):
        return error.get("code")
    response = line.get("response") or {}
    body = response.get("body")
    if response.get("status_code") != 200 and isinstance(body, dict):
        return (body.get("error") or {}).get("code")
    return None


def uploaded_custom_ids(sim: Sim) -> list[str]:
    """The ``custom_id`` of every line of every batch input file the simulator received."""
    files = sim.request("GET", "/v1/files?purpose=batch")["data"]
    ids: list[str] = []
    for item in files:
        host, port = sim.base.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request("GET", f"/v1/files/{item['id']}/content")
            raw = connection.getresponse().read()
        finally:
            connection.close()
        ids += [orjson.loads(line)["custom_id"] for line in raw.splitlines() if line.strip()]
    return ids


def test_a_daily_cap_admits_batch_lines_at_batch_prices_and_fails_the_rest(
    tmp_path: Path,
) -> None:
    table = load_price_table()
    batch_price = table.price("openai", MODEL, Tier.BATCH)
    assert batch_price is not None
    # Each line may cost its 1,000 output tokens plus a few input tokens: at batch prices five
    # lines fit under the cap, a sixth does not (at standard prices only two would).
    max_tokens = 1000
    reserved_output = batch_price.cost(Usage(output_tokens=max_tokens))
    cap = reserved_output * 11 // 2
    config = FAST + f"\n[budgets]\ndaily_usd = {cap / PICODOLLARS_PER_USD:.9f}\n"
    sim = start_sim(tmp_path, BATCH_SIM)
    daemon = start_daemon(tmp_path, sim.url, config_toml=config, process=True)
    try:
        job_id = submit(daemon, job_lines("q", 12, max_tokens), "1h")
        lines = job_results(daemon, job_id)
        finished = job_of(daemon, job_id)
        assert daemon.terminate() == 0
        stats = sim.stats()
        uploaded = uploaded_custom_ids(sim)
        calls = billed_calls(sim)
    finally:
        daemon.terminate()
        sim.terminate()

    admitted = [line["custom_id"] for line in lines if error_code(line) is None]
    refused = [line["custom_id"] for line in lines if error_code(line) == "budget_day"]
    assert sorted(admitted + refused) == sorted(f"q{i}" for i in range(12)), lines
    assert len(admitted) == 5, f"admitted {admitted}: five lines fit at batch prices"
    assert finished["by_tier"] == {"batch": 5}
    assert finished["counts"]["succeeded"] == 5 and finished["counts"]["failed"] == 7
    # Only the admitted lines went into a batch (line qN is request r<N+1> in a fresh state).
    assert stats["requests"]["by_path"].get("/v1/chat/completions", 0) == 0
    assert sorted(uploaded) == sorted(f"r{int(cid[1:]) + 1}" for cid in admitted)
    assert sorted(c["request_id"] for c in calls if c["tier"] == "batch") == sorted(uploaded)
    # Billed at batch prices, as the simulator counted the tokens, and within the cap.
    entries = ledger_entries(daemon.state_dir)
    assert [entry["tier"] for entry in entries] == ["batch"] * 5
    assert sorted((e["input_tokens"], e["output_tokens"]) for e in entries) == \
        sorted((c["input_tokens"], c["output_tokens"]) for c in calls)
    for entry in entries:
        assert entry["cost_picodollars"] == cost(table, "batch", entry["input_tokens"],
                                                 entry["output_tokens"])
    assert sum(entry["cost_picodollars"] for entry in entries) <= cap
    assert reservations(daemon.state_dir) == []  # the lines' reservations were settled


# -- 3. SIGHUP with a changed price file ------------------------------------------------------


def write_prices(path: Path, factor: int) -> None:
    """Write the bundled price table to ``path`` with ``MODEL``'s prices times ``factor``."""
    text = resources.files("llmspool").joinpath("defaults/pricing.toml").read_text()
    table = tomllib.loads(text)
    for tier in table["openai"][MODEL].values():
        if isinstance(tier, dict):
            for key in ("input", "cached_input", "cache_write", "output", "reasoning"):
                if key in tier:
                    tier[key] = tier[key] * factor
    path.write_text(tomli_w.dumps(table))


def one_call_and_one_batch_line(daemon: Daemon, tag: str) -> tuple[str, str]:
    """The request id of a direct call's ledger entry, and the job id of a one-line batch job."""
    status, answer, headers = unix_exchange(daemon.socket_path, "POST", "/v1/chat/completions",
                                            chat_body(f"direct {tag}", 20), JSON)
    assert status == 200, answer
    job_id = submit(daemon, job_lines(f"{tag}-", 1, 20), "1h")
    [line] = job_results(daemon, job_id)
    assert line["response"]["status_code"] == 200, line
    assert job_of(daemon, job_id)["by_tier"] == {"batch": 1}
    return headers["x-llmspool-request-id"], job_id


def reload_prices(daemon: Daemon) -> None:
    """SIGHUP, then wait until the daemon logs the reload."""
    seen = len(daemon.log())
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload" in daemon.log()[seen:], timeout=10, what="a reload in the log")


def test_sighup_bills_the_next_direct_call_and_batch_line_at_the_new_prices(
    tmp_path: Path,
) -> None:
    prices = tmp_path / "pricing.toml"
    write_prices(prices, 1)
    old = load_price_table(prices)
    config = FAST + f'\n[pricing]\nfile = "{prices}"\n'
    sim = start_sim(tmp_path, BATCH_SIM)
    daemon = start_daemon(tmp_path, sim.url, config_toml=config, process=True)
    try:
        direct_before, _job = one_call_and_one_batch_line(daemon, "before")
        write_prices(prices, 3)
        new = load_price_table(prices)
        reload_prices(daemon)
        direct_after, _job = one_call_and_one_batch_line(daemon, "after")
        assert daemon.terminate() == 0
    finally:
        daemon.terminate()
        sim.terminate()

    entries = ledger_entries(daemon.state_dir)
    by_id = {entry["request_id"]: entry for entry in entries}
    batch = [entry for entry in entries if entry["tier"] == "batch"]
    assert len(entries) == 4 and len(batch) == 2, entries
    billed = [(by_id[direct_before], old), (batch[0], old),
              (by_id[direct_after], new), (batch[1], new)]
    for entry, table in billed:
        assert entry["cost_picodollars"] == cost(table, entry["tier"], entry["input_tokens"],
                                                 entry["output_tokens"]), entry
    assert "price_version" in entries[0], "ledger entries carry no price_version"
    versions = [entry["price_version"] for entry, _table in billed]
    assert all(versions), versions
    assert versions[0] != versions[2] and versions[1] != versions[3], versions
