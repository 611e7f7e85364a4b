"""What every job command shares: its connection to the daemon, and the client's errors
turned into one line on standard error and an exit status.

Imports nothing heavy at import time (the client is imported when a command runs).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from llmspool.cli.job_views import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
    print_lines_table,
)

if TYPE_CHECKING:
    from llmspool.client import SpoolError, SyncSpool

__all__ = ["Run", "guarded", "open_spool"]

Run = Callable[[argparse.Namespace], int]


def guarded(run: Run) -> Run:
    """Turn the client's errors into one line on standard error and exit status 1 (4 when no
    daemon answers)."""

    def run_guarded(args: argparse.Namespace) -> int:
        from llmspool.client import DaemonNotRunning, SpoolError

        try:
            return run(args)
        except DaemonNotRunning as exc:
            _report_error(exc)
            return EXIT_UNREACHABLE
        except SpoolError as exc:
            _report_error(exc)
            return EXIT_FAILED
        except BrokenPipeError:
            # The reader stopped reading (`llmspool results JOB | head`): stop quietly, with the
            # status a tool killed by SIGPIPE has, and keep Python from complaining at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        except KeyboardInterrupt:
            # The job lives in the daemon; leaving the CLI does not stop it.
            print("\nllmspool: interrupted; the job goes on (`llmspool cancel JOB` stops it)",
                  file=sys.stderr)
            return EXIT_INTERRUPTED

    return run_guarded


def _report_error(exc: SpoolError) -> None:
    print(f"llmspool: {exc.message}", file=sys.stderr)
    if exc.lines:
        print_lines_table(exc.lines, "bad lines")
    if exc.retry_after is not None:
        print(f"llmspool: the daemon suggests trying again in {exc.retry_after:g} s",
              file=sys.stderr)


def open_spool(args: argparse.Namespace, timeout: float = 60.0) -> SyncSpool:
    """The sync client on the socket (or config) the command line names."""
    from llmspool.client import SyncSpool

    return SyncSpool(args.socket, timeout=timeout, config=args.config)
