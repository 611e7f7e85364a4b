"""``POST /v1/chat/completions``: from request body to a ``chat.completion`` or its chunk stream.

Shapes follow the spec's ``CreateChatCompletionResponse`` and
``CreateChatCompletionStreamResponse``: one delta per token, a finishing chunk, then (with
``stream_options.include_usage``) a usage chunk with no choices, then ``data: [DONE]``. Every
chunk carries ``usage: null`` except the usage chunk, as OpenAI's do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from llmspool.errors import InvalidRequest
from llmspool.sim import validate
from llmspool.sim.answer import SYSTEM_FINGERPRINT, Makers
from llmspool.sim.text import PromptMeter, TextGenerator

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
    text: str
    finish_reason: str
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

    def body(self) -> bytes:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.text,
            "refusal": None,
            "annotations": [],
        }
        completion = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": index,
                    "message": message,
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

        yield chunk({"role": "assistant", "content": "", "refusal": None}, None), False
        for piece in TextGenerator.pieces(self.text):
            yield chunk({"content": piece}, None), True
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
    tokens = limit if limit is not None else makers.default_output_tokens
    return ChatAnswer(
        id=makers.ids.make("chatcmpl-"),
        created=int(time.time()),
        model=model,
        tier=tier,
        stream=stream,
        include_usage=include_usage,
        choices=choices,
        input_tokens=meter.tokens,
        output_tokens=tokens,
        text=makers.text.text(meter.crc, tokens),
        finish_reason="length" if limit is not None else "stop",
    )
