"""``llmspool feedback``: score an answer the daemon relayed::

    llmspool feedback RESPONSE_ID --score 0.8 [--label good] [--comment TEXT]
    llmspool feedback --job JOB --line CUSTOM_ID --score 0.8 [...]

It sends ``POST /v1/feedback`` and prints one line saying what was scored. The scores appear
beside spend in ``llmspool costs --by operation,model``. Failures are one line on standard
error and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from llmspool.cli.arguments import from_0_to_1
from llmspool.core import unix_http
from llmspool.core.errors import StartupError

EXIT_OK = 0
EXIT_FAILED = 1

DESCRIPTION = """\
Record how good an answer was, as a score from 0 (useless) to 1 (perfect), with an optional
label and comment. Name the answer by its response id (the "id" of the chat completion or
response the daemon relayed, e.g. chatcmpl-...) or by a job line (--job and --line, the line's
custom_id). You may score your own answers; the daemon's admins may score anyone's. Scoring an
answer again replaces its score.

`llmspool costs --by operation,model` then shows, beside what each group cost, how many of its
answers were scored, their mean score and the share that scored at least --good (0.5).
"""

SCORE = from_0_to_1("a score")


def add_feedback_command(commands: Any) -> None:
    """Add ``feedback`` to the ``llmspool`` subcommands."""
    feedback = commands.add_parser(
        "feedback",
        help="score an answer (0 to 1), to see quality beside cost in `llmspool costs`",
        description=DESCRIPTION,
        epilog="examples:\n"
        "  llmspool feedback chatcmpl-abc123 --score 0.9 --label good\n"
        "  llmspool feedback --job job_42 --line q17 --score 0 --comment 'wrong date'\n\n"
        "exit status: 0 recorded; 1 the daemon cannot be reached or refused it (an unknown "
        "answer, or another user's); 2 bad arguments.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    feedback.add_argument("response_id", nargs="?", metavar="RESPONSE_ID",
                          help="the answer's id (a chat completion's or response's \"id\")")
    feedback.add_argument("--job", metavar="JOB", help="the job of the answer (with --line)")
    feedback.add_argument("--line", metavar="CUSTOM_ID", help="the job line's custom_id")
    feedback.add_argument("--score", type=SCORE, required=True, metavar="SCORE",
                          help="how good the answer was, from 0 to 1")
    feedback.add_argument("--label", help="a short label (at most 100 characters), e.g. good")
    feedback.add_argument("--comment", help="a comment (at most 4000 characters)")
    feedback.add_argument("--socket", metavar="PATH", help="socket path (default: "
                          "$LLMSPOOL_SOCKET, else the config's [daemon] socket)")
    feedback.add_argument("--config", metavar="PATH", help="config file to find the socket in")
    feedback.set_defaults(run=run_feedback)



def _check(args: argparse.Namespace) -> str | None:
    """Why the arguments name no answer, or None."""
    if args.response_id and (args.job or args.line):
        return "give either RESPONSE_ID or --job and --line, not both"
    if not args.response_id and not (args.job and args.line):
        return "name the answer: RESPONSE_ID, or --job JOB --line CUSTOM_ID"
    return None


def run_feedback(args: argparse.Namespace) -> int:
    """Send the score; the exit status."""
    import orjson

    from llmspool.core.locate import socket_path

    problem = _check(args)
    if problem is not None:
        print(f"llmspool feedback: {problem}", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"score": args.score}
    if args.response_id:
        body["response_id"] = args.response_id
    else:
        body["job_id"], body["custom_id"] = args.job, args.line
    if args.label is not None:
        body["label"] = args.label
    if args.comment is not None:
        body["comment"] = args.comment
    path = socket_path(args.socket, args.config)
    try:
        status, raw = unix_http.request(path, "POST", "/v1/feedback", orjson.dumps(body))
    except StartupError as exc:
        print(f"llmspool: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        answer = None
    if status != 200 or not isinstance(answer, dict):
        message = answer.get("error", {}).get("message") if isinstance(answer, dict) else None
        print(f"llmspool: {message or f'the daemon answered {status}'}", file=sys.stderr)
        return EXIT_FAILED
    named = answer.get("response_id") or f"{answer.get('job_id')} line {answer.get('custom_id')}"
    print(f"scored {named}: {answer['score']:g}"
          + (f" ({answer['label']})" if answer.get("label") else "")
          + f" [{answer.get('operation') or 'no operation'}, {answer.get('model')}]")
    return EXIT_OK
