"""What relaying a streamed answer costs the daemon a chunk, against the floor, in one run.

An answer streamed at a model's pace arrives one event per read, and a proxy pays for each:
a read from the upstream, a write to the client, the loop's turns between them, and whatever
it does with the event. ``bench_latency`` streams from an instant upstream, whose events come
in one read, so it never sees this. Here ``llmspool sim`` paces its events
(``latency_per_token``, 5 ms by default: 200 tokens a second, a fast model), 64 clients stream
200-token answers at once through the floor (``tests/bench/floor.py``) and through the daemon
with its defaults, interleaved in rounds with new processes each round, and the CPU each
process used is divided by the events it relayed. Figures, not pass/fail: medians of rounds.

    python -m tests.bench.bench_streams [--rounds 3] [--streams 256] [--tokens 200]
                                        [--pace 0.005] [--json OUT]

Needs ``h2load`` (Debian: nghttp2-client).
"""

from __future__ import annotations

import argparse
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

from tests.bench.bench_latency import (
    CHAT_BODY,
    Target,
    cpu_seconds,
    floor_proxy,
    h2load_missing,
)
from tests.support.processes import UNLIMITED_SIM, Sim, start_daemon, start_sim

CLIENTS = 64
WARM_UP_STREAMS = 64


def events_in_answer(socket_path: Path, body: bytes) -> int:
    """How many events one streamed answer through ``socket_path`` holds (``data:`` lines)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(str(socket_path))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\n"
                     b"content-type: application/json\r\nconnection: close\r\n"
                     b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, answer = received.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"a streamed call failed: {head.decode(errors='replace')}")
    return answer.count(b"data:")


def stream_load(target: Target, body_file: Path, streams: int) -> dict[str, float]:
    """``streams`` streamed calls, ``CLIENTS`` at once: wall seconds, CPU seconds of the
    target's process, and failures."""
    started_cpu = cpu_seconds(target.pid)
    started = time.monotonic()
    output = subprocess.run(
        ["h2load", "--h1", "-n", str(streams), "-c", str(CLIENTS), "-d", str(body_file),
         "-H", "content-type: application/json", "-B", f"unix:{target.socket}",
         "http://localhost/v1/chat/completions"],
        capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - started
    cpu = cpu_seconds(target.pid) - started_cpu
    succeeded = next(int(line.split(",")[3].split()[0]) for line in output.splitlines()
                     if line.startswith("requests:"))
    return {"wall_s": wall, "cpu_s": cpu, "failures": streams - succeeded}


@contextmanager
def round_targets(workdir: Path, sim: Sim) -> Iterator[dict[str, Target]]:
    """The floor and a daemon with its defaults, new processes, until the block ends."""
    (workdir / "daemon").mkdir(parents=True)
    with floor_proxy(workdir, sim) as floor:
        daemon = start_daemon(workdir / "daemon", sim.url, process=True)
        try:
            yield {"floor": floor, "defaults": Target(daemon.socket_path, daemon.pid)}
        finally:
            daemon.terminate()


def main() -> int:
    parser = argparse.ArgumentParser(
        description="CPU a streamed chunk costs the daemon and the floor (paced upstream).")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, new processes each")
    parser.add_argument("--streams", type=int, default=256,
                        help=f"streamed calls a target serves a round, {CLIENTS} at once")
    parser.add_argument("--tokens", type=int, default=200, help="tokens an answer streams")
    parser.add_argument("--pace", type=float, default=0.005,
                        help="seconds between two of an answer's tokens (the sim's pace)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if h2load_missing():
        return 2
    body = orjson.dumps({**CHAT_BODY, "max_tokens": args.tokens, "stream": True})
    samples: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as temporary:
        workdir = Path(temporary)
        body_file = workdir / "stream.json"
        body_file.write_bytes(body)
        sim = start_sim(workdir, UNLIMITED_SIM + f"latency_per_token = {args.pace}\n",
                        process=True)
        try:
            for number in range(args.rounds):
                with round_targets(workdir / f"round{number}", sim) as targets:
                    names = list(targets)
                    if number % 2:
                        names.reverse()  # neither always goes first
                    for name in names:
                        target = targets[name]
                        events = events_in_answer(target.socket, body)
                        stream_load(target, body_file, WARM_UP_STREAMS)
                        run = stream_load(target, body_file, args.streams)
                        figures = samples.setdefault(name, {})
                        relayed = events * args.streams
                        figures.setdefault("cpu_us_per_event", []).append(
                            run["cpu_s"] / relayed * 1e6)
                        figures.setdefault("events_per_s", []).append(relayed / run["wall_s"])
                        figures.setdefault("busy", []).append(run["cpu_s"] / run["wall_s"])
                        figures.setdefault("failures", []).append(run["failures"])
                        figures.setdefault("events_per_answer", []).append(events)
                print(f"round {number + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            sim.terminate()
    result: dict[str, Any] = {
        name: {key: statistics.median(values) for key, values in figures.items()}
        for name, figures in samples.items()}
    result["settings"] = {"rounds": args.rounds, "streams": args.streams, "clients": CLIENTS,
                          "tokens": args.tokens, "pace_s": args.pace}
    print_table(result)
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


def print_table(result: dict[str, Any]) -> None:
    floor, daemon = result["floor"], result["defaults"]
    settings = result["settings"]
    print(f"{settings['clients']} clients streaming {settings['tokens']}-token answers, one "
          f"token every {settings['pace_s'] * 1000:g} ms; medians of {settings['rounds']} "
          "rounds")
    print(f"{'figure':<32} {'floor':>10} {'defaults':>10} {'ratio':>7}")
    rows = (("CPU a relayed event (µs)", "cpu_us_per_event", "{:.1f}"),
            ("events relayed a second", "events_per_s", "{:,.0f}"),
            ("time on a CPU", "busy", "{:.0%}"),
            ("events an answer", "events_per_answer", "{:.0f}"),
            ("failed calls", "failures", "{:.0f}"))
    for label, key, form in rows:
        # No ratio to a zero (the floor failed no call): a dash, not "nanx".
        ratio = f"{daemon[key] / floor[key]:.2f}x" if floor[key] else "-"
        print(f"{label:<32} {form.format(floor[key]):>10} {form.format(daemon[key]):>10} "
              f"{ratio:>7}")


if __name__ == "__main__":
    sys.exit(main())
