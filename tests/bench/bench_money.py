"""What spending caps cost per call, before and after a ledger change, in one run.

Four daemons run side by side against one ``llmspool sim``: the code at a git ref (BEFORE,
``--baseline``, checked out in a ``git worktree`` under /tmp) and the working tree (AFTER),
each with caps OFF (no ``[budgets]``) and caps ON (``daily_usd = 1000000`` and
``per_request_usd = 100``: every call is admitted, but every call reserves against the caps
and settles). h2load (HTTP/1.1) calls the sim directly and then each daemon over its Unix
socket, at concurrency 1 (added latency = through the daemon minus direct, p50 and p99) and
at concurrency 64 (requests/s through the daemon). Rounds interleave all of them, rotating the
order of the daemons, so all see the same machine state; each figure is the median of rounds.
Figures, not pass/fail.

    python -m tests.bench.bench_money [--rounds 5] [--requests 3000] [--baseline REF]
                                      [--requests-c64 N] [--json OUT]

A source tree's daemon runs with ``PYTHONPATH=<tree>/daemon:<tree>/plugins`` and this venv's
python: PYTHONPATH comes before the editable install's finder, so ``llmspool`` and the plugins
the ``llmspool`` entry points name (``llmspool_openai``, ...) are imported from that tree. A
probe checks this for each tree before anything is measured. The sim runs from the baseline
tree by default (the working tree may be mid-change; ``--sim-tree after`` to use it).

If the AFTER daemon does not start (the working tree may be mid-change), the bench says so and
reports the BEFORE figures alone. Needs ``h2load`` (Debian: nghttp2-client).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.bench.bench_latency import h2load, h2load_missing
from tests.support.processes import (
    UNLIMITED_SIM,
    Daemon,
    Sim,
    start_daemon,
    start_sim,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BASELINE = "6b840fc"
CHAT_BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hello there, how are you today?"}],
    "max_tokens": 16,
}
CAPS_ON = "[budgets]\ndaily_usd = 1000000\nper_request_usd = 100\n"
CAPS = {"caps_off": "", "caps_on": CAPS_ON}
PROBE = """
import importlib.metadata, json, llmspool
from importlib import resources
modules = {"llmspool": llmspool.__file__,
           "llmspool resources": str(resources.files("llmspool"))}
for entry in importlib.metadata.entry_points(group="llmspool"):
    modules[f"entry point {entry.name}"] = entry.load().__file__
print(json.dumps(modules))
"""
VIA_URL = "http://localhost/v1/chat/completions"


@dataclass
class Variant:
    """One daemon: a source tree (before/after) with caps off or on."""

    tree: str  # "before" | "after"
    caps: str  # "caps_off" | "caps_on"
    daemon: Daemon | None = None
    error: str | None = None  # why it did not start, or stopped answering
    log: str = ""  # the end of its log, when it failed
    samples: dict[str, list[float]] = field(default_factory=dict)
    failures: int = 0

    @property
    def name(self) -> str:
        return f"{self.tree}/{self.caps}"


# --- source trees -----------------------------------------------------------------------------


def baseline_worktree(ref: str) -> Path:
    """A detached worktree of ``ref`` at /tmp/llmspool-baseline-<ref>, reused if present."""
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}").strip()
    path = Path(f"/tmp/llmspool-baseline-{re.sub(r'[^A-Za-z0-9._-]', '_', ref)}")
    if path.exists():
        head = git("-C", str(path), "rev-parse", "HEAD").strip()
        if head != commit:
            raise SystemExit(f"{path} exists at {head[:12]}, not {ref} ({commit[:12]}): remove "
                             f"it (git worktree remove {path}) or pass another --baseline")
        print(f"reusing the worktree {path} ({commit[:12]})", file=sys.stderr)
    else:
        git("worktree", "add", "--detach", str(path), commit)
        print(f"made the worktree {path} ({commit[:12]})", file=sys.stderr)
    return path


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                          check=True).stdout


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that makes ``python -m llmspool`` import ``tree``'s code."""
    return {"PYTHONPATH": f"{tree / 'daemon'}{os.pathsep}{tree / 'plugins'}"}


def probe_tree(tree: Path) -> dict[str, str]:
    """Where ``llmspool`` and every ``llmspool`` entry point load from under ``tree_env``;
    raises if any of them is not inside ``tree``."""
    env = {**os.environ, **tree_env(tree)}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            env=env, check=False)  # the daemons' cwd: sys.path[0]
    if result.returncode != 0:
        raise RuntimeError(f"the import probe failed for {tree}:\n{result.stderr}")
    modules: dict[str, str] = orjson.loads(result.stdout)
    outside = {name: path for name, path in modules.items()
               if not Path(path).resolve().is_relative_to(tree.resolve())}
    if outside:
        raise RuntimeError(f"under PYTHONPATH={env['PYTHONPATH']}, these load from outside "
                           f"{tree}: {outside}")
    return modules


@contextmanager
def environment(extra: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``extra`` for the duration (``start_sim`` takes no env)."""
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_tree_daemon(workdir: Path, tree: Path, sim_url: str, config_toml: str) -> Daemon:
    """``start_daemon`` with ``tree``'s code: same venv python, ``tree_env`` on top."""
    workdir.mkdir(parents=True, exist_ok=True)
    return start_daemon(workdir, sim_url, config_toml=config_toml, env=tree_env(tree), process=True)


def wait_until_idle(pid: int, timeout: float = 60.0, window: float = 0.5) -> float:
    """Wait until process ``pid`` uses under 5% of a CPU over ``window`` (a daemon loads its
    tokenizer in a thread for seconds after it answers); returns the seconds waited."""
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():
        return 0.0

    def cpu_seconds() -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds()
        time.sleep(window)
        if cpu_seconds() - before < 0.05 * window:
            break
    return time.monotonic() - started


# --- measuring --------------------------------------------------------------------------------


def run_load(url: str, body_file: Path, *, requests: int, clients: int, workdir: Path,
             socket_path: Path | None = None) -> dict[str, Any]:
    """``h2load`` from bench_latency, with a failed run turned into a RuntimeError."""
    try:
        return h2load(url, body_file, requests=requests, clients=clients, workdir=workdir,
                      socket_path=socket_path)
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"h2load exited {error.returncode}: {error.stdout[-500:]}"
                           f"{error.stderr[-500:]}") from error
    except (IndexError, StopIteration, ValueError) as error:  # no request completed
        raise RuntimeError(f"h2load completed no request ({error!r})") from error


def alive(variants: list[Variant]) -> list[Variant]:
    return [v for v in variants if v.daemon is not None and v.error is None]


def measure(sim: Sim, variants: list[Variant], workdir: Path, rounds: int, requests: int,
            requests_c64: int) -> dict[str, Any]:
    body_file = workdir / "body.json"
    body_file.write_bytes(orjson.dumps(CHAT_BODY))
    direct_url = f"{sim.url}/chat/completions"
    load_dir = workdir / "load"
    load_dir.mkdir()

    def through(variant: Variant, clients: int, count: int) -> dict[str, Any] | None:
        assert variant.daemon is not None
        try:
            return run_load(VIA_URL, body_file, requests=count, clients=clients,
                            workdir=load_dir, socket_path=variant.daemon.socket_path)
        except RuntimeError as error:
            code = variant.daemon.process.poll()
            variant.log = tail(variant.daemon.log())
            variant.error = (f"stopped answering ({error}); daemon "
                             f"{'exited ' + str(code) if code is not None else 'still running'}"
                             f", {last_error(variant.log)}")
            print(f"  {variant.name}: {variant.error}; its log ends:\n{variant.log}",
                  file=sys.stderr)
            return None

    # Warm-up (untimed): connection pools, lazy imports, the first ledger commits; then wait
    # for every daemon to go idle, so that none is still busy with its start-up work.
    run_load(direct_url, body_file, requests=300, clients=8, workdir=load_dir)
    for variant in alive(variants):
        through(variant, 8, 300)
    for variant in alive(variants):
        assert variant.daemon is not None
        waited = wait_until_idle(variant.daemon.pid)
        print(f"  {variant.name}: idle after {waited:.1f} s", file=sys.stderr)

    direct: dict[str, list[float]] = {"c1_p50_us": [], "c1_p99_us": [], "c64_rps": []}
    for index in range(rounds):
        started = time.monotonic()
        order = alive(variants)
        order = order[index % len(order):] + order[:index % len(order)] if order else order
        for clients, count in ((1, requests), (64, requests_c64)):
            base = run_load(direct_url, body_file, requests=count, clients=clients,
                            workdir=load_dir)
            if clients == 1:
                direct["c1_p50_us"].append(base["p50_us"])
                direct["c1_p99_us"].append(base["p99_us"])
            else:
                direct["c64_rps"].append(base["rps"])
            for variant in order:
                if variant.error is not None:
                    continue
                via = through(variant, clients, count)
                if via is None:
                    continue
                variant.failures += via["failures"]
                samples = variant.samples
                if clients == 1:
                    samples.setdefault("added_p50_ms", []).append(
                        (via["p50_us"] - base["p50_us"]) / 1000)
                    samples.setdefault("added_p99_ms", []).append(
                        (via["p99_us"] - base["p99_us"]) / 1000)
                else:
                    samples.setdefault("rps_c64", []).append(via["rps"])
        print(f"  round {index + 1}/{rounds}: {time.monotonic() - started:.0f} s "
              f"({', '.join(v.name for v in order)})", file=sys.stderr)

    figures: dict[str, Any] = {
        "direct": {"c1_p50_ms": statistics.median(direct["c1_p50_us"]) / 1000,
                   "c1_p99_ms": statistics.median(direct["c1_p99_us"]) / 1000,
                   "c64_rps": statistics.median(direct["c64_rps"])},
    }
    for variant in variants:
        entry: dict[str, Any] = {"failures": variant.failures, "error": variant.error,
                                 "log_tail": variant.log or None}
        for name, values in variant.samples.items():
            entry[name] = statistics.median(values)
            entry[f"{name}_rounds"] = values
        if variant.daemon is not None and variant.daemon.process.poll() is None:
            entry["ledger_status"] = ledger_status(variant.daemon)
        figures[variant.name] = entry
    return figures


def ledger_status(daemon: Daemon) -> Any:
    """The ledger's part of ``/v1/status`` (calls, caps and reservations), to show that caps ON
    did reserve; whatever shape the tree's status has."""
    try:
        status, body = daemon.get("/v1/status")
    except OSError as error:
        return f"unreadable: {error}"
    if status != 200 or not isinstance(body, dict):
        return f"status {status}"
    ledger = body.get("ledger", body)
    if not isinstance(ledger, dict):
        return ledger
    keys = ("calls_today", "spend_today_usd", "reserved_usd", "calls_reserved",
            "refused_by_budget", "budgets")
    return {key: ledger[key] for key in keys if key in ledger} or sorted(ledger)


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


def last_error(log: str) -> str:
    """The last ``SomethingError: ...`` line of a log (the exception that ended it)."""
    errors = [line.strip(" |") for line in log.splitlines()
              if re.match(r"^[\s|]*[\w.]+(Error|Exception|Exit)\b.*:", line)]
    return errors[-1] if errors else "no exception in its log"


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000,
                        help="requests per round and daemon at concurrency 1")
    parser.add_argument("--requests-c64", type=int,
                        help="requests per round and daemon at concurrency 64 (default: "
                        "--requests)")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE,
                        help=f"git ref of the BEFORE code (default: {DEFAULT_BASELINE})")
    parser.add_argument("--sim-tree", choices=("before", "after"), default="before",
                        help="which tree's llmspool sim to call (default: before)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if h2load_missing():
        return 1
    requests_c64 = args.requests_c64 or args.requests

    trees = {"before": baseline_worktree(args.baseline), "after": REPO}
    figures: dict[str, Any] = {
        "cpus": os.cpu_count(), "rounds": args.rounds, "requests_c1": args.requests,
        "requests_c64": requests_c64, "baseline": args.baseline,
        "baseline_commit": git("rev-parse", f"{args.baseline}^{{commit}}").strip(),
        "after_head": git("rev-parse", "HEAD").strip(),
        "after_dirty_files": git("status", "--porcelain", "--", "daemon", "plugins").splitlines(),
        "sim_tree": args.sim_tree, "imports": {}, "loadavg_start": os.getloadavg(),
    }
    variants = [Variant(tree, caps) for tree in ("before", "after") for caps in CAPS]
    for name, tree in trees.items():
        try:
            figures["imports"][name] = probe_tree(tree)
            print(f"{name}: llmspool from {figures['imports'][name]['llmspool']}",
                  file=sys.stderr)
        except RuntimeError as error:
            if name == "before":
                raise
            for variant in variants:
                if variant.tree == name:
                    variant.error = f"import probe failed: {error}"

    with tempfile.TemporaryDirectory(prefix="llmspool-bench-money-") as tmp:
        workdir = Path(tmp)
        with environment(tree_env(trees[args.sim_tree])):
            # Limits far above the offered load, so that the daemons do not pace themselves.
            sim = start_sim(workdir, UNLIMITED_SIM, process=True)
        try:
            for variant in variants:
                if variant.error is not None:
                    continue
                try:
                    variant.daemon = start_tree_daemon(
                        workdir / variant.name.replace("/", "-"), trees[variant.tree], sim.url,
                        CAPS[variant.caps])
                except RuntimeError as error:
                    if variant.tree == "before":
                        raise
                    variant.error = f"did not start: {last_error(str(error))}"
                    variant.log = tail(str(error))
                    print(f"AFTER daemon {variant.name} DID NOT START (the working tree may be "
                          f"mid-change); measuring the baseline alone. Its log ends:\n"
                          f"{variant.log}", file=sys.stderr)
            figures.update(measure(sim, variants, workdir, args.rounds, args.requests,
                                   requests_c64))
        finally:
            for variant in variants:
                if variant.daemon is not None:
                    variant.daemon.terminate()
            sim.terminate()
    figures["loadavg_end"] = os.getloadavg()
    print_table(figures, variants)
    if args.json:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return 0


def print_table(figures: dict[str, Any], variants: list[Variant]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=max(100, shutil.get_terminal_size().columns))
    title = (f"Caps off/on, before ({figures['baseline']}) and after (working tree): median of "
             f"{figures['rounds']} rounds, {figures['cpus']} CPUs")
    table = Table(title=title)
    for column in ("variant", "p50 added c=1", "p99 added c=1", "req/s c=64", "failed"):
        table.add_column(column, justify="left" if column == "variant" else "right")

    def cells(entry: dict[str, Any]) -> list[str]:
        if "added_p50_ms" not in entry or "rps_c64" not in entry:
            return ["—", "—", "—", str(entry.get("failures", "—"))]
        return [f"{entry['added_p50_ms']:.3f} ms", f"{entry['added_p99_ms']:.3f} ms",
                f"{entry['rps_c64']:,.0f}", str(entry["failures"])]

    for variant in variants:
        table.add_row(variant.name.replace("_", " "), *cells(figures[variant.name]))
    direct = figures["direct"]
    table.add_row("(sim direct, absolute)", f"{direct['c1_p50_ms']:.3f} ms",
                  f"{direct['c1_p99_ms']:.3f} ms", f"{direct['c64_rps']:,.0f}", "")
    table.add_section()
    for tree in ("before", "after"):
        off, on = figures[f"{tree}/caps_off"], figures[f"{tree}/caps_on"]
        if all(key in entry for key in ("added_p50_ms", "rps_c64") for entry in (off, on)):
            table.add_row(f"{tree}: on - off",
                          f"{on['added_p50_ms'] - off['added_p50_ms']:+.3f} ms",
                          f"{on['added_p99_ms'] - off['added_p99_ms']:+.3f} ms",
                          f"{on['rps_c64'] - off['rps_c64']:+,.0f}", "")
        else:
            table.add_row(f"{tree}: on - off", "n/a", "n/a", "n/a", "")
    console.print(table)
    console.print(f"load average (1 min) at start {figures['loadavg_start'][0]:.1f}, at end "
                  f"{figures['loadavg_end'][0]:.1f}; {figures['requests_c1']:,} requests per "
                  f"round at c=1, {figures['requests_c64']:,} at c=64; sim from the "
                  f"{figures['sim_tree']} tree", highlight=False)
    for variant in variants:
        if variant.error is not None:
            console.print(Text(f"{variant.name}: {variant.error} (no figures)", style="bold red"))


if __name__ == "__main__":
    raise SystemExit(main())
