"""``llmspool top``: a full-screen view of the daemon that refreshes until ``q``::

    llmspool top [--interval SECONDS] [--once] [--socket PATH] [--config PATH]

Each refresh asks the daemon over its socket (``top_data``) and draws a frame (``top_view``)
with ``rich.live.Live`` on the terminal's alternate screen. Keys are read without blocking:
standard input in cbreak mode (a key arrives at once, unechoed; Ctrl-C still sends SIGINT),
waited for with ``select`` between refreshes. ``q``, Ctrl-C, SIGTERM or SIGHUP leave the
screen and put the terminal back as it was (exit status 0).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
import termios
import time
import tty
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from llmspool.core.errors import StartupError

if TYPE_CHECKING:
    from rich.console import Console

    from llmspool.cli.top_data import Snapshot

EXIT_OK = 0
DEFAULT_INTERVAL = 1.0
MIN_INTERVAL = 0.1  # faster would only load the daemon: a frame takes three questions
QUIT_KEYS = frozenset(b"qQ")
# Ctrl-C, and how a session manager or `kill` ends a program: leave as `q` does.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

DESCRIPTION = """\
A full-screen view of the running daemon, refreshed every --interval seconds: calls in flight
by tier and the queue, today's spend against the daily caps, the cache's hit rate, open batches
with their progress and time to deadline, the circuit breakers' states; and, of your own calls
(the Unix user you run as), today's model mix, calls by tier and savings by source, and your
jobs in progress. The daemon's figures (the queue, calls in flight, spend today, caps, batches,
breakers) are what `llmspool status` shows any user; "your calls today" and "your jobs" count
only yours, as `llmspool costs` and `llmspool jobs` do.

Keys: q quits (Ctrl-C too). The terminal is restored on leaving.
"""

EPILOG = """\
examples:
  llmspool top                    watch, refreshing every second
  llmspool top --interval 5       refresh every 5 seconds
  llmspool top --once | less      one frame, then exit (also what a pipe gets)

exit status: 0 quit or printed; 1 the daemon cannot be reached (or answered an error);
2 bad arguments.
"""


def add_top_command(commands: Any) -> None:
    """Add ``top`` to the ``llmspool`` subcommands."""
    top = commands.add_parser(
        "top",
        help="a full-screen view of the daemon that refreshes (q quits)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--interval", type=_interval, default=DEFAULT_INTERVAL, metavar="SECONDS",
                     help=f"seconds between refreshes (default: {DEFAULT_INTERVAL:g}, at least "
                     f"{MIN_INTERVAL:g})")
    top.add_argument("--once", action="store_true",
                     help="print one frame and exit, for scripts (a pipe always gets one)")
    top.add_argument("--socket", metavar="PATH", help="socket path (default: "
                     "$LLMSPOOL_SOCKET, else the config's [daemon] socket)")
    top.add_argument("--config", metavar="PATH", help="config file to find the socket in")
    top.set_defaults(run=run_top)


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, like 1 or 0.5, got {text!r}"
                                         ) from None
    if not seconds >= MIN_INTERVAL:  # also refuses nan
        raise argparse.ArgumentTypeError(f"at least {MIN_INTERVAL:g} seconds, got {text!r}")
    return seconds


def run_top(args: argparse.Namespace) -> int:
    """Show the daemon until ``q`` (or one frame with ``--once``); the exit status.

    A daemon that cannot be reached at the start raises ``StartupError``, which the command
    line prints as one line before exiting 1, as every client command does."""
    from llmspool.cli.output import console
    from llmspool.cli.top_data import fetch
    from llmspool.cli.top_view import render
    from llmspool.core.locate import socket_path

    path = socket_path(args.socket, args.config)
    snapshot = fetch(path)
    out = console()
    if args.once or not out.is_terminal:
        out.print(render(snapshot, keys=False))
        return EXIT_OK
    return _watch(path, snapshot, args.interval, out)


def _watch(path: str, snapshot: Snapshot, interval: float, out: Console) -> int:
    from rich.live import Live

    from llmspool.cli.top_data import fetch
    from llmspool.cli.top_view import render

    with _Keys(sys.stdin) as keys, Live(render(snapshot), console=out, screen=True,
                                         auto_refresh=False) as live:
        while not keys.quit_within(interval):
            problem = None
            try:
                snapshot = fetch(path)
            except StartupError as exc:
                # A daemon that stops or restarts while watched: say so, keep the last frame,
                # and try again at the next refresh.
                problem = str(exc)
            live.update(render(snapshot, problem=problem), refresh=True)
    return EXIT_OK


class _Keys:
    """Standard input in cbreak mode while watched, and SIGINT (Ctrl-C) and SIGTERM turned
    into a quit key; both restored on leaving.

    The signals only set a flag and wake the wait: raised as ``KeyboardInterrupt`` they could
    land in the middle of drawing, even inside ``Live``'s start, before it can leave the
    alternate screen. Standard input that is not a terminal (a pipe, /dev/null) is read for
    keys if any come, and its end is simply not waited on any more.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._fd: int | None = stream.fileno()
        self._saved_mode: list[Any] | None = None
        self._saved_handlers: dict[int, Any] = {}
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._stopped = False

    def __enter__(self) -> _Keys:
        assert self._fd is not None
        for signum in STOP_SIGNALS:
            self._saved_handlers[signum] = signal.signal(signum, self._stop)
        if os.isatty(self._fd):
            self._saved_mode = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._saved_mode is not None and self._fd is not None:
            # TCSADRAIN: after what was written, so the shell gets its terminal back whole.
            with contextlib.suppress(termios.error):  # a terminal hung up is nobody's now
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved_mode)
            self._saved_mode = None
        for signum, handler in self._saved_handlers.items():
            signal.signal(signum, handler)
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _stop(self, _signum: int, _frame: FrameType | None) -> None:
        self._stopped = True
        with contextlib.suppress(BlockingIOError):  # already woken
            os.write(self._wake_write, b"!")

    def quit_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a quit key or signal: True as soon as one comes."""
        deadline = time.monotonic() + seconds
        while not self._stopped and (left := deadline - time.monotonic()) > 0:
            watched = [self._wake_read] if self._fd is None else [self._fd, self._wake_read]
            ready, _, _ = select.select(watched, [], [], left)
            if self._fd in ready:
                typed = os.read(self._fd, 64)
                if not typed:
                    self._fd = None  # end of input: nothing more will come
                elif QUIT_KEYS.intersection(typed):
                    return True
        return self._stopped
