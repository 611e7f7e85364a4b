"""Flex processing against the simulator: a 429 *resource unavailable* means no capacity. The
daemon retries flex while the deadline allows, falls back to standard in time (or fails
clearly when fallback is off), escalates a slow flex call before its deadline, and bills the
tier the answer says it served."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.processes import (
    Daemon,
    Sim,
    python_command,
    start_daemon,
    start_sim,
    unix_request,
)

# Small expectations so that short test deadlines still leave room for flex and a fallback:
# flex needs 1 s x 1 + 1 s, and so does the standard fallback.
FAST_PLANNER = """
[planner]
margin = 1.0
safety = "1s"
default_standard_latency = "1s"
default_flex_latency = "1s"

# Jobs here are about flex: with hours of deadline they would otherwise go to a batch.
[batch]
enabled = false

[flex]
backoff_max = "500ms"
"""
CHAT = {"content-type": "application/json"}


@pytest.fixture
def flex_sim(tmp_path: Path) -> Iterator[Sim]:
    sim = start_sim(tmp_path)
    try:
        yield sim
    finally:
        sim.terminate()


def daemon_with(tmp_path: Path, sim: Sim, extra: str = "", backoff_min: str = "200ms"
                ) -> Daemon:
    """A daemon with FAST_PLANNER; ``extra`` continues its [flex] table."""
    return start_daemon(tmp_path, sim.url,
                        config_toml=FAST_PLANNER + f'backoff_min = "{backoff_min}"\n' + extra)


def one_job(daemon: Daemon, deadline: str, operation: str | None = None,
            model: str = "gpt-5-mini") -> tuple[dict[str, Any], dict[str, Any]]:
    """Submit one chat request as a job; (its result line, the finished job)."""
    line = orjson.dumps({
        "custom_id": "only", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": "hi"}],
                 "max_completion_tokens": 4},
    })
    query = f"?deadline={deadline}" + (f"&operation={operation}" if operation else "")
    status, job = unix_request(daemon.socket_path, "POST", f"/v1/jobs{query}", line + b"\n",
                               {"content-type": "application/jsonl"})
    assert status == 202, job
    status, raw = unix_request(daemon.socket_path, "GET", f"/v1/jobs/{job['id']}/results?wait=60")
    assert status == 200
    [result] = [orjson.loads(r) for r in (raw if isinstance(raw, bytes) else orjson.dumps(raw)
                                          ).splitlines() if r.strip()]
    _, finished = daemon.get(f"/v1/jobs/{job['id']}")
    return result, finished


def flex_stats(daemon: Daemon) -> dict[str, Any]:
    _, report = daemon.get("/v1/status")
    flex: dict[str, Any] = report["dispatcher"]["flex"]
    return flex


def test_spell_shorter_than_the_deadline_still_gets_flex(tmp_path: Path, flex_sim: Sim) -> None:
    daemon = daemon_with(tmp_path, flex_sim, "max_retries = 30\n")
    try:
        flex_sim.request("POST", "/_sim/flex", {"unavailable_for": "1500ms"})
        result, job = one_job(daemon, "2m")
        assert result["response"]["body"]["service_tier"] == "flex"
        assert job["by_tier"] == {"flex": 1}
        stats = flex_stats(daemon)
        assert stats["resource_unavailable_errors"] >= 1
        assert stats["standard_fallbacks"] == 0
        assert stats["requests"] == 1 and stats["estimated_savings_usd"] > 0
        assert flex_sim.stats()["flex"]["unavailable"] >= 1
    finally:
        daemon.terminate()


def test_deferred_work_waits_out_a_flex_outage_longer_than_max_retries(
    tmp_path: Path, flex_sim: Sim
) -> None:
    # [flex] max_retries = 3 with waits of at most 0.5 s would give up after ~1 s; a job's
    # deadline (2 minutes) is what bounds it, so it gets flex once the 4 s outage ends.
    daemon = daemon_with(tmp_path, flex_sim, "max_retries = 3\n", backoff_min="200ms")
    try:
        flex_sim.request("POST", "/_sim/flex", {"unavailable_for": "4s"})
        result, job = one_job(daemon, "2m")
        assert result["response"]["body"]["service_tier"] == "flex"
        assert job["by_tier"] == {"flex": 1}
        stats = flex_stats(daemon)
        assert stats["resource_unavailable_errors"] > 3 + 1  # more than max_retries allows
        assert stats["standard_fallbacks"] == 0
    finally:
        daemon.terminate()


def test_spell_longer_than_the_deadline_falls_back_to_standard_in_time(
    tmp_path: Path, flex_sim: Sim
) -> None:
    # Retries would go on far past the deadline; the daemon must stop them in time.
    daemon = daemon_with(tmp_path, flex_sim, "max_retries = 1000\n", backoff_min="1s")
    try:
        flex_sim.request("POST", "/_sim/flex", {"unavailable": True})
        submitted = time.time()
        result, job = one_job(daemon, "12s")
        assert result["response"]["body"]["service_tier"] == "default"
        assert job["by_tier"] == {"standard": 1}
        assert job["finished_at"] < job["deadline_at"]
        assert job["finished_at"] - submitted > 5, "flex was retried while the deadline allowed"
        stats = flex_stats(daemon)
        assert stats["standard_fallbacks"] == 1
        assert stats["resource_unavailable_errors"] >= 3
    finally:
        daemon.terminate()


def test_fallback_off_fails_clearly(tmp_path: Path, flex_sim: Sim) -> None:
    daemon = daemon_with(tmp_path, flex_sim, "max_retries = 2\ndeferred_max_retries = 2\n"
                         "fallback_to_standard = false\n")
    try:
        flex_sim.request("POST", "/_sim/flex", {"unavailable": True})
        result, job = one_job(daemon, "2m")
        assert result["response"] is None
        assert result["error"]["code"] == "flex_unavailable"
        assert "fallback" in result["error"]["message"]
        assert job["counts"]["failed"] == 1
        # Interactive callers get the same answer while they wait: 429, flex_unavailable.
        body = orjson.dumps({"model": "gpt-5-mini", "service_tier": "flex",
                             "messages": [{"role": "user", "content": "hi"}]})
        status, answer = unix_request(daemon.socket_path, "POST", "/v1/chat/completions", body,
                                      CHAT)
        assert status == 429 and answer["error"]["code"] == "flex_unavailable"
        assert flex_sim.stats()["requests"]["by_tier"].get("default", 0) == 0
    finally:
        daemon.terminate()


def test_slow_flex_is_escalated_to_standard_before_the_deadline(tmp_path: Path) -> None:
    sim = start_sim(tmp_path, '[sim]\nflex_latency = "60s"\n')
    daemon = daemon_with(tmp_path, sim)
    try:
        submitted = time.time()
        result, job = one_job(daemon, "10s")
        assert result["response"]["body"]["service_tier"] == "default"
        assert job["finished_at"] < job["deadline_at"]
        assert job["finished_at"] - submitted > 5, "the flex attempt ran until it had to yield"
        assert sim.stats()["flex"]["requests"] == 1
    finally:
        daemon.terminate()
        sim.terminate()


def test_interactive_deadline_header_and_explicit_flex(tmp_path: Path, flex_sim: Sim) -> None:
    daemon = daemon_with(tmp_path, flex_sim, "max_retries = 30\n")
    try:
        body = orjson.dumps({"model": "gpt-5-mini", "messages": [{"role": "user", "content": "x"}]})
        headers = {**CHAT, "x-llmspool-deadline": "1h"}
        status, answer = unix_request(daemon.socket_path, "POST", "/v1/chat/completions", body,
                                      headers)
        assert status == 200 and answer["service_tier"] == "flex"
        # No deadline, no tier asked: standard, as before.
        status, answer = unix_request(daemon.socket_path, "POST", "/v1/chat/completions", body,
                                      CHAT)
        assert answer["service_tier"] == "default"
        # Asked for flex during a short spell: retried while the client waits.
        flex_sim.request("POST", "/_sim/flex", {"unavailable_for": "800ms"})
        explicit = orjson.dumps({"model": "gpt-5-mini", "service_tier": "flex",
                                 "messages": [{"role": "user", "content": "x"}]})
        status, answer = unix_request(daemon.socket_path, "POST", "/v1/chat/completions",
                                      explicit, CHAT)
        assert status == 200 and answer["service_tier"] == "flex"
        status, answer = unix_request(daemon.socket_path, "POST", "/v1/chat/completions", body,
                                      {**CHAT, "x-llmspool-deadline": "soon"})
        assert status == 400 and answer["error"]["code"] == "invalid_deadline"
    finally:
        daemon.terminate()


def test_operations_config_turns_flex_off_or_forces_a_tier(tmp_path: Path, flex_sim: Sim
                                                          ) -> None:
    daemon = daemon_with(tmp_path, flex_sim, """
[operations.urgent_ish]
flex = false

[operations.evals]
tier = "flex"
deadline = "3h"
""")
    try:
        result, _ = one_job(daemon, "6h", operation="urgent_ish")
        assert result["response"]["body"]["service_tier"] == "default"
        result, _ = one_job(daemon, "1m", operation="evals")
        assert result["response"]["body"]["service_tier"] == "flex"
    finally:
        daemon.terminate()


def test_flex_metrics_in_status_and_cli(tmp_path: Path, flex_sim: Sim) -> None:
    import subprocess

    daemon = daemon_with(tmp_path, flex_sim)
    try:
        one_job(daemon, "1h")
        stats = flex_stats(daemon)
        assert stats["requests"] == 1 and stats["tokens"] > 0
        shown = subprocess.run(
            python_command("status", "--socket", str(daemon.socket_path)),
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        assert "flex" in shown and "fallbacks" in shown
    finally:
        daemon.terminate()
