"""Deferred work at scale: figures for the jobs API, and deadlines under a flex outage.

1. A 100,000-line Batch input file: time until it is durably acknowledged (lines/s), the
   daemon's peak RSS while holding it, ``GET /v1/jobs/{id}`` latency on it, and the rate at
   which its results download once it has run (against ``llmspool sim``, near-zero latency).
2. A mixed workload (flex-capable and standard-only models, deadlines from 2 to 30 minutes)
   against a simulator whose flex capacity is out 30% of the time: the share of deadlines met,
   and the cost against the same work all at standard prices.

    python -m tests.bench.bench_jobs [--lines 100000] [--json OUT]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from tests.support.processes import (
    UNLIMITED_SIM,
    Daemon,
    UnixHTTPConnection,
    start_daemon,
    start_sim,
    unix_request,
)


def make_jsonl(lines: int, models: tuple[str, ...] = ("gpt-5-mini",)) -> bytes:
    return b"".join(
        orjson.dumps({
            "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": models[i % len(models)], "max_completion_tokens": 8,
                     "messages": [{"role": "user", "content": f"Summarise item {i} briefly."}]},
        }) + b"\n"
        for i in range(lines)
    )


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_done(daemon: Daemon, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        _status, job = daemon.get(f"/v1/jobs/{job_id}")
        if job["status"] != "in_progress" or time.monotonic() > deadline:
            return dict(job)
        time.sleep(0.5)


def bench_large_submit(workdir: Path, lines: int) -> dict[str, Any]:
    sim = start_sim(workdir, UNLIMITED_SIM, process=True)
    # The direct path (a 24 h deadline would go to the Batch API: bench_batches measures that).
    daemon = start_daemon(workdir, sim.url,
                          config_toml="[jobs]\nmax_in_flight = 256\n[batch]\nenabled = false\n",
                          process=True)
    try:
        body = make_jsonl(lines)
        started = time.perf_counter()
        status, job = unix_request(daemon.socket_path, "POST", "/v1/jobs?deadline=24h", body,
                                   {"content-type": "application/jsonl"})
        acknowledged = time.perf_counter() - started
        assert status == 202, job
        status_times = []
        for _ in range(50):
            t0 = time.perf_counter()
            daemon.get(f"/v1/jobs/{job['id']}")
            status_times.append((time.perf_counter() - t0) * 1000)
        rss_holding = peak_rss_mib(daemon.pid)
        run_started = time.perf_counter()
        done = wait_done(daemon, job["id"], timeout=900)
        run_seconds = time.perf_counter() - run_started
        connection = UnixHTTPConnection(daemon.socket_path, timeout=300)
        t0 = time.perf_counter()
        connection.request("GET", f"/v1/jobs/{job['id']}/results")
        response = connection.getresponse()
        size = 0
        count = 0
        while chunk := response.read(1 << 20):
            size += len(chunk)
            count += chunk.count(b"\n")
        download = time.perf_counter() - t0
        connection.close()
        return {
            "lines": lines,
            "upload_mib": len(body) / 2**20,
            "ack_seconds": acknowledged,
            "ack_lines_per_s": lines / acknowledged,
            "status_p50_ms": statistics.median(status_times),
            "status_max_ms": max(status_times),
            "peak_rss_mib_after_ack": rss_holding,
            "peak_rss_mib_end": peak_rss_mib(daemon.pid),
            "run_seconds": run_seconds,
            "run_requests_per_s": done["counts"]["succeeded"] / run_seconds,
            "succeeded": done["counts"]["succeeded"],
            "results_lines": count,
            "results_mib_per_s": size / 2**20 / download,
            "results_lines_per_s": count / download,
        }
    finally:
        daemon.terminate()
        sim.terminate()


def bench_flex_outage(workdir: Path) -> dict[str, Any]:
    sim = start_sim(workdir, """
[sim]
flex_latency = "300ms"
flex_latency_jitter = "700ms"
flex_outage_period = "20s"
flex_outage_fraction = 0.3
""", process=True)
    daemon = start_daemon(workdir, sim.url, config_toml="""
[jobs]
max_in_flight = 32
[flex]
backoff_min = "1s"
backoff_max = "10s"
max_retries = 20
""", process=True)
    try:
        jobs = []
        plan = [("2m", 150), ("5m", 300), ("30m", 600)]
        for deadline, count in plan:
            body = make_jsonl(count, ("gpt-5-mini", "gpt-5-nano", "gpt-4o-mini"))
            status, job = unix_request(daemon.socket_path, "POST", f"/v1/jobs?deadline={deadline}",
                                       body, {"content-type": "application/jsonl"})
            assert status == 202, job
            jobs.append(job["id"])
        finished = [wait_done(daemon, job_id, timeout=1900) for job_id in jobs]
        met = sum(1 for job in finished if job["status"] == "completed"
                  and job["finished_at"] <= job["deadline_at"])
        cost = sum(job["cost_usd"] for job in finished)
        standard = sum(job["cost_usd"] + job["saved_usd"] for job in finished)
        _, report = daemon.get("/v1/status")
        return {
            "requests": sum(count for _d, count in plan),
            "jobs_meeting_deadline": f"{met}/{len(jobs)}",
            "failed": sum(job["counts"]["failed"] for job in finished),
            "by_tier": _sum_tiers(finished),
            "cost_usd": cost,
            "all_standard_usd": standard,
            "cost_vs_standard": cost / standard if standard else float("nan"),
            "flex": report["dispatcher"]["flex"],
            "sim_flex": sim.stats()["flex"],
        }
    finally:
        daemon.terminate()
        sim.terminate()


def _sum_tiers(jobs: list[dict[str, Any]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for job in jobs:
        for tier, count in job["by_tier"].items():
            totals[tier] = totals.get(tier, 0) + count
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--skip-outage", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="llmspool-bench-jobs-") as tmp:
        (Path(tmp) / "large").mkdir()
        figures["large_submit"] = bench_large_submit(Path(tmp) / "large", args.lines)
        print(orjson.dumps(figures["large_submit"], option=orjson.OPT_INDENT_2).decode())
        if not args.skip_outage:
            (Path(tmp) / "outage").mkdir()
            figures["flex_outage"] = bench_flex_outage(Path(tmp) / "outage")
            print(orjson.dumps(figures["flex_outage"], option=orjson.OPT_INDENT_2).decode())
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
