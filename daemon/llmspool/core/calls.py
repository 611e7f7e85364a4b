"""The vocabulary of an LLM call that every part shares: endpoints, service tiers, token usage.

Kept apart from ``llmspool.messages`` (what actors send each other) and ``core.pricing`` (what
calls cost) because both of those, and the provider plugins, speak in these terms.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Endpoint(enum.StrEnum):
    """The OpenAI-compatible endpoints the daemon forwards; the value is the URL path."""

    CHAT = "/v1/chat/completions"
    RESPONSES = "/v1/responses"
    EMBEDDINGS = "/v1/embeddings"

    @property
    def operation_name(self) -> str:
        """``gen_ai.operation.name`` as OpenTelemetry's GenAI conventions spell it."""
        return _OPERATION_NAMES[self]

    @property
    def upstream_path(self) -> str:
        """The path relative to a provider's ``base_url`` (which ends in ``/v1``)."""
        return self.value.removeprefix("/v1")


_OPERATION_NAMES = {
    Endpoint.CHAT: "chat",
    Endpoint.RESPONSES: "responses",
    Endpoint.EMBEDDINGS: "embeddings",
}


class Tier(enum.StrEnum):
    """How a call is served, and so what it costs."""

    STANDARD = "standard"
    FLEX = "flex"
    BATCH = "batch"
    PRIORITY = "priority"
    # No upstream call: answered from the response cache, or shared with an identical call
    # in flight (the ledger's saving source says which).
    CACHE = "cache"

    @classmethod
    def from_service_tier(cls, service_tier: object) -> Tier | None:
        """The tier a response's ``service_tier`` says it was served on (None: unknown)."""
        return _SERVICE_TIERS.get(service_tier) if isinstance(service_tier, str) else None


# How answers (and clients' requests) name the tiers, in OpenAI's API the daemon serves (a
# plugin writes the tier into its own API's request: llmspool_openai.tiers for OpenAI). OpenAI
# answers "default" for standard processing, and "auto" is what a request says when it lets
# OpenAI choose; "scale" is billed as standard for our purposes; "fast" is served as priority.
_SERVICE_TIERS: dict[object, Tier] = {
    "default": Tier.STANDARD,
    "auto": Tier.STANDARD,
    "standard": Tier.STANDARD,
    "scale": Tier.STANDARD,
    "flex": Tier.FLEX,
    "priority": Tier.PRIORITY,
    "fast": Tier.PRIORITY,
    "batch": Tier.BATCH,
}


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one call used.

    ``input_tokens`` is all the input; ``cached_input_tokens`` (read from the provider's prompt
    cache) and ``cache_write_tokens`` (written to it) are parts of it. ``output_tokens``
    includes ``reasoning_tokens``, as they are billed. ``cache_write_tokens`` comes last so
    that positional constructions written before it keep their meaning.
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens
