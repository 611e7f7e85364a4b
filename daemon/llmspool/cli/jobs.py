"""The command line's job commands, built on the sync client (``llmspool.client``)::

    llmspool submit FILE.jsonl [--deadline 6h] [--operation NAME] [--tag K=V ...]
                    [--on-error reject|skip] [--wait [--timeout S]] [-o OUT.jsonl]
    llmspool status JOB [--json]
    llmspool wait JOB [--timeout SECONDS]
    llmspool results JOB [-o OUT.jsonl] [--wait SECONDS]
    llmspool cancel JOB
    llmspool jobs [--limit N] [--json]

Standard output carries only what a script captures: the job id (``JOB=$(llmspool submit f)``),
the results, a report or ``--json``. Progress bars, rejected lines and messages go to standard
error, and bars only to a terminal. An unknown job id is one line on standard error and exit
status 1; no daemon on the socket, one line and exit status 4 (a script may retry later).

What they show (tables, bars, summaries, exit statuses) is ``cli/job_views.py``. This module
imports nothing heavy at import time: ``cli/main.py`` imports it to build the parser,
and ``llmspool --help`` should stay fast.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from llmspool.cli.job_views import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
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
    from llmspool.client import SpoolError, SyncJobHandle, SyncSpool


UPLOAD_CHUNK = 1024 * 1024

Run = Callable[[argparse.Namespace], int]


def add_job_commands(commands: Any) -> None:
    """Add submit, wait, results, cancel and jobs to the ``llmspool`` subcommands.

    ``status JOB`` is the existing ``status`` command with a job id; it calls ``run_job_status``.
    """
    _add_submit(commands)
    _add_wait(commands)
    _add_results(commands)
    _add_cancel(commands)
    _add_jobs(commands)


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", metavar="PATH", help="socket path (default: "
                        "$LLMSPOOL_SOCKET, else the config's [daemon] socket)")
    parser.add_argument("--config", metavar="PATH", help="config file to find the socket in")


def _add_submit(commands: Any) -> None:
    submit = commands.add_parser(
        "submit",
        help="hand a JSONL file of requests to the daemon as a job; print its id",
        description="Send FILE, a JSONL file in OpenAI's Batch input format (one "
        '{"custom_id", "method": "POST", "url", "body"} per line, each custom_id unique), to '
        "the daemon as one job, and print the job's id on standard "
        "output at once, so that JOB=$(llmspool submit FILE) works. The daemon gets each "
        "request done by --deadline at the lowest cost it can. FILE '-' reads standard input. "
        "A bar shows the upload of a large file when standard error is a terminal.",
        epilog="exit status: 0 when the job was accepted; with --wait, as `llmspool wait` "
        "(0 all succeeded, 1 some failed, 2 timed out, 3 cancelled); 4 when no daemon answers; "
        "1 when the file was "
        "refused (every bad line is listed) or the daemon cannot be reached.",
    )
    submit.add_argument("file", metavar="FILE", help="the Batch input file (JSONL), or '-'")
    submit.add_argument("--deadline", metavar="WHEN",
                        help="when the answers are needed: a duration from now (10m, 6h, 1h30m) "
                        "or an ISO-8601 time with offset (default: the operation's deadline, "
                        "else the daemon's [jobs] default_deadline, 24h)")
    submit.add_argument("--operation", metavar="NAME",
                        help="what the work is for (reports and budgets group by it)")
    submit.add_argument("--tag", action="append", default=[], type=_tag, metavar="KEY=VALUE",
                        help="a tag on the job (repeatable)")
    submit.add_argument("--on-error", choices=("reject", "skip"), default="reject",
                        help="bad lines refuse the whole file (reject, the default) or are "
                        "dropped and listed (skip)")
    submit.add_argument("--best-effort", action="store_true",
                        help="run the job even if its deadline is shorter than any tier can "
                        "be expected to meet (the daemon refuses such a job otherwise); late "
                        "results are flagged")
    submit.add_argument("--wait", action="store_true",
                        help="then wait for the job and write its results (to -o, else to "
                        "standard output, the id then going to standard error)")
    submit.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="with --wait: give up waiting after this long (exit 2)")
    submit.add_argument("-o", "--output", metavar="OUT.jsonl",
                        help="write the results there, atomically (implies --wait)")
    _add_connection_options(submit)
    submit.set_defaults(run=_guarded(_run_submit))


def _add_wait(commands: Any) -> None:
    wait = commands.add_parser(
        "wait",
        help="wait until a job has finished",
        description="Block until job JOB is completed or cancelled, with a bar of finished "
        "requests when standard error is a terminal, then say how it went.",
        epilog="exit status: 0 completed with no failed request; 1 some request failed (or "
        "the job cannot be found); 2 --timeout ran out; 3 the job was cancelled; 4 no daemon "
        "answers on the socket.",
    )
    wait.add_argument("job", metavar="JOB", help="the job id (job_...)")
    wait.add_argument("--timeout", type=float, metavar="SECONDS",
                      help="give up after this long (default: wait as long as it takes)")
    _add_connection_options(wait)
    wait.set_defaults(run=_guarded(_run_wait))


def _add_results(commands: Any) -> None:
    results = commands.add_parser(
        "results",
        help="write a job's results (JSONL, OpenAI Batch output format)",
        description="Write the results of job JOB finished so far, one line per request in "
        'OpenAI\'s Batch output format ({"id", "custom_id", "response", "error"}), in input '
        "order, streamed as they arrive. A note on standard error says when the job has not "
        "finished yet, so that the lines are not all of them.",
    )
    results.add_argument("job", metavar="JOB", help="the job id (job_...)")
    results.add_argument("-o", "--output", metavar="OUT.jsonl",
                         help="write to this file (through a temporary file renamed at the "
                         "end, so it never holds half the results) instead of standard output")
    results.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                         help="first wait up to this long (at most 600) for the job to finish")
    _add_connection_options(results)
    results.set_defaults(run=_guarded(_run_results))


def _add_cancel(commands: Any) -> None:
    cancel = commands.add_parser(
        "cancel",
        help="cancel a job's requests that have not run yet",
        description="Cancel job JOB: requests not yet sent will not be; those in flight finish "
        "and are paid for. Cancelling a finished job changes nothing and says so.",
    )
    cancel.add_argument("job", metavar="JOB", help="the job id (job_...)")
    _add_connection_options(cancel)
    cancel.set_defaults(run=_guarded(_run_cancel))


def _add_jobs(commands: Any) -> None:
    jobs = commands.add_parser(
        "jobs",
        help="list recent jobs",
        description="A table of the most recent jobs, newest first: status, progress, cost "
        "and deadline.",
    )
    jobs.add_argument("--limit", type=int, default=20, metavar="N",
                      help="how many jobs (default: 20)")
    jobs.add_argument("--json", action="store_true", help="print the raw JSON list")
    _add_connection_options(jobs)
    jobs.set_defaults(run=_guarded(_run_jobs))


# --- shared plumbing ---------------------------------------------------------------------------


def _guarded(run: Run) -> Run:
    """Turn the client's errors into one line on standard error and exit status 1 (4 when no
    daemon answers)."""

    def guarded(args: argparse.Namespace) -> int:
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

    return guarded


def _report_error(exc: SpoolError) -> None:
    print(f"llmspool: {exc.message}", file=sys.stderr)
    if exc.lines:
        print_lines_table(exc.lines, "bad lines")
    if exc.retry_after is not None:
        print(f"llmspool: the daemon suggests trying again in {exc.retry_after:g} s",
              file=sys.stderr)


def _spool(args: argparse.Namespace, timeout: float = 60.0) -> SyncSpool:
    from llmspool.client import SyncSpool

    return SyncSpool(args.socket, timeout=timeout, config=args.config)


def _tag(pair: str) -> tuple[str, str]:
    """One ``--tag KEY=VALUE``; argparse turns the error into a usage message (exit 2)."""
    key, sep, value = pair.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"a tag is KEY=VALUE, got {pair!r}")
    return key, value


# --- submit ------------------------------------------------------------------------------------


def _run_submit(args: argparse.Namespace) -> int:
    tags = dict(args.tag)
    wants_results = args.wait or args.output is not None
    try:
        source, size = _open_source(args.file)
    except OSError as exc:
        print(f"llmspool: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    with source, _spool(args) as spool:
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
        _write_results(handle, args.output, wait=None)
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


def _run_wait(args: argparse.Namespace) -> int:
    with _spool(args) as spool:
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


def _run_results(args: argparse.Namespace) -> int:
    with _spool(args) as spool:
        _write_results(spool.job(args.job), args.output, wait=args.wait)
    return EXIT_OK


def _write_results(handle: SyncJobHandle, output: str | None, *, wait: float | None) -> None:
    """Copy the results stream to ``output`` (atomically) or standard output, chunk by chunk."""
    with handle.open_results(wait) as results:
        if output is None:
            lines = _copy(results.iter_bytes(), sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            lines = _copy_atomically(results.iter_bytes(), Path(output))
        if not results.complete:
            print(f"llmspool: job {handle.id} is {results.job_status or 'not finished'}: "
                  f"these are the {lines} results so far", file=sys.stderr)
        elif output is not None:
            print(f"llmspool: wrote {lines} results to {output}", file=sys.stderr)


def _copy(chunks: Iterator[bytes], sink: IO[bytes]) -> int:
    """Write every chunk; the number of lines written."""
    lines = 0
    for chunk in chunks:
        sink.write(chunk)
        lines += chunk.count(b"\n")
    return lines


def _copy_atomically(chunks: Iterator[bytes], target: Path) -> int:
    """Write to a temporary file beside ``target``, then rename it over ``target``: a reader
    sees the old file or the whole new one, never half of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part",
                                             dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as sink:
            lines = _copy(chunks, sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return lines


# --- cancel, jobs, status JOB ------------------------------------------------------------------


def _run_cancel(args: argparse.Namespace) -> int:
    with _spool(args) as spool:
        job = spool.job(args.job).cancel()
    if job.get("message"):
        print(job["message"])
    else:
        counts = job.get("counts") or {}
        print(f"job {job.get('id')} {job.get('status')}: "
              f"{counts.get('cancelled', 0)} of {counts.get('total', '?')} requests cancelled")
    return EXIT_OK


def _run_jobs(args: argparse.Namespace) -> int:
    with _spool(args) as spool:
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
    return _guarded(_job_status)(args)


def _job_status(args: argparse.Namespace) -> int:
    with _spool(args) as spool:
        job = spool.job(args.job).status()
    if args.json:
        print_json(job)
        return EXIT_OK
    console().print(job_table(job, time.time()))
    return EXIT_OK


