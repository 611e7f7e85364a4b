"""Memory of deferred work that waits: the daemon's RSS with a million requests queued, and
across a restart that resumes them.

Against ``llmspool sim`` answering after ``--latency`` (so almost nothing finishes while it
is measured), ``--jobs`` jobs of ``--lines`` lines each (default 10 x 100,000, deadline 24 h,
the direct path: ``[batch] enabled = false``) are submitted one after the other. Figures:

- ``peak_rss_mib_queued``: the daemon's peak RSS (``VmHWM``) once all are acknowledged, and
  ``rss_mib_queued`` its RSS then (``VmRSS``);
- the daemon is killed (SIGKILL, as a crash or an OOM kill would) and started again on the
  same state; once its keeper reports every request queued again: ``restart_seconds``,
  ``peak_rss_mib_restart`` and ``rss_mib_restart``.

Figures, not pass or fail (issue 17's targets: 300 MiB for each).

    python -m tests.bench.bench_queued [--jobs 10] [--lines 100000] [--json OUT]
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from tests.bench.bench_jobs import make_jsonl, peak_rss_mib
from tests.support.processes import (
    UNLIMITED_SIM,
    Daemon,
    start_daemon,
    start_sim,
    unix_request,
)

CONFIG = "[jobs]\nmax_in_flight = 8\n[batch]\nenabled = false\n"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def queued(daemon: Daemon) -> int:
    """Requests the keeper holds that have not finished (queued, running or in a batch)."""
    _status, jobs = daemon.get("/v1/jobs?limit=1000")
    return sum(job["counts"]["queued"] + job["counts"]["running"] + job["counts"]["in_batch"]
               for job in jobs["data"] if job["status"] == "in_progress")


def wait_resumed(daemon: Daemon, expected: int, timeout: float) -> None:
    """Until the keeper answers with every request back (it answers once it has resumed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if queued(daemon) >= expected:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"not resumed in {timeout} s")


def run(workdir: Path, jobs: int, lines: int, latency: str) -> dict[str, Any]:
    sim = start_sim(workdir, UNLIMITED_SIM + f'latency = "{latency}"\n', process=True)
    daemon = start_daemon(workdir, sim.url, config_toml=CONFIG, process=True)
    try:
        idle = rss_mib(daemon.pid)
        body = make_jsonl(lines)
        started = time.perf_counter()
        for _ in range(jobs):
            status, job = unix_request(daemon.socket_path, "POST", "/v1/jobs?deadline=24h",
                                       body, {"content-type": "application/jsonl"})
            assert status == 202, job
        submit_seconds = time.perf_counter() - started
        del body
        pid = daemon.pid
        figures: dict[str, Any] = {
            "requests": jobs * lines,
            "rss_mib_idle": idle,
            "submit_seconds": submit_seconds,
            "peak_rss_mib_queued": peak_rss_mib(pid),
            "rss_mib_queued": rss_mib(pid),
            "keeper_unfinished": queued(daemon),
        }
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(10)
        started = time.perf_counter()
        daemon = start_daemon(workdir, sim.url, config_toml=CONFIG, process=True)
        assert daemon.process is not None
        wait_resumed(daemon, figures["keeper_unfinished"], timeout=900)
        figures["restart_seconds"] = time.perf_counter() - started
        figures["peak_rss_mib_restart"] = peak_rss_mib(daemon.pid)
        figures["rss_mib_restart"] = rss_mib(daemon.pid)
        return figures
    finally:
        daemon.terminate()
        sim.terminate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--latency", default="30m", help="the simulator's answer time")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmspool-bench-queued-") as tmp:
        figures = run(Path(tmp), args.jobs, args.lines, args.latency)
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
