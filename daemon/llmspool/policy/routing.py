"""Which provider serves a model.

A request names a model either plainly (``gpt-4o-mini``: the first provider that lists it) or
with a provider prefix (``ollama/llama3.2``). A provider's models are its ``models`` config
list, or else the models the price table prices for it; ``"*"`` in a ``models`` list makes the
provider take any model no other provider claims.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llmspool.core.config.sections import ProviderConfig
from llmspool.core.errors import NotFound
from llmspool.core.pricing import PriceTable

ANY_MODEL = "*"


@dataclass(frozen=True, slots=True)
class ModelRouter:
    owners: Mapping[str, str]  # model -> provider
    fallback: str | None  # the provider that takes unclaimed models, if any
    provider_models: Mapping[str, tuple[str, ...]]

    @classmethod
    def build(cls, providers: Mapping[str, ProviderConfig], prices: PriceTable) -> ModelRouter:
        owners: dict[str, str] = {}
        fallback = None
        provider_models: dict[str, tuple[str, ...]] = {}
        for name, provider in providers.items():
            models = provider.models or tuple(prices.models(name))
            if ANY_MODEL in models and fallback is None:
                fallback = name
            listed = tuple(m for m in models if m != ANY_MODEL)
            provider_models[name] = listed
            for model in listed:
                owners.setdefault(model, name)
        return cls(owners, fallback, provider_models)

    def resolve(self, requested: str) -> tuple[str, str]:
        """(provider, model as the provider names it) for a request's ``model``."""
        prefix, slash, rest = requested.partition("/")
        if slash and prefix in self.provider_models:
            models = self.provider_models[prefix]
            if rest in models or self.fallback == prefix:
                return prefix, rest
            raise self._unknown(requested)
        owner = self.owners.get(requested) or self.fallback
        if owner is None:
            raise self._unknown(requested)
        return owner, requested

    def models(self) -> list[tuple[str, str]]:
        """(model, provider) of every model a request may name."""
        return sorted(self.owners.items())

    def _unknown(self, requested: str) -> NotFound:
        known = ", ".join(sorted(self.owners)[:20]) or "none"
        return NotFound(
            f"The model `{requested}` does not exist or no configured provider serves it "
            f"(known: {known}). Add it to a provider's `models` list in the config, or price "
            "it in pricing.toml.",
            code="model_not_found",
            param="model",
        )
