"""What the simulated model says, for chat completions and responses alike: text, or calls of
function tools, and how many output tokens that is.

- Tool calls (``ToolUse.to_call`` picked some): each call's arguments are an instance of the
  function's ``parameters`` schema (``schema_instance``), keyed by the prompt and the
  function's name; a function without parameters gets ``{}``. A call costs the tokens of its
  arguments.
- Otherwise the text: in a JSON format (``structured``) the JSON text, else the sim's usual
  text of the default length, or of exactly the requested maximum (which then cuts it, as
  before tools existed).

A maximum of output tokens smaller than the JSON or the arguments cuts them there, as OpenAI
does: the answer is then ``cut`` (``finish_reason: "length"``, an ``incomplete`` response) and
its JSON is unfinished. Tokens are four characters (``text.CHARS_PER_TOKEN``), so streaming the
text or arguments four characters at a time sends exactly ``tokens`` pieces.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from llmspool.core.errors import InvalidRequest
from llmspool.sim.schema_instance import SchemaProblem, instance_json
from llmspool.sim.structured import OutputFormat
from llmspool.sim.text import CHARS_PER_TOKEN, TextGenerator, count_tokens
from llmspool.sim.tools import FunctionTool


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call of a function tool (ids are the endpoint's to give)."""

    name: str
    arguments: str
    """JSON text (unfinished if the answer was cut)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """The model's answer: ``text``, or ``calls`` (then ``text`` is ``None``)."""

    text: str | None
    calls: tuple[ToolCall, ...]
    tokens: int
    cut: bool
    """Stopped by the maximum of output tokens."""


def make_reply(
    *,
    key: int,
    limit: int | None,
    default_tokens: int,
    text: TextGenerator,
    output: OutputFormat,
    functions: list[FunctionTool],
) -> Reply:
    """The answer to a prompt keyed ``key`` (its CRC), calling ``functions`` if any."""
    if functions:
        return _cut_calls([_call(tool, key, text) for tool in functions], limit)
    structured = output.content(key, text.text, default_tokens)
    if structured is not None:
        return _cut_text(structured, limit)
    tokens = limit if limit is not None else default_tokens
    return Reply(text.text(key, tokens), (), tokens, cut=limit is not None)


def _call(tool: FunctionTool, key: int, text: TextGenerator) -> ToolCall:
    if tool.parameters is None:
        return ToolCall(tool.name, "{}")
    seed = zlib.crc32(tool.name.encode(), key)
    try:
        arguments = instance_json(tool.parameters, seed, text.text)
    except SchemaProblem as problem:
        raise InvalidRequest(
            f"Invalid schema for function '{tool.name}': {problem}",
            param=f"{tool.param}.parameters",
            code="invalid_function_parameters",
        ) from None
    return ToolCall(tool.name, arguments)


def _cut_text(content: str, limit: int | None) -> Reply:
    tokens = count_tokens(content)
    if limit is None or tokens <= limit:
        return Reply(content, (), tokens, cut=False)
    return Reply(content[: limit * CHARS_PER_TOKEN], (), limit, cut=True)


def _cut_calls(calls: list[ToolCall], limit: int | None) -> Reply:
    kept: list[ToolCall] = []
    spent = 0
    for call in calls:
        tokens = count_tokens(call.arguments)
        left = None if limit is None else limit - spent
        if left is not None and tokens > left:
            if left > 0:
                kept.append(ToolCall(call.name, call.arguments[: left * CHARS_PER_TOKEN]))
                spent += left
            return Reply(None, tuple(kept), spent, cut=True)
        kept.append(call)
        spent += tokens
    return Reply(None, tuple(kept), spent, cut=False)
