"""What a request says about itself: its text, estimated prompt tokens, tools, images, and a
complexity score — the facts ``[operations.NAME] route`` rules test.

The built-in complexity score is a heuristic, 0 (trivial) to 1 (hard), meant to separate
"classify this", "extract the date" from "analyse, compare and justify": it rises with the
prompt's length (logarithmically), with words that ask for reasoning, with code, with several
questions or numbered steps, and with a long conversation. It is deterministic and costs
microseconds. A plugin's ``llmspool_score_request`` replaces it when it answers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

CHARS_PER_TOKEN = 4  # the routing estimate; exact counts would cost more than routing saves

_REASONING = re.compile(
    r"\b(analy[sz]e|analysis|compare|contrast|evaluate|justify|prove|derive|explain why|"
    r"step[- ]by[- ]step|trade-?offs?|design|architect|optimi[sz]e|debug|refactor|strategy|"
    r"critique|reason|implications?|diagnose|plan)\b", re.IGNORECASE)
_CODE = re.compile(r"```|\bdef |\bclass |\bfunction\b|\bSELECT\b|#include|=>|\{\s*\n", re.MULTILINE)
_STEPS = re.compile(r"^\s*(\d+[.)]|[-*])\s+", re.MULTILINE)


@dataclass(frozen=True)
class RequestFacts:
    """The facts of one request (OpenAI's chat or responses shape), computed when first read."""

    body: Mapping[str, Any]

    @cached_property
    def text(self) -> str:
        """The text of every message (system, user, assistant, tool), joined by newlines."""
        parts: list[str] = []
        messages = self.body.get("messages")
        if isinstance(messages, list):
            for message in messages:
                if isinstance(message, Mapping):
                    _collect_text(message.get("content"), parts)
        _collect_text(self.body.get("input"), parts)
        _collect_text(self.body.get("instructions"), parts)
        return "\n".join(parts)

    @cached_property
    def prompt_tokens(self) -> int:
        return math.ceil(len(self.text) / CHARS_PER_TOKEN)

    @property
    def has_tools(self) -> bool:
        return bool(self.body.get("tools") or self.body.get("functions"))

    @cached_property
    def has_images(self) -> bool:
        return _has_image(self.body.get("messages")) or _has_image(self.body.get("input"))

    @property
    def turns(self) -> int:
        messages = self.body.get("messages")
        return len(messages) if isinstance(messages, list) else 1


def heuristic_score(facts: RequestFacts) -> float:
    """The built-in complexity score of a request, from 0 to 1."""
    text = facts.text
    length = min(1.0, math.log10(1 + facts.prompt_tokens) / 4)  # 10k tokens and up: 1
    reasoning = min(1.0, len(_REASONING.findall(text)) / 3)
    code = 1.0 if _CODE.search(text) else 0.0
    questions = min(1.0, max(0, text.count("?") - 1) / 3)
    steps = min(1.0, len(_STEPS.findall(text)) / 5)
    conversation = min(1.0, max(0, facts.turns - 2) / 10)
    tools = 1.0 if facts.has_tools else 0.0
    score = (0.25 * length + 0.3 * reasoning + 0.15 * code + 0.1 * questions + 0.1 * steps
             + 0.05 * conversation + 0.05 * tools)
    return round(min(1.0, score), 4)


def _collect_text(content: Any, parts: list[str]) -> None:
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, Sequence) and not isinstance(content, bytes):
        for part in content:
            if isinstance(part, Mapping):
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif "content" in part:  # a responses-API input item
                    _collect_text(part.get("content"), parts)
            elif isinstance(part, str):
                parts.append(part)


def _has_image(content: Any) -> bool:
    if isinstance(content, Mapping):
        if content.get("type") in ("image_url", "input_image", "image"):
            return True
        return _has_image(content.get("content"))
    if isinstance(content, Sequence) and not isinstance(content, str | bytes):
        return any(_has_image(item) for item in content)
    return False
