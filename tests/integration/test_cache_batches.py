"""The response cache across tiers, through the real daemon and the simulator's Batch API: batch
answers fill the cache, a new request waits for its twin in a pending batch when its deadline
allows (and goes its own way when not), and job requests are answered from the cache."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.test_batches import (
    FAST,
    batch_stats,
    direct_calls,
    job_of,
    results,
    submit,
)
from tests.integration.test_cache import (
    cache_commits_held,
    requests_by_saving_source,
    wait_for_entries,
)
from tests.support.processes import (
    Daemon,
    Sim,
    start_daemon,
    start_sim,
    unix_exchange,
)
from tests.support.waiting import wait_for

BODY = {"model": "gpt-4o-mini", "temperature": 0, "max_tokens": 5,
        "messages": [{"role": "user", "content": "Name a prime number."}]}


def job_line(custom_id: str = "q0") -> bytes:
    return orjson.dumps({"custom_id": custom_id, "method": "POST",
                         "url": "/v1/chat/completions", "body": BODY}) + b"\n"


def ask(daemon: Daemon, deadline: str | None = None) -> tuple[int, Any, dict[str, str]]:
    headers = {"content-type": "application/json"}
    if deadline is not None:
        headers["x-llmspool-deadline"] = deadline
    return unix_exchange(daemon.socket_path, "POST", "/v1/chat/completions",
                         orjson.dumps(BODY), headers)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    running = start_sim(tmp_path, '[sim.batch]\nturnaround = "3s"\n')
    try:
        yield running
    finally:
        running.terminate()


@pytest.fixture
def daemon(tmp_path: Path, sim: Sim) -> Iterator[Daemon]:
    started = start_daemon(tmp_path, sim.url, config_toml=FAST)
    try:
        yield started
    finally:
        started.terminate()


def wait_until_batched(daemon: Daemon, sim: Sim, job_id: str) -> None:
    wait_for(lambda: batch_stats(sim)["created"] >= 1 and
             job_of(daemon, job_id)["counts"]["in_batch"] == 1, what="the line in a batch")


def test_a_batch_answer_fills_the_cache_for_a_later_interactive_request(
        daemon: Daemon, sim: Sim) -> None:
    job = submit(daemon, job_line())
    [line] = results(daemon, job["id"])
    assert job_of(daemon, job["id"])["by_tier"] == {"batch": 1}
    wait_for_entries(daemon, 1)  # the write-behind commit
    status, body, headers = ask(daemon)
    assert status == 200 and headers["x-llmspool-cache"] == "hit"
    assert body == line["response"]["body"]
    assert direct_calls(sim) == 0


def test_a_request_waits_for_its_twin_in_a_pending_batch_when_its_deadline_allows(
        daemon: Daemon, sim: Sim) -> None:
    job = submit(daemon, job_line())
    wait_until_batched(daemon, sim, job["id"])
    started = time.monotonic()
    status, body, headers = ask(daemon, deadline="1h")
    assert status == 200, body
    assert headers["x-llmspool-cache"] == "shared"
    assert time.monotonic() - started < 15
    [line] = results(daemon, job["id"])
    assert body == line["response"]["body"]
    assert direct_calls(sim) == 0  # one answer, paid once, in the batch
    status, report = daemon.get("/v1/ledger?by=source")
    rows = {row["source"]: row for row in report["rows"]}
    assert rows["dedup"]["requests"] == 1 and rows["dedup"]["spend_usd"] == 0
    assert daemon.get("/v1/status")[1]["cache"]["waited_for_batch"] == 1


def test_a_request_whose_deadline_is_too_close_goes_alone_and_the_batch_keeps_its_line(
        daemon: Daemon, sim: Sim) -> None:
    job = submit(daemon, job_line())
    wait_until_batched(daemon, sim, job["id"])
    status, _body, headers = ask(daemon, deadline="4s")
    assert status == 200 and headers["x-llmspool-cache"] == "miss"
    assert direct_calls(sim) == 1
    [line] = results(daemon, job["id"])
    assert line["response"]["status_code"] == 200
    assert job_of(daemon, job["id"])["by_tier"] == {"batch": 1}


def test_identical_requests_waiting_on_a_batch_all_share_its_answer(
        daemon: Daemon, sim: Sim) -> None:
    job = submit(daemon, job_line())
    wait_until_batched(daemon, sim, job["id"])
    answers: list[tuple[int, Any, dict[str, str]]] = []
    threads = [threading.Thread(target=lambda: answers.append(ask(daemon, deadline="2h")))
               for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [a[2]["x-llmspool-cache"] for a in answers] == ["shared"] * 5
    assert direct_calls(sim) == 0


def test_a_job_request_is_answered_from_the_cache(tmp_path: Path, sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url)
    try:
        status, first, _headers = ask(daemon)
        assert status == 200
        wait_for_entries(daemon, 1)  # the write-behind commit
        # Default planner: 12 minutes leave no room for a batch and its escalation.
        job = submit(daemon, job_line(), deadline="12m")
        [line] = results(daemon, job["id"])
        assert line["response"]["body"] == first
        finished = job_of(daemon, job["id"])
        assert finished["by_tier"] == {"cache": 1}
        assert finished["cost_usd"] == 0 and finished["saved_usd"] > 0
        assert direct_calls(sim) == 1
    finally:
        daemon.terminate()


def test_identical_lines_bound_for_a_batch_go_in_as_one_line(daemon: Daemon, sim: Sim) -> None:
    # Four copies of one deterministic request and two others, in one job and a second job:
    # three batch lines are bought, and each copy is answered from the one that was.
    other = {**BODY, "messages": [{"role": "user", "content": "Name a colour."}]}
    lines = [job_line(f"same{i}") for i in range(3)] + [
        orjson.dumps({"custom_id": "other", "method": "POST", "url": "/v1/chat/completions",
                      "body": other}) + b"\n",
        orjson.dumps({"custom_id": "hot", "method": "POST", "url": "/v1/chat/completions",
                      "body": {**BODY, "temperature": 1}}) + b"\n",
    ]
    first = submit(daemon, b"".join(lines))
    second = submit(daemon, job_line("same-elsewhere"), deadline="2h")
    answers = {line["custom_id"]: line for line in results(daemon, first["id"])}
    [elsewhere] = results(daemon, second["id"])
    assert batch_stats(sim)["lines_processed"] == 3
    assert direct_calls(sim) == 0
    bought = answers["same0"]["response"]["body"]
    for copy in (answers["same1"], answers["same2"], elsewhere):
        assert copy["response"]["body"] == bought and copy.get("cache") == "shared"
    assert "cache" not in answers["same0"] and "cache" not in answers["other"]
    assert job_of(daemon, first["id"])["by_tier"] == {"batch": 3, "cache": 2}
    finished = job_of(daemon, second["id"])
    assert finished["by_tier"] == {"cache": 1} and finished["cost_usd"] == 0
    _status, report = daemon.get("/v1/ledger?by=source")
    rows = {row["source"]: row for row in report["rows"]}
    assert rows["dedup"]["requests"] == 3 and rows["dedup"]["spend_usd"] == 0


def test_a_line_bound_for_a_batch_is_answered_from_the_cache(daemon: Daemon, sim: Sim) -> None:
    status, first, _headers = ask(daemon)
    assert status == 200
    wait_for_entries(daemon, 1)  # the write-behind commit
    job = submit(daemon, job_line())  # an hour: a batch, were it not cached
    [line] = results(daemon, job["id"])
    assert line["response"]["body"] == first and line["cache"] == "hit"
    assert batch_stats(sim)["created"] == 0 and direct_calls(sim) == 1
    assert job_of(daemon, job["id"])["by_tier"] == {"cache": 1}


def test_a_line_bound_for_a_batch_right_after_its_twin_was_answered_is_not_batched(
        daemon: Daemon, sim: Sim) -> None:
    """The answer is in hand but not yet in the cache file (its commit waits): the job's line
    is answered from it, not bought again in a batch."""
    with cache_commits_held(daemon):
        status, first, _headers = ask(daemon)
        assert status == 200
        job = submit(daemon, job_line())  # an hour: a batch, were it not answered already
        assert [(group["tier"], group["requests"]) for group in job["plan"]] == [("cache", 1)]
        [line] = results(daemon, job["id"])
    # Found in hand, not waited for: a hit, as it is once the commit lands (the test above).
    assert line["response"]["body"] == first and line["cache"] == "hit"
    assert batch_stats(sim)["created"] == 0 and direct_calls(sim) == 1
    assert job_of(daemon, job["id"])["by_tier"] == {"cache": 1}
    # The call paid for (no saving), then the hit.
    assert requests_by_saving_source(daemon) == {None: 1, "cache": 1}
