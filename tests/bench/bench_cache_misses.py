"""What a response-cache miss adds at concurrency 1, when every request is a new one.

``bench_latency``'s ``cache_misses`` mode sends h2load's one body over and over with answers
kept a microsecond: each call misses, but on a row of the cache file that is there and has
expired. A real miss is mostly a request never seen: its key is not in the file at all, and its
answer is written for a day. h2load cannot vary a body, so this bench sends its own: a
keep-alive HTTP/1.1 client in this process, every request's message carrying its own number,
built before the clock starts. The same client, requests and order go to:

- the simulator, directly (what the added time is measured over);
- ``defaults``: the daemon as installed (these requests are not cacheable by default);
- ``cache_new``: the cache on for every request (``x-llmspool-cache: on``), the default ttl:
  each call misses on a key the file does not hold, and its answer is written;
- ``cache_expired``: the same body every time, answers kept a microsecond (the
  ``bench_latency`` mode, through this client).

Targets alternate within each round, so all see the same machine state. Prints the added p50
and p99 of each, and each against ``defaults``. Figures, not pass/fail.

    python -m tests.bench.bench_cache_misses [--rounds 5] [--requests 2000]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.bench.bench_latency import CHAT_BODY, percentile
from tests.support.processes import UNLIMITED_SIM, start_daemon, start_sim

# Each target: the daemon's config, a header on every request, whether bodies vary.
TARGETS: dict[str, tuple[str, str, bool]] = {
    "defaults": ("", "", True),
    "cache_new": ("", "x-llmspool-cache: on\r\n", True),
    "cache_expired": ("[cache]\nttl = 0.000001\n", "x-llmspool-cache: on\r\n", False),
}


def requests_for(path: str, header: str, count: int, start: int, vary: bool) -> list[bytes]:
    """``count`` HTTP/1.1 requests for ``path``, numbered from ``start`` when ``vary``."""
    built = []
    for number in range(start, start + count):
        body = orjson.dumps({**CHAT_BODY, "messages": [
            {"role": "user", "content": f"question {number}: how are you today?"
                                        if vary else "hello there, how are you today?"}]})
        built.append(f"POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: "
                     f"application/json\r\ncontent-length: {len(body)}\r\n{header}\r\n"
                     .encode() + body)
    return built


def exchange_all(connect: Callable[[], socket.socket], requests: list[bytes]) -> list[float]:
    """Send ``requests`` one after another on one connection; each one's seconds."""
    seconds = []
    with connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for request in requests:
            started = time.perf_counter()
            sock.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += _receive(sock)
            head, _, body = answer.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"the call failed: {head.decode(errors='replace')}")
            length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            while len(body) < length:
                body += _receive(sock)
            seconds.append(time.perf_counter() - started)
    return seconds


def _receive(sock: socket.socket) -> bytes:
    chunk = sock.recv(1 << 16)
    if not chunk:
        raise RuntimeError("the connection closed mid-answer")
    return chunk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000, help="per target per round")
    args = parser.parse_args()
    added: dict[str, dict[str, list[float]]] = {name: {"p50": [], "p99": []} for name in TARGETS}
    with tempfile.TemporaryDirectory(prefix="llmspool-bench-") as tmp:
        workdir = Path(tmp)
        sim = start_sim(workdir, UNLIMITED_SIM, process=True)
        daemons = {}
        try:
            for name, (config, _header, _vary) in TARGETS.items():
                (workdir / name).mkdir()
                daemons[name] = start_daemon(workdir / name, sim.url, config_toml=config,
                                             process=True)
            host, port = sim.base.removeprefix("http://").split(":")
            direct_path = sim.url.removeprefix(sim.base) + "/chat/completions"

            def direct() -> socket.socket:
                return socket.create_connection((host, int(port)))

            number = 0
            for round_number in range(args.rounds + 1):  # the first round warms up, unkept
                for name, (_config, header, vary) in TARGETS.items():
                    def unix(path: Path = daemons[name].socket_path) -> socket.socket:
                        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        sock.connect(str(path))
                        return sock

                    via_requests = requests_for("/v1/chat/completions", header, args.requests,
                                                number, vary)
                    direct_requests = requests_for(direct_path, "", args.requests, number, vary)
                    number += args.requests
                    floor = exchange_all(direct, direct_requests)
                    via = exchange_all(unix, via_requests)
                    if round_number:
                        added[name]["p50"].append(
                            (statistics.median(via) - statistics.median(floor)) * 1000)
                        added[name]["p99"].append(
                            (percentile(via, 0.99) - percentile(floor, 0.99)) * 1000)
        finally:
            for daemon in daemons.values():
                daemon.terminate()
            sim.terminate()
    print_table(added, args.rounds)
    return 0


def print_table(added: dict[str, dict[str, list[float]]], rounds: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"added over calling the simulator directly, concurrency 1 (median of "
                        f"{rounds} rounds); in brackets: against defaults")
    table.add_column("target")
    table.add_column("p50 added (ms)", justify="right")
    table.add_column("p99 added (ms)", justify="right")
    table.add_column("p50 by round", justify="right")
    base = statistics.median(added["defaults"]["p50"])
    for name, figures in added.items():
        p50 = statistics.median(figures["p50"])
        table.add_row(name, f"{p50:.3f} [{p50 / base:.2f}x]",
                      f"{statistics.median(figures['p99']):.3f}",
                      " ".join(f"{value:.3f}" for value in figures["p50"]))
    Console().print(table)


if __name__ == "__main__":
    raise SystemExit(main())
