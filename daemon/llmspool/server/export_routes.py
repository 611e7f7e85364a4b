"""Fine-tuning exports on the socket::

    GET /v1/exports/finetune?operation=NAME[&min_score=0.7][&since=30d]
                            [&validation=0.1&split=train|validation]

streams the captured pairs of ``NAME`` (``[operations.NAME] capture``) as JSONL in OpenAI's
chat fine-tuning format, one ``{"messages": [...], "tools": [...]}`` per line: the request's
messages then the answer's assistant message (tool calls kept). A caller exports only their
own captures; the daemon's admins everyone's. ``min_score`` keeps answers scored at least that
(``POST /v1/feedback``); ``since`` is a duration back from now. With ``validation`` (a share from
0 to 1), each pair goes to the validation split when a hash of its response id falls under
that share, so the same pairs land in the same split on every export; ``split`` says which of
the two to stream (default: both, unsplit).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from llmspool.core.errors import InvalidRequest
from llmspool.core.units import parse_duration
from llmspool.server.access import Access
from llmspool.server.ledger_routes import LedgerTarget
from llmspool.server.routes import ask_status
from llmspool.server.uvicorn_server import caller_of
from llmspool.store.backend import StoreLocation
from llmspool.store.captures import READ_PAGE, read_captures
from llmspool.store.connect import connect
from llmspool.store.connections import Connection
from llmspool.store.records import Viewer

SPLITS = ("all", "train", "validation")
PAGE = READ_PAGE  # lines read from the store at a time
READER_LOCK_WAIT_MS = 5000  # a SQLite reader waits only in rare moments (a WAL reset)


def export_routes(ledger: LedgerTarget, store: StoreLocation, access: Access, *,
                  clock: Callable[[], float] = time.time) -> list[Route]:
    """``GET /v1/exports/finetune``: ``ledger`` is asked first, so that job lines whose
    results it was storing are captured; ``store`` is read, never written."""

    async def finetune(request: Request) -> Response:
        params = request.query_params
        operation = params.get("operation", "").strip()
        if not operation:
            raise InvalidRequest("name the operation to export: ?operation=NAME",
                                 param="operation", code="missing_required_parameter")
        min_score = _fraction(params, "min_score")
        validation = _fraction(params, "validation") or 0.0
        split = params.get("split", "all")
        if split not in SPLITS:
            raise InvalidRequest(f"split must be one of {', '.join(SPLITS)}, got {split!r}",
                                 param="split")
        now = clock()
        since = _since(params, now)
        viewer = access.viewer(caller_of(request.scope))
        await ask_status(ledger)
        lines = _lines(store, operation, viewer, since, min_score, now, validation,
                       split)
        return StreamingResponse(lines, media_type="application/jsonl")

    return [Route("/v1/exports/finetune", finetune, methods=["GET"])]


async def _lines(store: StoreLocation, operation: str, viewer: Viewer, since: float | None,
                 min_score: float | None, now: float, validation: float,
                 split: str) -> AsyncIterator[bytes]:
    """The export's lines, read a page at a time in a worker thread."""
    connection = await anyio.to_thread.run_sync(_open_reader, store)
    try:
        rows = read_captures(connection, operation, viewer, since=since, min_score=min_score,
                             now=now, page=PAGE)
        while True:
            page = await anyio.to_thread.run_sync(_page, rows)
            if not page:
                return
            out = [example_line(messages, tools, answer) for response_id, messages, tools,
                   answer in page if split == "all"
                   or (split == "validation") == in_validation(response_id, validation)]
            if out:
                yield b"".join(out)
    finally:
        connection.close()


def _open_reader(store: StoreLocation) -> Connection:
    return connect(store, lock_wait_ms=READER_LOCK_WAIT_MS, read_only=True)


def _page(rows: Any) -> list[tuple[str, str, str | None, str]]:
    page = []
    for row in rows:
        page.append(row)
        if len(page) == PAGE:
            break
    return page


def example_line(messages: str, tools: str | None, answer: str) -> bytes:
    """One fine-tuning example: the request's messages, then the assistant's answer."""
    message = orjson.loads(answer)
    if message.get("tool_calls") and message.get("content") is None:
        del message["content"]  # a tool-calling turn has no text
    example: dict[str, Any] = {"messages": [*orjson.loads(messages), message]}
    if tools is not None:
        example["tools"] = orjson.loads(tools)
    return orjson.dumps(example) + b"\n"


def in_validation(response_id: str, share: float) -> bool:
    """Whether the pair ``response_id`` is held out: the same answer every time."""
    digest = hashlib.sha256(response_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def _fraction(params: QueryParams, name: str) -> float | None:
    if name not in params:
        return None
    try:
        value = float(params[name])
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise InvalidRequest(f"{name} must be a number from 0 to 1, got {params[name]!r}",
                             param=name)
    return value


def _since(params: QueryParams, now: float) -> float | None:
    text = params.get("since", "all").strip()
    if text.lower() == "all":
        return None
    try:
        return now - parse_duration(text)
    except ValueError:
        raise InvalidRequest(f"since must be a duration back from now like '30d' or 'all', "
                             f"got {text!r}", param="since") from None
