"""What the daemon pays for a day of mixed work, against the least it could have paid.

The reference workload runs, with time compressed, through a real daemon in front of ``llmspool
sim`` serving the reference upstream (``etc/sim-reference.toml``: batch turnaround p50 2.5 min
and p99 6 h, flex out 30% of the time, 2% of batch lines failing), and one batch made to expire:

- interactive calls (no deadline) spread over the first 12 hours;
- jobs due in 2 hours, and jobs due in 24 hours, submitted over the same 12 hours;
- one request in ten repeats an earlier one exactly (deterministic: ``temperature: 0``).

Every figure comes from what the simulator billed (``GET /_sim/requests``) and what the client
saw, never from the daemon's own counts:

- **cost ÷ minimum**: the minimum buys each distinct request once, when it is first asked for,
  on the cheapest tier that could meet its deadline (standard for interactive calls, batch for
  jobs); repeats are free;
- **cost ÷ all standard**: every request bought on standard;
- **deadlines met** per class: a job request is met when the client first saw its successful
  result before the job's deadline (results are polled every ``--poll`` seconds); an
  interactive call when it was answered 200;
- **failures**: requests with no successful answer; **paid twice**: calls billed beyond one per
  distinct request.

Each run is a seed and a budget variant (no cap, or ``[budgets] daily_usd`` and
``per_request_usd`` set well above the day's spend, so every call reserves against them). The
daemon's durations are divided by the same ``--speed`` as the simulator's (planner priors, batch
polling, escalation, retry and flex backoff, timeouts), so a compressed day is the same day; the
response cache keeps answers for the whole day.
With ``--baseline REF`` the same runs are made with the daemon of a git ref as well (checked out
in a ``git worktree``, run with ``PYTHONPATH=<tree>/daemon:<tree>/plugins``, its config compressed
from its own defaults), against the simulator of the working tree. Figures, not pass/fail::

    python -m tests.bench.bench_cost [--seeds 1,2] [--caps off,on] [--speed 720]
                                     [--baseline REF] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import tomli_w
from llmspool.core.calls import Tier, Usage
from llmspool.core.config.sections import Config
from llmspool.core.units import format_duration
from llmspool.policy.billing import bill, load_price_book

from tests.bench.bench_money import baseline_worktree, probe_tree, tree_env
from tests.support.money import billed_calls
from tests.support.processes import (
    Daemon,
    Sim,
    start_daemon,
    start_sim,
    unix_exchange,
    unix_request,
)

REPO = Path(__file__).resolve().parents[2]
REFERENCE_UPSTREAM = REPO / "etc" / "sim-reference.toml"
MODEL = "gpt-5-mini"
OUTPUT_TOKENS = 40
HOUR = 3600.0
CLASSES = ("interactive", "2h", "24h")
# Durations of the daemon's config left uncompressed: how long a stop may take, how long a
# connection may take to open or stay idle (real sockets), and how long results are kept.
REAL_TIME = {("daemon", "shutdown_grace"), ("jobs", "retention")}
PROVIDER_SCALED = ("timeout", "stream_idle_timeout")


# --- the workload --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One request of the workload: ``prompt`` names its content (repeats share it)."""

    prompt: int
    klass: str
    at: float  # rehearsal seconds from the start


@dataclass(slots=True)
class JobSpec:
    klass: str
    at: float
    deadline: float  # rehearsal seconds after submission
    requests: list[Request] = field(default_factory=list)
    expires: bool = False  # its batch is made to expire


@dataclass(slots=True)
class Workload:
    interactive: list[Request]
    jobs: list[JobSpec]

    def requests(self) -> list[Request]:
        return self.interactive + [r for job in self.jobs for r in job.requests]

    def distinct(self) -> dict[int, str]:
        """Each distinct prompt and the class of its first request, which the minimum buys
        (standard for an interactive call, batch for a job's request); later repeats are
        free. Requests submitted together count in the cheaper class."""
        first: dict[int, tuple[float, int, str]] = {}
        for request in self.requests():
            klass = "interactive" if request.klass == "interactive" else "job"
            known = first.get(request.prompt)
            candidate = (request.at, klass == "interactive", klass)
            if known is None or candidate < known:
                first[request.prompt] = candidate
        return {prompt: klass for prompt, (_at, _dearer, klass) in first.items()}


def workload(seed: int, *, interactive: int = 150, jobs_2h: int = 8, lines_2h: int = 40,
             jobs_24h: int = 4, lines_24h: int = 120, repeat_share: float = 0.1) -> Workload:
    """The reference workload for ``seed``: everything submitted within the first 12 hours."""
    rng = random.Random(seed)
    seen: list[int] = []

    def prompt() -> int:
        if seen and rng.random() < repeat_share:
            return rng.choice(seen)
        seen.append(len(seen))
        return seen[-1]

    specs = [JobSpec("24h", i * 2 * HOUR, 24 * HOUR) for i in range(jobs_24h)]
    specs += [JobSpec("2h", (0.5 + i * 1.4) * HOUR, 2 * HOUR) for i in range(jobs_2h)]
    specs.sort(key=lambda job: job.at)
    calls = sorted(rng.uniform(0, 12 * HOUR) for _ in range(interactive))
    events: list[tuple[float, JobSpec | None]] = [(at, None) for at in calls]
    events += [(job.at, job) for job in specs]
    events.sort(key=lambda event: event[0])
    interactive_requests: list[Request] = []
    for at, job in events:  # prompts drawn in time order, so a repeat repeats the past
        if job is None:
            interactive_requests.append(Request(prompt(), "interactive", at))
        else:
            size = lines_24h if job.klass == "24h" else lines_2h
            job.requests = [Request(prompt(), job.klass, at) for _ in range(size)]
    next(job for job in specs if job.klass == "24h" and job.at > 0).expires = True
    return Workload(interactive_requests, specs)


def body(prompt: int) -> dict[str, Any]:
    # Every prompt has the same length, so every request has the same tokens.
    return {"model": MODEL, "temperature": 0, "max_tokens": OUTPUT_TOKENS,
            "messages": [{"role": "user",
                          "content": f"Item {prompt:06d}: write one line on this item."}]}


# --- the daemon, compressed ----------------------------------------------------------------------


def compressed_config(speed: float, *, cap: bool) -> str:
    """The daemon's config with every duration of its defaults divided by ``speed`` (except
    ``REAL_TIME``), and with caps when ``cap``."""
    defaults = Config()
    table: dict[str, Any] = {}
    for section in dataclasses.fields(defaults):
        value = getattr(defaults, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        for item in dataclasses.fields(value):
            if item.metadata.get("kind") == "duration" and \
                    (section.name, item.name) not in REAL_TIME:
                seconds = getattr(value, item.name)
                if seconds is not None:
                    table.setdefault(section.name, {})[item.name] = _duration(seconds / speed)
    provider = Config().providers["openai"]
    table["providers"] = {"openai": {name: _duration(getattr(provider, name) / speed)
                                     for name in PROVIDER_SCALED}}
    # Answers are kept for the day the workload spans (one hour by default): a repeat hours later
    # is the same question, and the minimum counts every repeat as free.
    table.setdefault("cache", {})["ttl"] = _duration(24 * HOUR / speed)
    if cap:
        table["budgets"] = {"daily_usd": 1.0, "per_request_usd": 0.01}
    return tomli_w.dumps(table)


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.3f}ms"


# --- one run -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Seen:
    """What the client saw of one request: when its answer came and whether it succeeded."""

    klass: str
    prompt: int
    deadline_at: float | None = None  # real Unix time
    answered_at: float | None = None
    ok: bool = False


@dataclass(slots=True)
class Figures:
    code: str
    seed: int
    cap: bool
    cost: float
    minimum: float
    all_standard: float
    met: dict[str, float]
    failures: int
    paid_twice: int
    billed: int
    distinct: int
    by_tier: dict[str, int]
    seconds: float


def tree_config(tree: Path, speed: float, cap: bool) -> str:
    """``compressed_config`` of ``tree``'s own defaults (a baseline knows other keys)."""
    if tree == REPO:
        return compressed_config(speed, cap=cap)
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_cost", "--print-config", "--speed",
         f"{speed:g}", "--caps", "on" if cap else "off"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, **tree_env(tree)},
        check=True)
    return result.stdout


def run(tree: Path, seed: int, cap: bool, speed: float, poll: float, work: Path) -> Figures:
    plan = workload(seed)
    sim = start_sim(work, REFERENCE_UPSTREAM.read_text(), extra_args=("--speed", f"{speed:g}"),
                    process=True)
    daemon: Daemon | None = None
    try:
        daemon = start_daemon(work, sim.url, config_toml=tree_config(tree, speed, cap),
                              env=tree_env(tree) if tree != REPO else None, process=True)
        started = time.monotonic()
        seen = _drive(plan, daemon, sim, speed, poll)
        seconds = time.monotonic() - started
        calls = billed_calls(sim)
    finally:
        if daemon is not None:
            daemon.terminate()
        sim.terminate()
    return _figures("after" if tree == REPO else "before", seed, cap, plan, seen, calls,
                    seconds)


def _drive(plan: Workload, daemon: Daemon, sim: Sim, speed: float,
           poll: float) -> list[Seen]:
    """Send the workload on its schedule; wait for every answer."""
    start = time.time()
    seen: list[Seen] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def at(rehearsal: float) -> None:
        time.sleep(max(0.0, start + rehearsal / speed - time.time()))

    def interactive() -> None:
        for request in plan.interactive:
            at(request.at)
            status, _answer, _headers = unix_exchange(
                daemon.socket_path, "POST", "/v1/chat/completions",
                orjson.dumps(body(request.prompt)), {"content-type": "application/json"})
            with lock:
                seen.append(Seen("interactive", request.prompt, None, time.time(),
                                 status == 200))

    def job(spec: JobSpec) -> None:
        at(spec.at)
        if spec.expires:  # the batch made of this job expires after an hour, half done
            sim.request("POST", "/_sim/batch", {"turnaround": "3h", "turnaround_p99": "",
                                                "expire_after": "1h"})
            created = sim.stats()["batches"]["created"]
        lines = b"".join(orjson.dumps({"custom_id": f"r{i}", "method": "POST",
                                       "url": "/v1/chat/completions",
                                       "body": body(request.prompt)}) + b"\n"
                         for i, request in enumerate(spec.requests))
        status, answer = unix_request(
            daemon.socket_path, "POST",
            f"/v1/jobs?deadline={format_duration(round(spec.deadline / speed, 3))}",
            lines, {"content-type": "application/jsonl"})
        if status != 202:
            raise RuntimeError(f"the job was refused: {answer}")
        if spec.expires:
            while sim.stats()["batches"]["created"] == created:
                time.sleep(0.01)
            sim.request("POST", "/_sim/batch", {"reset": True})
        mine = [Seen(spec.klass, request.prompt, float(answer["deadline_at"]))
                for request in spec.requests]
        _follow(daemon, answer["id"], mine, poll)
        with lock:
            seen.extend(mine)

    def guarded(target: Any, *args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:  # reported after the run
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(interactive,))]
    threads += [threading.Thread(target=guarded, args=(job, spec)) for spec in plan.jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return seen


def _follow(daemon: Daemon, job_id: str, lines: list[Seen], poll: float) -> None:
    """Poll the job's results until it is done, noting when each line was first seen."""
    while True:
        status, raw = unix_request(daemon.socket_path, "GET", f"/v1/jobs/{job_id}/results")
        now = time.time()
        if status != 200:
            raise RuntimeError(f"results of {job_id}: {status} {raw!r}")
        # One line parses as a JSON object; more stay JSONL bytes.
        found = [raw] if isinstance(raw, dict) else [
            orjson.loads(text) for text in bytes(raw).splitlines() if text.strip()]
        for result in found:
            line = lines[int(result["custom_id"][1:])]
            if line.answered_at is None:
                line.answered_at = now
                response = result.get("response") or {}
                line.ok = response.get("status_code") == 200
        _status, job = daemon.get(f"/v1/jobs/{job_id}")
        if job["status"] != "in_progress" and all(line.answered_at for line in lines):
            return
        time.sleep(poll)


def _figures(code: str, seed: int, cap: bool, plan: Workload, seen: list[Seen],
             calls: list[dict[str, Any]], seconds: float) -> Figures:
    prices = load_price_book()
    tokens = {(call["input_tokens"], call["output_tokens"]) for call in calls
              if call["complete"]}
    if len(tokens) != 1:
        raise RuntimeError(f"requests were meant to have the same tokens, billed: {tokens}")
    [(input_tokens, output_tokens)] = tokens
    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)

    def price(tier: Tier, use: Usage = usage) -> float:
        cost = bill(prices, "openai", MODEL, tier, use).cost_picodollars
        assert cost is not None, f"{MODEL} has no {tier.value} price"
        return cost / 10**12

    cost = sum(price(Tier(call["tier"]), Usage(input_tokens=call["input_tokens"],
                                                 output_tokens=call["output_tokens"]))
               for call in calls)
    distinct = plan.distinct()
    minimum = sum(price(Tier.STANDARD if klass == "interactive" else Tier.BATCH)
                  for klass in distinct.values())
    requests = plan.requests()
    met: dict[str, float] = {}
    for klass in CLASSES:
        mine = [s for s in seen if s.klass == klass]
        good = [s for s in mine if s.ok and (s.deadline_at is None or
                                             (s.answered_at or 0) <= s.deadline_at)]
        met[klass] = len(good) / len(mine) if mine else 1.0
    return Figures(
        code=code, seed=seed, cap=cap, cost=cost, minimum=minimum,
        all_standard=price(Tier.STANDARD) * len(requests),
        met=met, failures=sum(not s.ok for s in seen),
        paid_twice=max(0, len(calls) - len(distinct)), billed=len(calls),
        distinct=len(distinct), by_tier=dict(Counter(call["tier"] for call in calls)),
        seconds=seconds,
    )


# --- the report ----------------------------------------------------------------------------------


def table(figures: list[Figures], speed: float) -> Any:
    from rich.table import Table

    result = Table(title=f"bench_cost: the reference workload at speed {speed:g} "
                   "(cost from the simulator's bills)", title_justify="left")
    for heading in ("code", "seed", "cap", "cost ÷ min", "cost ÷ standard",
                    *(f"met {klass}" for klass in CLASSES), "failures", "billed / distinct",
                    "by tier", "run"):
        result.add_column(heading, justify="left" if heading == "by tier" else "right")
    for f in figures:
        result.add_row(
            f.code, str(f.seed), "on" if f.cap else "off", f"{f.cost / f.minimum:.3f}",
            f"{f.cost / f.all_standard:.3f}",
            *(f"{f.met[klass] * 100:.1f}%" for klass in CLASSES), str(f.failures),
            f"{f.billed} / {f.distinct}",
            ", ".join(f"{tier} {n}" for tier, n in sorted(f.by_tier.items())),
            f"{f.seconds:.0f} s")
    notes = []
    for code in ("before", "after"):
        ratios = [f.cost / f.minimum for f in figures if f.code == code]
        if ratios:
            missed = sum(f.met[klass] < 1 for f in figures if f.code == code
                         for klass in CLASSES)
            notes.append(f"{code}: median cost ÷ min {statistics.median(ratios):.3f}, worst "
                         f"{max(ratios):.3f}, {missed} classes with deadlines missed")
    result.caption = "; ".join(notes) + " (target: ≤ 1.03, every deadline met)"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2", help="comma-separated workload seeds")
    parser.add_argument("--speed", type=float, default=720.0,
                        help="how many times faster than real time (default 720: a day in "
                        "two minutes)")
    parser.add_argument("--poll", type=float, default=0.2,
                        help="seconds between looks at a job's results (default 0.2)")
    parser.add_argument("--caps", default="off,on", help="budget variants: off, on or both")
    parser.add_argument("--baseline", metavar="REF",
                        help="also run the daemon of this git ref (e.g. the commit before a "
                        "change), side by side")
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    parser.add_argument("--print-config", action="store_true",
                        help="print the compressed daemon config (for the first of --caps) "
                        "and exit")
    args = parser.parse_args(argv)
    caps = [variant == "on" for variant in args.caps.split(",")]
    if args.print_config:
        print(compressed_config(args.speed, cap=caps[0]), end="")
        return 0
    from rich.console import Console

    trees = [REPO]
    if args.baseline:
        trees.insert(0, baseline_worktree(args.baseline))
        probe_tree(trees[0])
    console = Console(width=160)
    figures = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for cap in caps:
            for tree in trees:
                with tempfile.TemporaryDirectory(prefix="bench-cost-") as work:
                    print(f"{'after' if tree == REPO else 'before'}: seed {seed}, cap "
                          f"{'on' if cap else 'off'}...", file=sys.stderr, flush=True)
                    figures.append(run(tree, seed, cap, args.speed, args.poll, Path(work)))
    console.print(table(figures, args.speed))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps([dataclasses.asdict(f) for f in figures],
                                                 option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
