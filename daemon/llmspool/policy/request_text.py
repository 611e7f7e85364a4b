"""The text a request sends, gathered from its body for the token estimate (``estimate``).

Chat ``messages`` (string content or parts), ``tools``/``functions`` and a ``response_format``
schema as compact JSON; responses ``instructions``, ``input``, ``tools`` and a ``text.format``
schema; embeddings ``input``. Tokens not derived from characters are counted apart
(``RequestText.fixed_tokens``): the per-message overhead of OpenAI's cookbook, a fixed allowance
per image, and embeddings token arrays. Base64 payloads are never counted as text. It never
raises, whatever shape a body has: it counts what it can.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import orjson

from llmspool.core.calls import Endpoint

# OpenAI cookbook ("How to count tokens with tiktoken") for chat models.
TOKENS_PER_MESSAGE: Final = 3


TOKENS_PER_ROLE: Final = 1


TOKENS_PER_NAME: Final = 1


REPLY_PRIMING_TOKENS: Final = 3


IMAGE_TOKENS_HIGH: Final = 765


IMAGE_TOKENS_LOW: Final = 85


# Keys whose values are never text the model reads as characters: structure, status, or
# base64 payloads (images, files, encrypted reasoning) that would wildly overcount.
_SKIPPED_KEYS: Final = frozenset(
    {"type", "status", "detail", "data", "file_data", "image_url", "encrypted_content"}
)


_TEXT_PART_TYPES: Final = frozenset({"text", "input_text", "output_text"})


_IMAGE_PART_TYPES: Final = frozenset({"image_url", "input_image", "image"})


_UNCOUNTED_PART_TYPES: Final = frozenset({"input_audio", "file", "input_file"})


_DATA_URL_MIN_CHARS: Final = 256


class RequestText:
    """What a request sends: text pieces to count, and tokens known without counting."""

    __slots__ = ("exact_tokens", "fixed_tokens", "pieces")

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.fixed_tokens = 0
        self.exact_tokens = 0


def collect_text(endpoint: object, body: object) -> RequestText:
    text = RequestText()
    if not isinstance(body, Mapping):
        return text
    if endpoint == Endpoint.CHAT:
        _collect_chat(body, text)
    elif endpoint == Endpoint.RESPONSES:
        _collect_responses(body, text)
    elif endpoint == Endpoint.EMBEDDINGS:
        _collect_embeddings(body, text)
    else:  # not an endpoint we know: every string may be read, so count them all
        _walk_strings(body, text.pieces)
    return text


def _collect_chat(body: Mapping[object, object], text: RequestText) -> None:
    messages = body.get("messages")
    if isinstance(messages, list):
        text.fixed_tokens += REPLY_PRIMING_TOKENS
        for message in messages:
            _collect_message(message, text)
    elif messages is not None:
        _walk_strings(messages, text.pieces)
    for key in ("tools", "functions"):
        definitions = body.get(key)
        if definitions:
            _append_json(definitions, text.pieces)
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        schema = response_format.get("json_schema")
        if schema is not None:
            _append_json(schema, text.pieces)


def _collect_responses(body: Mapping[object, object], text: RequestText) -> None:
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        # Sent as a system/developer message.
        text.fixed_tokens += TOKENS_PER_MESSAGE + TOKENS_PER_ROLE
        text.pieces.append(instructions)
    items = body.get("input")
    if isinstance(items, str):
        text.fixed_tokens += REPLY_PRIMING_TOKENS + TOKENS_PER_MESSAGE + TOKENS_PER_ROLE
        text.pieces.append(items)
    elif isinstance(items, list):
        text.fixed_tokens += REPLY_PRIMING_TOKENS
        for item in items:
            _collect_message(item, text)
    elif items is not None:
        _walk_strings(items, text.pieces)
    tools = body.get("tools")
    if tools:
        _append_json(tools, text.pieces)
    options = body.get("text")
    if isinstance(options, dict):
        text_format = options.get("format")
        if isinstance(text_format, dict) and text_format.get("schema") is not None:
            _append_json(text_format.get("schema"), text.pieces)
    prompt = body.get("prompt")
    if isinstance(prompt, dict):  # a stored prompt: its text is unknown, its variables are not
        _walk_strings(prompt.get("variables"), text.pieces)


def _collect_message(message: object, text: RequestText) -> None:
    """One chat message or responses input item (a message, a function call or its output…)."""
    text.fixed_tokens += TOKENS_PER_MESSAGE
    if not isinstance(message, dict):
        _walk_strings(message, text.pieces)
        return
    for key, value in message.items():
        if key == "content":
            _collect_content(value, text)
        elif key == "role":
            text.fixed_tokens += TOKENS_PER_ROLE
        elif key == "name":
            text.fixed_tokens += TOKENS_PER_NAME
            _walk_strings(value, text.pieces)
        elif key not in _SKIPPED_KEYS and key != "id":
            # tool_calls, tool_call_id, refusal, function call arguments, outputs, summaries…
            _walk_strings(value, text.pieces)


def _collect_content(content: object, text: RequestText) -> None:
    if isinstance(content, str):
        text.pieces.append(content)
        return
    if not isinstance(content, list):
        _walk_strings(content, text.pieces)
        return
    for part in content:
        if not isinstance(part, dict):
            _walk_strings(part, text.pieces)
            continue
        kind = part.get("type")
        if kind in _TEXT_PART_TYPES:
            _walk_strings(part.get("text"), text.pieces)
        elif kind in _IMAGE_PART_TYPES:
            text.fixed_tokens += _image_tokens(part)
        elif kind not in _UNCOUNTED_PART_TYPES:
            _walk_strings(part, text.pieces)


def _image_tokens(part: dict[object, object]) -> int:
    detail = part.get("detail")
    image = part.get("image_url")
    if isinstance(image, dict):
        detail = image.get("detail", detail)
    return IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS_HIGH


def _collect_embeddings(body: Mapping[object, object], text: RequestText) -> None:
    value = body.get("input")
    if isinstance(value, str):
        text.pieces.append(value)
    elif isinstance(value, list):
        if value and is_token(value[0]):
            # One token array. Its length is the count; checking each of possibly millions of
            # elements would cost more than the estimate is worth.
            text.exact_tokens += len(value)
            return
        for element in value:
            if isinstance(element, str):
                text.pieces.append(element)
            elif isinstance(element, list):
                if not element or is_token(element[0]):
                    text.exact_tokens += len(element)
                else:
                    _walk_strings(element, text.pieces)
            elif is_token(element):
                text.exact_tokens += 1
    elif value is not None:
        _walk_strings(value, text.pieces)


def _append_json(value: object, pieces: list[str]) -> None:
    """Append ``value`` as compact JSON: tool and schema definitions are sent as structure."""
    try:
        pieces.append(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode())
    except orjson.JSONEncodeError:
        # Not serialisable (too deep, a huge integer, a lone surrogate): count its names and
        # strings instead, which is most of what a definition's tokens are.
        _walk_strings(value, pieces, with_keys=True)


def _walk_strings(node: object, pieces: list[str], *, with_keys: bool = False) -> None:
    """Append every string under ``node``; iterative, so any depth is safe."""
    stack = [node]
    pop = stack.pop
    while stack:
        item = pop()
        if isinstance(item, str):
            if len(item) < _DATA_URL_MIN_CHARS or not item.startswith("data:"):
                pieces.append(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                if with_keys:
                    if isinstance(key, str):
                        pieces.append(key)
                elif key in _SKIPPED_KEYS:
                    continue
                stack.append(value)
        elif isinstance(item, list | tuple):
            stack.extend(item)


def is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
