"""Prices per provider, model and tier, and the cost of a call from its usage.

Money is counted in integer picodollars (1e-12 USD): a price of ``p`` USD per 1M tokens is
``round(p * 1e6)`` picodollars per token, exactly, for any price with up to six decimals. Sums
of integers are exact, so the ledger never drifts by float rounding.

The table is read from ``etc/pricing.toml`` (bundled as the default) or the file
``[pricing] file`` names; a malformed file refuses to load with the key named.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from llmspool.calls import Tier, Usage
from llmspool.errors import ConfigError

PICODOLLARS_PER_USD = 10**12
MAX_PRICE_PER_MILLION = 10_000.0  # above this a price is a typo, not a model
_PRICE_KEYS = ("input", "cached_input", "output")


@dataclass(frozen=True, slots=True)
class TierPrice:
    """One model's prices on one tier, in picodollars per token."""

    input: int
    cached_input: int
    output: int
    estimated: frozenset[str] = frozenset()

    def cost(self, usage: Usage) -> int:
        """Picodollars for ``usage`` at these prices."""
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        return (
            (usage.input_tokens - cached) * self.input
            + cached * self.cached_input
            + usage.output_tokens * self.output
        )


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices by (provider, model, tier)."""

    prices: Mapping[tuple[str, str, Tier], TierPrice]

    def price(self, provider: str, model: str, tier: Tier) -> TierPrice | None:
        return self.prices.get((provider, model, tier))

    def models(self, provider: str) -> list[str]:
        """The models ``provider`` has any price for, in file order."""
        return list(dict.fromkeys(m for (p, m, _t) in self.prices if p == provider))

    def tiers(self, provider: str, model: str) -> list[Tier]:
        return [t for (p, m, t) in self.prices if p == provider and m == model]

    def __iter__(self) -> Iterator[tuple[str, str, Tier]]:
        return iter(self.prices)


def usd(picodollars: int) -> float:
    """Picodollars as a float of USD, for display and JSON."""
    return picodollars / PICODOLLARS_PER_USD


def load_price_table(path: str | Path | None = None) -> PriceTable:
    """Read a pricing TOML file; ``None`` or ``""`` reads the bundled default."""
    if path:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError("pricing.file", f"cannot read {path}: {exc.strerror}") from None
        source = str(path)
    else:
        raw = resources.files("llmspool").joinpath("defaults/pricing.toml").read_bytes()
        source = "the bundled pricing.toml"
    try:
        table = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("pricing", f"{source} is not valid TOML: {exc}") from None
    return price_table_from_mapping(table)


def price_table_from_mapping(table: Mapping[str, Any]) -> PriceTable:
    """Validate ``{provider: {model: {tier: {input, cached_input, output, estimated}}}}``."""
    prices: dict[tuple[str, str, Tier], TierPrice] = {}
    for provider, models in table.items():
        if not isinstance(models, Mapping):
            raise ConfigError(f"pricing.{provider}", "must be a table of models")
        for model, tiers in models.items():
            if not isinstance(tiers, Mapping):
                raise ConfigError(f"pricing.{provider}.{model}", "must be a table of tiers")
            for tier_name, entry in tiers.items():
                key = f"pricing.{provider}.{model}.{tier_name}"
                try:
                    tier = Tier(tier_name)
                except ValueError:
                    known = ", ".join(t.value for t in Tier)
                    raise ConfigError(key, f"unknown tier (known: {known})") from None
                prices[(provider, model, tier)] = _tier_price(entry, key)
    return PriceTable(prices)


def _tier_price(entry: Any, key: str) -> TierPrice:
    if not isinstance(entry, Mapping):
        raise ConfigError(key, "must be a table with input, cached_input and output")
    unknown = set(entry) - {*_PRICE_KEYS, "estimated"}
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}", "unknown key")
    if "input" not in entry:
        raise ConfigError(f"{key}.input", "is required")
    per_token: dict[str, int] = {}
    for name in _PRICE_KEYS:
        value = entry.get(name, entry["input"] if name == "cached_input" else 0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(
                f"{key}.{name}", f"must be a number of USD per 1M tokens, got {value!r}"
            )
        if not 0 <= value <= MAX_PRICE_PER_MILLION:
            raise ConfigError(
                f"{key}.{name}",
                f"{value} USD per 1M tokens is outside 0..{MAX_PRICE_PER_MILLION:g}",
            )
        per_token[name] = round(value * 1_000_000)
    estimated = entry.get("estimated", [])
    if not isinstance(estimated, list) or not set(estimated) <= set(_PRICE_KEYS):
        raise ConfigError(f"{key}.estimated", f"must list some of {', '.join(_PRICE_KEYS)}")
    return TierPrice(
        input=per_token["input"],
        cached_input=per_token["cached_input"],
        output=per_token["output"],
        estimated=frozenset(estimated),
    )
