"""``tools`` and ``tool_choice`` of a Messages API body, checked as Anthropic checks them and
measured into the prompt (``check_tools``).

Custom tools (no ``type``, or ``custom``) need a name matching ``^[a-zA-Z0-9_-]{1,128}$`` and an
``input_schema`` of type ``object``; other (server) tools are only named, since the simulator
runs none. Names are unique. ``tool_choice`` gives the mode (``auto``, ``required``, ``none``),
the tool forced, if any, and whether parallel calls are allowed (``tools.ToolUse``).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from llmspool.sim.anthropic_cache import PromptWalk
from llmspool.sim.anthropic_errors import expect_object, expect_text, invalid
from llmspool.sim.tools import FunctionTool, ToolUse

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_CHOICE_TYPES = ("auto", "any", "tool", "none")


def check_tools(payload: dict[str, Any], walk: PromptWalk) -> ToolUse:
    """Check ``tools`` and ``tool_choice``, adding each tool to the prompt; what may be called."""
    tools = payload.get("tools")
    choice = payload.get("tool_choice")
    entries: list[Any] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("tools", "Input should be a valid list")
        entries = tools
    functions: list[FunctionTool] = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"tools.{index}"
        tool = expect_object(entry, where)
        kind = tool.get("type")
        name = expect_text(tool.get("name"), f"{where}.name")
        if kind in (None, "custom"):
            if not _TOOL_NAME.match(name):
                raise invalid(
                    f"{where}.custom.name", f"String should match pattern '{_TOOL_NAME.pattern}'"
                )
            description = tool.get("description")
            if description is not None and not isinstance(description, str):
                raise invalid(f"{where}.custom.description", "Input should be a valid string")
            schema = tool.get("input_schema")
            if schema is None:
                raise invalid(f"{where}.custom.input_schema", "Field required")
            schema = expect_object(schema, f"{where}.custom.input_schema")
            if schema.get("type") != "object":
                raise invalid(f"{where}.custom.input_schema.type", "Input should be 'object'")
            functions.append(FunctionTool(name=name, parameters=schema, param=where))
        elif not isinstance(kind, str):
            raise invalid(f"{where}.type", "Input should be a valid string")
        if name in names:
            raise invalid("tools", "Tool names must be unique.")
        names.add(name)
        walk.add(orjson.dumps({k: v for k, v in tool.items() if k != "cache_control"}).decode())
        walk.mark(tool.get("cache_control"), where)
    mode, forced, parallel = _tool_choice(choice, names, {tool.name for tool in functions})
    return ToolUse(functions=tuple(functions), mode=mode, forced=forced, parallel=parallel)


def _tool_choice(choice: Any, names: set[str], functions: set[str]) -> tuple[str, str | None, bool]:
    """Mode, forced tool and whether parallel calls are allowed, from ``tool_choice``."""
    if choice is None:
        return ("auto" if names else "none"), None, True
    choice = expect_object(choice, "tool_choice")
    kind = choice.get("type")
    if kind not in _CHOICE_TYPES:
        raise invalid("tool_choice.type", "Input should be 'auto', 'any', 'tool' or 'none'")
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise invalid(
            f"tool_choice.{kind}.disable_parallel_tool_use", "Input should be a valid boolean"
        )
    parallel = not disable
    if kind in ("any", "tool") and not names:
        raise invalid("tool_choice", f"tool_choice.type '{kind}' may only be used with 'tools'")
    if kind == "tool":
        name = expect_text(choice.get("name"), "tool_choice.tool.name")
        if name not in names:
            raise invalid("tool_choice", f"Tool '{name}' not found in 'tools'")
        # A server tool named: the simulator runs none, so the answer is text.
        return ("required", name, parallel) if name in functions else ("none", None, parallel)
    mode = {"auto": "auto", "any": "required", "none": "none"}[kind]
    return mode, None, parallel
