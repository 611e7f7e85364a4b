"""``POST /v1/chat/completions``: from request body to a ``chat.completion`` or its chunk stream.

Shapes follow the spec's ``CreateChatCompletionResponse`` and
``CreateChatCompletionStreamResponse``: one delta per token, a finishing chunk, then (with
``stream_options.include_usage``) a usage chunk with no choices, then ``data: [DONE]``. Every
chunk carries ``usage: null`` except the usage chunk, as OpenAI's do.

With ``tools`` the answer may call functions (``tools`` decides which, ``reply`` makes the
arguments): ``message.content`` is null, ``message.tool_calls`` lists the calls (ids
``call_…``, different in each choice) and ``finish_reason`` is ``tool_calls``. Streamed, each
call starts with a delta giving its ``index``, ``id``, ``type`` and ``function.name`` (the
first one in the role's delta, as OpenAI does), then its arguments come four characters (one
token) per delta. ``response_format`` shapes the text (``structured``). Tool definitions, the
schema and the arguments of earlier calls count as prompt tokens.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from llmspool.core.errors import InvalidRequest
from llmspool.sim import validate
from llmspool.sim.answer import SYSTEM_FINGERPRINT, Makers
from llmspool.sim.reply import ToolCall, make_reply
from llmspool.sim.structured import chat_format, mentions_json
from llmspool.sim.text import PromptMeter, TextGenerator
from llmspool.sim.tools import chat_tools

MAX_CHOICES = 128
_DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class ChatAnswer:
    """A validated chat completion request and the answer it gets."""

    id: str
    created: int
    model: str
    tier: str
    stream: bool
    include_usage: bool
    choices: int
    input_tokens: int
    output_tokens: int
    text: str | None
    """The message's content; ``None`` when it calls tools."""
    finish_reason: str
    calls: tuple[ToolCall, ...] = ()
    call_ids: tuple[tuple[str, ...], ...] = ()
    """The ids of ``calls`` in each choice."""
    echo_tier: bool = True
    """Whether the answer says its ``service_tier`` (OpenAI does; Ollama has no tiers)."""
    fingerprint: str = SYSTEM_FINGERPRINT

    @property
    def billed_output_tokens(self) -> int:
        return self.output_tokens * self.choices

    def usage(self) -> dict[str, Any]:
        completion = self.billed_output_tokens
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": completion,
            "total_tokens": self.input_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _message(self, index: int) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.text,
            "refusal": None,
            "annotations": [],
        }
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call, call_id in zip(self.calls, self.call_ids[index], strict=True)
            ]
        return message

    def body(self) -> bytes:
        completion = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": index,
                    "message": self._message(index),
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
                for index in range(self.choices)
            ],
            "usage": self.usage(),
            "service_tier": self.tier,
            "system_fingerprint": self.fingerprint,
        }
        if not self.echo_tier:
            del completion["service_tier"]
        return orjson.dumps(completion)

    def events(self) -> Iterator[tuple[bytes, bool]]:
        # Chunks differ only in their choices, so the rest of each is encoded once.
        fields: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": self.tier,
            "system_fingerprint": self.fingerprint,
        }
        if not self.echo_tier:
            del fields["service_tier"]
        head = orjson.dumps(fields)
        prefix = b"data: " + head[:-1] + b',"choices":['
        suffix = b'],"usage":null}\n\n'

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
            choice = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            return prefix + orjson.dumps(choice) + suffix

        if self.text is not None:
            yield chunk({"role": "assistant", "content": "", "refusal": None}, None), False
            for piece in TextGenerator.pieces(self.text):
                yield chunk({"content": piece}, None), True
        else:
            delta: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
            for index, (call, call_id) in enumerate(zip(self.calls, self.call_ids[0], strict=True)):
                start = {
                    "index": index,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
                yield chunk({**delta, "tool_calls": [start]}, None), False
                delta = {}
                for piece in TextGenerator.pieces(call.arguments):
                    part = {"index": index, "function": {"arguments": piece}}
                    yield chunk({"tool_calls": [part]}, None), True
        yield chunk({}, self.finish_reason), False
        if self.include_usage:
            usage = orjson.dumps(self.usage())
            yield prefix + b'],"usage":' + usage + b"}\n\n", False
        yield _DONE, False


def parse_chat(payload: dict[str, Any], makers: Makers) -> ChatAnswer:
    """Validate a chat completion request; raise an OpenAI-shaped ``ApiError`` if it is wrong."""
    model = validate.model(payload, makers.catalog, embedding=False)
    messages = payload.get("messages")
    if messages is None:
        raise validate.missing("messages")
    if not isinstance(messages, list) or not messages:
        raise validate.invalid("messages", "'messages' must be a non-empty array of messages.")
    meter = PromptMeter()
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise validate.invalid(
                f"messages[{index}]",
                f"Invalid 'messages[{index}]': expected a message object with a 'role'.",
            )
        meter.add_content(message.get("content"))
        _meter_calls(meter, message.get("tool_calls"))
    tools = chat_tools(payload)
    output = chat_format(payload)
    if output.kind == "json_object" and not any(
        mentions_json(message.get("content")) for message in messages
    ):
        raise InvalidRequest(
            "'messages' must contain the word 'json' in some form, to use 'response_format' of "
            "type 'json_object'.",
            param="messages",
        )
    for definitions in (tools.prompt, output.prompt):
        if definitions:
            meter.add(definitions)
    limit = validate.max_tokens(payload, "max_completion_tokens", "max_tokens")
    stream = validate.flag(payload, "stream")
    options = payload.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise validate.invalid(
                "stream_options",
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            )
        if not isinstance(options, dict):
            raise validate.invalid("stream_options", "'stream_options' must be an object.")
        include_usage = validate.flag(options, "include_usage")
    choices = payload.get("n")
    if choices is None:
        choices = 1
    if isinstance(choices, bool) or not isinstance(choices, int) or not 1 <= choices <= MAX_CHOICES:
        raise validate.invalid("n", f"Invalid 'n': expected an integer from 1 to {MAX_CHOICES}.")
    if choices > 1 and stream:
        raise InvalidRequest(
            "The simulator streams only one choice; use n=1 with stream=true.", param="n"
        )
    tier = validate.served_tier(payload, model, makers.flex_models)
    reply = make_reply(
        key=meter.crc,
        limit=limit,
        default_tokens=makers.default_output_tokens,
        text=makers.text,
        output=output,
        functions=tools.to_call(user_turn=messages[-1].get("role") == "user"),
    )
    finish_reason = "tool_calls" if reply.calls else "stop"
    return ChatAnswer(
        id=makers.ids.make("chatcmpl-"),
        created=int(time.time()),
        model=model,
        tier=tier,
        stream=stream,
        include_usage=include_usage,
        choices=choices,
        input_tokens=meter.tokens,
        output_tokens=reply.tokens,
        text=reply.text,
        finish_reason="length" if reply.cut else finish_reason,
        calls=reply.calls,
        call_ids=_call_ids(makers, len(reply.calls), choices),
    )


def _call_ids(makers: Makers, calls: int, choices: int) -> tuple[tuple[str, ...], ...]:
    """Fresh ``call_…`` ids for ``calls`` calls in each of ``choices`` choices."""
    if not calls:
        return ()
    return tuple(tuple(makers.ids.make("call_") for _ in range(calls)) for _ in range(choices))


def _meter_calls(meter: PromptMeter, calls: Any) -> None:
    """Add the calls of an assistant message (names and arguments) to the prompt."""
    if not isinstance(calls, list):
        return
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            for field in ("name", "arguments"):
                value = function.get(field)
                if isinstance(value, str):
                    meter.add(value)
