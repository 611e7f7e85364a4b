"""The ``llmspool`` command line.

    llmspool daemon [--config PATH] [--socket PATH]   run the daemon in the foreground
    llmspool sim [--host H] [--port P] [--config PATH] [--speed F]   run the API simulator
    llmspool config init [PATH]                       write the reference config, commented
    llmspool config check [PATH]                      validate a config as the daemon would
    llmspool config show [PATH] [--json]              the effective config, and each value's source
    llmspool plugins [--json]                         provider plugins, their kinds and capabilities
    llmspool demo                                     rehearse with the simulator, show costs
    llmspool status [JOB] [--json]                    how the daemon (or job JOB) is doing
    llmspool submit FILE.jsonl [--deadline 6h] [--wait] [-o OUT.jsonl]   hand over a job
    llmspool wait JOB [--timeout SECONDS]             block until a job has finished
    llmspool results JOB [-o OUT.jsonl] [--wait S]    write a job's results (Batch output)
    llmspool cancel JOB                               cancel what has not run yet
    llmspool jobs [--limit N] [--json]                list recent jobs
    llmspool costs [--by DIMS] [--since 7d] [--json | --csv]   spend and savings, grouped
    llmspool feedback RESPONSE_ID --score 0.8         score an answer (quality beside cost)
    llmspool export finetune --operation NAME -o train.jsonl   captured answers, to fine-tune
    llmspool top [--interval S] [--once]              a full-screen view that refreshes (q quits)
    llmspool store check|migrate [--url URL]          the store's schema: current? update it

Client commands find the socket from ``--socket``, ``LLMSPOOL_SOCKET``, or the config.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Any

import orjson

from llmspool import __version__
from llmspool.cli.config import add_config_commands
from llmspool.cli.costs import add_costs_command
from llmspool.cli.export import add_export_command
from llmspool.cli.feedback import add_feedback_command
from llmspool.cli.jobs import add_job_commands
from llmspool.cli.output import console
from llmspool.cli.plugins import add_plugins_command
from llmspool.cli.status_tables import batches_table, breakers_table, fleet_table
from llmspool.cli.store import add_store_commands
from llmspool.cli.top import add_top_command
from llmspool.core import span_limits, unix_http
from llmspool.core.config.sections import Config
from llmspool.core.config_load import load_config
from llmspool.core.errors import ConfigError, StartupError
from llmspool.core.locate import socket_path

# EX_CONFIG from sysexits.h: the unit file's RestartPreventExitStatus=78 stops systemd from
# restarting a daemon whose config is wrong (it would fail the same way every time).
EXIT_CONFIG = 78

DESCRIPTION = """\
llmspool takes LLM API work from the programs on this machine over a Unix socket and gets it
done at the lowest cost that still meets each request's deadline.

Programs talk to the socket as to the OpenAI API (POST /v1/chat/completions, /v1/responses,
/v1/embeddings; GET /v1/models), e.g. with the official openai client or
`curl --unix-socket PATH http://localhost/v1/models`.
"""

EPILOG = """\
environment:
  LLMSPOOL_CONFIG      the config file (TOML) when --config is not given
  LLMSPOOL_SOCKET      the socket path, overriding [daemon] socket
  LLMSPOOL_STATE_DIR   the state directory (SQLite), overriding [daemon] state_dir
  OPENAI_API_KEY       the OpenAI key ([providers.openai] api_key_env names the variable)
  OPENAI_BASE_URL      overrides [providers.openai] base_url
  OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_*   turn on tracing and say where spans go
  LLMSPOOL_<SECTION>__<KEY>             override any config key
"""


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["sim"]:
        # The simulator owns its flags; hand it everything after `sim`.
        from llmspool.sim.cli import main as sim_main

        return sim_main(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        result: int = args.run(args)
    except ConfigError as exc:
        print(f"llmspool: config: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as exc:
        print(f"llmspool: {exc}", file=sys.stderr)
        return 1
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmspool",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"llmspool {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    daemon = commands.add_parser(
        "daemon",
        help="run the daemon in the foreground (systemd runs this)",
        description="Run the daemon in the foreground until SIGTERM or SIGINT. It serves "
        "the socket systemd passes (LISTEN_FDS) or creates its own, tells systemd READY once "
        "every part has started, and on SIGTERM finishes requests in flight within "
        "[daemon] shutdown_grace before exiting 0. SIGHUP reloads prices and the log level.",
    )
    daemon.add_argument("--config", metavar="PATH", help="config file (default: $LLMSPOOL_CONFIG, "
                        "else built-in defaults)")
    daemon.add_argument("--socket", metavar="PATH", help="socket path (overrides the config)")
    daemon.set_defaults(run=_run_daemon)

    commands.add_parser(
        "sim",
        help="run the OpenAI API simulator (see `llmspool sim --help`)",
        add_help=False,
    )

    add_config_commands(commands)
    add_plugins_command(commands)

    demo = commands.add_parser(
        "demo",
        help="rehearse what the spooler does, in about 15 seconds, on a simulator",
        description="Start `llmspool sim` (flex capacity out 40% of the time, batches done "
        "in seconds) and `llmspool daemon` in a temporary directory; send an interactive call "
        "and its repeat (answered for nothing), a job due in 30 s (flex, riding out the "
        "outage) and one due in 1 h (the Batch API, with a repeated request answered without "
        "a second call); print the plans, the results and the cost report by saving source; "
        "stop both. Needs no config and no API key.",
    )
    demo.set_defaults(run=_run_demo)

    status = commands.add_parser(
        "status",
        help="ask the running daemon how it is doing",
        description="Show the daemon's queue, calls in flight and spend today.",
    )
    status.add_argument("--socket", metavar="PATH", help="socket path (default: "
                        "$LLMSPOOL_SOCKET, else the config's [daemon] socket)")
    status.add_argument("--config", metavar="PATH", help="config file to find the socket in")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.add_argument("job", nargs="?", metavar="JOB", help="a job id: show that job's "
                        "requests by state and tier, its cost, savings and deadline instead")
    status.set_defaults(run=_run_status)
    add_job_commands(commands)
    add_costs_command(commands)
    add_feedback_command(commands)
    add_export_command(commands)
    add_top_command(commands)
    add_store_commands(commands)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("llmspool").setLevel(level.upper())


def _run_daemon(args: argparse.Namespace) -> int:
    import anyio

    config = load_config(args.config)
    if args.socket:
        config = _with_socket(config, args.socket)
    # Said here in one line: the OpenTelemetry SDK, which the daemon's modules import, would
    # raise with a traceback as it loads.
    bad_limits = span_limits.problems(os.environ)
    if bad_limits:
        raise bad_limits[0]

    from llmspool.app import Daemon
    _configure_logging(config.daemon.log_level)
    # Everything the daemon writes (databases, batch files) holds prompts, answers and costs:
    # its owner's alone, as systemd's UMask=0077 makes it; the socket's mode is set on its own.
    os.umask(0o077)
    _return_big_buffers_at_once()
    daemon = Daemon(config, config_path=args.config)
    try:
        anyio.run(daemon.run, backend="asyncio", backend_options={"use_uvloop": True})
    except* StartupError as fatal:  # an actor's fatal condition (its lease lost...): one line
        raise _first_leaf(fatal) from None
    return 0


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first exception in ``group`` that is not itself a group (task groups nest)."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _return_big_buffers_at_once() -> None:
    """Keep request bodies out of the heap, so that memory a big or bad body took goes back to
    the system when it is freed. glibc raises its mmap threshold each time a large block is
    freed; after a few large bodies, later ones come from the heap, whose freed space RSS keeps
    (measured: 148 malformed 5 MB bodies left RSS 100 MB higher). A fixed threshold of 128 KiB
    keeps every block that large in a mapping of its own, unmapped when freed."""
    import ctypes
    import ctypes.util

    m_mmap_threshold = -3  # glibc's malloc.h
    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its own policy stands
        ctypes.CDLL(name).mallopt(m_mmap_threshold, 128 * 1024)


def _run_demo(_args: argparse.Namespace) -> int:
    from llmspool.cli.demo import run_demo

    return run_demo()


def _with_socket(config: Config, path: str) -> Config:
    import dataclasses

    return dataclasses.replace(config, daemon=dataclasses.replace(config.daemon, socket=path))


def get_json(path: str, url: str) -> Any:
    _status, body = unix_http.get(path, url)
    return orjson.loads(body)


def _run_status(args: argparse.Namespace) -> int:
    if args.job:
        from llmspool.cli.job_runs import run_job_status

        return run_job_status(args)
    path = socket_path(args.socket, args.config)
    report = get_json(path, "/v1/status")
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    from rich.table import Table

    table = Table(title=f"llmspool {report.get('version', '?')} on {path}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    queue, dispatcher, ledger = report["queue"], report["dispatcher"], report["ledger"]
    table.add_row("up for", f"{report['uptime_s']:.0f} s")
    table.add_row("calls in flight", str(queue["in_flight"]))
    table.add_row("calls waiting", str(queue["waiting"]))
    table.add_row("refused (queue full)", str(queue["refused_full"]))
    bodies = report.get("request_bodies")
    if bodies:
        table.add_row("request bodies in memory",
                      f"{bodies['bytes_held'] / (1 << 20):,.1f} of "
                      f"{bodies['limit'] / (1 << 20):,.0f} MiB ({bodies['waiting']} waiting)")
        table.add_row("refused (bodies memory full)", str(bodies["refused"]))
    table.add_row("failed", str(dispatcher["failed"]))
    for tier, count in sorted(dispatcher["served_by_tier"].items()):
        table.add_row(f"served on {tier}", str(count))
    flex = dispatcher["flex"]
    table.add_row("flex requests", str(flex["requests"]))
    table.add_row("flex tokens", str(flex["tokens"]))
    table.add_row("flex fallbacks to standard", str(flex["standard_fallbacks"]))
    table.add_row("flex resource unavailable", str(flex["resource_unavailable_errors"]))
    table.add_row("flex savings (estimated)", f"${flex['estimated_savings_usd']:.6f}")
    jobs = report.get("jobs")
    if jobs:
        table.add_row("jobs in progress", str(jobs["jobs_in_progress"]))
        table.add_row("deferred requests queued", str(jobs["requests_queued"]))
        table.add_row("results stored after their deadline",
                      str(jobs.get("requests_late", 0)))
        if jobs.get("requests_helped"):
            table.add_row("requests of other daemons' jobs claimed",
                          str(jobs["requests_helped"]))
    table.add_row("upstream attempts (retries included)",
                  str(dispatcher.get("upstream_attempts", 0)))
    table.add_row("retries", str(dispatcher.get("retries", {}).get("retries", 0)))
    table.add_row("failed over", str(dispatcher.get("failed_over", 0)))
    table.add_row("cancelled by the client leaving", str(dispatcher.get("aborted_by_client", 0)))
    for name, reuse in sorted(dispatcher.get("connections", {}).items()):
        share = reuse.get("reused_share")
        table.add_row(f"{name}: calls on a reused connection",
                      "-" if share is None else f"{share:.1%} of {reuse['requests']}")
    cache = report.get("cache")
    if cache:
        ratio = cache["hit_ratio"]
        table.add_row("cache entries", f"{cache['entries']:,} of {cache['max_entries']:,}")
        table.add_row("cache hits / misses", f"{cache['hits']} / {cache['misses']}"
                      + ("" if ratio is None else f" ({ratio:.1%} hits)"))
        table.add_row("calls shared with an identical one", str(cache["shared"]))
        table.add_row("waited for a pending batch", str(cache["waited_for_batch"]))
        near = cache.get("near_duplicates")
        if near:
            table.add_row("near-duplicate hits / shared",
                          f"{near['hits']} / {near['shared']} ({near['embedding_calls']} "
                          "embeddings)")
    table.add_row(f"calls today ({ledger['day']})", str(ledger["calls_today"]))
    table.add_row("spend today", f"${ledger['spend_today_usd']:.6f}")
    table.add_row("saved today", f"${ledger['saved_today_usd']:.6f}")
    table.add_row("reserved by calls in flight",
                  f"${ledger['reserved_usd']:.6f} ({ledger['calls_reserved']} calls)")
    if ledger.get("unknown_outcome_today"):
        table.add_row("unknown outcome today (billed at reservation)",
                      f"{ledger['unknown_outcome_today']} calls, "
                      f"${ledger['unknown_outcome_today_usd']:.6f}")
    out = console()
    out.print(table)
    if ledger.get("fleet"):
        out.print(fleet_table(ledger["fleet"]))
    batches = report.get("batches")
    if batches is not None:
        out.print(batches_table(batches, report.get("batch_submitter") or {}))
    breakers = dispatcher.get("breakers") or []
    if breakers:
        out.print(breakers_table(breakers))
    return 0
