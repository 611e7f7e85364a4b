"""OpenAI's Files and Batches API on the socket at scale, against ``llmspool submit``.

A Batch input file of ``--lines`` chat completions (gpt-5-mini, ``max_completion_tokens`` 8,
``bench_jobs.make_jsonl``) goes through the daemon twice, each variant on a fresh simulator
(``llmspool sim``, no rate limits, near-zero latency) and a fresh daemon, so that the daemon's
peak RSS (``VmHWM``) is the variant's own:

- ``batch_api``: the official ``openai`` client over the socket, as an unchanged Batch API
  script would do it: ``files.create(purpose="batch")``, ``batches.create(endpoint=
  "/v1/chat/completions", completion_window="24h")`` with ``x-llmspool-deadline``,
  ``batches.retrieve`` every 0.5 s until ``completed``, then ``files.content`` of the output
  file, whose lines are counted. Figures: upload time, create time, lines/s to
  acknowledgement (upload + create), wall time to ``completed`` (from the start of the upload,
  and from the acknowledgement), download time of the output, the daemon's peak RSS.
- ``submit``: the same file through the CLI (``python -m llmspool submit FILE --deadline D``),
  then ``GET /v1/jobs/{id}`` every 0.5 s until the job is done. Figures: acknowledgement time
  (the CLI's wall time, interpreter start included: ``cli_start_s`` is that start alone,
  ``llmspool submit --help``), wall time to completed, the daemon's peak RSS.

Both variants get the same deadline (``--deadline``, default 1h) and the same configuration
(``--setup``). ``batch`` (the default), as ``bench_batches``: the daemon's own upstream Batch
API tier against a simulator with zero turnaround (a 1 h deadline leaves room for a batch, so
the planner picks it; 10 m does not: flex), 100,000 requests done in well under a minute.
``direct``, as ``bench_jobs`` for its 100,000-line job: the batch tier off, ``[jobs]
max_in_flight = 256``, requests sent one by one at flex or standard (about 5 minutes for
100,000 on two cores). The ``tiers`` row says what the planner picked. Each variant runs
``--runs`` times; the table shows medians, ``--json`` writes every run and the medians. The
target for the daemon's peak RSS is 300 MiB.

    python -m tests.bench.bench_batch_api [--lines 100000] [--runs 3] [--json OUT]
        [--deadline 1h] [--setup batch|direct] [--variant batch_api|submit]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from tests.bench.bench_batches import CONFIG as BATCH_TIER_CONFIG
from tests.bench.bench_jobs import make_jsonl, peak_rss_mib, wait_done
from tests.support.processes import (
    UNLIMITED_SIM,
    Daemon,
    openai_client,
    python_command,
    start_daemon,
    start_sim,
)

# (simulator, daemon) configurations. direct: as bench_jobs.bench_large_submit, the Batch
# API tier off and many requests in flight. batch: as bench_batches, the upstream Batch API
# tier against a simulator with zero turnaround, batches built and polled at once.
SETUPS = {
    "direct": (UNLIMITED_SIM, "[jobs]\nmax_in_flight = 256\n[batch]\nenabled = false\n"),
    "batch": (UNLIMITED_SIM + '[sim.batch]\nturnaround = "0s"\n', BATCH_TIER_CONFIG),
}
POLL_EVERY = 0.5
RUN_TIMEOUT = 1800.0
RSS_TARGET_MIB = 300.0


def bench_batch_api(workdir: Path, input_path: Path, lines: int, deadline: str, setup: str
                    ) -> dict[str, Any]:
    sim_toml, daemon_toml = SETUPS[setup]
    sim = start_sim(workdir, sim_toml, process=True)
    daemon = start_daemon(workdir, sim.url, config_toml=daemon_toml, process=True)
    try:
        client = openai_client(daemon.socket_path, timeout=600)
        started = time.perf_counter()
        with input_path.open("rb") as stream:
            uploaded = client.files.create(file=(input_path.name, stream), purpose="batch")
        upload_s = time.perf_counter() - started
        t0 = time.perf_counter()
        raw = client.batches.with_raw_response.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions",
            completion_window="24h", extra_headers={"x-llmspool-deadline": deadline})
        batch = raw.parse()
        acknowledged = time.perf_counter()
        create_s = acknowledged - t0
        job_id = raw.headers.get("x-llmspool-job-id")
        plan = raw.headers.get("x-llmspool-plan")
        rss_after_ack = peak_rss_mib(daemon.pid)
        statuses = [batch.status]
        give_up = time.monotonic() + RUN_TIMEOUT
        while batch.status not in ("completed", "failed", "cancelled", "expired") \
                and time.monotonic() < give_up:
            time.sleep(POLL_EVERY)
            batch = client.batches.retrieve(batch.id)
            if batch.status != statuses[-1]:
                statuses.append(batch.status)
        completed = time.perf_counter()
        if batch.status != "completed":
            raise RuntimeError(f"batch {batch.id} ended {batch.status!r}: {batch}\n"
                               f"daemon log tail:\n{_tail(daemon)}")
        by_tier = _by_tier(daemon, job_id)
        t0 = time.perf_counter()
        output_lines = 0
        output_bytes = 0
        content = b""
        if batch.output_file_id is not None:
            content = client.files.content(batch.output_file_id).content
            output_lines = content.count(b"\n")
            output_bytes = len(content)
        download_s = time.perf_counter() - t0
        # Not timed: every request answered once, under its own custom_id.
        ids = [orjson.loads(line)["custom_id"] for line in content.splitlines()]
        del content
        ids_ok = len(ids) == len(set(ids)) == lines and set(ids) == {f"r{i}" for i in range(lines)}
        counts = batch.request_counts
        return {
            "lines": lines,
            "input_mib": input_path.stat().st_size / 2**20,
            "deadline": deadline,
            "setup": setup,
            "upload_s": upload_s,
            "create_s": create_s,
            "ack_s": acknowledged - started,
            "ack_lines_per_s": lines / (acknowledged - started),
            "completed_s": completed - started,
            "completed_after_ack_s": completed - acknowledged,
            "download_s": download_s,
            "output_lines": output_lines,
            "output_mib": output_bytes / 2**20,
            "output_custom_ids_ok": ids_ok,
            "download_lines_per_s": output_lines / download_s if download_s else float("nan"),
            "completed_requests": counts.completed if counts else None,
            "failed_requests": counts.failed if counts else None,
            "error_file_id": batch.error_file_id,
            "statuses_seen": statuses,
            "plan": plan,
            "by_tier": by_tier,
            "peak_rss_mib_after_ack": rss_after_ack,
            "peak_rss_mib": peak_rss_mib(daemon.pid),
        }
    finally:
        daemon.terminate()
        sim.terminate()


def bench_submit(workdir: Path, input_path: Path, lines: int, deadline: str, setup: str
                 ) -> dict[str, Any]:
    sim_toml, daemon_toml = SETUPS[setup]
    sim = start_sim(workdir, sim_toml, process=True)
    daemon = start_daemon(workdir, sim.url, config_toml=daemon_toml, process=True)
    try:
        t0 = time.perf_counter()
        subprocess.run(python_command("submit", "--help"), env=daemon.env, check=True,
                       capture_output=True)
        cli_start_s = time.perf_counter() - t0
        started = time.perf_counter()
        submitted = subprocess.run(
            python_command("submit", str(input_path), "--deadline", deadline,
                           "--socket", str(daemon.socket_path)),
            env=daemon.env, capture_output=True, text=True)
        acknowledged = time.perf_counter()
        if submitted.returncode != 0:
            raise RuntimeError(f"llmspool submit exited {submitted.returncode}: "
                               f"{submitted.stderr}\ndaemon log tail:\n{_tail(daemon)}")
        job_id = submitted.stdout.strip()
        rss_after_ack = peak_rss_mib(daemon.pid)
        done = wait_done(daemon, job_id, timeout=RUN_TIMEOUT)
        completed = time.perf_counter()
        if done["status"] != "completed":
            raise RuntimeError(f"job {job_id} ended {done['status']!r}: {done}\n"
                               f"daemon log tail:\n{_tail(daemon)}")
        return {
            "lines": lines,
            "input_mib": input_path.stat().st_size / 2**20,
            "deadline": deadline,
            "setup": setup,
            "cli_start_s": cli_start_s,
            "ack_s": acknowledged - started,
            "ack_lines_per_s": lines / (acknowledged - started),
            "completed_s": completed - started,
            "completed_after_ack_s": completed - acknowledged,
            "completed_requests": done["counts"]["succeeded"],
            "failed_requests": done["counts"]["failed"],
            "by_tier": done["by_tier"],
            "peak_rss_mib_after_ack": rss_after_ack,
            "peak_rss_mib": peak_rss_mib(daemon.pid),
        }
    finally:
        daemon.terminate()
        sim.terminate()


def _by_tier(daemon: Daemon, job_id: str | None) -> dict[str, int] | None:
    if job_id is None:
        return None
    status, job = daemon.get(f"/v1/jobs/{job_id}")
    return dict(job["by_tier"]) if status == 200 else None


def _tail(daemon: Daemon, lines: int = 40) -> str:
    return "\n".join(daemon.log().splitlines()[-lines:])


VARIANTS = {"batch_api": bench_batch_api, "submit": bench_submit}

# (label, key, format) of the table's rows; a variant without the key shows "-".
ROWS = [
    ("upload (s)", "upload_s", "{:.2f}"),
    ("create (s)", "create_s", "{:.2f}"),
    ("CLI interpreter start (s)", "cli_start_s", "{:.2f}"),
    ("acknowledged (s)", "ack_s", "{:.2f}"),
    ("lines/s to acknowledgement", "ack_lines_per_s", "{:,.0f}"),
    ("completed, from start (s)", "completed_s", "{:.1f}"),
    ("completed, after ack (s)", "completed_after_ack_s", "{:.1f}"),
    ("download output (s)", "download_s", "{:.2f}"),
    ("output lines", "output_lines", "{:,.0f}"),
    ("completed requests", "completed_requests", "{:,.0f}"),
    ("failed requests", "failed_requests", "{:,.0f}"),
    ("peak RSS after ack (MiB)", "peak_rss_mib_after_ack", "{:.0f}"),
    (f"peak RSS (MiB, target ≤ {RSS_TARGET_MIB:.0f})", "peak_rss_mib", "{:.0f}"),
]


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key in runs[0]:
        values = [run[key] for run in runs]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            summary[key] = statistics.median(values)
        else:  # tiers, plans, statuses: as the runs gave them, once if all agree
            summary[key] = values[0] if all(v == values[0] for v in values) else values
    return summary


def print_table(summary: dict[str, dict[str, Any]], runs: int) -> None:
    from rich.console import Console
    from rich.table import Table

    first = next(iter(summary.values()))
    table = Table(title=f"{first['lines']:,.0f} lines, deadline {first['deadline']}, setup "
                        f"{first['setup']}, medians of {runs} run(s)")
    table.add_column("figure")
    for name in summary:
        table.add_column(name, justify="right")
    for label, key, form in ROWS:
        cells = [form.format(figures[key]) if figures.get(key) is not None else "-"
                 for figures in summary.values()]
        if any(cell != "-" for cell in cells):
            table.add_row(label, *cells)
    table.add_row("tiers", *(_tiers(figures.get("by_tier")) for figures in summary.values()))
    Console().print(table)


def _tiers(by_tier: Any) -> str:
    if isinstance(by_tier, dict):
        return ", ".join(f"{tier} {count:,}" for tier, count in sorted(by_tier.items()))
    return str(by_tier)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deadline", default="1h",
                        help="the deadline of both variants (default 1h)")
    parser.add_argument("--setup", choices=sorted(SETUPS), default="batch",
                        help="how the daemon gets the work done (default batch)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), action="append",
                        help="run only this variant (repeatable; default both)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    chosen = args.variant or list(VARIANTS)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory(prefix="llmspool-bench-batch-api-") as tmp:
        input_path = Path(tmp) / "requests.jsonl"
        input_path.write_bytes(make_jsonl(args.lines))
        for run in range(args.runs):
            for name in chosen:
                workdir = Path(tmp) / f"{name}-{run}"
                workdir.mkdir()
                figures = VARIANTS[name](workdir, input_path, args.lines, args.deadline,
                                         args.setup)
                results[name].append(figures)
                print(f"run {run + 1}/{args.runs} {name}: "
                      f"{orjson.dumps(figures).decode()}", file=sys.stderr)
    summary = {name: medians(runs) for name, runs in results.items()}
    print_table(summary, args.runs)
    if args.json:
        args.json.write_bytes(orjson.dumps({"medians": summary, "runs": results},
                                           option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
