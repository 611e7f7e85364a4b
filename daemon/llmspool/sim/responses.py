"""``POST /v1/responses``: from request body to a ``response`` object or its event stream.

Shapes follow the spec's ``Response`` and ``ResponseStreamEvent``. A request with
``max_output_tokens`` stops at that length, and, as with OpenAI, the response is then
``incomplete`` (``incomplete_details.reason = "max_output_tokens"``) and its stream ends with
``response.incomplete`` instead of ``response.completed``.

With function ``tools`` the answer may call them (``tools`` decides which, ``reply`` makes the
arguments): the output is then one ``function_call`` item per call (``id`` ``fc_…``,
``call_id`` ``call_…``, ``name``, ``arguments``), streamed as ``response.output_item.added``,
one ``response.function_call_arguments.delta`` per token, ``…arguments.done`` and
``response.output_item.done``. ``text.format`` shapes the text (``structured``); JSON that the
maximum of output tokens cuts makes an ``incomplete`` response, JSON that fits a complete one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from llmspool.core.errors import InvalidRequest
from llmspool.sim import validate
from llmspool.sim.answer import Makers
from llmspool.sim.reply import ToolCall, make_reply
from llmspool.sim.structured import mentions_json, response_format
from llmspool.sim.text import PromptMeter, TextGenerator
from llmspool.sim.tools import echoed_response_tools, response_tools

_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
_EventMaker = Callable[[str, dict[str, Any]], bytes]


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
    text: str | None
    """The message's text; ``None`` when the output calls tools."""
    max_output_tokens: int | None
    echoed: dict[str, Any]
    cut: bool = False
    """Stopped by ``max_output_tokens``: the response is ``incomplete``."""
    calls: tuple[ToolCall, ...] = ()
    call_ids: tuple[tuple[str, str], ...] = ()
    """The item id (``fc_…``) and ``call_id`` (``call_…``) of each of ``calls``."""
    echo_tier: bool = True
    """Whether the answer says its ``service_tier`` (OpenAI does; Ollama has no tiers)."""

    @property
    def billed_output_tokens(self) -> int:
        return self.output_tokens

    @property
    def incomplete(self) -> bool:
        return self.cut

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

    def _function_call(self, index: int, status: str, arguments: str) -> dict[str, Any]:
        item_id, call_id = self.call_ids[index]
        return {
            "id": item_id,
            "type": "function_call",
            "status": status,
            "arguments": arguments,
            "call_id": call_id,
            "name": self.calls[index].name,
        }

    def _output(self, status: str) -> list[dict[str, Any]]:
        """The output items of the finished response."""
        if self.text is not None:
            return [self._message(status, [self._content_part(self.text)])]
        return [
            self._function_call(index, status, call.arguments)
            for index, call in enumerate(self.calls)
        ]

    def _response(self, *, finished: bool) -> dict[str, Any]:
        status = "in_progress"
        completed_at: int | None = None
        details: dict[str, str] | None = None
        output: list[dict[str, Any]] = []
        usage: dict[str, Any] | None = None
        if finished:
            status = "incomplete" if self.incomplete else "completed"
            output = self._output(status)
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

        started = self._response(finished=False)
        yield event("response.created", {"response": started}), False
        yield event("response.in_progress", {"response": started}), False
        item_status = "incomplete" if self.incomplete else "completed"
        if self.text is None:
            yield from self._call_events(event, item_status)
        else:
            yield from self._text_events(event, self.text, item_status)
        final = self._response(finished=True)
        kind = "response.incomplete" if self.incomplete else "response.completed"
        yield event(kind, {"response": final}), False

    def _text_events(
        self, event: _EventMaker, text: str, item_status: str
    ) -> Iterator[tuple[bytes, bool]]:
        where = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
        yield (
            event(
                "response.output_item.added",
                {"output_index": 0, "item": self._message("in_progress", [])},
            ),
            False,
        )
        yield event("response.content_part.added", {**where, "part": self._content_part("")}), False
        for piece in TextGenerator.pieces(text):
            yield (
                event("response.output_text.delta", {**where, "delta": piece, "logprobs": []}),
                True,
            )
        yield (
            event("response.output_text.done", {**where, "text": text, "logprobs": []}),
            False,
        )
        part = self._content_part(text)
        yield event("response.content_part.done", {**where, "part": part}), False
        yield (
            event(
                "response.output_item.done",
                {"output_index": 0, "item": self._message(item_status, [part])},
            ),
            False,
        )

    def _call_events(self, event: _EventMaker, item_status: str) -> Iterator[tuple[bytes, bool]]:
        for index, call in enumerate(self.calls):
            item_id = self.call_ids[index][0]
            where = {"item_id": item_id, "output_index": index}
            added = self._function_call(index, "in_progress", "")
            yield event("response.output_item.added", {"output_index": index, "item": added}), False
            for piece in TextGenerator.pieces(call.arguments):
                yield (
                    event("response.function_call_arguments.delta", {**where, "delta": piece}),
                    True,
                )
            done = {**where, "name": call.name, "arguments": call.arguments}
            yield event("response.function_call_arguments.done", done), False
            item = self._function_call(index, item_status, call.arguments)
            yield event("response.output_item.done", {"output_index": index, "item": item}), False


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
    tools = response_tools(payload)
    output = response_format(payload)
    if output.kind == "json_object" and not _mentions_json(items, instructions):
        raise InvalidRequest(
            "Response input messages must contain the word 'json' in some form to use "
            "'text.format' of type 'json_object'.",
            param="input",
        )
    for definitions in (tools.prompt, output.prompt):
        if definitions:
            meter.add(definitions)
    limit = validate.max_tokens(payload, "max_output_tokens")
    reply = make_reply(
        key=meter.crc,
        limit=limit,
        default_tokens=makers.default_output_tokens,
        text=makers.text,
        output=output,
        functions=tools.to_call(user_turn=_user_turn(items)),
    )
    return ResponseAnswer(
        id=makers.ids.make("resp_"),
        message_id=makers.ids.make("msg_"),
        created=int(time.time()),
        model=model,
        tier=validate.served_tier(payload, model, makers.flex_models),
        stream=validate.flag(payload, "stream"),
        input_tokens=meter.tokens,
        output_tokens=reply.tokens,
        text=reply.text,
        max_output_tokens=limit,
        echoed=_echoed(payload, model),
        cut=reply.cut,
        calls=reply.calls,
        call_ids=tuple((makers.ids.make("fc_"), makers.ids.make("call_")) for _ in reply.calls),
    )


def _user_turn(items: Any) -> bool:
    """Whether the input ends with the user's message (not a tool's output, say)."""
    if isinstance(items, str):
        return True
    last = items[-1]
    return bool(last.get("type", "message") == "message" and last.get("role") == "user")


def _mentions_json(items: Any, instructions: Any) -> bool:
    if mentions_json(instructions) or mentions_json(items):
        return True
    return isinstance(items, list) and any(mentions_json(item.get("content")) for item in items)


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
        "text": {"format": {"type": "text"}, "verbosity": "medium", **given("text", {})},
        "tool_choice": given("tool_choice", "auto"),
        "tools": echoed_response_tools(payload),
        "top_logprobs": given("top_logprobs", 0),
        "top_p": given("top_p", 1.0),
        "truncation": given("truncation", "disabled"),
    }
    # The spec types the deprecated ``user`` as a string only: leave it out rather than null.
    if isinstance(payload.get("user"), str):
        echoed["user"] = payload["user"]
    return echoed
