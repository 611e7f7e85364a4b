"""What a cache hit costs: latency through the daemon, and lookups among 1,000,000 entries.

1. Added latency of a hit. h2load (HTTP/1.1, concurrency 1, then 64) sends one deterministic
   chat request over and over: to the daemon, whose cache answers it, and to a *floor*: the
   daemon's own HTTP stack (uvicorn with its peer-credential protocol, Starlette, uvloop) on a
   Unix socket answering the same bytes from memory. The difference is what the cache path
   adds (parsing, key, lookup, ledger entry, actor hops). Rounds alternate the two.
2. Lookup time with 1,000,000 entries: the cache file is filled with a million entries, then
   ``CacheReader.get`` is timed on random keys that are present (hits) and absent (misses),
   and the hit latency through the daemon is measured again on that file.

    python -m tests.bench.bench_cache [--rounds 5] [--requests 3000] [--entries 1000000]

Figures, not pass/fail; each is the median of rounds. Needs ``h2load`` (nghttp2-client).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from llmspool.cache.store import CacheReader, CacheWriter, connect
from llmspool.core.calls import Tier, Usage
from llmspool.store.records import NewEntry

from tests.bench.bench_latency import h2load, h2load_missing, percentile
from tests.support.processes import (
    UNLIMITED_SIM,
    start_daemon,
    start_sim,
    stop_process,
    unix_exchange,
)

HIT_BODY = {"model": "gpt-4o-mini", "temperature": 0, "max_tokens": 16,
            "messages": [{"role": "user", "content": "hello there, how are you today?"}]}
FLOOR = """
import sys, anyio
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from llmspool.server.listener import bind_unix_socket
from llmspool.server.uvicorn_server import build_server
from pathlib import Path
answer = open(sys.argv[2], "rb").read()
async def chat(request):
    await request.body()
    return Response(answer, 200, media_type="application/json")
app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
server = build_server(app, graceful_shutdown=1)
sock = bind_unix_socket(Path(sys.argv[1]), 0o600)
anyio.run(server.serve, [sock], backend="asyncio", backend_options={"use_uvloop": True})
"""


def wait_for_socket(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {path}")
        time.sleep(0.05)


def fill(state_dir: Path, count: int, body: bytes) -> list[bytes]:
    """``count`` entries of ``body``-sized answers in the cache file; returns their keys."""
    writer = CacheWriter(connect(state_dir, writer=True), max_entries=count)
    keys = [random.randbytes(16) for _ in range(count)]
    chunk = 50_000
    for start in range(0, count, chunk):
        writer.commit([NewEntry(key, False, body, "openai", "gpt-4o-mini",
                                "/v1/chat/completions", Tier.STANDARD, Usage(20, 0, 16), 86400.0)
                       for key in keys[start:start + chunk]], (), ())
        print(f"  filled {min(count, start + chunk):,} entries", file=sys.stderr)
    writer.close()
    return keys


def lookup_figures(state_dir: Path, keys: list[bytes], samples: int) -> dict[str, float]:
    reader = CacheReader(connect(state_dir, writer=False))
    now = time.time()
    figures: dict[str, float] = {}
    try:
        for name, probe in (("hit", lambda: random.choice(keys)),
                            ("miss", lambda: random.randbytes(16))):
            times = []
            for _ in range(samples):
                key = probe()
                started = time.perf_counter()
                reader.get(key, now)
                times.append((time.perf_counter() - started) * 1e6)
            figures[f"{name}_p50_us"] = percentile(times, 0.5)
            figures[f"{name}_p99_us"] = percentile(times, 0.99)
    finally:
        reader.close()
    return figures


def hit_latency(workdir: Path, sim_url: str, floor_socket: Path, rounds: int, requests: int,
                state_dir_name: str, max_entries: int) -> dict[str, Any]:
    """Hit latency through a daemon whose state is ``workdir/state_dir_name``."""
    body_file = workdir / "body.json"
    body_file.write_bytes(orjson.dumps(HIT_BODY))
    daemon = start_daemon(workdir, sim_url,
                          env={"LLMSPOOL_STATE_DIR": str(workdir / state_dir_name)},
                          config_toml=f"[cache]\nmax_entries = {max_entries}\n", process=True)
    try:
        status, _answer, headers = unix_exchange(daemon.socket_path, "POST",
                                                 "/v1/chat/completions",
                                                 body_file.read_bytes(),
                                                 {"content-type": "application/json"})
        assert status == 200, status
        deadline = time.monotonic() + 60  # the entry's write-behind commit
        while daemon.get("/v1/status")[1]["cache"]["written"] < 1:
            assert time.monotonic() < deadline, "the entry was never written"
            time.sleep(0.05)
        status, _answer, headers = unix_exchange(daemon.socket_path, "POST",
                                                 "/v1/chat/completions",
                                                 body_file.read_bytes(),
                                                 {"content-type": "application/json"})
        assert headers.get("x-llmspool-cache") == "hit", headers
        url = "http://localhost/v1/chat/completions"
        figures: dict[str, Any] = {}
        for clients, count in ((1, requests), (64, requests * 4)):
            added_p50, added_p99, hit_p50, floor_p50, hit_rps, floor_rps = ([] for _ in range(6))
            failures = 0
            for _ in range(rounds):
                floor = h2load(url, body_file, requests=count, clients=clients, workdir=workdir,
                               socket_path=floor_socket)
                hit = h2load(url, body_file, requests=count, clients=clients, workdir=workdir,
                             socket_path=daemon.socket_path)
                added_p50.append((hit["p50_us"] - floor["p50_us"]) / 1000)
                added_p99.append((hit["p99_us"] - floor["p99_us"]) / 1000)
                hit_p50.append(hit["p50_us"] / 1000)
                floor_p50.append(floor["p50_us"] / 1000)
                hit_rps.append(hit["rps"])
                floor_rps.append(floor["rps"])
                failures += hit["failures"]
            figures[f"c{clients}"] = {
                "hit_added_p50_ms": statistics.median(added_p50),
                "hit_added_p99_ms": statistics.median(added_p99),
                "hit_p50_ms": statistics.median(hit_p50),
                "floor_p50_ms": statistics.median(floor_p50),
                "hit_rps": statistics.median(hit_rps),
                "floor_rps": statistics.median(floor_rps),
                "failures": failures,
            }
        status, state = daemon.get("/v1/status")
        figures["cache_status"] = {k: state["cache"][k] for k in ("entries", "hits", "misses")}
        return figures
    finally:
        daemon.terminate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000,
                        help="requests per round at concurrency 1 (4x that at 64)")
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=100_000, help="timed lookups per kind")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if h2load_missing():
        return 1
    figures: dict[str, Any] = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="llmspool-bench-") as tmp:
        workdir = Path(tmp)
        sim = start_sim(workdir, UNLIMITED_SIM, process=True)
        answer = sim_answer(sim.url)
        (workdir / "answer.json").write_bytes(answer)
        floor_socket = workdir / "floor.sock"
        floor = subprocess.Popen([sys.executable, "-c", FLOOR, str(floor_socket),
                                  str(workdir / "answer.json")])
        try:
            wait_for_socket(floor_socket)
            figures["empty_cache"] = hit_latency(workdir, sim.url, floor_socket, args.rounds,
                                                 args.requests, "state-small",
                                                 args.entries + 10)
            print(f"filling {args.entries:,} entries...", file=sys.stderr)
            started = time.perf_counter()
            keys = fill(workdir / "state-big", args.entries, answer)
            figures["fill_seconds"] = round(time.perf_counter() - started, 1)
            figures["lookup_1m"] = lookup_figures(workdir / "state-big", keys, args.samples)
            figures["big_cache"] = hit_latency(workdir, sim.url, floor_socket, args.rounds,
                                               args.requests, "state-big",
                                               args.entries + 10)
        finally:
            stop_process(floor)
            sim.terminate()
    text = orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


def sim_answer(sim_url: str) -> bytes:
    """The simulator's answer to ``HIT_BODY``: the floor serves bytes of the same size."""
    import urllib.request

    request = urllib.request.Request(f"{sim_url}/chat/completions", orjson.dumps(HIT_BODY),
                                     {"content-type": "application/json",
                                      "authorization": "Bearer sk-test"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return bytes(response.read())


if __name__ == "__main__":
    raise SystemExit(main())
