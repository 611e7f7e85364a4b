"""Prices per provider, model and tier, and the cost of a call from its usage.

Money is counted in integer picodollars (1e-12 USD): a price of ``p`` USD per 1M tokens is
``round(p * 1e6)`` picodollars per token, exactly, for any price with up to six decimals. Sums
of integers are exact, so the ledger never drifts by float rounding.

A call's tokens fall into five parts, each with its own price: uncached input, input served
from the provider's prompt cache, input written to that cache, output, and the reasoning
tokens inside the output. A table that gives no ``cache_write`` price bills cache writes at
the ``input`` price; one that gives no ``reasoning`` price bills reasoning at the ``output``
price. Per model the table may also say ``max_output_tokens``, the most one answer can hold,
which is what a call that sets no limit of its own can cost at worst.

The daemon's table is the bundled copy of ``etc/pricing.toml`` with the files ``[pricing] file``
names laid over it in order (``overlay_price_table``): a file prices what it adds or changes
and nothing else. Within a model a tier is replaced whole (the keys it leaves out take their
defaults, not the bundled values), and so is ``max_output_tokens``; ``tier = false`` or
``"model" = false`` removes a tier or a model. ``load_price_table`` reads one whole table (the
simulator's ``pricing_file``). A malformed file refuses to load with the key and file named.
The bill of a call is computed in ``llmspool.policy.billing`` from these prices, and nowhere else.
"""

from __future__ import annotations

import operator
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from llmspool.core.calls import Tier, Usage
from llmspool.core.errors import ConfigError

PICODOLLARS_PER_USD = 10**12
MAX_PRICE_PER_MILLION = 10_000.0  # above this a price is a typo, not a model
MAX_OUTPUT_TOKENS_LIMIT = 100_000_000  # above this a max_output_tokens is a typo
_PRICE_KEYS = ("input", "cached_input", "cache_write", "output", "reasoning")
_MODEL_KEYS = ("max_output_tokens",)
# The names of a bill's parts, in the order ``TierPrice.parts`` gives them.
PART_NAMES = ("input", "cached_input", "cache_write", "output", "reasoning")


class CostPart(NamedTuple):
    """One part of a call's tokens and what it costs: uncached ``input``, ``cached_input``,
    ``cache_write``, ``output`` (without reasoning) or ``reasoning``."""

    name: str
    tokens: int
    picodollars: int


@dataclass(frozen=True, slots=True)
class TokenSplit:
    """A usage's tokens split into parts that do not overlap, with odd values made sane:
    negatives count as 0, cached + cache-write input never exceeds the input, and reasoning
    never exceeds the output."""

    uncached_input: int
    cached_input: int
    cache_write: int
    output: int  # without reasoning
    reasoning: int

    @classmethod
    def of(cls, usage: Usage) -> TokenSplit:
        return cls(*split_counts(usage))

    @property
    def counts(self) -> tuple[int, int, int, int, int]:
        """The token counts in the order of ``PART_NAMES``."""
        return (self.uncached_input, self.cached_input, self.cache_write, self.output,
                self.reasoning)


def split_counts(usage: Usage) -> tuple[int, int, int, int, int]:
    """``TokenSplit.of(usage).counts``, without the ``TokenSplit``: what a bill multiplies by
    the prices on every call."""
    input_tokens = max(0, usage.input_tokens)
    cached = min(max(0, usage.cached_input_tokens), input_tokens)
    cache_write = min(max(0, usage.cache_write_tokens), input_tokens - cached)
    output_tokens = max(0, usage.output_tokens)
    reasoning = min(max(0, usage.reasoning_tokens), output_tokens)
    return (input_tokens - cached - cache_write, cached, cache_write, output_tokens - reasoning,
            reasoning)


@dataclass(frozen=True, slots=True)
class TierPrice:
    """One model's prices on one tier, in picodollars per token.

    ``cache_write`` and ``reasoning`` are None when the table does not price them: cache
    writes are then billed as ``input`` and reasoning tokens as ``output``.
    """

    input: int
    cached_input: int
    output: int
    estimated: frozenset[str] = frozenset()
    cache_write: int | None = None
    reasoning: int | None = None
    # Made from the prices above once, asked for on every call (a reservation's worst case,
    # a bill): the price of a token of each part in the order of ``PART_NAMES``, and the
    # dearest price an input token and an output token can have.
    per_token: tuple[int, int, int, int, int] = field(init=False, repr=False, compare=False)
    worst_input: int = field(init=False, repr=False, compare=False)
    worst_output: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cache_write, reasoning = self.cache_write_price, self.reasoning_price
        object.__setattr__(self, "per_token", (self.input, self.cached_input, cache_write,
                                               self.output, reasoning))
        object.__setattr__(self, "worst_input", max(self.input, self.cached_input, cache_write))
        object.__setattr__(self, "worst_output", max(self.output, reasoning))

    @property
    def cache_write_price(self) -> int:
        """Picodollars per token written to the provider's prompt cache."""
        return self.input if self.cache_write is None else self.cache_write

    @property
    def reasoning_price(self) -> int:
        """Picodollars per reasoning token."""
        return self.output if self.reasoning is None else self.reasoning

    def parts(self, usage: Usage) -> tuple[CostPart, ...]:
        """``usage`` split into its five parts, each with its cost at these prices."""
        return tuple([CostPart(name, tokens, tokens * price)
                      for name, tokens, price in zip(PART_NAMES, split_counts(usage),
                                                     self.per_token, strict=True)])

    def cost(self, usage: Usage) -> int:
        """Picodollars for ``usage`` at these prices, every part priced (the sum of
        ``parts``, without building them: it is asked for on every call)."""
        return sum(map(operator.mul, split_counts(usage), self.per_token))

    def worst_cost(self, usage: Usage) -> int:
        """The most ``usage``'s token counts may cost, whatever the answer reports of how its
        input was cached and how much of its output was reasoning: every input token at the
        dearest input price, every output token at the dearer of output and reasoning."""
        return (max(0, usage.input_tokens) * self.worst_input
                + max(0, usage.output_tokens) * self.worst_output)


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices by (provider, model, tier), and the largest answer of each (provider, model)."""

    prices: Mapping[tuple[str, str, Tier], TierPrice]
    max_outputs: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # Each (provider, model)'s tiers in file order: asked for several times per call, which
    # a scan of the whole table made a cost per call that grew with the table.
    _tiers: Mapping[tuple[str, str], tuple[Tier, ...]] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tiers: dict[tuple[str, str], tuple[Tier, ...]] = {}
        for provider, model, tier in self.prices:
            tiers[provider, model] = (*tiers.get((provider, model), ()), tier)
        object.__setattr__(self, "_tiers", tiers)

    def price(self, provider: str, model: str, tier: Tier) -> TierPrice | None:
        return self.prices.get((provider, model, tier))

    def models(self, provider: str) -> list[str]:
        """The models ``provider`` has any price for, in file order."""
        return [m for (p, m) in self._tiers if p == provider]

    def tiers(self, provider: str, model: str) -> list[Tier]:
        return list(self._tiers.get((provider, model), ()))

    def max_output_tokens(self, provider: str, model: str) -> int | None:
        """The most output tokens one answer of ``model`` can hold; None when not tabled."""
        return self.max_outputs.get((provider, model))

    def canonical(self) -> dict[str, Any]:
        """The table as plain data in picodollars per token, with every default filled in:
        two tables that bill alike give equal data, whatever their files looked like."""
        out: dict[str, Any] = {}
        for (provider, model, tier), price in self.prices.items():
            entry: dict[str, Any] = dict(zip(PART_NAMES, price.per_token, strict=True))
            entry["estimated"] = sorted(price.estimated)
            out.setdefault(provider, {}).setdefault(model, {})[tier.value] = entry
        for (provider, model), limit in self.max_outputs.items():
            out.setdefault(provider, {}).setdefault(model, {})["max_output_tokens"] = limit
        return out

    def __iter__(self) -> Iterator[tuple[str, str, Tier]]:
        return iter(self.prices)


def usd(picodollars: int) -> float:
    """Picodollars as a float of USD, for display and JSON."""
    return picodollars / PICODOLLARS_PER_USD


BUNDLED = "the bundled pricing.toml"


def load_price_table(path: str | Path | None = None) -> PriceTable:
    """Read one whole pricing TOML file; ``None`` or ``""`` reads the bundled default."""
    return price_table_from_mapping(_read_prices(path or None))


def overlay_price_table(overlays: Sequence[str | Path] = ()) -> PriceTable:
    """The bundled table with each file of ``overlays`` laid over it, in order (see the module
    docstring). Each file is checked on its own first, so an error names the file it is in."""
    merged = _read_prices(None)
    for path in overlays:
        overlay = _read_prices(path)
        try:
            price_table_from_mapping(_without_removals(overlay))
        except ConfigError as exc:
            raise ConfigError(exc.key, f"{str(exc).removeprefix(exc.key + ': ')} (in {path})"
                              ) from None
        _lay_over(merged, overlay, path)
    return price_table_from_mapping(merged)


def _read_prices(path: str | Path | None) -> dict[str, Any]:
    """The TOML table of a price file; ``None``: the bundled one."""
    if path is not None:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError("pricing.file", f"cannot read {path}: {exc.strerror}") from None
        source = str(path)
    else:
        raw = resources.files("llmspool").joinpath("defaults/pricing.toml").read_bytes()
        source = BUNDLED
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("pricing", f"{source} is not valid TOML: {exc}") from None


def _without_removals(table: Mapping[str, Any]) -> dict[str, Any]:
    """``table`` without its ``false`` entries (which remove, and price nothing)."""
    out: dict[str, Any] = {}
    for provider, models in table.items():
        if not isinstance(models, Mapping):
            out[provider] = models  # for price_table_from_mapping to name
            continue
        kept: dict[str, Any] = {}
        for model, tiers in models.items():
            if tiers is False:
                continue
            kept[model] = ({name: entry for name, entry in tiers.items() if entry is not False}
                           if isinstance(tiers, Mapping) else tiers)
        out[provider] = kept
    return out


def _lay_over(merged: dict[str, Any], overlay: Mapping[str, Any], path: str | Path) -> None:
    """Lay a checked overlay table over ``merged``, tier by tier."""
    for provider, models in overlay.items():
        into = merged.setdefault(provider, {})
        for model, tiers in models.items():
            if tiers is False:
                if model not in into:
                    raise ConfigError(f"pricing.{provider}.{model}",
                                      f"removes a model no price table before {path} prices")
                del into[model]
                continue
            entries = into.setdefault(model, {})
            for name, entry in tiers.items():
                if entry is False:
                    if name not in entries:
                        raise ConfigError(f"pricing.{provider}.{model}.{name}",
                                          f"removes a tier no price table before {path} prices")
                    del entries[name]
                else:
                    entries[name] = entry


def price_table_from_mapping(table: Mapping[str, Any]) -> PriceTable:
    """Validate ``{provider: {model: {max_output_tokens, tier: {input, cached_input,
    cache_write, output, reasoning, estimated}}}}``."""
    prices: dict[tuple[str, str, Tier], TierPrice] = {}
    max_outputs: dict[tuple[str, str], int] = {}
    for provider, models in table.items():
        if not isinstance(models, Mapping):
            raise ConfigError(f"pricing.{provider}", "must be a table of models")
        for model, tiers in models.items():
            if not isinstance(tiers, Mapping):
                raise ConfigError(f"pricing.{provider}.{model}", "must be a table of tiers")
            for tier_name, entry in tiers.items():
                key = f"pricing.{provider}.{model}.{tier_name}"
                if tier_name == "max_output_tokens":
                    max_outputs[(provider, model)] = _max_output_tokens(entry, key)
                    continue
                try:
                    tier = Tier(tier_name)
                except ValueError:
                    tier = None
                if tier is None or tier is Tier.CACHE:
                    known = ", ".join(t.value for t in Tier if t is not Tier.CACHE)
                    raise ConfigError(
                        key, f"unknown tier (known: {known}; or {', '.join(_MODEL_KEYS)})"
                    )
                prices[(provider, model, tier)] = _tier_price(entry, key)
    return PriceTable(prices, max_outputs)


def _max_output_tokens(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 0 < value <= MAX_OUTPUT_TOKENS_LIMIT:
        raise ConfigError(
            key, f"must be a whole number of tokens in 1..{MAX_OUTPUT_TOKENS_LIMIT}, "
                 f"got {value!r}"
        )
    return value


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
        if name not in entry:
            continue
        value = entry[name]
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
    if not isinstance(estimated, list) \
            or not all(isinstance(name, str) and name in _PRICE_KEYS for name in estimated):
        raise ConfigError(f"{key}.estimated", f"must list some of {', '.join(_PRICE_KEYS)}")
    return TierPrice(
        input=per_token["input"],
        cached_input=per_token.get("cached_input", per_token["input"]),
        output=per_token.get("output", 0),
        estimated=frozenset(estimated),
        cache_write=per_token.get("cache_write"),
        reasoning=per_token.get("reasoning"),
    )
