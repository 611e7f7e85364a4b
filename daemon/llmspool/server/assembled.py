"""The assistant message of a streamed chat completion, put together from its deltas.

A stream's events each carry a piece of ``choices[0].delta``: the role once, the content in
pieces, tool calls by ``index`` (the id, type and name once, the arguments in pieces). Fed the
bytes as they are relayed (an event may be split between chunks), ``StreamedMessage`` ends
with the message a whole answer would have held, and the answer's id.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["StreamedMessage"]


class StreamedMessage:
    """Collects ``choices[0]`` of a chat completion stream's events."""

    def __init__(self) -> None:
        self._pending = b""
        self.response_id: str | None = None
        self._role = "assistant"
        self._content: list[str] = []
        self._refusal: list[str] = []
        self._tool_calls: dict[int, dict[str, Any]] = {}

    def feed(self, data: bytes) -> None:
        """Take the next relayed bytes; complete ``data:`` lines are read at once."""
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            self._line(line.strip())

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]":
            return
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        if self.response_id is None and isinstance(event.get("id"), str):
            self.response_id = event["id"]
        choices = event.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    self._delta(delta)

    def _delta(self, delta: dict[str, Any]) -> None:
        if isinstance(delta.get("role"), str):
            self._role = delta["role"]
        if isinstance(delta.get("content"), str):
            self._content.append(delta["content"])
        if isinstance(delta.get("refusal"), str):
            self._refusal.append(delta["refusal"])
        for piece in delta.get("tool_calls") or ():
            if not isinstance(piece, dict):
                continue
            call = self._tool_calls.setdefault(
                int(piece.get("index", 0)),
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
            if isinstance(piece.get("id"), str):
                call["id"] = piece["id"]
            if isinstance(piece.get("type"), str):
                call["type"] = piece["type"]
            function = piece.get("function")
            if isinstance(function, dict):
                if isinstance(function.get("name"), str):
                    call["function"]["name"] += function["name"]
                if isinstance(function.get("arguments"), str):
                    call["function"]["arguments"] += function["arguments"]

    def message(self) -> dict[str, Any] | None:
        """The assistant message, or None when the stream carried none."""
        if self._pending:
            self._line(self._pending.strip())
            self._pending = b""
        message: dict[str, Any] = {"role": self._role,
                                   "content": "".join(self._content) if self._content else None}
        if self._refusal:
            message["refusal"] = "".join(self._refusal)
        if self._tool_calls:
            message["tool_calls"] = [self._tool_calls[i] for i in sorted(self._tool_calls)]
        if message["content"] is None and len(message) == 2:
            return None
        return message
