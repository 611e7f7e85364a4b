"""Anthropic's streamed Messages events -> OpenAI ``chat.completion.chunk`` server-sent events.

``ChunkTranslator.feed`` takes the upstream's raw bytes in chunks of any size (an event may be
cut anywhere, even inside a UTF-8 character or between ``\\r`` and ``\\n``) and returns the
OpenAI events those bytes completed; ``flush`` returns what the end of the stream completes.
Only the unfinished last line is kept between calls, so each byte is scanned once.

Anthropic's event flow and what each becomes:

- ``message_start`` -> the first chunk, ``delta: {"role": "assistant", "content": ""}``;
- ``content_block_start``/``_delta`` of a ``text`` block -> ``delta.content``;
- of a ``tool_use`` block -> ``delta.tool_calls[{index, id, type, function: {name}}]`` at the
  start, then each ``input_json_delta`` fragment as ``function.arguments``; tool call indexes
  count tool calls (0, 1, ...), not Anthropic's content block indexes;
- ``thinking`` blocks, ``ping`` and event types this module does not know -> nothing;
- ``message_delta`` -> notes ``stop_reason`` and the usage (its counts are cumulative);
- ``message_stop`` -> a chunk with the ``finish_reason``; then, if the request asked for
  ``stream_options.include_usage``, a chunk with ``choices: []`` and the usage (as
  ``answers.openai_usage`` counts it); then ``data: [DONE]``;
- ``error`` -> ``data: {"error": {...}}`` in OpenAI's error shape, and the stream ends.

A stream that ends before ``message_stop`` ends with an error event saying so, not with
``[DONE]``, so that no client takes a cut answer for a whole one.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from llmspool_anthropic.answers import (
    finish_reason,
    openai_error,
    openai_usage,
    service_tier,
)

__all__ = ["ChunkTranslator"]

_DONE = b"data: [DONE]\n\n"
# Anthropic's error types and the HTTP status each would have had outside a stream, so that
# an in-stream error is described as ``openai_error`` describes the same error as an answer.
_STATUS_OF_ERROR = {"overloaded_error": 529, "api_error": 500, "rate_limit_error": 429,
                    "invalid_request_error": 400, "timeout_error": 504}


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class ChunkTranslator:
    """Translates one Anthropic stream; ``include_usage`` as the request's ``stream_options``
    asked, ``created`` the chunks' timestamp (now if None)."""

    __slots__ = ("_created", "_data", "_event_name", "_finished", "_id", "_include_usage",
                 "_model", "_partial", "_stop_reason", "_tier", "_tool_index", "_tools",
                 "_usage")

    def __init__(self, *, include_usage: bool, created: int | None = None) -> None:
        self._include_usage = include_usage
        self._created = int(time.time()) if created is None else created
        self._partial = b""  # the last, unfinished line
        self._event_name = b""
        self._data: list[bytes] = []
        self._id: str | None = None
        self._model: str | None = None
        self._tier = "default"
        self._usage: dict[str, Any] = {}
        self._stop_reason: Any = None
        self._tools = 0  # tool calls started so far: the next one's OpenAI index
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool index
        self._finished = False

    @property
    def finished(self) -> bool:
        """Whether the stream has ended (``message_stop`` or an error event seen)."""
        return self._finished

    def feed(self, data: bytes) -> bytes:
        """The OpenAI events completed by ``data``, possibly none."""
        if self._finished:
            return b""
        buffer = self._partial + data if self._partial else data
        end = buffer.rfind(b"\n")
        if end < 0:
            self._partial = buffer
            return b""
        self._partial = buffer[end + 1:]
        out: list[bytes] = []
        for line in buffer[:end].split(b"\n"):
            self._line(line, out)
        return b"".join(out)

    def flush(self) -> bytes:
        """What the end of the upstream stream completes: the last event if the stream did not
        end with a blank line, or an error event if it ended before ``message_stop``."""
        out: list[bytes] = []
        if self._partial:
            rest, self._partial = self._partial, b""
            self._line(rest, out)
        self._line(b"", out)
        if not self._finished:
            self._finished = True
            out.append(_event({"error": {
                "message": "Anthropic's stream ended before message_stop; the answer is "
                           "incomplete",
                "type": "bad_upstream_answer", "param": None, "code": "stream_incomplete"}}))
        return b"".join(out)

    # -- SSE framing ----------------------------------------------------------------------

    def _line(self, line: bytes, out: list[bytes]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if self._data:
                data = b"\n".join(self._data)
                name = self._event_name
                self._data = []
                self._event_name = b""
                if not self._finished:
                    self._dispatch(name, data, out)
            self._event_name = b""
            return
        if line.startswith(b"data:"):
            self._data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            self._event_name = line[6:].strip()
        # comments (":...") and other fields (id:, retry:) carry nothing we use

    # -- events ---------------------------------------------------------------------------

    def _dispatch(self, name: bytes, data: bytes, out: list[bytes]) -> None:
        try:
            event: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            return  # not an event we can read; Anthropic sends only JSON
        if not isinstance(event, dict):
            return
        kind = event.get("type") or name.decode("ascii", "replace")
        if kind == "content_block_delta":
            self._delta(event, out)
        elif kind == "content_block_start":
            self._block_start(event, out)
        elif kind == "message_start":
            self._message_start(event, out)
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason") is not None:
                self._stop_reason = delta["stop_reason"]
            self._note_usage(event.get("usage"))
        elif kind == "message_stop":
            self._message_stop(out)
        elif kind == "error":
            self._error(event, out)
        # ping, content_block_stop and new event types: nothing to say

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _event({
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "service_tier": self._tier,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}],
        })

    def _message_start(self, event: dict[str, Any], out: list[bytes]) -> None:
        message = event.get("message")
        if not isinstance(message, dict):
            message = {}
        self._id = message.get("id") if isinstance(message.get("id"), str) else self._id
        self._model = message.get("model") if isinstance(message.get("model"), str) \
            else self._model
        self._tier = service_tier(message.get("usage"))
        self._note_usage(message.get("usage"))
        out.append(self._chunk({"role": "assistant", "content": ""}))

    def _note_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            # message_delta's counts are cumulative, and a null means "not reported here".
            self._usage.update((key, value) for key, value in usage.items() if value is not None)

    def _block_start(self, event: dict[str, Any], out: list[bytes]) -> None:
        block = event.get("content_block")
        index = event.get("index")
        if not isinstance(block, dict):
            return
        if block.get("type") == "text":
            text = block.get("text")
            if isinstance(text, str) and text:
                out.append(self._chunk({"content": text}))
        elif block.get("type") == "tool_use" and isinstance(index, int):
            tool = self._tools
            self._tools += 1
            self._tool_index[index] = tool
            started = block.get("input")
            # The input arrives as input_json_delta fragments after an empty object; one
            # given whole at the start (none of Anthropic's do today) is sent as it is.
            arguments = orjson.dumps(started).decode() if started else ""
            out.append(self._chunk({"tool_calls": [{
                "index": tool, "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": arguments}}]}))

    def _delta(self, event: dict[str, Any], out: list[bytes]) -> None:
        delta = event.get("delta")
        if not isinstance(delta, dict):
            return
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if isinstance(text, str) and text:
                out.append(self._chunk({"content": text}))
        elif kind == "input_json_delta":
            fragment = delta.get("partial_json")
            index = event.get("index")
            tool = self._tool_index.get(index) if isinstance(index, int) else None
            if tool is not None and isinstance(fragment, str) and fragment:
                out.append(self._chunk({"tool_calls": [{
                    "index": tool, "function": {"arguments": fragment}}]}))
        # thinking_delta, signature_delta, citations_delta: no chat completion field

    def _message_stop(self, out: list[bytes]) -> None:
        self._finished = True
        out.append(self._chunk({}, finish_reason(self._stop_reason)))
        if self._include_usage:
            out.append(_event({
                "id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self._model, "service_tier": self._tier, "choices": [],
                "usage": openai_usage(self._usage),
            }))
        out.append(_DONE)

    def _error(self, event: dict[str, Any], out: list[bytes]) -> None:
        self._finished = True
        error = event.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        status = _STATUS_OF_ERROR.get(kind, 500) if isinstance(kind, str) else 500
        _, body = openai_error(status, event)
        out.append(_event(body))
