"""The jobs API over the socket: submissions in both forms, the planner's tier per deadline,
results in the Batch output format, and every kind of bad input refused with its reason."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.processes import Daemon, Sim, start_daemon, start_sim, unix_request
from tests.support.waiting import wait_for

JSONL = {"content-type": "application/jsonl"}
JSON = {"content-type": "application/json"}


def item(custom_id: str, model: str = "gpt-5-mini", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": custom_id}],
                 "max_completion_tokens": 4, **body},
    }


def jsonl(*items: Any) -> bytes:
    return b"".join(orjson.dumps(i) + b"\n" for i in items)


def submit(daemon: Daemon, body: bytes, query: str = "", headers: dict[str, str] = JSONL
           ) -> tuple[int, Any]:
    return unix_request(daemon.socket_path, "POST", f"/v1/jobs{query}", body, headers)


def results(daemon: Daemon, job_id: str, wait: float = 30) -> list[dict[str, Any]]:
    status, raw = unix_request(daemon.socket_path, "GET", f"/v1/jobs/{job_id}/results?wait={wait}")
    assert status == 200
    text = raw if isinstance(raw, bytes) else orjson.dumps(raw)
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def test_jsonl_job_runs_on_flex_when_the_deadline_allows(daemon: Daemon) -> None:
    # 12 minutes: room for flex (5 min x 1.5 + 30 s, and a fallback), not for a batch
    # (2.5 min expected, then 10 min cancel_wait and a standard call to escalate).
    status, job = submit(daemon, jsonl(*(item(f"q{i}") for i in range(6))),
                         "?deadline=12m&operation=evals&tag.team=search")
    assert status == 202, job
    assert job["status"] == "in_progress" and job["counts"]["total"] == 6
    assert job["operation"] == "evals" and job["tags"] == {"team": "search"}
    assert job["deadline_at"] == pytest.approx(time.time() + 12 * 60, abs=60)
    lines = results(daemon, job["id"])
    assert [line["custom_id"] for line in lines] == [f"q{i}" for i in range(6)]
    for line in lines:
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["service_tier"] == "flex"
    status, done = daemon.get(f"/v1/jobs/{job['id']}")
    assert done["status"] == "completed"
    assert done["counts"]["succeeded"] == 6 and done["by_tier"] == {"flex": 6}
    assert done["saved_usd"] == pytest.approx(done["cost_usd"])  # flex is half price


def test_short_deadline_and_models_without_flex_use_standard(daemon: Daemon) -> None:
    # One minute is less than the flex budget (5 min default x 1.5 + 30 s, plus a fallback).
    status, job = submit(daemon, jsonl(item("a"), item("b", model="gpt-4o-mini")),
                         "?deadline=1m")
    assert status == 202
    lines = {line["custom_id"]: line for line in results(daemon, job["id"])}
    assert lines["a"]["response"]["body"]["service_tier"] == "default"
    assert lines["b"]["response"]["body"]["service_tier"] == "default"


def test_json_form_numbers_requests_and_takes_options(daemon: Daemon) -> None:
    body = orjson.dumps({
        "requests": [
            {"url": "/v1/embeddings", "body": {"model": "text-embedding-3-small", "input": "x"}},
            {"url": "/v1/responses", "body": {"model": "gpt-5-mini", "input": "hi"}},
        ],
        "deadline": "12m",
        "operation": "kg_sync",
        "tags": {"project": "atlas"},
    })
    status, job = submit(daemon, body, headers=JSON)
    assert status == 202, job
    lines = results(daemon, job["id"])
    assert [line["custom_id"] for line in lines] == ["request-1", "request-2"]
    assert lines[0]["response"]["body"]["object"] == "list"
    assert lines[1]["response"]["body"]["object"] == "response"


def test_upstream_errors_become_result_lines(daemon: Daemon, sim: Sim) -> None:
    sim.set_faults({"kind": "status", "status": 400, "count": 1})
    status, job = submit(daemon, jsonl(item("bad")), "?deadline=1m")
    assert status == 202
    [line] = results(daemon, job["id"])
    assert line["response"]["status_code"] == 400
    assert "error" in line["response"]["body"]
    status, done = daemon.get(f"/v1/jobs/{job['id']}")
    assert done["counts"]["failed"] == 1


def test_retryable_upstream_errors_are_retried(daemon: Daemon, sim: Sim) -> None:
    sim.set_faults({"kind": "status", "status": 503, "count": 1})
    status, job = submit(daemon, jsonl(item("flaky")), "?deadline=1m")
    assert status == 202
    [line] = results(daemon, job["id"])
    assert line["response"]["status_code"] == 200
    assert sim.stats()["requests"]["by_path"]["/v1/chat/completions"] == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (orjson.dumps({**item("x"), "method": "GET"}), "method must be POST"),
        (orjson.dumps({**item("x"), "url": "/v1/files"}), "url must be one of"),
        (orjson.dumps({**item("x"), "body": "hi"}), "body must be a JSON object"),
        (orjson.dumps({**item("x"), "body": {"messages": []}}), "body.model must name a model"),
        (orjson.dumps(item("x", model="no-such-model")), "does not exist"),
        (orjson.dumps(item("x", stream=True)), "cannot stream"),
        (orjson.dumps({**item("x"), "custom_id": ""}), "custom_id must be"),
    ],
)
def test_bad_lines_are_refused_with_their_number(daemon: Daemon, line: bytes, message: str
                                                 ) -> None:
    body = jsonl(item("ok-1")) + line + b"\n" + jsonl(item("ok-2"))
    status, answer = submit(daemon, body)
    assert status == 400
    error = answer["error"]
    assert error["code"] == "invalid_requests"
    [bad] = error["lines"]
    assert bad["line"] == 2
    assert message in bad["message"]


def test_duplicate_custom_ids_and_skip_mode(daemon: Daemon) -> None:
    body = jsonl(item("a"), item("a"), item("b"))
    status, answer = submit(daemon, body)
    assert status == 400
    assert answer["error"]["lines"][0]["line"] == 2
    assert "more than once" in answer["error"]["lines"][0]["message"]

    status, job = submit(daemon, body, "?on_error=skip&deadline=1m")
    assert status == 202
    assert job["counts"]["total"] == 2
    assert job["rejected_count"] == 1 and job["rejected"][0]["line"] == 2
    assert [line["custom_id"] for line in results(daemon, job["id"])] == ["a", "b"]


def test_limits_and_other_refusals(tmp_path: Path, sim: Sim) -> None:
    daemon = start_daemon(tmp_path, sim.url, config_toml=(
        '[jobs]\nmax_line_size = "1KiB"\nmax_upload_size = "8KiB"\nmax_queued = 3\n'
    ))
    try:
        long_line = orjson.dumps(item("long", extra="x" * 2000))
        status, answer = submit(daemon, long_line + b"\n")
        assert status == 400 and "max_line_size" in answer["error"]["lines"][0]["message"]
        status, answer = submit(daemon, jsonl(*(item(f"r{i}") for i in range(60))))
        assert status == 413 and "max_upload_size" in answer["error"]["message"]
        status, answer = submit(daemon, jsonl(*(item(f"r{i}") for i in range(4))))
        assert status == 429 and answer["error"]["code"] == "queue_full"
        status, answer = submit(daemon, b"\n\n")
        assert status == 400 and answer["error"]["code"] == "empty_job"
        status, answer = submit(daemon, jsonl(item("a")), "?deadline=yesterday")
        assert status == 400 and answer["error"]["param"] == "deadline"
        status, answer = submit(daemon, jsonl(item("a")), "?deadline=2020-01-01T00:00:00Z")
        assert status == 400 and "past" in answer["error"]["message"]
        status, answer = submit(daemon, b"x", headers={"content-type": "text/csv"})
        assert status == 415
        status, answer = submit(daemon, b'{"requests": 3}', headers=JSON)
        assert status == 400 and answer["error"]["param"] == "requests"
        status, answer = daemon.get("/v1/jobs/job_nope")
        assert status == 404 and answer["error"]["code"] == "job_not_found"
        status, answer = unix_request(daemon.socket_path, "POST", "/v1/jobs/job_nope/cancel")
        assert status == 404
        # After all that, a good job still goes through.
        status, job = submit(daemon, jsonl(item("fine")), "?deadline=1m")
        assert status == 202
        assert results(daemon, job["id"])[0]["response"]["status_code"] == 200
    finally:
        daemon.terminate()


def test_cancel_stops_what_has_not_run(tmp_path: Path) -> None:
    from tests.support.processes import start_sim

    sim = start_sim(tmp_path, '[sim]\nlatency = "300ms"\n')
    daemon = start_daemon(tmp_path, sim.url, config_toml="[jobs]\nmax_in_flight = 1\n")
    try:
        status, job = submit(daemon, jsonl(*(item(f"c{i}") for i in range(20))), "?deadline=1m")
        assert status == 202
        wait_for(lambda: sim.stats()["requests"]["total"] >= 1, what="the job's first call")
        status, cancelled = unix_request(daemon.socket_path, "POST",
                                         f"/v1/jobs/{job['id']}/cancel")
        assert status == 200 and cancelled["status"] == "cancelled"
        assert cancelled["counts"]["cancelled"] >= 15
        lines = results(daemon, job["id"], wait=0)
        assert len(lines) == 20  # every request has a line: a result or "cancelled"
        assert sum(1 for line in lines if line["error"] and line["error"]["code"] == "cancelled"
                   ) == cancelled["counts"]["cancelled"]
        # Until nothing is queued, running or at the upstream: had the cancel not stopped the
        # rest, they would have been sent by then.
        wait_for(lambda: daemon.get("/v1/status")[1]["jobs"]["requests_queued"] == 0
                 and daemon.get("/v1/status")[1]["jobs"]["requests_running"] == 0
                 and sim.stats()["requests"]["in_flight"] == 0, what="the job to settle")
        # What ran, plus the one call in flight when the job was cancelled (max_in_flight 1):
        # nothing cancelled reached the upstream.
        ran = 20 - cancelled["counts"]["cancelled"]
        assert sim.stats()["requests"]["total"] <= ran + 1
    finally:
        daemon.terminate()
        sim.terminate()


def test_status_lists_jobs(daemon: Daemon) -> None:
    status, job = submit(daemon, jsonl(item("s")), "?deadline=1m")
    results(daemon, job["id"])
    status, listing = daemon.get("/v1/jobs")
    assert status == 200 and listing["data"][0]["id"] == job["id"]
    status, report = daemon.get("/v1/status")
    assert report["jobs"]["jobs_in_progress"] == 0


def test_finished_jobs_are_deleted_after_the_retention(tmp_path: Path, sim: Sim) -> None:
    config = '[jobs]\nretention = "300ms"\n'
    daemon = start_daemon(tmp_path, sim.url, config_toml=config)
    try:
        status, job = submit(daemon, jsonl(item("kept-briefly")), "?deadline=1m")
        assert results(daemon, job["id"])[0]["response"]["status_code"] == 200
    finally:
        daemon.terminate()
    # The retention must pass with no daemon to ask (the sweep runs at start, then hourly).
    time.sleep(0.4)
    # The finished job is gone.
    daemon = start_daemon(tmp_path, sim.url, config_toml=config)
    try:
        status, answer = daemon.get(f"/v1/jobs/{job['id']}")
        assert status == 404 and answer["error"]["code"] == "job_not_found"
        assert "deleted after [jobs] retention" in answer["error"]["message"]
    finally:
        daemon.terminate()


def test_a_result_stored_after_its_deadline_is_flagged_late(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, '[sim]\nlatency = "1500ms"\n')
    daemon = start_daemon(tmp_path, sim.url)
    try:
        # No tier is expected to answer in a second (the planner's prior for a standard call
        # is 30 s): refused, unless the caller asks for a best effort.
        status, refused = submit(daemon, jsonl(item("slow")), "?deadline=1s")
        assert status == 400 and refused["error"]["code"] == "deadline_too_short", refused
        assert "on_short_deadline=best_effort" in refused["error"]["message"]
        status, job = submit(daemon, jsonl(item("slow")),
                             "?deadline=1s&on_short_deadline=best_effort")
        assert status == 202, job
        assert job["best_effort"] is True and "results may be flagged late" in job["warnings"][0]
        [line] = results(daemon, job["id"])
        assert line["response"]["status_code"] == 200  # answered, but after the deadline
        assert line["late"] is True
        _, done = daemon.get(f"/v1/jobs/{job['id']}")
        assert done["counts"]["late"] == 1
        _, report = daemon.get("/v1/status")
        assert report["jobs"]["requests_late"] == 1
        _, costs = daemon.get("/v1/ledger?by=deadline")
        assert {row["deadline"]: row["late_requests"] for row in costs["rows"]} == {"<=1m": 1}
        # In time: not flagged.
        status, job = submit(daemon, jsonl(item("quick")), "?deadline=1m")
        [line] = results(daemon, job["id"])
        assert "late" not in line
    finally:
        daemon.terminate()
        sim.terminate()
