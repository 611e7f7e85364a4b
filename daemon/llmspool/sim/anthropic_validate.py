"""A Messages API body checked as Anthropic checks it, and measured (``MessagesRequest``).

Every problem is a 400 ``invalid_request_error`` worded ``"<where>: <problem>"`` as Anthropic
words it (``anthropic_errors.invalid``), or a 404 for a model not served: the top-level keys,
``model``, ``max_tokens`` (at most the model's output limit, ``MAX_OUTPUT_BY_MODEL``),
``stream``, ``tools`` and ``tool_choice`` (``anthropic_tools``), ``system``, ``messages`` and
their blocks (``anthropic_content``), ``output_config``/``output_format``, ``stop_sequences``
and the sampling parameters. As it checks, it measures the prompt in Anthropic's order
(``anthropic_cache.PromptWalk``).
"""

from __future__ import annotations

from typing import Any

from llmspool.sim.answer import Makers
from llmspool.sim.anthropic_cache import PromptWalk
from llmspool.sim.anthropic_content import check_messages, check_system
from llmspool.sim.anthropic_errors import AnthropicError, expect_object, invalid
from llmspool.sim.anthropic_tools import check_tools
from llmspool.sim.catalog import ModelCatalog
from llmspool.sim.config import MAX_OUTPUT_TOKENS
from llmspool.sim.structured import TEXT, OutputFormat

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
_THINKING_TYPES = ("enabled", "disabled", "adaptive")
_SERVICE_TIERS = ("auto", "standard_only")
_MIN_THINKING_BUDGET = 1024


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
        self.tools = check_tools(payload, self.walk)
        check_system(payload.get("system"), self.walk)
        self.user_turn = check_messages(payload, self.walk)
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


def _output_format(payload: dict[str, Any]) -> OutputFormat:
    spec: Any = None
    where = "output_format"
    config = payload.get("output_config")
    if config is not None:
        config = expect_object(config, "output_config")
        spec = config.get("format")
        where = "output_config.format"
    if spec is None:
        spec = payload.get("output_format")
        where = "output_format"
    if spec is None:
        return TEXT
    spec = expect_object(spec, where)
    if spec.get("type") != "json_schema":
        raise invalid(f"{where}.type", "Input should be 'json_schema'")
    schema = expect_object(spec.get("schema"), f"{where}.schema")
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
        user_id = expect_object(metadata, "metadata").get("user_id")
        if user_id is not None and not isinstance(user_id, str):
            raise invalid("metadata.user_id", "Input should be a valid string")
    tier = payload.get("service_tier")
    if tier is not None and tier not in _SERVICE_TIERS:
        raise invalid("service_tier", "Input should be 'auto' or 'standard_only'")
    thinking = payload.get("thinking")
    if thinking is None:
        return
    thinking = expect_object(thinking, "thinking")
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
