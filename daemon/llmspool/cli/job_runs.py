"""Running the job commands: submit, wait, results, cancel, jobs and ``status JOB``.

Each ``run_*`` talks to the daemon through the sync client (``llmspool.client``, imported when
a command runs, so that ``llmspool --help`` stays fast) and hands what it answers to
``job_views`` to show; ``jobs`` builds the parser that calls them.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING

from llmspool.cli.job_client import guarded, open_spool
from llmspool.cli.job_results import write_results
from llmspool.cli.job_views import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    LOG_POLL_SECONDS,
    PROGRESS_POLL_SECONDS,
    FinishProgress,
    UploadProgress,
    exit_status,
    job_table,
    print_json,
    print_lines_table,
    print_plan,
    relative,
    stderr_console,
    summary,
)
from llmspool.cli.output import console

if TYPE_CHECKING:
    from llmspool.client import SyncJobHandle

__all__ = [
    "run_cancel",
    "run_job_status",
    "run_jobs",
    "run_results",
    "run_submit",
    "run_wait",
]

UPLOAD_CHUNK = 1024 * 1024


# --- submit ------------------------------------------------------------------------------------


def run_submit(args: argparse.Namespace) -> int:
    tags = dict(args.tag)
    wants_results = args.wait or args.output is not None
    try:
        source, size = _open_source(args.file)
    except OSError as exc:
        print(f"llmspool: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    with source, open_spool(args) as spool:
        with UploadProgress(size) as advance:
            handle = spool.submit_jsonl(
                _chunks(source, advance),
                size=size,
                deadline=args.deadline,
                operation=args.operation,
                tags=tags,
                on_error=args.on_error,
                best_effort=args.best_effort,
            )
        # With results bound for standard output, the id must not be mixed into them.
        id_stream = sys.stderr if wants_results and args.output is None else sys.stdout
        print(handle.id, file=id_stream, flush=True)
        if handle.rejected:
            print_lines_table(handle.rejected, "lines rejected (--on-error skip)")
        for warning in handle.warnings:
            print(f"llmspool: {warning}", file=sys.stderr)
        if handle.plan:
            print_plan(handle.plan)
        if not wants_results:
            return EXIT_OK
        code = _wait_and_report(handle, args.timeout)
        if code == EXIT_TIMEOUT:
            return code
        write_results(handle, args.output, wait=None)
        return code


def _open_source(name: str) -> tuple[IO[bytes], int | None]:
    """The file to upload and its size when known (a regular file), so it goes unchunked."""
    # stdin is duplicated so that closing the upload's stream leaves sys.stdin usable.
    stream = (os.fdopen(os.dup(sys.stdin.fileno()), "rb") if name == "-"
              else open(name, "rb"))  # noqa: SIM115 (the caller closes it with `with`)
    info = os.fstat(stream.fileno())
    if not stat.S_ISREG(info.st_mode):
        return stream, None
    # `submit - < FILE` may start part-way into FILE; only what is left is sent.
    return stream, info.st_size - stream.tell()


def _chunks(source: IO[bytes], advance: Callable[[int], None]) -> Iterator[bytes]:
    while chunk := source.read(UPLOAD_CHUNK):
        advance(len(chunk))
        yield chunk


# --- wait --------------------------------------------------------------------------------------


def run_wait(args: argparse.Namespace) -> int:
    with open_spool(args) as spool:
        handle = spool.job(args.job)
        return _wait_and_report(handle, args.timeout)


def _wait_and_report(handle: SyncJobHandle, timeout: float | None) -> int:
    """Wait with a bar of finished requests; say how the job ended; its exit status."""
    console = stderr_console()
    try:
        with FinishProgress(console, handle.id) as on_status:
            job = handle.wait(
                timeout,
                on_status=on_status,
                poll_every=PROGRESS_POLL_SECONDS if console.is_terminal else LOG_POLL_SECONDS,
            )
    except TimeoutError as exc:
        print(f"llmspool: {exc}; `llmspool results {handle.id}` has what is done",
              file=sys.stderr)
        return EXIT_TIMEOUT
    print(f"llmspool: {summary(job)}", file=sys.stderr)
    return exit_status(job)


# --- results -----------------------------------------------------------------------------------


def run_results(args: argparse.Namespace) -> int:
    with open_spool(args) as spool:
        write_results(spool.job(args.job), args.output, wait=args.wait)
    return EXIT_OK



# --- cancel, jobs, status JOB ------------------------------------------------------------------


def run_cancel(args: argparse.Namespace) -> int:
    with open_spool(args) as spool:
        job = spool.job(args.job).cancel()
    if job.get("message"):
        print(job["message"])
    else:
        counts = job.get("counts") or {}
        print(f"job {job.get('id')} {job.get('status')}: "
              f"{counts.get('cancelled', 0)} of {counts.get('total', '?')} requests cancelled")
    return EXIT_OK


def run_jobs(args: argparse.Namespace) -> int:
    with open_spool(args) as spool:
        jobs = spool.jobs(limit=args.limit)
    if args.json:
        print_json(jobs)
        return EXIT_OK
    from rich import box
    from rich.table import Table

    from llmspool.client import finished_count

    now = time.time()
    # A light box and no-wrap on what a reader copies or scans keep a row on one line at 80
    # columns (rich's width when the output is not a terminal); the operation gives way.
    table = Table(title=f"{len(jobs)} most recent jobs", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, padding=(0, 1, 0, 0), title_justify="left")
    widest_id = max((len(str(job.get("id"))) for job in jobs), default=3)
    table.add_column("job", no_wrap=True, min_width=widest_id)
    table.add_column("status", no_wrap=True, min_width=len("cancelling"))
    table.add_column("done", justify="right", no_wrap=True)
    table.add_column("failed", justify="right", no_wrap=True)
    table.add_column("cost", justify="right", no_wrap=True)
    table.add_column("deadline", justify="right", no_wrap=True, min_width=len("in 5h 59m"))
    table.add_column("operation", overflow="ellipsis")
    for job in jobs:
        counts = job.get("counts") or {}
        table.add_row(
            str(job.get("id")),
            str(job.get("status")),
            f"{finished_count(job)}/{counts.get('total', '?')}",
            str(counts.get("failed", 0)),
            f"${float(job.get('cost_usd') or 0):.4f}",
            relative(job.get("deadline_at"), now),
            str(job.get("operation") or "-"),
        )
    console().print(table)
    return EXIT_OK


def run_job_status(args: argparse.Namespace) -> int:
    """``llmspool status JOB``: the job's counts by state and tier, cost, savings, deadline."""
    return guarded(_job_status)(args)


def _job_status(args: argparse.Namespace) -> int:
    with open_spool(args) as spool:
        job = spool.job(args.job).status()
    if args.json:
        print_json(job)
        return EXIT_OK
    console().print(job_table(job, time.time()))
    return EXIT_OK

