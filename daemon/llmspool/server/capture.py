"""Capturing the interactive chat calls of operations with ``[operations.NAME] capture``.

The front door holds both halves of a call: the request it sent and the answer it relays. For
a whole answer it keeps ``choices[0].message``; for a stream, the message put together from
the deltas it relayed (``assembled``), once the stream has ended without an error. Only the
request's messages and tools and the assistant message are kept (``store/captures.py``), with
the caller's uid, for ``capture_retention`` (else ``[jobs] retention``). Job lines are captured
in the store (a trigger), for the operations ``run`` lists there at start; it then sweeps
expired pairs every hour, as the Batch API sweeps its files.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from typing import Any

import anyio
import orjson
import psycopg
from anyio.abc import TaskStatus

from llmspool.core.calls import Endpoint
from llmspool.core.clock import Clock
from llmspool.core.config.sections import OperationConfig
from llmspool.core.errors import StartupError
from llmspool.messages import Call
from llmspool.server.assembled import StreamedMessage
from llmspool.store.captures import (
    CapturedPair,
    delete_expired_captures,
    insert_capture,
    set_capture_operations,
)
from llmspool.store.writer import SideWriter

log = logging.getLogger(__name__)
SWEEP_EVERY = 3600.0

__all__ = ["Capturer", "StreamTap"]


class Capturer:
    """Keeps the pairs of the operations that capture."""

    def __init__(self, operations: Mapping[str, OperationConfig], jobs_retention: float,
                 writer: SideWriter, clock: Clock) -> None:
        self._retention = {
            name: operation.capture_retention if operation.capture_retention is not None
            else jobs_retention
            for name, operation in operations.items() if operation.capture
        }
        self._writer = writer
        self._clock = clock

    def wants(self, call: Call) -> bool:
        return (call.endpoint is Endpoint.CHAT and call.operation is not None
                and call.operation in self._retention)

    async def keep_answer(self, call: Call, answer: Any) -> None:
        """Keep a whole answer's pair (``answer``: its parsed body)."""
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
            return
        choices = answer.get("choices")
        message = choices[0].get("message") if isinstance(choices, list) and choices and \
            isinstance(choices[0], dict) else None
        if isinstance(message, dict):
            await self._keep(call, answer["id"], message)

    def tap(self, call: Call) -> StreamTap:
        return StreamTap(self, call)

    async def _keep(self, call: Call, response_id: str, message: dict[str, Any]) -> None:
        try:
            request = orjson.loads(call.body)
        except orjson.JSONDecodeError:
            return
        messages = request.get("messages") if isinstance(request, dict) else None
        if not isinstance(messages, list) or call.operation is None:
            return
        tools = request.get("tools")
        now = self._clock.now()
        pair = CapturedPair(
            response_id=response_id, uid=call.caller.uid, operation=call.operation,
            provider=call.provider, model=call.model, messages=orjson.dumps(messages).decode(),
            tools=orjson.dumps(tools).decode() if isinstance(tools, list) and tools else None,
            answer=orjson.dumps(_minimal(message)).decode(), created_at=now,
            expires_at=now + self._retention[call.operation])
        try:
            await self._writer.run(insert_capture, pair)
        except (sqlite3.Error, psycopg.Error, StartupError) as exc:
            # The call was answered; a pair not kept is logged, never the caller's failure
            # (StartupError: a PostgreSQL store that cannot be reached just now).
            log.warning("could not capture answer %s of %s: %s", response_id, call.operation,
                        exc)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """List the capturing operations for the job-line trigger, then sweep hourly."""
        await self._writer.run(set_capture_operations, self._retention)
        task_status.started()
        while True:
            deleted = await self._writer.run(delete_expired_captures, self._clock.now())
            if deleted:
                log.info("deleted %d captured answers past their retention", deleted)
            await self._clock.sleep(SWEEP_EVERY)


class StreamTap:
    """A streamed answer on its way: fed what is relayed, kept when it ends well."""

    def __init__(self, capturer: Capturer, call: Call) -> None:
        self._capturer = capturer
        self._call = call
        self._message = StreamedMessage()

    def feed(self, data: bytes) -> None:
        self._message.feed(data)

    async def finish(self) -> None:
        message = self._message.message()
        if message is not None and self._message.response_id is not None:
            await self._capturer._keep(self._call, self._message.response_id, message)


def _minimal(message: dict[str, Any]) -> dict[str, Any]:
    """The parts of an assistant message a fine-tuning example has: role, content, tool
    calls (no annotations, audio or provider extras)."""
    kept: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        kept["tool_calls"] = [
            {"id": call.get("id"), "type": call.get("type", "function"),
             "function": call.get("function")}
            for call in message["tool_calls"] if isinstance(call, dict)]
    if message.get("refusal"):
        kept["refusal"] = message["refusal"]
    return kept
