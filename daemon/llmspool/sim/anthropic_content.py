"""``system`` and ``messages`` of a Messages API body, checked as Anthropic checks them and
measured into the prompt in its order (``check_system``, ``check_messages``).

A message has a ``role`` (``user`` or ``assistant``) and non-empty ``content`` (only the last,
an assistant's, may be empty): a string or a list of blocks of the known types, each allowed
only in the turns it may be in (``tool_result`` in the user's, ``tool_use`` and thinking in the
assistant's). Every ``tool_use`` must be answered by a ``tool_result`` in the next message, and
every ``tool_result`` must answer one of the message before. Image and document sources are
checked for their shape only.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmspool.sim.anthropic_cache import PromptWalk
from llmspool.sim.anthropic_errors import expect_object, expect_text, invalid

_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_ROLES = ("user", "assistant")
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


def check_system(system: Any, walk: PromptWalk) -> None:
    """Check and measure ``system``: a string or a list of non-empty text blocks."""
    if system is None:
        return
    if isinstance(system, str):
        walk.add(system)
        return
    if not isinstance(system, list):
        raise invalid("system", "Input should be a valid string or a list of text blocks")
    for index, entry in enumerate(system):
        where = f"system.{index}"
        block = expect_object(entry, where)
        if block.get("type") != "text":
            raise invalid(f"{where}.type", "Input should be 'text'")
        text = expect_text(block.get("text"), f"{where}.text")
        if not text:
            raise invalid(f"{where}.text", "text content blocks must be non-empty")
        walk.add(text)
        walk.mark(block.get("cache_control"), where)


def check_messages(payload: dict[str, Any], walk: PromptWalk) -> bool:
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
        message = expect_object(entry, where)
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
        block = expect_object(entry, at)
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
    tool_id = expect_text(block.get("id"), f"{at}.tool_use.id")
    name = expect_text(block.get("name"), f"{at}.tool_use.name")
    arguments = block.get("input")
    if arguments is None:
        raise invalid(f"{at}.tool_use.input", "Field required")
    arguments = expect_object(arguments, f"{at}.tool_use.input")
    walk.add(name)
    walk.add(orjson.dumps(arguments).decode())
    return tool_id


def _tool_result(block: dict[str, Any], at: str, walk: PromptWalk) -> str:
    tool_id = expect_text(block.get("tool_use_id"), f"{at}.tool_result.tool_use_id")
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
        inner = expect_object(entry, where)
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
        text = expect_text(block.get("text"), f"{at}.text.text")
        if not text:
            raise invalid(f"{at}.text.text", "text content blocks must be non-empty")
        walk.add(text)
    elif kind in ("image", "document"):
        _source(block.get("source"), kind, f"{at}.{kind}.source")
    elif kind == "thinking":
        walk.add(expect_text(block.get("thinking"), f"{at}.thinking.thinking"))
        expect_text(block.get("signature"), f"{at}.thinking.signature")
    elif kind == "redacted_thinking":
        expect_text(block.get("data"), f"{at}.redacted_thinking.data")


def _source(source: Any, kind: str, where: str) -> None:
    if source is None:
        raise invalid(where, "Field required")
    source = expect_object(source, where)
    source_type = source.get("type")
    if source_type == "base64":
        media_type = source.get("media_type")
        if kind == "image" and media_type not in _IMAGE_TYPES:
            raise invalid(
                f"{where}.base64.media_type",
                "Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'",
            )
        expect_text(source.get("data"), f"{where}.base64.data")
    elif source_type == "url":
        expect_text(source.get("url"), f"{where}.url.url")
    elif source_type == "file":
        expect_text(source.get("file_id"), f"{where}.file.file_id")
    elif not (kind == "document" and source_type in ("text", "content")):
        expected = "'base64', 'url' or 'file'"
        raise invalid(f"{where}.type", f"Input tag {source_type!r} does not match {expected}")
