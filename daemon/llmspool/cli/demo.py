"""``llmspool demo``: what the spooler is for, rehearsed in under a minute, with nothing to
configure and no API key.

It starts ``llmspool sim`` (flex capacity out 40% of the time, batches that take a few seconds
instead of hours) on a free loopback port and ``llmspool daemon`` in front of it on a socket in
a temporary directory, with a planner whose clock is compressed to match. Then, with the
official ``openai`` client and llmspool's own client over the socket:

1. an interactive call, billed at the standard price;
2. the same call again, answered without a second upstream call, for nothing;
3. a job due in 30 seconds, which the planner sends on flex at half price, riding out the
   simulated flex outage with retries;
4. a job due in an hour, which goes through the Batch API at half price; one of its requests
   repeats one of job 3's and is answered without a second call;
5. the cost report by saving source, from the daemon's ledger.

Both processes are stopped at the end.
"""

from __future__ import annotations

import http.client
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

START_TIMEOUT = 20.0
JOB_TIMEOUT = 90.0
SIM_CONFIG = """[sim]
latency = "50ms"
flex_latency = "200ms"
flex_unavailable_probability = 0.4
seed = 7

[sim.batch]
validating = "0s"
turnaround = "3s"
finalizing = "0s"
"""
# The planner's clock compressed like the simulator's: a batch is expected in seconds, so a
# deadline of an hour has room for one, and 30 s has room for flex only (a batch needs time
# to be cancelled and escalated before its deadline: cancel_wait).
DAEMON_CONFIG = """[planner]
safety = "1s"
default_standard_latency = "1s"
default_flex_latency = "2s"
default_batch_latency = "4s"

[flex]
backoff_min = "100ms"
backoff_max = "500ms"

[batch]
max_age = "300ms"
poll_min = "300ms"
poll_max = "1s"
cancel_wait = "60s"
"""
QUESTIONS = [f"In one line: what is a {thing} for?" for thing in (
    "print spooler", "message queue", "deadline", "ledger", "cache", "batch window",
    "circuit breaker", "retry budget", "price book", "flex tier", "socket", "daemon")]


def run_demo() -> int:
    import httpx2
    import openai

    from llmspool.cli.costs import report_table
    from llmspool.cli.output import console as make_console
    from llmspool.client import SyncSpool

    console = make_console()
    with tempfile.TemporaryDirectory(prefix="llmspool-demo-") as workdir, \
            _sim(Path(workdir)) as sim_url:
        socket_path = Path(workdir) / "llmspool.sock"
        console.print(f"[bold]llmspool sim[/] at {sim_url}: flex capacity out 40% of the "
                      "time, batches done in ~3 s instead of hours")
        with _daemon(Path(workdir), socket_path, sim_url):
            console.print(f"[bold]llmspool daemon[/] on {socket_path}\n")
            client = openai.OpenAI(
                base_url="http://localhost/v1",
                api_key="not-needed-the-daemon-holds-the-key",
                max_retries=0,
                http_client=openai.DefaultHttpxClient(
                    transport=httpx2.HTTPTransport(uds=str(socket_path))
                ),
            )
            body: dict[str, Any] = {
                "model": "gpt-4o-mini", "temperature": 0, "max_tokens": 24,
                "messages": [{"role": "user", "content": "What does a print spooler do?"}]}

            console.print("[bold cyan]1. An interactive call[/] (gpt-4o-mini)")
            raw = client.chat.completions.with_raw_response.create(**body)
            console.print(f"   {raw.parse().choices[0].message.content}")
            console.print(f"   ${float(raw.headers['x-llmspool-cost-usd']):.8f} on the "
                          f"{raw.headers['x-llmspool-tier']} tier\n")

            console.print("[bold cyan]2. The same call again[/]")
            raw = client.chat.completions.with_raw_response.create(**body)
            console.print("   answered without calling upstream (x-llmspool-cache: "
                          f"{raw.headers.get('x-llmspool-cache')}): "
                          f"${float(raw.headers['x-llmspool-cost-usd']):.8f}\n")

            with SyncSpool(str(socket_path), timeout=JOB_TIMEOUT) as spool:
                soon = spool.submit([_chat(q) for q in QUESTIONS], deadline="30s",
                                    operation="demo-soon")
                console.print("[bold cyan]3. A job of 12 requests due in 30 s[/] "
                              f"({soon.id}): {_plan(soon.plan)}")
                later = spool.submit([_chat(q) for q in QUESTIONS[:11]] + [body],
                                     deadline="1h", operation="demo-later")
                console.print("[bold cyan]4. A job of 12 requests due in 1 h[/] "
                              f"({later.id}): {_plan(later.plan)}")
                for handle in (soon, later):
                    job = handle.wait(JOB_TIMEOUT)
                    counts = job["counts"]
                    console.print(f"   {handle.id}: {job['status']}, {counts['succeeded']} "
                                  f"answered, {counts['failed']} failed; served on "
                                  f"{_tiers(job['by_tier'])}; ${job['cost_usd']:.8f} "
                                  f"(saved ${job['saved_usd']:.8f})")
            flex = _get(socket_path, "/v1/status")["dispatcher"]["flex"]
            console.print(f"   the flex outage, absorbed: {flex['resource_unavailable_errors']} "
                          "'resource unavailable' answers retried, "
                          f"{flex['standard_fallbacks']} fallbacks to standard\n")

            console.print("[bold cyan]5. What it cost, by saving source[/] "
                          "(llmspool costs --by source)")
            console.print(report_table(_get(socket_path, "/v1/ledger?by=source&since=all")))
    return 0


def _chat(question: str) -> dict[str, Any]:
    return {"model": "gpt-5-mini", "max_completion_tokens": 24,
            "messages": [{"role": "user", "content": question}]}


def _plan(plan: list[dict[str, Any]]) -> str:
    return ", ".join(f"{group['requests']} planned on {group['tier']}" for group in plan)


def _tiers(by_tier: dict[str, int]) -> str:
    return ", ".join(f"{tier} {count}" for tier, count in sorted(by_tier.items())) or "-"


def _get(socket_path: Path, path: str) -> dict[str, Any]:
    connection = http.client.HTTPConnection("localhost", timeout=10)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(socket_path))
    connection.sock = sock
    try:
        connection.request("GET", path)
        answer: dict[str, Any] = orjson.loads(connection.getresponse().read())
        return answer
    finally:
        connection.close()


@contextmanager
def _sim(workdir: Path) -> Iterator[str]:
    config = workdir / "sim.toml"
    config.write_text(SIM_CONFIG)
    process = subprocess.Popen(
        [sys.executable, "-m", "llmspool", "sim", "--port", "0", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "LLMSPOOL_CONFIG": ""},
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        line = process.stdout.readline().decode() if ready else ""
        if "http://" not in line:
            raise RuntimeError(f"llmspool sim did not start (it said {line!r})")
        yield line[line.index("http://"):].strip()
    finally:
        _stop(process)


@contextmanager
def _daemon(workdir: Path, socket_path: Path, upstream: str) -> Iterator[None]:
    config = workdir / "llmspool.toml"
    config.write_text(DAEMON_CONFIG)
    environment = {
        **os.environ,
        "LLMSPOOL_CONFIG": str(config),
        "LLMSPOOL_SOCKET": str(socket_path),
        "LLMSPOOL_STATE_DIR": str(workdir / "state"),
        "OPENAI_BASE_URL": upstream,
        "OPENAI_API_KEY": "sk-simulated",
    }
    log = (workdir / "daemon.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "llmspool", "daemon"], stdout=log,
                               stderr=subprocess.STDOUT, env=environment)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not socket_path.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                log.close()
                text = (workdir / "daemon.log").read_text(errors="replace")
                raise RuntimeError(f"llmspool daemon did not start:\n{text}")
            time.sleep(0.02)
        yield
    finally:
        _stop(process)
        log.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
