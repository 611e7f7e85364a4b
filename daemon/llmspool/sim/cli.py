"""The command line of the simulator: ``llmspool sim`` and ``python -m llmspool.sim``.

It binds the listening socket itself (so ``--port 0`` works and the printed URL is the real
one), prints ``llmspool sim listening on http://HOST:PORT/v1`` once uvicorn serves (and, at a
speed other than 1, the speed on stderr), and runs until SIGINT or SIGTERM, then exits 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import tomllib
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from llmspool.core.errors import ConfigError
from llmspool.sim.app import SimApp, build_app
from llmspool.sim.config import FLAVORS, SimConfig
from llmspool.sim.speed import DEFAULT_SPEED, speed_from

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8089
# An in-flight request (a hung one, an endless stream) must not keep a stopped sim alive.
_GRACEFUL_SHUTDOWN_SECONDS = 1
_LISTEN_BACKLOG = 2048

_DESCRIPTION = """\
Run an OpenAI-API-compatible simulator for rehearsals, demos, tests and benchmarks.

It serves POST /v1/chat/completions, /v1/responses and /v1/embeddings (streamed or not) and
GET /v1/models with made-up but well-formed answers: deterministic text, usage in every
answer, the service_tier served, x-ratelimit-* headers, and configurable latency. The Files
and Batch APIs (/v1/files, /v1/batches) keep files in memory and move batches through their
statuses by the clock ([sim.batch] keys, at run time GET/POST /_sim/batch). Flex is
offered on the models with a flex price, slower, and with "resource unavailable" 429 spells by
chance, by schedule ([sim] flex_* keys) or at run time (GET/POST /_sim/flex). Faults (5xx,
429s, slow or hung answers, dropped connections, cut streams, refused or truncated chat
completions, selected by model, path, tier or a text the body contains) come from the
[sim.faults] config or at run time from POST/DELETE /_sim/faults; GET /_sim/stats counts what
it saw, and GET /_sim/requests[?since=SEQ] lists each call it billed (X-Client-Request-Id,
tier, tokens, complete or cut; the newest [sim] request_log_size of them).
With --flavor ollama (or [sim] flavor = "ollama") it impersonates Ollama's OpenAI-compatible
routes instead: no service_tier, no rate-limit headers, Ollama's {"error": "..."} bodies, no
Files or Batch API, and GET /api/tags and /api/version; models default to llama3.2 and
nomic-embed-text.
With --flavor anthropic (or [sim] flavor = "anthropic") it impersonates Anthropic's Messages
API instead (a client's base URL is the printed one without /v1): POST /v1/messages (streamed
as Anthropic's events, tool_use blocks, prompt caching with cache_control) and
/v1/messages/count_tokens, the Message Batches API under /v1/messages/batches on the same
batch clock and /_sim/batch settings, GET /v1/models in Anthropic's shape, errors as
{"type": "error", "error": {...}} (faults of any status, 529 overloaded_error included),
request-id and anthropic-ratelimit-* headers; requests need anthropic-version and an API key
header; no OpenAI routes; models default to claude-haiku-4-5, claude-sonnet-4-5 and
claude-opus-4-5.
--speed FACTOR (or [sim] speed) compresses time: every duration the simulator is given, in
the config or at run time through /_sim/batch, /_sim/flex and /_sim/faults, is divided by
FACTOR (latencies, flex outages, fault delays, batch turnaround...), so a script written for
speed 1 works at any speed and --speed 1440 rehearses a day in a minute; GET /_sim/* show
what was set. Timestamps in answers stay real Unix times, rate limits per real minute. With
[sim.batch] turnaround_p99 each batch draws its own turnaround (log-normal, seeded).
When ready it prints one line: "llmspool sim listening on http://HOST:PORT/v1".
"""


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGINT/SIGTERM; the exit status (2 for bad config or flags)."""
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, flavor=args.flavor, speed=args.speed)
        app = build_app(config)
    except ConfigError as exc:
        print(f"llmspool sim: bad config: {exc}", file=sys.stderr)
        return 2
    try:
        sock = listen(args.host, args.port)
    except OSError as exc:
        print(f"llmspool sim: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    if config.speed != DEFAULT_SPEED:
        print(
            f"llmspool sim: speed {config.speed:g}: rehearsal time runs {config.speed:g} times "
            "as fast as real time",
            file=sys.stderr,
            flush=True,
        )
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    server = SimServer(
        server_config(app), announcement=f"llmspool sim listening on http://{host}:{port}/v1",
        on_stop=app.stop,
    )
    with sock, _GracefulSignals(server):
        server.run(sockets=[sock])
    return 0


def load_config(
    path: str | None, *, flavor: str | None = None, speed: float | None = None
) -> SimConfig:
    """The ``[sim]`` table of ``path`` (else ``$LLMSPOOL_CONFIG``), or the defaults if neither;
    ``flavor`` (``--flavor``) and ``speed`` (``--speed``) override the table's."""
    overrides: dict[str, Any] = {}
    if flavor:
        overrides["flavor"] = flavor
    if speed is not None:
        overrides["speed"] = speed
    path = path or os.environ.get("LLMSPOOL_CONFIG") or None
    if path is None:
        return SimConfig.from_table(overrides)
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from exc
    table = document.get("sim", {})
    if isinstance(table, dict):
        table = {**table, **overrides}
    return SimConfig.from_table(table)


def server_config(app: SimApp) -> uvicorn.Config:
    """How uvicorn serves the simulator, from the command line or in a test's thread."""
    return uvicorn.Config(
        app,
        http="httptools",
        loop="uvloop",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
        backlog=_LISTEN_BACKLOG,
    )


class SimServer(uvicorn.Server):
    """A uvicorn server that prints the URL line once it accepts connections, and tells the
    app when it stops so that waiting requests end at once."""

    def __init__(
        self, config: uvicorn.Config, *, announcement: str | None, on_stop: Callable[[], None]
    ) -> None:
        super().__init__(config)
        self._announcement = announcement
        self._on_stop = on_stop

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._announcement is not None:
            print(self._announcement, flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_stop()
        await super().shutdown(sockets=sockets)


class _GracefulSignals:
    """Make SIGINT/SIGTERM stop ``server`` gracefully, also outside uvicorn's own handlers.

    uvicorn re-raises the signal that stopped it after restoring the previous handlers; with
    Python's defaults that would turn a clean stop into a KeyboardInterrupt or a death by
    SIGTERM. Our handlers make that re-raise (and a signal during start-up) a graceful stop.
    """

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, server: uvicorn.Server) -> None:
        self._server = server
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._server.should_exit = True

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Only the main thread may set handlers; uvicorn skips them there too.
        handler: Callable[[int, FrameType | None], None] = self._handle
        for signum in self._SIGNALS:
            self._previous[signum] = signal.signal(signum, handler)

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {port}")
    return port


def _speed(text: str) -> float:
    try:
        return speed_from(float(text), "--speed")
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(
            f"a speed is a number more than 0 (2: twice as fast), not {text!r}"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmspool sim",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default: {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"TCP port to listen on; 0 picks a free one (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--flavor",
        choices=FLAVORS,
        help="the API to impersonate (default: [sim] flavor, else openai)",
    )
    parser.add_argument(
        "--speed",
        type=_speed,
        metavar="FACTOR",
        help="run rehearsal time FACTOR times as fast: every duration is divided by it "
        "(default: [sim] speed, else 1)",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML config file; only its [sim] table is read (default: $LLMSPOOL_CONFIG if "
        "set, else built-in defaults)",
    )
    return parser
