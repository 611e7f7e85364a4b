"""``POST /v1/responses``: from request body to a ``response`` object or its event stream.

Shapes follow the spec's ``Response`` and ``ResponseStreamEvent``. A request with
``max_output_tokens`` stops at that length, and, as with OpenAI, the response is then
``incomplete`` (``incomplete_details.reason = "max_output_tokens"``) and its stream ends with
``response.incomplete`` instead of ``response.completed``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from llmspool.sim import validate
from llmspool.sim.answer import Makers
from llmspool.sim.text import PromptMeter, TextGenerator

_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


@dataclass(slots=True)
class ResponseAnswer:
    """A validated responses request and the answer it gets."""

    id: str
    message_id: str
    created: int
    model: str
    tier: str
    stream: bool
    input_tokens: int
    output_tokens: int
    text: str
    max_output_tokens: int | None
    echoed: dict[str, Any]
    echo_tier: bool = True
    """Whether the answer says its ``service_tier`` (OpenAI does; Ollama has no tiers)."""

    @property
    def billed_output_tokens(self) -> int:
        return self.output_tokens

    @property
    def incomplete(self) -> bool:
        return self.max_output_tokens is not None

    def usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + self.output_tokens,
        }

    def _content_part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def _message(self, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def _response(self, *, finished: bool) -> dict[str, Any]:
        status = "in_progress"
        completed_at: int | None = None
        details: dict[str, str] | None = None
        output: list[dict[str, Any]] = []
        usage: dict[str, Any] | None = None
        if finished:
            status = "incomplete" if self.incomplete else "completed"
            output = [self._message(status, [self._content_part(self.text)])]
            usage = self.usage()
            if self.incomplete:
                details = {"reason": "max_output_tokens"}
            else:
                completed_at = int(time.time())
        response: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "completed_at": completed_at,
            "error": None,
            "incomplete_details": details,
            "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": None,
            "model": self.model,
            "output": output,
            "service_tier": self.tier,
            **self.echoed,
        }
        if not self.echo_tier:
            del response["service_tier"]
        # The spec has no null usage: an unfinished response leaves it out.
        if usage is not None:
            response["usage"] = usage
        return response

    def body(self) -> bytes:
        return orjson.dumps(self._response(finished=True))

    def events(self) -> Iterator[tuple[bytes, bool]]:
        sequence = 0

        def event(kind: str, fields: dict[str, Any]) -> bytes:
            nonlocal sequence
            data = orjson.dumps({"type": kind, "sequence_number": sequence, **fields})
            sequence += 1
            return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

        where = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
        started = self._response(finished=False)
        yield event("response.created", {"response": started}), False
        yield event("response.in_progress", {"response": started}), False
        yield (
            event(
                "response.output_item.added",
                {"output_index": 0, "item": self._message("in_progress", [])},
            ),
            False,
        )
        yield event("response.content_part.added", {**where, "part": self._content_part("")}), False
        for piece in TextGenerator.pieces(self.text):
            yield (
                event("response.output_text.delta", {**where, "delta": piece, "logprobs": []}),
                True,
            )
        yield (
            event("response.output_text.done", {**where, "text": self.text, "logprobs": []}),
            False,
        )
        part = self._content_part(self.text)
        yield event("response.content_part.done", {**where, "part": part}), False
        item_status = "incomplete" if self.incomplete else "completed"
        yield (
            event(
                "response.output_item.done",
                {"output_index": 0, "item": self._message(item_status, [part])},
            ),
            False,
        )
        final = self._response(finished=True)
        kind = "response.incomplete" if self.incomplete else "response.completed"
        yield event(kind, {"response": final}), False


def parse_response_request(payload: dict[str, Any], makers: Makers) -> ResponseAnswer:
    """Validate a responses request; raise an OpenAI-shaped ``ApiError`` if it is wrong."""
    model = validate.model(payload, makers.catalog, embedding=False)
    items = payload.get("input")
    if items is None:
        raise validate.missing("input")
    meter = PromptMeter()
    if isinstance(items, str):
        meter.add(items)
    elif isinstance(items, list) and items:
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise validate.invalid(
                    f"input[{index}]", f"Invalid 'input[{index}]': expected an input item object."
                )
            meter.add_content(item.get("content"))
            for field in ("output", "arguments"):
                value = item.get(field)
                if isinstance(value, str):
                    meter.add(value)
    else:
        raise validate.invalid("input", "'input' must be a string or a non-empty array of items.")
    instructions = payload.get("instructions")
    if instructions is not None:
        meter.add_content(instructions)
    limit = validate.max_tokens(payload, "max_output_tokens")
    tokens = limit if limit is not None else makers.default_output_tokens
    return ResponseAnswer(
        id=makers.ids.make("resp_"),
        message_id=makers.ids.make("msg_"),
        created=int(time.time()),
        model=model,
        tier=validate.served_tier(payload, model, makers.flex_models),
        stream=validate.flag(payload, "stream"),
        input_tokens=meter.tokens,
        output_tokens=tokens,
        text=makers.text.text(meter.crc, tokens),
        max_output_tokens=limit,
        echoed=_echoed(payload, model),
    )


def _echoed(payload: dict[str, Any], model: str) -> dict[str, Any]:
    """The request settings a response object repeats, with OpenAI's defaults where unset."""

    def given(name: str, default: Any) -> Any:
        value = payload.get(name)
        return default if value is None else value

    reasoning_default = {
        "effort": "medium" if model.startswith(_REASONING_PREFIXES) else None,
        "summary": None,
    }
    echoed: dict[str, Any] = {
        "instructions": payload.get("instructions"),
        "metadata": given("metadata", {}),
        "parallel_tool_calls": given("parallel_tool_calls", True),
        "previous_response_id": payload.get("previous_response_id"),
        "prompt_cache_key": payload.get("prompt_cache_key"),
        "reasoning": given("reasoning", reasoning_default),
        "safety_identifier": payload.get("safety_identifier"),
        "store": given("store", True),
        "temperature": given("temperature", 1.0),
        "text": given("text", {"format": {"type": "text"}, "verbosity": "medium"}),
        "tool_choice": given("tool_choice", "auto"),
        "tools": given("tools", []),
        "top_logprobs": given("top_logprobs", 0),
        "top_p": given("top_p", 1.0),
        "truncation": given("truncation", "disabled"),
    }
    # The spec types the deprecated ``user`` as a string only: leave it out rather than null.
    if isinstance(payload.get("user"), str):
        echoed["user"] = payload["user"]
    return echoed
