"""The daemon's batch line formats: what a batch provider reads and writes on disk.

**Input** (the file the submitter writes, one request per line, in request-id order)::

    {"custom_id":"r<request id>","method":"POST","url":"/v1/chat/completions","body":{...}}

The body is the request as the daemon's client sent it (OpenAI's shape: that is the API the
daemon serves). A provider whose Batch API takes such a file (OpenAI) uploads it as it is; any
other reads it with ``read_input_lines`` and translates each ``BatchLine``.

**Results** (what ``BatchProvider.download_results`` writes, one per line answered, any order)::

    {"custom_id":"r<id>","response":{"status_code":200,"body":{...}},"error":null}
    {"custom_id":"r<id>","response":{"status_code":400,"body":{"error":{...}}},"error":null}
    {"custom_id":"r<id>","response":null,"error":{"code":"batch_expired","message":"..."}}

A ``200`` body is the answer in OpenAI's shape (what the client gets, and what the ledger
reads usage from). A line left out of the results is given back to be sent again, as is a
line whose ``error`` is ``batch_expired`` or ``batch_cancelled`` (the first charges the line an
attempt, the second does not). ``ResultWriter`` writes these lines for a plugin that translates.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, NamedTuple, Self

import orjson

from llmspool.core.calls import Endpoint

CANCELLED = "batch_cancelled"
"""The ``error.code`` of a line a cancelled batch did not run (sent again, no attempt charged)."""
EXPIRED = "batch_expired"
"""The ``error.code`` of a line a batch did not run before it expired (sent again)."""
_INPUT_PREFIX = re.compile(rb'\{"custom_id":"(r\d+)","method":"POST","url":"([^"]+)","body":')


class BatchFiles(NamedTuple):
    """Where one batch's files live in the state directory, and the intent they belong to:
    the ``input`` the submitter wrote, and the ``output`` and ``errors`` result files a
    provider writes. A provider may keep files of its own beside them, named
    ``<intent>.<something>``; the poller removes ``<intent>.*`` when the batch is done."""

    intent: str
    input: Path
    output: Path
    errors: Path


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request of a batch: its ``custom_id`` (``r<request id>``), endpoint and JSON body."""

    custom_id: str
    endpoint: Endpoint
    body: bytes

    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed


def read_input_lines(path: Path) -> Iterator[BatchLine]:
    """The lines of an input file the submitter wrote, one at a time (a large file never sits
    in memory whole)."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            match = _INPUT_PREFIX.match(raw)
            stripped = raw.rstrip(b"\r\n")
            if match is None or not stripped.endswith(b"}"):
                raise ValueError(f"{path}: line {number} is not a batch input line")
            yield BatchLine(match.group(1).decode(), Endpoint(match.group(2).decode()),
                            stripped[match.end():-1])


class ResultWriter:
    """Writes result lines to ``path`` whole or not at all: to ``path.part`` until ``commit``,
    which syncs and renames it; leaving the ``with`` without a commit removes the part."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._part = path.with_name(path.name + ".part")
        self._out: BinaryIO | None = None
        self.lines = 0

    def __enter__(self) -> Self:
        self._out = self._part.open("wb")
        return self

    def __exit__(self, kind: type[BaseException] | None, _value: BaseException | None,
                 _tb: TracebackType | None) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
            self._part.unlink(missing_ok=True)

    def _write(self, document: dict[str, Any]) -> None:
        assert self._out is not None, "ResultWriter used outside its `with`"
        self._out.write(orjson.dumps(document) + b"\n")
        self.lines += 1

    def answered(self, custom_id: str, status: int, body: dict[str, Any],
                 line_id: str | None = None) -> None:
        """A line the upstream answered: ``status`` 200 with the answer in OpenAI's shape, or
        an error status with an OpenAI-shaped error body (``{"error": {...}}``)."""
        self._write({"id": line_id or f"batch_req_{custom_id}", "custom_id": custom_id,
                     "response": {"status_code": status, "body": body}, "error": None})

    def raw(self, line: bytes) -> None:
        """A result line written already (by a ``ResultWriter`` before)."""
        assert self._out is not None, "ResultWriter used outside its `with`"
        self._out.write(line if line.endswith(b"\n") else line + b"\n")
        self.lines += 1

    def not_run(self, custom_id: str, code: str, message: str) -> None:
        """A line the batch did not run (``CANCELLED``, ``EXPIRED``, or another code for a
        line that failed without an HTTP answer: it is sent again, charged an attempt)."""
        self._write({"id": f"batch_req_{custom_id}", "custom_id": custom_id, "response": None,
                     "error": {"code": code, "message": message}})

    def commit(self) -> int:
        """Make the file whole at ``path``; returns the lines written."""
        assert self._out is not None, "ResultWriter used outside its `with`"
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        self._out = None
        os.replace(self._part, self._path)
        return self.lines
