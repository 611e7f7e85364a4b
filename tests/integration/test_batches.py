"""The batch tier end to end: a real daemon, a provider plugin, the simulator's batches, over the
real socket.

The behaviour every batch provider must have (one batch per intent, kill -9 at each step,
exactly one ledger entry per line, hedging and escalation without paying twice) is tested for
each flavor: OpenAI's Batch API (files and batches) and Anthropic's Message Batches (inline
requests, the intent in each ``custom_id``), through the ``openai`` and ``anthropic`` plugins
and the simulator's flavor of the same name. What only OpenAI's Batch API has (the enqueued
token cap, validation of the input file, embeddings, file uploads) is tested for it alone.

The daemon's config shrinks the clock: a batch is expected to take seconds, so deadlines of an
hour go to the batch tier, and escalation happens seconds before a deadline. The simulator
numbers nothing itself: every batch line's ``custom_id`` is the daemon's ``r<request id>``
(Anthropic: ``<intent>_r<request id>``, which the simulator's ``error_custom_ids`` match by
their end), and request ids in a fresh state directory count from 1, which lets a test pick
lines to fail.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.money import QUICK_BATCHES
from tests.support.processes import (
    Daemon,
    Sim,
    start_daemon,
    start_sim,
    unix_request,
)
from tests.support.stores import DaemonStore
from tests.support.waiting import wait_for

FAST = QUICK_BATCHES


@dataclass(frozen=True)
class Flavor:
    """One batch provider as the tests see it: the simulator's flavor, a model the plugin
    serves, the path of a direct call, and the daemon config that points a provider of the
    plugin's kind at the simulator."""

    name: str
    model: str
    direct_path: str
    batch_prefix: str
    provider_toml: str


OPENAI = Flavor("openai", "gpt-4o-mini", "/v1/chat/completions", "batch_", "")
ANTHROPIC = Flavor("anthropic", "claude-haiku-4-5", "/v1/messages", "msgbatch_",
                   '[providers.anthropic]\nplugin = "anthropic"\nbase_url = "{url}"\n'
                   'api_key_env = "OPENAI_API_KEY"\n')
BOTH = pytest.mark.parametrize("sim", [OPENAI, ANTHROPIC], indirect=True, ids=lambda f: f.name)


@dataclass
class FlavoredSim(Sim):
    flavor: Flavor = OPENAI

    def daemon_config(self, config: str = FAST) -> str:
        return config + self.flavor.provider_toml.format(url=self.url)


def jsonl(count: int, *, model: str = "gpt-4o-mini", prefix: str = "q") -> bytes:
    return b"".join(
        orjson.dumps({
            "custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "max_tokens": 5,
                     "messages": [{"role": "user", "content": f"question {prefix}{i}"}]},
        }) + b"\n"
        for i in range(count)
    )


def submit(daemon: Daemon, body: bytes, deadline: str = "1h") -> dict[str, Any]:
    status, job = unix_request(daemon.socket_path, "POST", f"/v1/jobs?deadline={deadline}",
                               body, {"content-type": "application/jsonl"})
    assert status == 202, job
    return job


def results(daemon: Daemon, job_id: str, wait: int = 60) -> list[dict[str, Any]]:
    status, raw = unix_request(daemon.socket_path, "GET",
                               f"/v1/jobs/{job_id}/results?wait={wait}")
    assert status == 200, raw
    text = raw if isinstance(raw, bytes) else orjson.dumps(raw)
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def job_of(daemon: Daemon, job_id: str) -> dict[str, Any]:
    status, job = daemon.get(f"/v1/jobs/{job_id}")
    assert status == 200
    return job


def ledger_rows(daemon: Daemon, store: DaemonStore | None = None
                ) -> list[tuple[str, str, int]]:
    if store is not None:
        return [(request_id, tier, int(cost)) for request_id, tier, cost in store.rows(
            daemon.state_dir,
            "SELECT request_id, tier, cost_picodollars FROM ledger_entries ORDER BY id")]
    with sqlite3.connect(daemon.state_dir / "llmspool.sqlite3") as db:
        return db.execute(
            "SELECT request_id, tier, cost_picodollars FROM ledger_entries ORDER BY id"
        ).fetchall()


def batch_stats(sim: FlavoredSim) -> dict[str, Any]:
    stats: dict[str, Any] = sim.stats()["batches"]
    return stats


def direct_calls(sim: Sim) -> int:
    """Chat calls the simulator answered outside batches (an OpenAI one, unless it says)."""
    flavor = sim.flavor if isinstance(sim, FlavoredSim) else OPENAI
    calls: int = sim.stats()["requests"]["by_path"].get(flavor.direct_path, 0)
    return calls


@pytest.fixture
def sim(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FlavoredSim]:
    flavor: Flavor = getattr(request, "param", OPENAI)
    running = start_sim(tmp_path, f'[sim]\nflavor = "{flavor.name}"\n'
                        '[sim.batch]\nturnaround = "1s"\ncancel_delay = "300ms"\n')
    try:
        yield FlavoredSim(running.url, running.process, running._in_process, flavor)
    finally:
        running.terminate()


def running_daemon(tmp_path: Path, sim: FlavoredSim, extra: str = "", **options: Any) -> Daemon:
    return start_daemon(tmp_path, sim.url, config_toml=sim.daemon_config(FAST + extra),
                        **options)


@BOTH
def test_a_job_with_room_goes_through_one_batch_at_half_price(
    tmp_path: Path, sim: FlavoredSim, daemon_store: DaemonStore,
) -> None:
    """On each store backend: SQLite in the state directory, and PostgreSQL."""
    daemon = running_daemon(tmp_path, sim, daemon_store.toml)
    try:
        job = submit(daemon, jsonl(20, model=sim.flavor.model))
        lines = results(daemon, job["id"])
        finished = job_of(daemon, job["id"])
    finally:
        daemon.terminate()
    # The submission said where its requests would go, and when they were expected.
    [planned] = job["plan"]
    assert planned["tier"] == "batch" and planned["requests"] == 20
    assert planned["model"] == sim.flavor.model
    assert job["created_at"] < planned["expected_by"] < job["deadline_at"]
    assert [line["custom_id"] for line in lines] == [f"q{i}" for i in range(20)]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert finished["status"] == "completed"
    assert finished["by_tier"] == {"batch": 20}
    # Half price: the job's saving is its cost again.
    assert finished["saved_usd"] == pytest.approx(finished["cost_usd"], rel=1e-6)
    stats = batch_stats(sim)
    assert stats["created"] == 1
    assert list(stats["intents"].values()) == [1]
    assert direct_calls(sim) == 0  # nothing was sent outside the batch
    rows = ledger_rows(daemon, daemon_store)
    assert len(rows) == 20 and {tier for _id, tier, _cost in rows} == {"batch"}
    assert sum(cost for _id, _tier, cost in rows) == round(finished["cost_usd"] * 10**12)


def test_a_short_deadline_is_not_batched(tmp_path: Path, sim: FlavoredSim) -> None:
    daemon = running_daemon(tmp_path, sim)
    try:
        job = submit(daemon, jsonl(5), deadline="5s")
        results(daemon, job["id"])
        finished = job_of(daemon, job["id"])
    finally:
        daemon.terminate()
    assert [(group["tier"], group["requests"]) for group in job["plan"]] == [("standard", 5)]
    assert "batch" not in finished["by_tier"]
    assert batch_stats(sim)["created"] == 0


@pytest.mark.parametrize(("setting", "count", "batches"), [
    ("max_lines = 10", 25, 3),
    ('max_bytes = "1KiB"', 12, 3),
])
@BOTH
def test_large_groups_are_split(tmp_path: Path, sim: FlavoredSim, setting: str, count: int,
                                batches: int) -> None:
    daemon = start_daemon(tmp_path, sim.url,
                          config_toml=sim.daemon_config(
                              FAST.replace("[batch]\n", f"[batch]\n{setting}\n")))
    try:
        job = submit(daemon, jsonl(count, model=sim.flavor.model))
        lines = results(daemon, job["id"])
    finally:
        daemon.terminate()
    assert len(lines) == count and all(line["response"]["status_code"] == 200 for line in lines)
    stats = batch_stats(sim)
    assert stats["created"] == batches
    assert set(stats["intents"].values()) == {1}


@BOTH
def test_lines_failing_their_batches_are_answered_directly_in_time(tmp_path: Path,
                                                                   sim: FlavoredSim) -> None:
    # Lines r2 and r5 always fail inside a batch (500): tried in three batches ([batch]
    # max_attempts = 3), then sent directly, well before their deadline; every other line
    # succeeds in the first batch.
    sim.request("POST", "/_sim/batch", {"error_custom_ids": ["r2", "r5"]})
    daemon = start_daemon(tmp_path, sim.url,
                          config_toml=sim.daemon_config(
                              FAST.replace("[batch]\n", "[batch]\nmax_attempts = 3\n")))
    try:
        job = submit(daemon, jsonl(6, model=sim.flavor.model))
        lines = results(daemon, job["id"])
        finished = job_of(daemon, job["id"])
    finally:
        daemon.terminate()
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert finished["counts"]["succeeded"] == 6
    assert finished["by_tier"] == {"batch": 4, "standard": 2}
    assert finished["finished_at"] < finished["deadline_at"]
    assert batch_stats(sim)["created"] == 3
    assert len(ledger_rows(daemon)) == 6  # failed batch lines cost nothing


@BOTH
def test_an_expired_batch_keeps_its_finished_lines_and_sends_the_rest(
    tmp_path: Path, sim: FlavoredSim
) -> None:
    sim.request("POST", "/_sim/batch", {"turnaround": "30s", "expire_after": "2s",
                                        "expire_partial": 0.5})
    daemon = running_daemon(tmp_path, sim)
    try:
        job = submit(daemon, jsonl(10, model=sim.flavor.model))
        lines = results(daemon, job["id"])
        finished = job_of(daemon, job["id"])
    finally:
        daemon.terminate()
    assert len(lines) == 10 and all(line["response"]["status_code"] == 200 for line in lines)
    # Half in the first batch; the expired half go into further batches while attempts are
    # left ([batch] max_attempts), then directly.
    assert finished["by_tier"].get("batch", 0) >= 5
    assert sum(finished["by_tier"].values()) == 10
    assert batch_stats(sim)["created"] >= 2
    rows = ledger_rows(daemon)
    assert len(rows) == 10  # each line billed once
    assert sum(1 for _id, tier, _cost in rows if tier == "batch") == finished["by_tier"]["batch"]


@BOTH
def test_a_late_batch_is_cancelled_and_its_unfinished_lines_meet_the_deadline(
    tmp_path: Path, sim: FlavoredSim
) -> None:
    sim.request("POST", "/_sim/batch", {"turnaround": "120s", "cancel_delay": "500ms"})
    daemon = running_daemon(tmp_path, sim)
    try:
        job = submit(daemon, jsonl(10, model=sim.flavor.model), deadline="15s")
        lines = results(daemon, job["id"])
        finished = job_of(daemon, job["id"])
    finally:
        daemon.terminate()
    assert finished["finished_at"] <= finished["deadline_at"]
    assert len(lines) == 10 and all(line["response"]["status_code"] == 200 for line in lines)
    assert batch_stats(sim)["cancel_requests"] == 1
    assert direct_calls(sim) == 10 - finished["by_tier"].get("batch", 0)
    assert len(ledger_rows(daemon)) == 10  # the cancel took effect first: nothing paid twice
    assert "cancelling it" in daemon.log()


@BOTH
def test_a_straggling_batch_is_cancelled_and_its_lines_go_into_a_new_batch(
    tmp_path: Path, sim: FlavoredSim
) -> None:
    # The first batch would take an hour (the long tail of batch turnaround); later ones a
    # second. An hour's deadline leaves room for a new batch after a cancel.
    sim.request("POST", "/_sim/batch", {"turnaround": "1h", "cancel_delay": "300ms"})
    daemon = start_daemon(tmp_path, sim.url, config_toml=sim.daemon_config(FAST.replace(
        "[batch]\n", '[batch]\nrebatch_after = "2s"\n')))
    try:
        job = submit(daemon, jsonl(10, model=sim.flavor.model))
        wait_for(lambda: batch_stats(sim)["created"] >= 1, timeout=30.0, what="the first batch")
        sim.request("POST", "/_sim/batch", {"reset": True})
        lines = results(daemon, job["id"])
        finished = job_of(daemon, job["id"])
        _status, status = daemon.get("/v1/status")
    finally:
        daemon.terminate()
    assert len(lines) == 10 and all(line["response"]["status_code"] == 200 for line in lines)
    assert finished["by_tier"] == {"batch": 10}  # all at batch price, none sent directly
    assert direct_calls(sim) == 0
    stats = batch_stats(sim)
    assert stats["cancel_requests"] == 1 and stats["created"] == 2
    assert status["batches"]["rebatched"] == 1
    assert len(ledger_rows(daemon)) == 10


def test_the_enqueued_token_cap_holds_batches_back_instead_of_failing_them(
    tmp_path: Path, sim: FlavoredSim
) -> None:
    sim.request("POST", "/_sim/batch", {"enqueued_token_limit": 25, "turnaround": "500ms"})
    daemon = running_daemon(tmp_path, sim)
    try:
        job = submit(daemon, jsonl(12))
        lines = results(daemon, job["id"])
        finished = job_of(daemon, job["id"])
    finally:
        daemon.terminate()
    assert len(lines) == 12 and all(line["response"]["status_code"] == 200 for line in lines)
    assert finished["by_tier"] == {"batch": 12}
    stats = batch_stats(sim)
    assert stats["created"] >= 2  # it had to be split to fit under the cap
    assert "enqueued-token cap" in daemon.log()


@BOTH
def test_status_lists_open_batches(tmp_path: Path, sim: FlavoredSim) -> None:
    sim.request("POST", "/_sim/batch", {"turnaround": "60s"})
    daemon = running_daemon(tmp_path, sim)
    try:
        submit(daemon, jsonl(4, model=sim.flavor.model))

        def open_batches() -> list[dict[str, Any]]:
            _status, report = daemon.get("/v1/status")
            found: list[dict[str, Any]] = report["batches"]["open"]
            return found if found and found[0]["provider_status"] == "in_progress" else []

        [batch] = wait_for(open_batches, timeout=30.0,
                           what="an open batch in /v1/status")
    finally:
        daemon.terminate()
    assert batch["id"].startswith(sim.flavor.batch_prefix)
    assert batch["model"] == sim.flavor.model and batch["lines"] == 4
    assert batch["age_s"] >= 0 and batch["deadline_in_s"] > 3000


CRASH_POINTS = ["batch.after_intent", "batch.after_upload", "batch.after_create",
                "batch.after_poll", "batch.after_download", "batch.mid_mapping"]


@pytest.mark.parametrize(("sim", "point"), [
    pytest.param(flavor, point, id=f"{flavor.name}-{point}")
    for flavor in (OPENAI, ANTHROPIC) for point in CRASH_POINTS
    # Message Batches take their requests with the create call: there is no upload step.
    if not (flavor is ANTHROPIC and point == "batch.after_upload")
], indirect=["sim"])
def test_kill_9_at_each_step_loses_nothing_and_repeats_nothing_upstream(
    tmp_path: Path, sim: FlavoredSim, point: str
) -> None:
    # r3 fails in its batch (an error file too), and with max_attempts = 1 is sent directly.
    sim.request("POST", "/_sim/batch", {"error_custom_ids": ["r3"]})
    config = sim.daemon_config(FAST.replace("[batch]\n", "[batch]\nmax_attempts = 1\n"))
    first = start_daemon(tmp_path, sim.url, config_toml=config,
                         env={"LLMSPOOL_CRASH_AT": point})
    try:
        job = submit(first, jsonl(8 if point != "batch.mid_mapping" else 6000,
                                  model=sim.flavor.model))
        first.process.wait(60)
    finally:
        first.terminate()
    assert first.process.returncode == -9, first.log()
    second = start_daemon(tmp_path, sim.url, config_toml=config)
    try:
        lines = results(second, job["id"], wait=90)
        finished = job_of(second, job["id"])
    finally:
        second.terminate()
    total = finished["counts"]["total"]
    assert sorted(line["custom_id"] for line in lines) == sorted(f"q{i}" for i in range(total))
    assert finished["counts"]["succeeded"] == total and finished["counts"]["failed"] == 0
    stats = batch_stats(sim)
    assert stats["created"] == 1, stats  # never a second batch for the same work
    assert set(stats["intents"].values()) == {1}
    if sim.flavor is OPENAI and point in ("batch.after_upload", "batch.after_create"):
        assert stats["files_uploaded"] == 1  # the upload was found again, not repeated
    rows = ledger_rows(second)
    assert len(rows) == len({request_id for request_id, _t, _c in rows}) == total
    assert direct_calls(sim) == 1  # r3, once


def test_a_batch_refused_by_validation_is_retried_then_sent_directly(
    tmp_path: Path, sim: FlavoredSim
) -> None:
    sim.request("POST", "/_sim/batch", {"fail_validation": "invalid_request"})
    daemon = start_daemon(tmp_path, sim.url,
                          config_toml=FAST.replace("[batch]\n", "[batch]\nmax_attempts = 2\n"))
    try:
        job = submit(daemon, jsonl(5))
        lines = results(daemon, job["id"])
        finished = job_of(daemon, job["id"])
    finally:
        daemon.terminate()
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert "batch" not in finished["by_tier"] and sum(finished["by_tier"].values()) == 5
    assert batch_stats(sim)["created"] == 2  # two tries, then directly
    assert "failed: invalid_request" in daemon.log()


def test_a_line_the_batch_refuses_fails_alone_without_a_retry(tmp_path: Path,
                                                              sim: FlavoredSim) -> None:
    body = jsonl(4) + orjson.dumps({
        "custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": "not a list"},
    }) + b"\n"
    daemon = running_daemon(tmp_path, sim)
    try:
        job = submit(daemon, body)
        lines = {line["custom_id"]: line for line in results(daemon, job["id"])}
        finished = job_of(daemon, job["id"])
    finally:
        daemon.terminate()
    # Answered 400 inside the batch, as OpenAI does: reported as it came, never retried.
    assert lines["bad"]["response"]["status_code"] == 400
    assert lines["bad"]["response"]["body"]["error"]["message"]
    assert all(lines[f"q{i}"]["response"]["status_code"] == 200 for i in range(4))
    assert finished["by_tier"] == {"batch": 4}
    assert finished["counts"]["failed"] == 1
    assert batch_stats(sim)["created"] == 1


def test_embeddings_and_image_inputs_pass_through_untouched(tmp_path: Path,
                                                            sim: FlavoredSim) -> None:
    image_body = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{
        "role": "user", "content": [
            {"type": "text", "text": "what is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]}]}
    embeddings = b"".join(orjson.dumps({
        "custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": [f"text {i}", f"more {i}"]},
    }) + b"\n" for i in range(3))
    image = orjson.dumps({"custom_id": "img", "method": "POST", "url": "/v1/chat/completions",
                          "body": image_body}) + b"\n"
    daemon = start_daemon(tmp_path, sim.url,
                          config_toml=FAST.replace("[batch]\n", "[batch]\ndelete_files = false\n"))
    try:
        job = submit(daemon, embeddings + image)
        lines = {line["custom_id"]: line for line in results(daemon, job["id"])}
        finished = job_of(daemon, job["id"])
    finally:
        daemon.terminate()
    assert finished["by_tier"] == {"batch": 4}
    for i in range(3):
        data = lines[f"e{i}"]["response"]["body"]["data"]
        assert [item["index"] for item in data] == [0, 1] and data[0]["embedding"]
    assert batch_stats(sim)["created"] == 2  # one per endpoint
    files = sim.request("GET", "/v1/files?purpose=batch")["data"]
    sent = [orjson.loads(line) for f in files for line in raw_content(sim, f["id"]).splitlines()]
    [chat_line] = [line for line in sent if line.get("url") == "/v1/chat/completions"]
    assert chat_line["body"] == image_body


def raw_content(sim: FlavoredSim, file_id: str) -> bytes:
    import http.client

    host, port = sim.base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", f"/v1/files/{file_id}/content")
        return connection.getresponse().read()
    finally:
        connection.close()


@BOTH
def test_with_spending_caps_deferred_work_still_goes_through_a_batch(tmp_path: Path,
                                                                     sim: FlavoredSim) -> None:
    # Batch lines are reserved against the caps when they are batched, and settled from the
    # output: caps no longer cost the batch discount.
    daemon = running_daemon(tmp_path, sim, "\n[budgets]\ndaily_usd = 100.0\n")
    try:
        job = submit(daemon, jsonl(3, model=sim.flavor.model))
        results(daemon, job["id"])
        finished = job_of(daemon, job["id"])
        _, status = daemon.get("/v1/status")
    finally:
        daemon.terminate()
    assert finished["by_tier"] == {"batch": 3}
    assert batch_stats(sim)["created"] == 1
    assert "the batch tier is off" not in daemon.log()
    assert status["ledger"]["calls_reserved"] == 0  # every line's reservation settled
    assert status["ledger"]["spend_today_usd"] == pytest.approx(finished["cost_usd"])
