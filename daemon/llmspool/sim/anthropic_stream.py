"""A Messages API answer (``MessageAnswer``): the ``message`` object, or its server-sent events.

The whole answer is Anthropic's ``Message``: ``content`` is one ``text`` block, or the
``tool_use`` blocks of the calls (ids ``toolu_…``, ``input`` an object; a call cut by
``max_tokens`` keeps what of its input parses, else ``{}``); ``stop_reason`` is ``end_turn``,
``max_tokens``, ``stop_sequence`` (with ``stop_sequence`` set) or ``tool_use``; ``usage`` splits
the prompt into ``input_tokens`` (after the last cache breakpoint),
``cache_creation_input_tokens`` and ``cache_read_input_tokens`` and says the ``service_tier``
served (``standard``, or ``batch`` for a batch line).

Streamed, the events come in Anthropic's order, each as ``event: NAME`` and ``data: JSON``:
``message_start`` (the message with empty ``content``, ``stop_reason`` null, the input usage and
``output_tokens`` 1), then for each content block ``content_block_start`` (a ``ping`` after the
first one), its ``content_block_delta`` events (``text_delta`` or ``input_json_delta`` with
``partial_json``, four characters, one token, each, and each one token interval apart),
``content_block_stop``; then ``message_delta`` (``stop_reason``, ``stop_sequence`` and the final
``usage``) and ``message_stop``. An error after the stream has started is an ``event: error``
(``llmspool.sim.anthropic.AnthropicFlavor.stream_error``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from llmspool.sim.reply import ToolCall
from llmspool.sim.text import TextGenerator

STANDARD = "standard"
"""The service tier a direct call reports (Anthropic's ``usage.service_tier``)."""
BATCH = "batch"


@dataclass(frozen=True, slots=True)
class PromptUsage:
    """How a prompt's tokens split between the cache and fresh input."""

    total: int
    """Every prompt token: ``uncached + cache_creation + cache_read``."""
    uncached: int
    """Tokens after the last cache breakpoint (all of them without breakpoints)."""
    cache_creation: int = 0
    cache_read: int = 0
    one_hour: bool = False
    """Whether the tokens written to the cache were written with the 1 h TTL."""


@dataclass(slots=True)
class MessageAnswer:
    """A validated Messages API request and its answer (a ``llmspool.sim.answer.Answer``)."""

    id: str
    model: str
    stream: bool
    prompt: PromptUsage
    output_tokens: int
    text: str | None
    """The text block's text; ``None`` when the answer calls tools."""
    stop_reason: str
    stop_sequence: str | None = None
    calls: tuple[ToolCall, ...] = ()
    call_ids: tuple[str, ...] = ()
    tier: str = STANDARD
    """The service tier served: ``standard``, or ``batch`` for a batch line."""

    @property
    def input_tokens(self) -> int:
        """Every prompt token, cached or not: what the rate limits, stats and request log count."""
        return self.prompt.total

    @property
    def billed_output_tokens(self) -> int:
        return self.output_tokens

    def usage(self, output_tokens: int) -> dict[str, Any]:
        prompt = self.prompt
        written_1h = prompt.cache_creation if prompt.one_hour else 0
        return {
            "input_tokens": prompt.uncached,
            "cache_creation_input_tokens": prompt.cache_creation,
            "cache_read_input_tokens": prompt.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": prompt.cache_creation - written_1h,
                "ephemeral_1h_input_tokens": written_1h,
            },
            "output_tokens": output_tokens,
            "service_tier": self.tier,
        }

    def content(self) -> list[dict[str, Any]]:
        if self.text is not None:
            return [{"type": "text", "text": self.text}]
        return [
            {"type": "tool_use", "id": call_id, "name": call.name, "input": _input(call)}
            for call, call_id in zip(self.calls, self.call_ids, strict=True)
        ]

    def message(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.content(),
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": self.usage(self.output_tokens),
        }

    def body(self) -> bytes:
        return orjson.dumps(self.message())

    def events(self) -> Iterator[tuple[bytes, bool]]:
        start = {
            **self.message(),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self.usage(1),
        }
        yield event("message_start", {"type": "message_start", "message": start}), False
        blocks: list[tuple[dict[str, Any], str, str]] = []
        if self.text is not None:
            blocks.append(({"type": "text", "text": ""}, "text_delta", self.text))
        else:
            for call, call_id in zip(self.calls, self.call_ids, strict=True):
                block = {"type": "tool_use", "id": call_id, "name": call.name, "input": {}}
                blocks.append((block, "input_json_delta", call.arguments))
        for index, (block, delta_type, text) in enumerate(blocks):
            opening = {"type": "content_block_start", "index": index, "content_block": block}
            yield event("content_block_start", opening), False
            if index == 0:
                yield PING, False
            field = "text" if delta_type == "text_delta" else "partial_json"
            for piece in TextGenerator.pieces(text):
                delta = {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": delta_type, field: piece},
                }
                yield event("content_block_delta", delta), True
            closing = {"type": "content_block_stop", "index": index}
            yield event("content_block_stop", closing), False
        if not blocks:
            yield PING, False
        final = {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
            "usage": self.usage(self.output_tokens),
        }
        yield event("message_delta", final), False
        yield MESSAGE_STOP, False


def event(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event as Anthropic writes it: its name, then its JSON data."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


PING = event("ping", {"type": "ping"})
MESSAGE_STOP = event("message_stop", {"type": "message_stop"})


def _input(call: ToolCall) -> dict[str, Any]:
    """A call's ``input`` object: its arguments, or ``{}`` if they were cut unfinished."""
    try:
        value = orjson.loads(call.arguments)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
