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

What they show (tables, bars, summaries, exit statuses) is ``cli/job_views.py``; running them is
``cli/job_runs.py``. This module only builds their parsers, and imports nothing heavy at import
time: ``cli/main.py`` imports it to build the parser, and ``llmspool --help`` should stay fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from llmspool.cli.job_client import guarded
from llmspool.cli.job_runs import run_cancel, run_jobs, run_results, run_submit, run_wait


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
    submit.set_defaults(run=guarded(run_submit))


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
    wait.set_defaults(run=guarded(run_wait))


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
    results.set_defaults(run=guarded(run_results))


def _add_cancel(commands: Any) -> None:
    cancel = commands.add_parser(
        "cancel",
        help="cancel a job's requests that have not run yet",
        description="Cancel job JOB: requests not yet sent will not be; those in flight finish "
        "and are paid for. Cancelling a finished job changes nothing and says so.",
    )
    cancel.add_argument("job", metavar="JOB", help="the job id (job_...)")
    _add_connection_options(cancel)
    cancel.set_defaults(run=guarded(run_cancel))


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
    jobs.set_defaults(run=guarded(run_jobs))


def _tag(pair: str) -> tuple[str, str]:
    """One ``--tag KEY=VALUE``; argparse turns the error into a usage message (exit 2)."""
    key, sep, value = pair.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"a tag is KEY=VALUE, got {pair!r}")
    return key, value
