"""The vocabulary of an LLM call that every part shares: endpoints, service tiers, token usage.

Kept apart from ``llmspool.messages`` (what actors send each other) and ``core.pricing`` (what
calls cost) because both of those, and the provider plugins, speak in these terms.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from operator import attrgetter


class PlainStrEnum(enum.StrEnum):
    """A ``StrEnum`` whose ``.value`` is read in C. The ``enum`` module's own ``value`` (Python
    3.11) is two Python calls; the data plane reads a tier's or an endpoint's some 19 times a
    request, which was 2-3% of the event loop's time at c=256."""


# Set after the class is made: in its body, the ``enum`` machinery (and mypy) would take a
# ``value = ...`` for a member. The same value, as the same type; only the lookup differs.
setattr(PlainStrEnum, "value", property(attrgetter("_value_")))  # noqa: B010


class Endpoint(PlainStrEnum):
    """The OpenAI-compatible endpoints the daemon forwards; the value is the URL path.

    Each also carries, as plain attributes (read on every request, so not properties):
    ``operation_name``, ``gen_ai.operation.name`` as OpenTelemetry's GenAI conventions spell
    it, and ``upstream_path``, the path relative to a provider's ``base_url`` (which ends in
    ``/v1``).
    """

    operation_name: str
    upstream_path: str

    CHAT = "/v1/chat/completions"
    RESPONSES = "/v1/responses"
    EMBEDDINGS = "/v1/embeddings"


for _endpoint, _operation_name in ((Endpoint.CHAT, "chat"), (Endpoint.RESPONSES, "responses"),
                                   (Endpoint.EMBEDDINGS, "embeddings")):
    _endpoint.operation_name = _operation_name
    _endpoint.upstream_path = _endpoint.removeprefix("/v1")
del _endpoint, _operation_name


class Tier(PlainStrEnum):
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
