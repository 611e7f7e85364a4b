"""The batch tier at scale: 100,000 requests through the Batch API pipeline, end to end.

Against ``llmspool sim`` with a near-zero batch turnaround, a 100,000-line job (deadline 24 h)
is acknowledged, grouped into two batches of 50,000 (OpenAI's line limit), written to input
files, uploaded, created, polled, downloaded and mapped back with a ledger entry per line.
Figures per round: wall time from acknowledgement to the job's completion, the daemon's CPU
seconds over that time (``/proc/PID/stat``), lines per second of each, and the daemon's peak
RSS (``VmHWM``). The simulator runs in its own process, so its work is not in the CPU figure.

    python -m tests.bench.bench_batches [--lines 100000] [--rounds 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from tests.bench.bench_jobs import make_jsonl, peak_rss_mib, wait_done
from tests.support.processes import start_daemon, start_sim, unix_request

CONFIG = """
[planner]
default_batch_latency = "1m"
[batch]
max_age = "100ms"
poll_min = "100ms"
poll_max = "200ms"
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def daemon_steps(state_dir: Path) -> float:
    """Seconds the daemon spent on its own steps, from the batches' recorded times: from the
    intent to the batch created upstream (build + upload + create), and from seeing it
    finished to its results stored (download + map + ledger). The simulator's turnaround and
    the polling interval are what is left of the wall time."""
    with sqlite3.connect(state_dir / "llmspool.sqlite3") as db:
        rows = db.execute("SELECT created_at, submitted_at, polled_at, finished_at "
                          "FROM batches").fetchall()
    return sum((submitted - created) + (finished - polled)
               for created, submitted, polled, finished in rows)


def one_round(workdir: Path, lines: int) -> dict[str, Any]:
    sim = start_sim(workdir, '[sim.batch]\nturnaround = "0s"\n', process=True)
    daemon = start_daemon(workdir, sim.url, config_toml=CONFIG, process=True)
    try:
        body = make_jsonl(lines)
        status, job = unix_request(daemon.socket_path, "POST", "/v1/jobs?deadline=24h", body,
                                   {"content-type": "application/jsonl"})
        assert status == 202, job
        cpu_before = cpu_seconds(daemon.pid)
        started = time.perf_counter()
        done = wait_done(daemon, job["id"], timeout=1800)
        wall = time.perf_counter() - started
        cpu = cpu_seconds(daemon.pid) - cpu_before
        batches = sim.stats()["batches"]
        rss = peak_rss_mib(daemon.pid)
        steps = daemon_steps(daemon.state_dir)
    finally:
        daemon.terminate()
        sim.terminate()
    assert done["status"] == "completed", done
    assert done["by_tier"] == {"batch": lines}, done["by_tier"]
    return {
        "wall_s": wall,
        "daemon_cpu_s": cpu,
        "lines_per_wall_s": lines / wall,
        "lines_per_cpu_s": lines / cpu,
        "daemon_steps_s": steps,
        "lines_per_step_s": lines / steps,
        "peak_rss_mib": rss,
        "batches": batches["created"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    rounds = []
    for number in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="bench-batches-") as tmp:
            rounds.append(one_round(Path(tmp), args.lines))
        print(f"round {number + 1}: " + ", ".join(
            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in rounds[-1].items()), file=sys.stderr)
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    print(f"{args.lines} requests through the batch tier, median of {args.rounds} rounds")
    print(f"{'figure':<28}{'median':>12}  target")
    targets = {"lines_per_step_s": "≥ 10,000", "lines_per_cpu_s": "≥ 10,000",
               "peak_rss_mib": "≤ 300 MB"}
    for key, value in median.items():
        print(f"{key:<28}{value:>12.2f}  {targets.get(key, '')}")
    if args.json:
        args.json.write_bytes(orjson.dumps({"rounds": rounds, "median": median},
                                           option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
