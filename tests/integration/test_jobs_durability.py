"""Kill -9 a real daemon in the middle of deferred work, start it again: every acknowledged
request finishes exactly once, no result is lost or stored twice, and the counts add up.
An upstream call in flight at the kill may be repeated, never lost: per slot, at most the call in
flight plus one answered call whose result was waiting for its group commit."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from llmspool.store import jobs as jobs_sql

from tests.support.processes import Daemon, start_daemon, start_sim, unix_request
from tests.support.stores import DaemonStore
from tests.support.waiting import wait_for

IN_FLIGHT = 4
CONFIG = f"[jobs]\nmax_in_flight = {IN_FLIGHT}\n"


def jsonl(prefix: str, count: int) -> bytes:
    return b"".join(
        orjson.dumps({
            "custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "max_tokens": 3,
                     "messages": [{"role": "user", "content": f"{prefix}{i}"}]},
        }) + b"\n"
        for i in range(count)
    )


def submit(daemon: Daemon, body: bytes) -> dict[str, Any]:
    status, job = unix_request(daemon.socket_path, "POST", "/v1/jobs?deadline=10m", body,
                               {"content-type": "application/jsonl"})
    assert status == 202, job
    return job


def job_status(daemon: Daemon, job_id: str) -> dict[str, Any]:
    status, job = daemon.get(f"/v1/jobs/{job_id}")
    assert status == 200
    return job


def kill_9(daemon: Daemon) -> None:
    daemon.process.kill()
    daemon.process.wait(10)


def all_results(daemon: Daemon, job_id: str) -> list[dict[str, Any]]:
    status, raw = unix_request(daemon.socket_path, "GET", f"/v1/jobs/{job_id}/results?wait=60")
    assert status == 200
    text = raw if isinstance(raw, bytes) else orjson.dumps(raw)
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def stored_rows(state_dir: Path, job_id: str,
                store: DaemonStore | None = None) -> list[tuple[str, str, int]]:
    if store is not None:
        return [(custom_id, state, int(has)) for custom_id, state, has in store.rows(
            state_dir, "SELECT custom_id, state, CASE WHEN result IS NOT NULL THEN 1 ELSE 0 "
            "END FROM job_requests WHERE job_id = ?", (job_id,))]
    with sqlite3.connect(state_dir / "llmspool.sqlite3") as db:
        return db.execute(
            "SELECT custom_id, state, result IS NOT NULL FROM job_requests WHERE job_id = ?",
            (job_id,),
        ).fetchall()


def test_kill_9_mid_job_then_restart_finishes_every_request_once(
    tmp_path: Path, daemon_store: DaemonStore,
) -> None:
    """On each backend: SQLite in the state directory, and PostgreSQL."""
    config = CONFIG + daemon_store.toml
    sim = start_sim(tmp_path, '[sim]\nlatency = "100ms"\n')
    daemon = start_daemon(tmp_path, sim.url, config_toml=config, process=True)
    try:
        job = submit(daemon, jsonl("k", 60))
        wait_for(lambda: job_status(daemon, job["id"])["counts"]["succeeded"] >= 12,
                 timeout=30, what="12 requests done")
        kill_9(daemon)
        done_before = sum(1 for _c, state, _r in stored_rows(daemon.state_dir, job["id"],
                                                             daemon_store)
                          if state == "succeeded")
        assert 12 <= done_before < 60, "the kill must land mid-job"

        daemon = start_daemon(tmp_path, sim.url, config_toml=config, process=True)
        lines = all_results(daemon, job["id"])
        assert [line["custom_id"] for line in lines] == [f"k{i}" for i in range(60)]
        assert all(line["response"]["status_code"] == 200 for line in lines)
        finished = job_status(daemon, job["id"])
        assert finished["status"] == "completed"
        assert finished["counts"] == {"total": 60, "queued": 0, "running": 0, "in_batch": 0,
                                      "succeeded": 60,
                                      "failed": 0, "cancelled": 0, "late": 0}
        rows = stored_rows(daemon.state_dir, job["id"], daemon_store)
        assert len(rows) == 60 and all(state == "succeeded" and has for _c, state, has in rows)
        # Calls in flight or awaiting their commit at the kill were sent again.
        calls = sim.stats()["requests"]["by_path"]["/v1/chat/completions"]
        assert 60 <= calls <= 60 + 2 * IN_FLIGHT
    finally:
        daemon.terminate()
        sim.terminate()


def test_repeated_kills_at_random_moments_lose_nothing(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, '[sim]\nlatency = "20ms"\n')
    daemon = start_daemon(tmp_path, sim.url, config_toml=CONFIG, process=True)
    jobs: list[str] = []
    try:
        for cycle, pause in enumerate((0.0, 0.15, 0.4)):
            jobs.append(submit(daemon, jsonl(f"c{cycle}-", 40))["id"])
            time.sleep(pause)  # 0: killed right after the acknowledgement
            kill_9(daemon)
            daemon = start_daemon(tmp_path, sim.url, config_toml=CONFIG, process=True)
        for cycle, job_id in enumerate(jobs):
            lines = all_results(daemon, job_id)
            assert [line["custom_id"] for line in lines] == [f"c{cycle}-{i}" for i in range(40)]
            assert job_status(daemon, job_id)["counts"]["succeeded"] == 40
        calls = sim.stats()["requests"]["by_path"]["/v1/chat/completions"]
        # Per kill and slot: the call in flight, and one answered call awaiting its commit.
        assert 120 <= calls <= 120 + 3 * 2 * IN_FLIGHT
        status, ledger = daemon.get("/v1/ledger?limit=1000")
        assert status == 200
        # Every upstream call that was answered is in the ledger once, repeated ones included.
        job_entries = [e for e in ledger["entries"] if e["request_id"].startswith("job_")]
        assert len({e["request_id"] for e in job_entries}) == len(job_entries)
    finally:
        daemon.terminate()
        sim.terminate()


def test_a_restart_resumes_jobs_of_many_pages_each_line_once_most_urgent_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart reads the queued lines back a job and a page at a time (pages of 7 here):
    every line of every job runs once, and the job due first runs first."""
    monkeypatch.setattr(jobs_sql, "ROUTE_PAGE", 7)
    config = "[jobs]\nmax_in_flight = 1\n[batch]\nenabled = false\n"
    (tmp_path / "slow").mkdir()
    (tmp_path / "fast").mkdir()
    slow = start_sim(tmp_path / "slow", '[sim]\nlatency = "200ms"\n')
    daemon = start_daemon(tmp_path, slow.url, config_toml=config)
    try:
        jobs = {deadline: submit_with_deadline(daemon, jsonl(f"{deadline}-", 30), deadline)
                for deadline in ("3h", "1h", "2h")}
    finally:
        daemon.terminate()
        slow.terminate()
    before = {deadline: done_ids(daemon.state_dir, job["id"]) for deadline, job in jobs.items()}
    assert sum(len(ids) for ids in before.values()) < 10, "most lines must wait the restart"

    sim = start_sim(tmp_path / "fast")
    daemon = start_daemon(tmp_path, sim.url, config_toml=config)
    try:
        for deadline, job in jobs.items():
            lines = all_results(daemon, job["id"])
            assert [line["custom_id"] for line in lines] == [f"{deadline}-{i}" for i in range(30)]
            assert all(line["response"]["status_code"] == 200 for line in lines)
            assert job_status(daemon, job["id"])["counts"]["succeeded"] == 30
        # Each line not done before the restart was sent once after it.
        calls = sim.stats()["requests"]["by_path"]["/v1/chat/completions"]
        assert calls == 90 - sum(len(ids) for ids in before.values())
        # One at a time, by deadline: the 1 h job's lines all finished before the 2 h job's
        # that were left, and those before the 3 h job's.
        after = {deadline: finish_times(daemon.state_dir, job["id"], before[deadline])
                 for deadline, job in jobs.items()}
        assert max(after["1h"]) <= min(after["2h"])
        assert max(after["2h"]) <= min(after["3h"])
    finally:
        daemon.terminate()
        sim.terminate()


def submit_with_deadline(daemon: Daemon, body: bytes, deadline: str) -> dict[str, Any]:
    status, job = unix_request(daemon.socket_path, "POST", f"/v1/jobs?deadline={deadline}",
                               body, {"content-type": "application/jsonl"})
    assert status == 202, job
    return job


def done_ids(state_dir: Path, job_id: str) -> set[str]:
    with sqlite3.connect(state_dir / "llmspool.sqlite3") as db:
        return {custom_id for (custom_id,) in db.execute(
            "SELECT custom_id FROM job_requests WHERE job_id = ? AND state != 'queued'",
            (job_id,))}


def finish_times(state_dir: Path, job_id: str, done_before: set[str]) -> list[float]:
    with sqlite3.connect(state_dir / "llmspool.sqlite3") as db:
        return [finished for custom_id, finished in db.execute(
            "SELECT custom_id, finished_at FROM job_requests WHERE job_id = ?", (job_id,))
            if custom_id not in done_before]
