"""What the daemon writes to disk a call, at the paces a daemon really runs at.

A daemon on a laptop or a small server mostly serves a call now and then, not thousands a
second, and what it writes a call is then what its commits and checkpoints cost one by one: a
SQLite commit writes whole pages, and a checkpoint syncs them, so that the next commit writes
its pages again. This bench starts the simulator and a daemon with defaults, sends calls one
at a time at a fixed pace (h2load's ``--rps``, one client) and then at concurrency 64, and
reads from ``/proc/PID/io`` the bytes the daemon sent to storage (counted when it dirties a
page of the page cache; a page dirtied again before the kernel writes it back counts once),
and its CPU a call. ``--ledger-entries`` starts the daemon on a ledger of that many entries.

Each pace runs for ``--seconds`` (at least 20 calls), then waits 6 s for the checkpoint and
the kernel's accounting, and is measured in every round; the figures are medians of rounds.
Figures, not pass/fail. Its directory (``TMPDIR``) must not be on tmpfs, where nothing is
written to storage: the bench says so and stops.

    python -m tests.bench.bench_disk_writes [--rounds 3] [--seconds 20] [--paces 1,10,100]
                                            [--ledger-entries 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
from llmspool.store.backend import DATABASE_NAME

from tests.bench.bench_latency import CHAT_BODY, cpu_seconds, disk_bytes_written, h2load
from tests.support.ledgers import seed_sqlite_store
from tests.support.processes import UNLIMITED_SIM, start_daemon, start_sim

SETTLE_SECONDS = 6.0  # after a pace: its last checkpoint (at most a second) and the accounting
CONCURRENT_CALLS = 20_000  # at concurrency 64, a round


def on_tmpfs(path: Path) -> bool:
    """Whether ``path`` is on a tmpfs, where no write reaches storage."""
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _device, mount, fstype, *_rest = line.split()
        if str(path).startswith(mount) and len(mount) > len(best):
            best, kind = mount, fstype
    return kind == "tmpfs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="each pace's run")
    parser.add_argument("--paces", default="1,10,100", help="calls a second, one at a time")
    parser.add_argument("--ledger-entries", type=int, default=0, metavar="N")
    args = parser.parse_args()
    paces = [float(pace) for pace in args.paces.split(",")]
    written: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="llmspool-bench-") as tmp:
        workdir = Path(tmp)
        if on_tmpfs(workdir):
            print(f"{workdir} is on tmpfs, where nothing reaches storage: set TMPDIR to a "
                  f"directory on a disk", file=sys.stderr)
            return 2
        body_file = workdir / "body.json"
        body_file.write_bytes(orjson.dumps(CHAT_BODY))
        if args.ledger_entries > 0:
            (workdir / "state").mkdir()
            seed_sqlite_store(workdir / "state" / DATABASE_NAME, args.ledger_entries)
        sim = start_sim(workdir, UNLIMITED_SIM, process=True)
        daemon = start_daemon(workdir, sim.url, process=True)
        try:
            h2load("http://localhost/v1/chat/completions", body_file, requests=200,
                   clients=4, workdir=workdir, socket_path=daemon.socket_path)  # warm up
            time.sleep(SETTLE_SECONDS)
            for _round in range(args.rounds):
                for pace in [*paces, None]:
                    name = f"{pace:g}/s" if pace is not None else "c=64"
                    count = (CONCURRENT_CALLS if pace is None
                             else max(20, round(pace * args.seconds)))
                    before, used = disk_bytes_written(daemon.pid), cpu_seconds(daemon.pid)
                    figures = h2load("http://localhost/v1/chat/completions", body_file,
                                     requests=count, clients=1 if pace else 64,
                                     workdir=workdir, socket_path=daemon.socket_path,
                                     rate=pace)
                    if figures["failures"]:
                        raise RuntimeError(f"{figures['failures']} calls failed at {name}")
                    time.sleep(SETTLE_SECONDS)
                    written.setdefault(name, []).append(
                        (disk_bytes_written(daemon.pid) - before) / count)
                    cpu.setdefault(name, []).append(
                        (cpu_seconds(daemon.pid) - used) / count * 1e6)
                    print(f"  {name}: {written[name][-1] / 1000:.1f} KB a call", flush=True,
                          file=sys.stderr)
        finally:
            daemon.terminate()
            sim.terminate()
    print(f"the daemon's writes to storage a call (median of {args.rounds} rounds, "
          f"ledger starting at {args.ledger_entries:,} entries, {os.cpu_count()} CPUs)")
    print(f"{'pace':>8} {'KB a call':>10} {'MB a day at that pace':>22} {'CPU a call':>11}")
    for name, values in written.items():
        per_call = statistics.median(values)
        pace = None if name == "c=64" else float(name.removesuffix("/s"))
        day = f"{per_call * pace * 86_400 / 1e6:,.0f}" if pace else ""
        print(f"{name:>8} {per_call / 1000:>10.1f} {day:>22} "
              f"{statistics.median(cpu[name]):>8,.0f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
