"""What the daemon adds to a call: latency at concurrency 1 and 64, throughput, first chunk.

The same load generator (h2load, HTTP/1.1) calls ``llmspool sim`` directly and through the
daemon's Unix socket, alternating in rounds within one run, so both see the same machine
state. Each configuration runs with tracing off and with spans exported over OTLP/HTTP to a
local receiver. Figures, not pass/fail: the machine is noisy, so each is the median of rounds.

    python -m tests.bench.bench_latency [--rounds 5] [--requests 3000] [--json OUT]

Needs ``h2load`` (Debian: nghttp2-client).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from tests.support.processes import (
    UNLIMITED_SIM,
    Daemon,
    Sim,
    start_daemon,
    start_sim,
    stop_process,
)

CHAT_BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hello there, how are you today?"}],
    "max_tokens": 16,
}
STREAM_BODY = {**CHAT_BODY, "stream": True}
RECEIVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def h2load(target: str, body_file: Path, *, requests: int, clients: int, workdir: Path,
           socket_path: Path | None = None) -> dict[str, Any]:
    """One h2load run: per-request latencies (µs), throughput, and failures."""
    log = workdir / "h2load.tsv"
    log.unlink(missing_ok=True)
    command = ["h2load", "--h1", "-n", str(requests), "-c", str(clients), "-d", str(body_file),
               "-H", "content-type: application/json", f"--log-file={log}"]
    if socket_path is not None:
        command += ["-B", f"unix:{socket_path}"]
    command.append(target)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    latencies = []
    failures = 0
    for line in log.read_text().splitlines():
        _start, status, duration = line.split("\t")
        latencies.append(int(duration))
        failures += status != "200"
    rate = next(float(line.split(",")[1].split()[0]) for line in output.splitlines()
                if line.startswith("finished in"))
    failures += requests - len(latencies)
    return {"p50_us": percentile(latencies, 0.5), "p99_us": percentile(latencies, 0.99),
            "rps": rate, "failures": failures}


def first_chunk_seconds(connect: Any, path_prefix: str, samples: int) -> list[float]:
    """Time from sending a streamed request to receiving its first event, per sample."""
    body = orjson.dumps(STREAM_BODY)
    request = (
        f"POST {path_prefix}/chat/completions HTTP/1.1\r\nhost: x\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body
    times = []
    for _ in range(samples):
        with connect() as sock:
            started = time.perf_counter()
            sock.sendall(request)
            received = b""
            while b"data:" not in received:
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError(f"stream ended before its first event: {received!r}")
                received += data
            times.append(time.perf_counter() - started)
            while sock.recv(65536):
                pass
    return times


@contextmanager
def otlp_receiver() -> Iterator[int]:
    process = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        stop_process(process)


def measure(sim: Sim, daemon: Daemon, workdir: Path, rounds: int, requests: int) -> dict[str, Any]:
    body_file = workdir / "body.json"
    body_file.write_bytes(orjson.dumps(CHAT_BODY))
    direct_url = f"{sim.url}/chat/completions"
    via_url = "http://localhost/v1/chat/completions"
    results: dict[str, Any] = {}
    for clients, count in ((1, requests), (64, requests * 4)):
        added_p50, added_p99, rps, failures = [], [], [], 0
        direct_rps = []
        for _ in range(rounds):
            direct = h2load(direct_url, body_file, requests=count, clients=clients,
                            workdir=workdir)
            via = h2load(via_url, body_file, requests=count, clients=clients, workdir=workdir,
                         socket_path=daemon.socket_path)
            added_p50.append((via["p50_us"] - direct["p50_us"]) / 1000)
            added_p99.append((via["p99_us"] - direct["p99_us"]) / 1000)
            rps.append(via["rps"])
            direct_rps.append(direct["rps"])
            failures += via["failures"]
        results[f"c{clients}"] = {
            "added_p50_ms": statistics.median(added_p50),
            "added_p99_ms": statistics.median(added_p99),
            "daemon_rps": statistics.median(rps),
            "direct_rps": statistics.median(direct_rps),
            "daemon_failures": failures,
        }
    host, port = sim.base.removeprefix("http://").split(":")

    def tcp() -> socket.socket:
        return socket.create_connection((host, int(port)))

    def unix() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(daemon.socket_path))
        return sock

    added_first = []
    for _ in range(rounds):
        direct_times = first_chunk_seconds(tcp, "/v1", 100)
        via_times = first_chunk_seconds(unix, "/v1", 100)
        added_first.append((statistics.median(via_times) - statistics.median(direct_times)) * 1000)
    results["first_chunk_added_ms"] = statistics.median(added_first)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000,
                        help="requests per round at concurrency 1 (4x that at 64)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--daemon-config", type=Path,
                        help="a TOML file for the daemon (e.g. with [budgets] caps, to see the "
                        "cost of admission)")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print("h2load is missing: apt-get install nghttp2-client", file=sys.stderr)
        return 1
    figures: dict[str, Any] = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="llmspool-bench-") as tmp, otlp_receiver() as port:
        workdir = Path(tmp)
        # Limits the daemon would learn from the headers and pace itself to (10,000 RPM by
        # default): far above what the load generator offers, so that only overhead is timed.
        sim = start_sim(workdir, UNLIMITED_SIM)
        try:
            for mode, env in (
                ("tracing_off", {}),
                ("tracing_on", {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}),
            ):
                run_dir = workdir / mode
                run_dir.mkdir()
                config = args.daemon_config.read_text() if args.daemon_config else ""
                daemon = start_daemon(run_dir, sim.url, env=env, config_toml=config)
                try:
                    figures[mode] = measure(sim, daemon, run_dir, args.rounds, args.requests)
                finally:
                    daemon.terminate()
        finally:
            stop_process(sim.process)
    print_table(figures)
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return 0


def print_table(figures: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"llmspool added latency (median of rounds, {figures['cpus']} CPUs)")
    table.add_column("figure")
    table.add_column("target", justify="right")
    for mode in ("tracing_off", "tracing_on"):
        table.add_column(mode.replace("_", " "), justify="right")
    rows = [
        ("p50 added, c=1", "≤ 1 ms", lambda f: f"{f['c1']['added_p50_ms']:.3f} ms"),
        ("p99 added, c=1", "≤ 3 ms", lambda f: f"{f['c1']['added_p99_ms']:.3f} ms"),
        ("first chunk added", "≤ 1 ms", lambda f: f"{f['first_chunk_added_ms']:.3f} ms"),
        ("p50 added, c=64", "", lambda f: f"{f['c64']['added_p50_ms']:.2f} ms"),
        ("p99 added, c=64", "", lambda f: f"{f['c64']['added_p99_ms']:.2f} ms"),
        ("req/s via daemon, c=64", "≥ 1,000", lambda f: f"{f['c64']['daemon_rps']:,.0f}"),
        ("req/s direct to sim, c=64", "", lambda f: f"{f['c64']['direct_rps']:,.0f}"),
        ("failed via daemon", "0", lambda f: str(f["c1"]["daemon_failures"]
                                                 + f["c64"]["daemon_failures"])),
    ]
    for name, target, cell in rows:
        table.add_row(name, target, *(cell(figures[m]) for m in ("tracing_off", "tracing_on")))
    Console().print(table)


if __name__ == "__main__":
    raise SystemExit(main())
