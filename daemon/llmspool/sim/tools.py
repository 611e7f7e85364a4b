"""Function tools: reading ``tools``, ``tool_choice`` and ``parallel_tool_calls`` in their chat
completions and responses shapes, checking them as OpenAI does, and deciding what to call.

The decision (``ToolUse.to_call``) is the simulated model's, and is deterministic:

- ``tool_choice: "none"`` calls nothing; a named function (``{"type": "function", …}``) calls
  that one, whatever the conversation;
- ``"required"`` calls tools; ``"auto"`` (the default when tools are given) calls them only on
  the user's turn: when the conversation ends with a user message, not with a tool's result
  (which the sim answers in text) or an assistant message;
- the tools called are the function tools offered (or those of an ``allowed_tools`` choice), in
  order: only the first when ``parallel_tool_calls`` is false, else up to
  ``MAX_PARALLEL_CALLS`` of them, one call each.

Function tools are strict by default in responses (not in chat), as with OpenAI: a response
echoes them with ``strict: true`` unless set. Either way the arguments made are an instance of
the schema, with every property in it.

Only function tools are called. Other tools (chat's ``custom`` ones, the hosted tools of
responses: web search, file search…) are checked for what identifies them and then never
called: a ``tool_choice`` that names one is answered in text.

Bad input fails as OpenAI's does (400 ``invalid_request_error`` with ``param`` set): an empty
or too long ``tools``, a tool without a ``name`` or with a bad one, parameters that are not an
object, a strict function whose parameters break the strict rules (``strict_schema``),
``tool_choice`` or ``parallel_tool_calls`` without tools (chat), a ``tool_choice`` naming a tool
not in ``tools``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from llmspool.core.errors import InvalidRequest
from llmspool.sim import validate
from llmspool.sim.strict_schema import strict_problem

MAX_TOOLS = 128
MAX_PARALLEL_CALLS = 4
"""Calls made at once when parallel tool calls are allowed (one per tool offered)."""
MAX_NAME_CHARS = 64
_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
_MODES = ("none", "auto", "required")
_ALLOWED_MODES = ("auto", "required")


@dataclass(frozen=True, slots=True)
class FunctionTool:
    """A function the simulated model may call."""

    name: str
    parameters: dict[str, Any] | None
    """The JSON schema of its arguments (``None``: it takes none)."""
    param: str
    """Where it is in the request (``tools[2].function``), for errors about it."""


@dataclass(frozen=True, slots=True)
class ToolUse:
    """The tools of a request and how they may be used."""

    functions: tuple[FunctionTool, ...] = ()
    mode: str = "none"
    """``none``, ``auto`` or ``required``."""
    forced: str | None = None
    """The function ``tool_choice`` names, if it names one."""
    allowed: frozenset[str] | None = None
    """The functions of an ``allowed_tools`` choice (``None``: all)."""
    parallel: bool = True
    prompt: str = ""
    """The tool definitions as the model reads them (counted as prompt tokens)."""

    def to_call(self, *, user_turn: bool) -> list[FunctionTool]:
        """The functions called, in order (empty: the answer is text)."""
        if self.forced is not None:
            return [tool for tool in self.functions if tool.name == self.forced][:1]
        if self.mode == "none" or (self.mode == "auto" and not user_turn):
            return []
        offered = [t for t in self.functions if self.allowed is None or t.name in self.allowed]
        return offered[: MAX_PARALLEL_CALLS if self.parallel else 1]


NO_TOOLS = ToolUse()


def chat_tools(payload: dict[str, Any]) -> ToolUse:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` of a chat completion request."""
    tools = payload.get("tools")
    choice = payload.get("tool_choice")
    if tools is None:
        for param in ("tool_choice", "parallel_tool_calls"):
            if payload.get(param) is not None:
                raise InvalidRequest(
                    f"Invalid value for '{param}': '{param}' is only allowed when 'tools' are "
                    "specified.",
                    param=param,
                )
        return NO_TOOLS
    entries = _tool_list(tools, allow_empty=False)
    functions: list[FunctionTool] = []
    others: set[str] = set()
    for index, tool in enumerate(entries):
        at = f"tools[{index}]"
        kind = _tool_type(tool, at, ("function", "custom"))
        spec = tool.get(kind)
        if spec is None:
            raise validate.missing(f"{at}.{kind}")
        if not isinstance(spec, dict):
            raise validate.wrong_type(f"{at}.{kind}", "an object", spec)
        if kind == "function":
            functions.append(_function(spec, f"{at}.function"))
        else:
            others.add(check_name(spec, f"{at}.custom"))
    mode, forced, allowed = _chat_choice(choice, {tool.name for tool in functions}, others)
    return ToolUse(
        functions=tuple(functions),
        mode=mode,
        forced=forced,
        allowed=allowed,
        parallel=_parallel(payload),
        prompt=orjson.dumps(tools).decode(),
    )


def response_tools(payload: dict[str, Any]) -> ToolUse:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` of a responses request."""
    tools = payload.get("tools")
    entries = [] if tools is None else _tool_list(tools, allow_empty=True)
    functions: list[FunctionTool] = []
    types: set[str] = set()
    others: set[str] = set()
    for index, tool in enumerate(entries):
        at = f"tools[{index}]"
        kind = _tool_type(tool, at, None)
        types.add(kind)
        if kind == "function":
            functions.append(_function(tool, at))
        elif kind == "custom":
            others.add(check_name(tool, at))
    names = {tool.name for tool in functions}
    mode, forced, allowed = _response_choice(payload.get("tool_choice"), names, others, types)
    if not entries and mode == "auto":
        mode = "none"
    return ToolUse(
        functions=tuple(functions),
        mode=mode,
        forced=forced,
        allowed=allowed,
        parallel=_parallel(payload),
        prompt=orjson.dumps(tools).decode() if entries else "",
    )


def echoed_response_tools(payload: dict[str, Any]) -> list[Any]:
    """The ``tools`` a response repeats: function tools with OpenAI's defaults filled in
    (``strict`` true unless set, as responses make function tools strict by default)."""
    tools = payload.get("tools")
    if not isinstance(tools, list):
        return []
    echoed: list[Any] = []
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "function":
            strict = tool.get("strict")
            echoed.append(
                {
                    **tool,
                    "description": tool.get("description"),
                    "parameters": tool.get("parameters"),
                    "strict": True if strict is None else strict,
                }
            )
        else:
            echoed.append(tool)
    return echoed


def _tool_list(tools: Any, *, allow_empty: bool) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise validate.wrong_type("tools", "an array", tools)
    if not tools and not allow_empty:
        raise InvalidRequest(
            "Invalid 'tools': empty array. Expected an array with minimum length 1, but got an "
            "empty array instead.",
            param="tools",
            code="empty_array",
        )
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(
            f"Invalid 'tools': array too long. Expected an array with maximum length "
            f"{MAX_TOOLS}, but got an array with length {len(tools)} instead.",
            param="tools",
            code="array_above_max_length",
        )
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise validate.wrong_type(f"tools[{index}]", "an object", tool)
    return tools


def _tool_type(tool: dict[str, Any], at: str, supported: tuple[str, ...] | None) -> str:
    kind = tool.get("type")
    if kind is None:
        raise validate.missing(f"{at}.type")
    if not isinstance(kind, str):
        raise validate.wrong_type(f"{at}.type", "a string", kind)
    if supported is not None and kind not in supported:
        raise validate.invalid(
            f"{at}.type",
            f"Invalid value: '{kind}'. Supported values are: {_listed(supported)}.",
        )
    return kind


def check_name(spec: dict[str, Any], at: str) -> str:
    """The ``name`` of the object at ``at`` (a function, a schema): present, at most 64 of
    ``a-z A-Z 0-9 _ -``."""
    name = spec.get("name")
    param = f"{at}.name"
    if name is None:
        raise validate.missing(param)
    if not isinstance(name, str):
        raise validate.wrong_type(param, "a string", name)
    if len(name) > MAX_NAME_CHARS:
        raise InvalidRequest(
            f"Invalid '{param}': string too long. Expected a string with maximum length "
            f"{MAX_NAME_CHARS}, but got a string with length {len(name)} instead.",
            param=param,
            code="string_above_max_length",
        )
    if not _NAME.match(name):
        raise validate.invalid(
            param,
            f"Invalid '{param}': string does not match pattern. Expected a string that matches "
            f"the pattern '{_NAME.pattern}'.",
        )
    return name


def _function(spec: dict[str, Any], at: str) -> FunctionTool:
    """A function tool's definition (chat's ``function`` object, or a responses tool)."""
    name = check_name(spec, at)
    parameters = spec.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise validate.wrong_type(f"{at}.parameters", "an object", parameters)
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise validate.wrong_type(f"{at}.strict", "a boolean", strict)
    # An unset ``strict`` in responses means OpenAI makes the schema strict itself, which
    # refuses nothing: only an explicit ``strict: true`` holds the schema to the rules.
    if strict and parameters is not None:
        problem = strict_problem(parameters)
        if problem is not None:
            raise InvalidRequest(
                f"Invalid schema for function '{name}': {problem}",
                param=f"{at}.parameters",
                code="invalid_function_parameters",
            )
    return FunctionTool(name=name, parameters=parameters, param=at)


def _parallel(payload: dict[str, Any]) -> bool:
    value = payload.get("parallel_tool_calls")
    if value is None:
        return True
    return validate.flag(payload, "parallel_tool_calls")


def _chat_choice(
    choice: Any, functions: set[str], others: set[str]
) -> tuple[str, str | None, frozenset[str] | None]:
    """Mode, forced function and allowed functions of a chat ``tool_choice``."""
    if choice is None:
        return "auto", None, None
    if isinstance(choice, str):
        return _mode(choice, "tool_choice"), None, None
    if not isinstance(choice, dict):
        raise validate.wrong_type("tool_choice", "a string or an object", choice)
    kind = _tool_type(choice, "tool_choice", ("function", "allowed_tools", "custom"))
    if kind == "allowed_tools":
        spec = choice.get("allowed_tools")
        if not isinstance(spec, dict):
            raise validate.missing("tool_choice.allowed_tools")
        return _allowed(spec, "tool_choice.allowed_tools", functions, others, nested=True)
    spec = choice.get(kind)
    if not isinstance(spec, dict):
        raise validate.missing(f"tool_choice.{kind}")
    name = spec.get("name")
    if not isinstance(name, str):
        raise validate.missing(f"tool_choice.{kind}.name")
    if name not in (functions if kind == "function" else others):
        raise InvalidRequest(
            f"Invalid value for 'tool_choice': {kind} '{name}' not found in 'tools'.",
            param="tool_choice",
        )
    return ("required", name, None) if kind == "function" else ("none", None, None)


def _response_choice(
    choice: Any, functions: set[str], others: set[str], types: set[str]
) -> tuple[str, str | None, frozenset[str] | None]:
    """Mode, forced function and allowed functions of a responses ``tool_choice``."""
    if choice is None:
        return "auto", None, None
    if isinstance(choice, str):
        mode = _mode(choice, "tool_choice")
        if mode == "required" and not types:
            raise InvalidRequest(
                "Tool choice 'required' must be specified with 'tools' parameter.",
                param="tool_choice",
            )
        return mode, None, None
    if not isinstance(choice, dict):
        raise validate.wrong_type("tool_choice", "a string or an object", choice)
    kind = _tool_type(choice, "tool_choice", None)
    if kind == "allowed_tools":
        return _allowed(choice, "tool_choice", functions, others, nested=False)
    if kind in ("function", "custom"):
        name = choice.get("name")
        if not isinstance(name, str):
            raise validate.missing("tool_choice.name")
        if name not in (functions if kind == "function" else others):
            raise _choice_not_found(name)
        return ("required", name, None) if kind == "function" else ("none", None, None)
    if kind not in types:
        raise _choice_not_found(kind)
    return "none", None, None  # a hosted tool, which the simulator does not run


def _allowed(
    spec: dict[str, Any], at: str, functions: set[str], others: set[str], *, nested: bool
) -> tuple[str, str | None, frozenset[str] | None]:
    """An ``allowed_tools`` choice: its mode and the functions it allows."""
    mode = spec.get("mode")
    if mode is None:
        raise validate.missing(f"{at}.mode")
    if mode not in _ALLOWED_MODES:
        raise validate.invalid(
            f"{at}.mode",
            f"Invalid value: '{mode}'. Supported values are: {_listed(_ALLOWED_MODES)}.",
        )
    listed = spec.get("tools")
    if listed is None:
        raise validate.missing(f"{at}.tools")
    if not isinstance(listed, list):
        raise validate.wrong_type(f"{at}.tools", "an array", listed)
    allowed: set[str] = set()
    for index, entry in enumerate(listed):
        where = f"{at}.tools[{index}]"
        if not isinstance(entry, dict):
            raise validate.wrong_type(where, "an object", entry)
        kind = entry.get("type")
        inner = entry.get(kind) if nested and isinstance(kind, str) else entry
        name = inner.get("name") if isinstance(inner, dict) else None
        if kind not in ("function", "custom") or not isinstance(name, str):
            continue  # a hosted tool: nothing the simulator calls
        if name not in (functions if kind == "function" else others):
            raise InvalidRequest(
                f"Invalid value for '{where}': tool '{name}' not found in 'tools'.", param=where
            )
        if kind == "function":
            allowed.add(name)
    return mode, None, frozenset(allowed)


def _mode(choice: str, param: str) -> str:
    if choice not in _MODES:
        raise validate.invalid(
            param, f"Invalid value: '{choice}'. Supported values are: {_listed(_MODES)}."
        )
    return choice


def _choice_not_found(name: str) -> InvalidRequest:
    return InvalidRequest(
        f"Tool choice '{name}' not found in 'tools' parameter.", param="tool_choice"
    )


def _listed(values: tuple[str, ...]) -> str:
    quoted = [f"'{value}'" for value in values]
    return ", ".join(quoted[:-1]) + f" and {quoted[-1]}" if len(quoted) > 1 else quoted[0]
