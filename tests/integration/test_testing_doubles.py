"""``llmspool.testing``'s fake provider and manual clock, driving a real in-process daemon: what
a program built on llmspool can test with them, and what would otherwise take hours (a six-hour
deadline, the next budget day, a week of job retention) done in seconds."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from llmspool.core.calls import Tier
from llmspool.testing import (
    FakeUpstream,
    InProcessDaemon,
    ManualClock,
    running_with_fake,
)

from tests.support.processes import openai_client, unix_request
from tests.support.waiting import wait_for


@dataclass
class Setup:
    daemon: InProcessDaemon
    upstream: FakeUpstream
    clock: ManualClock


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    """Start a daemon whose ``openai`` provider is the fake, on a manual clock."""
    with_stack: list[Any] = []

    def start(config_toml: str = "", *, start_at: float | None = None) -> Setup:
        clock = ManualClock(start_at)
        upstream = FakeUpstream(clock=clock)
        running = running_with_fake(tmp_path, upstream, config_toml, clock=clock)
        daemon = running.__enter__()
        with_stack.append(running)
        return Setup(daemon, upstream, clock)

    yield start
    for running in reversed(with_stack):
        running.__exit__(None, None, None)


def chat(daemon: InProcessDaemon, content: str = "hi") -> tuple[int, Any]:
    body = orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 20,
                         "messages": [{"role": "user", "content": content}]})
    return unix_request(daemon.socket_path, "POST", "/v1/chat/completions", body,
                        {"content-type": "application/json"})


def jsonl(count: int) -> bytes:
    return b"".join(orjson.dumps({
        "custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "max_tokens": 5,
                 "messages": [{"role": "user", "content": f"question {i}"}]},
    }) + b"\n" for i in range(count))


def submit(daemon: InProcessDaemon, count: int, deadline: str) -> dict[str, Any]:
    status, job = unix_request(daemon.socket_path, "POST", f"/v1/jobs?deadline={deadline}",
                               jsonl(count), {"content-type": "application/jsonl"})
    assert status == 202, job
    return dict(job)


def job_of(daemon: InProcessDaemon, job_id: str) -> tuple[int, Any]:
    return unix_request(daemon.socket_path, "GET", f"/v1/jobs/{job_id}")


def finished_job(daemon: InProcessDaemon, job_id: str) -> dict[str, Any] | None:
    status, job = job_of(daemon, job_id)
    assert status == 200, job
    return dict(job) if job["status"] == "completed" else None


def test_the_fake_answers_through_the_daemon_and_the_official_client(make: Any) -> None:
    setup = make()
    client = openai_client(setup.daemon.socket_path)
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content == "fake answer 1 from gpt-4o-mini"
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    streamed = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert text == "fake answer 2 from gpt-4o-mini"
    embedded = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [len(item.embedding) for item in embedded.data] == [8, 8]
    # What reached the "upstream", in order, and what the ledger billed for it.
    assert [request.stream for request in setup.upstream.requests] == [False, True, False]
    status, ledger = unix_request(setup.daemon.socket_path, "GET", "/v1/ledger?limit=10")
    assert status == 200 and len(ledger["entries"]) == 3
    assert all(entry["cost_usd"] > 0 for entry in ledger["entries"])


def test_an_error_on_cue_is_retried_and_a_bad_request_is_passed_on(make: Any) -> None:
    setup = make()
    setup.upstream.fail_next(500, "server_error", times=2)
    status, answer = chat(setup.daemon)
    assert status == 200 and answer["choices"][0]["message"]["content"]
    assert len(setup.upstream.requests) == 3  # two failures, retried, then the answer
    setup.upstream.fail_next(400, "invalid_value", "max_tokens is too large")
    status, error = chat(setup.daemon)
    assert status == 400
    assert error["error"]["code"] == "invalid_value"
    assert error["error"]["message"] == "max_tokens is too large"
    assert len(setup.upstream.requests) == 4  # a 400 is not retried


def test_a_daily_cap_opens_again_at_midnight_utc(make: Any) -> None:
    # Five minutes to midnight: calls until the day's cap refuses one; the next day admits.
    tomorrow = datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=1)
    midnight = datetime.datetime.combine(tomorrow, datetime.time(), datetime.UTC).timestamp()
    setup = make('[budgets]\ndaily_usd = 0.0001\n', start_at=midnight - 300)
    served = 0
    for _ in range(100):
        status, answer = chat(setup.daemon)
        if status != 200:
            break
        served += 1
    assert served > 0 and status == 402, answer
    assert answer["error"]["code"] == "budget_day"
    assert chat(setup.daemon)[0] == 402  # still today: still refused
    setup.clock.jump_to(midnight + 1)
    status, answer = chat(setup.daemon)
    assert status == 200, answer


def test_a_six_hour_deadline_batch_escalates_in_time_when_its_batch_never_ends(
    make: Any,
) -> None:
    # The defaults as shipped: groups wait 5 minutes, a batch is polled from every 10 s to
    # every 5 minutes, and escalated when only cancel_wait (10 minutes) and a standard call
    # are left before the deadline. The fake's batch never ends by itself.
    setup = make()
    job = submit(setup.daemon, 4, "6h")
    assert [(group["tier"], group["requests"]) for group in job["plan"]] == [("batch", 4)]
    setup.clock.advance(301)  # the group's max_age: it is sent
    wait_for(lambda: len(setup.upstream.batches) == 1, timeout=10, what="a batch made")
    finished = None
    while finished is None and setup.clock.now() < job["deadline_at"]:
        setup.clock.advance(120)
        time.sleep(0.02)  # let the actors look at the clock
        finished = finished_job(setup.daemon, job["id"])
    assert finished is not None, "the job did not finish before its deadline"
    # Every hour ([batch] rebatch_after) the straggling batch was cancelled and its lines put
    # in a new one; the last was cancelled at the escalation point and its lines sent directly.
    batches = list(setup.upstream.batches.values())
    assert len(batches) == 5 and {batch.status for batch in batches} == {"cancelled"}
    assert "will not finish before its deadline" in setup.daemon.log()
    assert "batch" not in finished["by_tier"] and sum(finished["by_tier"].values()) == 4
    assert finished["counts"]["late"] == 0 and finished["counts"]["succeeded"] == 4
    assert finished["finished_at"] <= job["deadline_at"]
    assert setup.clock.now() - job["created_at"] > 5 * 3600  # hours passed, on the clock


def test_a_batch_that_ends_is_billed_at_half_price_and_the_job_is_forgotten_after_retention(
    make: Any,
) -> None:
    setup = make('[jobs]\nretention = "7d"\n')
    job = submit(setup.daemon, 3, "24h")
    setup.clock.advance(301)
    wait_for(lambda: len(setup.upstream.batches) == 1, timeout=10, what="a batch made")
    assert setup.upstream.finish_batches() == 1
    setup.clock.advance(301)  # the next poll comes within poll_max
    # ...or, when the poller began its wait only after that jump (a busy machine), within
    # poll_min: 10 s on the clock, which runs at the machine's pace between jumps.
    wait_for(lambda: finished_job(setup.daemon, job["id"]) is not None, timeout=30,
             what="the job finished")
    finished = finished_job(setup.daemon, job["id"])
    assert finished is not None and finished["by_tier"] == {"batch": 3}
    assert finished["saved_usd"] == pytest.approx(finished["cost_usd"], rel=1e-6)
    assert all(r.tier is not Tier.BATCH for r in setup.upstream.requests)  # nothing direct
    assert not setup.upstream.requests
    # A week and a bit later the hourly sweep has forgotten it, results and all.
    setup.clock.advance(7 * 86400 + 2 * 3600)
    wait_for(lambda: job_of(setup.daemon, job["id"])[0] == 404, timeout=10,
             what="the job deleted after [jobs] retention")
