"""Where telemetry's cost goes: the daemon's CPU a call, by thread, with each part of it on.

``bench_latency`` says how much slower a traced daemon is; this says where the time goes, so
that work on it aims at the right part. One h2load run per target and round (keep-alive, an
instant upstream, c=256 by default), against daemons that differ only in their environment:

- ``off``: no telemetry (the default);
- ``metrics``: metrics exported over OTLP, spans not (``OTEL_TRACES_EXPORTER=none``);
- ``unrecorded``: spans started but never recorded (``OTEL_TRACES_SAMPLER=always_off``), no
  metrics: what tracing's plumbing costs a call whose span nobody keeps;
- ``sampled``: one trace in ten recorded and exported (``parentbased_traceidratio``, 0.1),
  metrics too;
- ``traced``: every span recorded and exported, metrics too (``bench_latency``'s ``tracing``).

For each: requests per second (and its ratio to ``off``: of the medians, and the median and
range of each round's ratio, steadier when rounds differ), and the CPU a call of the event
loop's thread, of the daemon's other threads (the span pipe's writer, SQLite's, the metric
reader), and of its children (the span export child), read from ``/proc`` around each run.
Every round starts each daemon afresh (the same code in two processes can differ by a tenth
for a whole run); targets alternate their order each round. Medians of rounds; figures, not
pass/fail.

    python -m tests.bench.bench_tracing_cost [--rounds 6] [--requests 8000] [--clients 256]
                                             [--targets off,traced] [--baseline DIR]
                                             [--json OUT]

``--baseline DIR``: each target is also run from another checkout (``git worktree add DIR
REV``), as ``NAME@base``, in the same rounds: a change's effect, side by side.

Needs ``h2load`` (Debian: nghttp2-client).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import orjson

from tests.bench.bench_latency import (
    CHAT_BODY,
    chosen,
    cpu_seconds,
    h2load,
    h2load_missing,
    otlp_receiver,
    with_children,
)
from tests.support.processes import UNLIMITED_SIM, Daemon, start_daemon, start_sim

_EXPORTED = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:{otlp}"}
TARGETS: dict[str, dict[str, str]] = {
    "off": {},
    "metrics": {**_EXPORTED, "OTEL_TRACES_EXPORTER": "none"},
    "unrecorded": {**_EXPORTED, "OTEL_TRACES_SAMPLER": "always_off",
                   "OTEL_METRICS_EXPORTER": "none"},
    "sampled": {**_EXPORTED, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    "traced": dict(_EXPORTED),
}
WARM_UP = 1000  # calls each new daemon serves before it is measured
_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """Seconds of CPU so far: the event loop's thread (the main one), the process's other
    threads, and its children that ended or still run."""
    loop = others = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended meanwhile
        seconds = (int(fields[11]) + int(fields[12])) / _TICKS
        if int(tid) == pid:
            loop = seconds
        else:
            others += seconds
    return {"loop": loop, "other threads": others, "children": _children_cpu(pid)}


def _children_cpu(pid: int) -> float:
    total = 0.0
    for child in with_children([pid])[1:]:
        with contextlib.suppress(OSError):  # a child that ended meanwhile
            total += cpu_seconds(child)
    return total


def with_baseline(names: Sequence[str], baseline: Path) -> dict[str, dict[str, str]]:
    """The targets ``names``, and each again as ``NAME@base`` run from the checkout
    ``baseline`` (its daemon and plugins first on the path)."""
    path = {"PYTHONPATH": f"{baseline / 'daemon'}{os.pathsep}{baseline / 'plugins'}"}
    return {**{name: TARGETS[name] for name in names},
            **{f"{name}@base": {**TARGETS[name], **path} for name in names}}


@contextmanager
def started(workdir: Path, sim_url: str, targets: Mapping[str, Mapping[str, str]],
            otlp_port: int, round_number: int) -> Iterator[dict[str, Daemon]]:
    """A new daemon per target for one round, stopped when the block ends."""
    with ExitStack() as stack:
        daemons = {}
        for name, environment in targets.items():
            run_dir = workdir / f"round{round_number}" / name
            run_dir.mkdir(parents=True)
            daemon = start_daemon(run_dir, sim_url, process=True, env={
                key: value.format(otlp=otlp_port) for key, value in environment.items()})
            stack.callback(daemon.terminate)
            daemons[name] = daemon
        yield daemons


def measure(targets: Mapping[str, Mapping[str, str]], rounds: int, requests: int,
            clients: int) -> dict[str, Any]:
    """Every target's figures, medians of ``rounds``."""
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in targets}
    with tempfile.TemporaryDirectory(prefix="llmspool-bench-") as tmp, \
            otlp_receiver() as otlp_port:
        workdir = Path(tmp)
        sim = start_sim(workdir, UNLIMITED_SIM, process=True)
        body_file = workdir / "body.json"
        body_file.write_bytes(orjson.dumps(CHAT_BODY))
        url = "http://localhost/v1/chat/completions"
        try:
            for round_number in range(rounds):
                with started(workdir, sim.url, targets, otlp_port, round_number) as daemons:
                    order = list(daemons.items())
                    if round_number % 2:
                        order.reverse()
                    for _name, daemon in order:
                        h2load(url, body_file, requests=WARM_UP, clients=16, workdir=workdir,
                               socket_path=daemon.socket_path)
                    for name, daemon in order:
                        assert daemon.process is not None
                        before = thread_cpu(daemon.pid)
                        run = h2load(url, body_file, requests=requests, clients=clients,
                                     workdir=workdir, socket_path=daemon.socket_path)
                        after = thread_cpu(daemon.pid)
                        figures = samples[name]
                        figures.setdefault("rps", []).append(run["rps"])
                        figures.setdefault("failures", []).append(run["failures"])
                        for part, seconds in after.items():
                            figures.setdefault(f"{part} µs", []).append(
                                (seconds - before[part]) / requests * 1e6)
        finally:
            sim.terminate()
    medians: dict[str, Any] = {}
    for name, figures in samples.items():
        row = medians[name] = {key: statistics.median(values) for key, values in figures.items()}
        row["failures"] = sum(figures["failures"])
        off = samples.get("off@base" if name.endswith("@base") else "off")
        if off is not None:
            row.update(paired(figures["rps"], off["rps"]))
    return medians


def paired(rps: Sequence[float], off: Sequence[float]) -> dict[str, Any]:
    """Each round's req/s over ``off``'s in the same round: their median and range. Steadier
    than the ratio of two medians, as a slower or quicker round moves both."""
    ratios = [mine / theirs for mine, theirs in zip(rps, off, strict=True)]
    return {"x off paired": statistics.median(ratios), "x off range": (min(ratios), max(ratios))}


def print_table(figures: dict[str, Any], clients: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"the daemon's CPU a call by thread, c={clients} (median of rounds)")
    for column in ("target", "req/s", "x off", "x off, round by round", "event loop",
                   "other threads", "children", "failed"):
        table.add_column(column, justify="left" if column == "target" else "right")
    base = figures.get("off", {}).get("rps")
    for name, row in figures.items():
        low, high = row.get("x off range", (0, 0))
        table.add_row(name, f"{row['rps']:,.0f}", f"{row['rps'] / base:.2f}" if base else "",
                      f"{row['x off paired']:.2f} ({low:.2f}-{high:.2f})"
                      if "x off paired" in row else "",
                      f"{row['loop µs']:.0f} µs", f"{row['other threads µs']:.0f} µs",
                      f"{row['children µs']:.0f} µs", str(row["failures"]))
    Console(width=110).print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=8000, help="calls a run")
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"daemon configurations to measure (of {', '.join(TARGETS)})")
    parser.add_argument("--baseline", type=Path,
                        help="another checkout to run each target from as well (NAME@base)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if h2load_missing():
        return 1
    names = chosen(args.targets, TARGETS, "targets")
    if names is None:
        return 2
    if args.baseline is not None and not (args.baseline / "daemon" / "llmspool").is_dir():
        print(f"--baseline {args.baseline}: not a checkout of llmspool (no daemon/llmspool); "
              "make one with: git worktree add DIR REV", file=sys.stderr)
        return 2
    targets = (with_baseline(names, args.baseline.resolve()) if args.baseline is not None
               else {name: TARGETS[name] for name in names})
    figures = measure(targets, args.rounds, args.requests, args.clients)
    print_table(figures, args.clients)
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
