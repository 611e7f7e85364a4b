"""A Messages API body checked as Anthropic checks it, and measured (``MessagesRequest``).

Every problem is a 400 ``invalid_request_error`` worded ``"<where>: <problem>"`` as Anthropic
words it (``anthropic_errors.invalid``), or a 404 for a model not served: the top-level keys,
``model``, ``max_tokens`` (at most the model's output limit, ``MAX_OUTPUT_BY_MODEL``),
``stream``, ``tools`` and ``tool_choice``, ``system``, ``messages`` and their blocks,
``output_config``/``output_format``, ``stop_sequences`` and the sampling parameters. As it
checks, it measures the prompt in Anthropic's order (``anthropic_cache.PromptWalk``).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from llmspool.sim.answer import Makers
from llmspool.sim.anthropic_cache import PromptWalk
from llmspool.sim.anthropic_errors import AnthropicError, invalid
from llmspool.sim.catalog import ModelCatalog
from llmspool.sim.config import MAX_OUTPUT_TOKENS
from llmspool.sim.structured import TEXT, OutputFormat
from llmspool.sim.tools import FunctionTool, ToolUse

__all__ = ["MAX_OUTPUT_BY_MODEL", "MessagesRequest"]

MAX_OUTPUT_BY_MODEL = {
    "claude-haiku-4-5": 64_000,
    "claude-sonnet-4-5": 64_000,
    "claude-opus-4-5": 64_000,
}
"""Output-token limits of the default models (others: the sim's own bound)."""
_TOP_KEYS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "tools",
        "tool_choice",
        "stream",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "thinking",
        "service_tier",
        "output_config",
        "output_format",
        "container",
        "context_management",
        "mcp_servers",
        "inference_geo",
    }
)
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_ROLES = ("user", "assistant")
_CHOICE_TYPES = ("auto", "any", "tool", "none")
_THINKING_TYPES = ("enabled", "disabled", "adaptive")
_SERVICE_TIERS = ("auto", "standard_only")
_MIN_THINKING_BUDGET = 1024
# Block types a request may hold, and the turns they may be in.
_USER_ONLY = frozenset({"tool_result"})
_ASSISTANT_ONLY = frozenset({"tool_use", "thinking", "redacted_thinking", "server_tool_use"})
_KNOWN_BLOCKS = frozenset(
    {
        "text",
        "image",
        "document",
        "search_result",
        "tool_use",
        "tool_result",
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "container_upload",
    }
)


class MessagesRequest:
    """A Messages API body, checked and measured."""

    def __init__(self, payload: dict[str, Any], makers: Makers, *, counting: bool) -> None:
        for key in payload:
            if key not in _TOP_KEYS and not (counting and key == "max_tokens"):
                raise invalid(key, "Extra inputs are not permitted")
        self.model = _model(payload, makers.catalog)
        self.max_tokens = None if counting else _max_tokens(payload, self.model)
        self.stream = False if counting else _flag(payload, "stream")
        self.walk = PromptWalk(self.model)
        self.tools = _tools(payload, self.walk)
        _system(payload.get("system"), self.walk)
        self.user_turn = _messages(payload, self.walk)
        self.output = _output_format(payload)
        if self.output.prompt:
            self.walk.add(self.output.prompt)
        self.stop_sequences = _stop_sequences(payload)
        _sampling(payload, self.max_tokens)


def _model(payload: dict[str, Any], catalog: ModelCatalog) -> str:
    model = payload.get("model")
    if model is None:
        raise invalid("model", "Field required")
    if not isinstance(model, str):
        raise invalid("model", "Input should be a valid string")
    if model not in catalog or catalog.is_embedding(model):
        raise AnthropicError(f"model: {model}", status=404)
    return model


def _max_tokens(payload: dict[str, Any], model: str) -> int:
    value = payload.get("max_tokens")
    if value is None:
        raise invalid("max_tokens", "Field required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid("max_tokens", "Input should be a valid integer")
    if value < 1:
        raise invalid("max_tokens", "Input should be greater than or equal to 1")
    limit = MAX_OUTPUT_BY_MODEL.get(model, MAX_OUTPUT_TOKENS)
    if value > limit:
        raise invalid(
            "max_tokens",
            f"{value} > {limit}, which is the maximum allowed number of output tokens for {model}",
        )
    return value


def _flag(payload: dict[str, Any], name: str) -> bool:
    value = payload.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(name, "Input should be a valid boolean")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(where, "Input should be a valid dictionary")
    return value


def _text(value: Any, where: str) -> str:
    if value is None:
        raise invalid(where, "Field required")
    if not isinstance(value, str):
        raise invalid(where, "Input should be a valid string")
    return value


def _tools(payload: dict[str, Any], walk: PromptWalk) -> ToolUse:
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
        tool = _object(entry, where)
        kind = tool.get("type")
        name = _text(tool.get("name"), f"{where}.name")
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
            schema = _object(schema, f"{where}.custom.input_schema")
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
    choice = _object(choice, "tool_choice")
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
        name = _text(choice.get("name"), "tool_choice.tool.name")
        if name not in names:
            raise invalid("tool_choice", f"Tool '{name}' not found in 'tools'")
        # A server tool named: the simulator runs none, so the answer is text.
        return ("required", name, parallel) if name in functions else ("none", None, parallel)
    mode = {"auto": "auto", "any": "required", "none": "none"}[kind]
    return mode, None, parallel


def _system(system: Any, walk: PromptWalk) -> None:
    if system is None:
        return
    if isinstance(system, str):
        walk.add(system)
        return
    if not isinstance(system, list):
        raise invalid("system", "Input should be a valid string or a list of text blocks")
    for index, entry in enumerate(system):
        where = f"system.{index}"
        block = _object(entry, where)
        if block.get("type") != "text":
            raise invalid(f"{where}.type", "Input should be 'text'")
        text = _text(block.get("text"), f"{where}.text")
        if not text:
            raise invalid(f"{where}.text", "text content blocks must be non-empty")
        walk.add(text)
        walk.mark(block.get("cache_control"), where)


def _messages(payload: dict[str, Any], walk: PromptWalk) -> bool:
    """Check and measure ``messages``; whether the conversation ends on the user's turn (a user
    message that is not tool results)."""
    messages = payload.get("messages")
    if messages is None:
        raise invalid("messages", "Field required")
    if not isinstance(messages, list):
        raise invalid("messages", "Input should be a valid list")
    if not messages:
        raise invalid("messages", "at least one message is required")
    last = len(messages) - 1
    pending: list[str] = []
    """``tool_use`` ids of the assistant turn before, which the next turn must answer."""
    user_turn = False
    for index, entry in enumerate(messages):
        where = f"messages.{index}"
        message = _object(entry, where)
        role = message.get("role")
        if role is None:
            raise invalid(f"{where}.role", "Field required")
        if role not in _ROLES:
            raise invalid(f"{where}.role", "Input should be 'user' or 'assistant'")
        content = message.get("content")
        if content is None:
            raise invalid(f"{where}.content", "Field required")
        empty = (isinstance(content, str) and not content.strip()) or content == []
        if empty and not (index == last and role == "assistant"):
            raise invalid(
                where,
                "all messages must have non-empty content except for the optional final "
                "assistant message",
            )
        uses, results = _content(content, role, where, walk)
        if pending:
            missing = [tool_id for tool_id in pending if tool_id not in results]
            if role != "user" or missing:
                raise invalid(
                    f"messages.{index - 1}",
                    f"`tool_use` ids were found without `tool_result` blocks immediately "
                    f"after: {', '.join(missing or pending)}. Each `tool_use` block must have "
                    "a corresponding `tool_result` block in the next message.",
                )
        unexpected = [tool_id for tool_id in results if tool_id not in pending]
        if unexpected:
            raise invalid(
                f"{where}.content",
                f"unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{', '.join(unexpected)}. Each `tool_result` block must have a corresponding "
                "`tool_use` block in the previous message.",
            )
        pending = uses
        user_turn = role == "user" and not results
    return user_turn


def _content(content: Any, role: str, where: str, walk: PromptWalk) -> tuple[list[str], list[str]]:
    """Check and measure a message's content; the ids of its ``tool_use`` blocks and of the
    ``tool_use`` its ``tool_result`` blocks answer."""
    if isinstance(content, str):
        walk.add(content)
        return [], []
    if not isinstance(content, list):
        raise invalid(f"{where}.content", "Input should be a valid string or a list of blocks")
    uses: list[str] = []
    results: list[str] = []
    for index, entry in enumerate(content):
        at = f"{where}.content.{index}"
        block = _object(entry, at)
        kind = block.get("type")
        if kind not in _KNOWN_BLOCKS:
            raise invalid(
                f"{at}.type",
                f"Input tag {kind!r} found using 'type' does not match any of the expected "
                f"tags: {', '.join(repr(k) for k in sorted(_KNOWN_BLOCKS))}",
            )
        if (kind in _USER_ONLY and role != "user") or (
            kind in _ASSISTANT_ONLY and role != "assistant"
        ):
            raise invalid(at, f"{kind} blocks are not allowed in {role} messages")
        if kind == "tool_use":
            uses.append(_tool_use(block, at, walk))
        elif kind == "tool_result":
            results.append(_tool_result(block, at, walk))
        else:
            _leaf_block(block, kind, at, walk)
        walk.mark(block.get("cache_control"), at)
    return uses, results


def _tool_use(block: dict[str, Any], at: str, walk: PromptWalk) -> str:
    tool_id = _text(block.get("id"), f"{at}.tool_use.id")
    name = _text(block.get("name"), f"{at}.tool_use.name")
    arguments = block.get("input")
    if arguments is None:
        raise invalid(f"{at}.tool_use.input", "Field required")
    arguments = _object(arguments, f"{at}.tool_use.input")
    walk.add(name)
    walk.add(orjson.dumps(arguments).decode())
    return tool_id


def _tool_result(block: dict[str, Any], at: str, walk: PromptWalk) -> str:
    tool_id = _text(block.get("tool_use_id"), f"{at}.tool_result.tool_use_id")
    error = block.get("is_error")
    if error is not None and not isinstance(error, bool):
        raise invalid(f"{at}.tool_result.is_error", "Input should be a valid boolean")
    content = block.get("content")
    if content is None:
        return tool_id
    if isinstance(content, str):
        walk.add(content)
        return tool_id
    if not isinstance(content, list):
        raise invalid(
            f"{at}.tool_result.content", "Input should be a valid string or a list of blocks"
        )
    for index, entry in enumerate(content):
        where = f"{at}.tool_result.content.{index}"
        inner = _object(entry, where)
        kind = inner.get("type")
        if kind not in ("text", "image", "document", "search_result"):
            raise invalid(
                f"{where}.type",
                f"Input tag {kind!r} found using 'type' does not match any of the expected "
                "tags: 'text', 'image', 'document', 'search_result'",
            )
        _leaf_block(inner, kind, where, walk)
    return tool_id


def _leaf_block(block: dict[str, Any], kind: str, at: str, walk: PromptWalk) -> None:
    """Check and measure a block that holds no other: text, image, document, thinking…"""
    if kind == "text":
        text = _text(block.get("text"), f"{at}.text.text")
        if not text:
            raise invalid(f"{at}.text.text", "text content blocks must be non-empty")
        walk.add(text)
    elif kind in ("image", "document"):
        _source(block.get("source"), kind, f"{at}.{kind}.source")
    elif kind == "thinking":
        walk.add(_text(block.get("thinking"), f"{at}.thinking.thinking"))
        _text(block.get("signature"), f"{at}.thinking.signature")
    elif kind == "redacted_thinking":
        _text(block.get("data"), f"{at}.redacted_thinking.data")


def _source(source: Any, kind: str, where: str) -> None:
    if source is None:
        raise invalid(where, "Field required")
    source = _object(source, where)
    source_type = source.get("type")
    if source_type == "base64":
        media_type = source.get("media_type")
        if kind == "image" and media_type not in _IMAGE_TYPES:
            raise invalid(
                f"{where}.base64.media_type",
                "Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'",
            )
        _text(source.get("data"), f"{where}.base64.data")
    elif source_type == "url":
        _text(source.get("url"), f"{where}.url.url")
    elif source_type == "file":
        _text(source.get("file_id"), f"{where}.file.file_id")
    elif not (kind == "document" and source_type in ("text", "content")):
        expected = "'base64', 'url' or 'file'"
        raise invalid(f"{where}.type", f"Input tag {source_type!r} does not match {expected}")


def _output_format(payload: dict[str, Any]) -> OutputFormat:
    spec: Any = None
    where = "output_format"
    config = payload.get("output_config")
    if config is not None:
        config = _object(config, "output_config")
        spec = config.get("format")
        where = "output_config.format"
    if spec is None:
        spec = payload.get("output_format")
        where = "output_format"
    if spec is None:
        return TEXT
    spec = _object(spec, where)
    if spec.get("type") != "json_schema":
        raise invalid(f"{where}.type", "Input should be 'json_schema'")
    schema = _object(spec.get("schema"), f"{where}.schema")
    return OutputFormat(kind="json_schema", name="output", schema=schema, param=f"{where}.schema")


def _stop_sequences(payload: dict[str, Any]) -> tuple[str, ...]:
    value = payload.get("stop_sequences")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise invalid("stop_sequences", "Input should be a valid list")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise invalid(f"stop_sequences.{index}", "Input should be a valid string")
    return tuple(value)


def _sampling(payload: dict[str, Any], max_tokens: int | None) -> None:
    """``temperature``, ``top_p``, ``top_k``, ``metadata``, ``service_tier``, ``thinking``:
    checked, then without effect on the simulated model."""
    for name in ("temperature", "top_p"):
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid(name, "Input should be a valid number")
        if not 0 <= value <= 1:
            raise invalid(name, "Input should be less than or equal to 1 and at least 0")
    top_k = payload.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise invalid("top_k", "Input should be a valid integer of at least 0")
    metadata = payload.get("metadata")
    if metadata is not None:
        user_id = _object(metadata, "metadata").get("user_id")
        if user_id is not None and not isinstance(user_id, str):
            raise invalid("metadata.user_id", "Input should be a valid string")
    tier = payload.get("service_tier")
    if tier is not None and tier not in _SERVICE_TIERS:
        raise invalid("service_tier", "Input should be 'auto' or 'standard_only'")
    thinking = payload.get("thinking")
    if thinking is None:
        return
    thinking = _object(thinking, "thinking")
    kind = thinking.get("type")
    if kind not in _THINKING_TYPES:
        raise invalid("thinking.type", "Input should be 'enabled', 'disabled' or 'adaptive'")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise invalid("thinking.enabled.budget_tokens", "Input should be a valid integer")
        if budget < _MIN_THINKING_BUDGET:
            raise invalid(
                "thinking.enabled.budget_tokens",
                f"Input should be greater than or equal to {_MIN_THINKING_BUDGET}",
            )
        if max_tokens is not None and budget >= max_tokens:
            raise invalid(
                "max_tokens", "`max_tokens` must be greater than `thinking.budget_tokens`"
            )
