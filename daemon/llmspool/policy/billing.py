"""The bill of a call: the one place in the daemon where a cost is computed.

Every path a call can take (a direct call, flex, a batch line, a cache hit, a deduplicated
call, a failover, the cache's near-duplicate embeddings) ends in ``bill``: one pure function
of (price book, provider, model, tier, usage) that gives what the call cost, what the same
usage costs at the model's standard (list) price, where the difference came from, and the
parts the cost is made of. The admission side asks ``worst_case_usage`` and
``reservation_cost`` how much to reserve before a call is made.

Prices come from a ``PriceBook``: a ``PriceTable`` (the bundled prices with the operator's
price files laid over them) with a version that is a hash of its contents, so every bill names
the prices it was computed with, and a reload that changes no price keeps the version.

Rules, in order:

- ``Tier.CACHE`` (answered from the response cache, or shared with an identical call) costs
  nothing; its list cost is what the usage would have cost on ``would_have_tier`` (standard
  when not given), and the whole of it is the saving of ``saving_source`` ("cache" unless the
  caller says "dedup" or another).
- A model with no price at all is billed ``unpriced_ceiling_picodollars``, never free, with the
  flag ``"unpriced"``.
- An answer that claims a ``service_tier`` we do not know, or a tier the model has no price
  on, is billed at the dearest of the model's priced tiers for that usage, flag
  ``"unknown_tier"``.
- Otherwise the usage is priced on its tier, every part at its own price.
- A routed call (``routed_from``: the provider and model the request asked for, which a
  route or cascade replaced) has that model's standard price as its list price, and its
  saving (or extra cost: a dearer model) is the source ``"routing"``, tier savings included.
- The saving source is ``"tier"`` when flex or batch cost less than the list price; a
  ``saving_source`` argument wins over that; ``overhead_of`` marks a call spent to save
  elsewhere (the cache's embeddings): its list cost is 0, so its cost is a negative saving of
  that source.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llmspool.core.calls import Tier, Usage
from llmspool.core.pricing import (
    BUNDLED,
    PART_NAMES,
    CostPart,
    PriceTable,
    TierPrice,
    overlay_price_table,
    split_counts,
)

UNKNOWN_TIER = "unknown_tier"
UNPRICED = "unpriced"
TIER_SAVING = "tier"
CACHE_SAVING = "cache"
ROUTING_SAVING = "routing"
_VERSION_HEX_DIGITS = 12


def price_version(table: PriceTable) -> str:
    """A short hash of what ``table`` charges: equal prices give the same version, any change
    of a price (or of a model's ``max_output_tokens``) gives another."""
    canonical = json.dumps(table.canonical(), sort_keys=True, separators=(",", ":"))
    return "p-" + hashlib.sha256(canonical.encode()).hexdigest()[:_VERSION_HEX_DIGITS]


@dataclass(frozen=True, slots=True)
class PriceBook:
    """A price table as loaded: its prices, their version, when and where they were read."""

    table: PriceTable
    version: str
    loaded_at: float
    source: str
    # ``priced``'s answers, by (provider, model): asked twice a call, and the book never
    # changes (a reload makes a new one).
    _priced: dict[tuple[str, str], tuple[tuple[Tier, TierPrice], ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_table(cls, table: PriceTable, *, source: str = "a price table",
                   loaded_at: float | None = None) -> PriceBook:
        return cls(table, price_version(table),
                   time.time() if loaded_at is None else loaded_at, source)

    def price(self, provider: str, model: str, tier: Tier) -> TierPrice | None:
        return self.table.price(provider, model, tier)

    def tiers(self, provider: str, model: str) -> list[Tier]:
        return self.table.tiers(provider, model)

    def models(self, provider: str) -> list[str]:
        return self.table.models(provider)

    def max_output_tokens(self, provider: str, model: str) -> int | None:
        return self.table.max_output_tokens(provider, model)

    def priced(self, provider: str, model: str) -> tuple[tuple[Tier, TierPrice], ...]:
        """The model's priced tiers with their prices, in table order (a cache hit's tier is
        not one)."""
        key = (provider, model)
        found = self._priced.get(key)
        if found is None:
            found = self._priced[key] = tuple(
                (tier, price) for tier in self.tiers(provider, model)
                if tier is not Tier.CACHE
                and (price := self.price(provider, model, tier)) is not None)
        return found


def load_price_book(overlays: str | Path | Sequence[str | Path] | None = None) -> PriceBook:
    """The bundled price table with the files ``overlays`` names (``[pricing] file``: one path
    or several, ``None`` or ``""`` for none) laid over it, as a book whose source names them.
    Raises ``ConfigError`` as ``overlay_price_table`` does."""
    if overlays is None or isinstance(overlays, str | Path):
        paths: list[str | Path] = [overlays] if overlays else []
    else:
        paths = [path for path in overlays if path]
    table = overlay_price_table(paths)
    return PriceBook.from_table(table, source=" + ".join([BUNDLED, *map(str, paths)]))


@dataclass(frozen=True, slots=True)
class Bill:
    """What one call cost, and what it would have cost at the list price.

    ``parts`` are ``(name, tokens, picodollars)`` for ``input`` (uncached), ``cached_input``,
    ``cache_write``, ``output`` (without reasoning) and ``reasoning``; their tokens add up to
    the usage's (sane) input and output, and their picodollars to ``cost_picodollars`` except
    on an ``"unpriced"`` bill, whose parts carry 0 and whose cost is the ceiling.
    ``priced_tier`` is the tier whose prices were applied (None for a cache hit or an
    unpriced model).
    """

    cost_picodollars: int
    list_cost_picodollars: int | None
    saving_source: str | None
    flag: str | None
    price_version: str
    parts: tuple[CostPart, ...]
    priced_tier: Tier | None = None

    @property
    def saving_picodollars(self) -> int:
        """List cost less cost when the bill names a saving source (negative for overhead);
        0 when it names none or the list cost is unknown."""
        if self.saving_source is None or self.list_cost_picodollars is None:
            return 0
        return self.list_cost_picodollars - self.cost_picodollars

    def part(self, name: str) -> CostPart:
        """The part called ``name`` (one of ``llmspool.core.pricing.PART_NAMES``)."""
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(name)


def bill(
    book: PriceBook,
    provider: str,
    model: str,
    tier: Tier,
    usage: Usage,
    *,
    claimed_tier: str | None = None,
    unpriced_ceiling_picodollars: int = 0,
    saving_source: str | None = None,
    would_have_tier: Tier | None = None,
    overhead_of: str | None = None,
    routed_from: tuple[str, str] | None = None,
) -> Bill:
    """The bill of ``usage`` served by ``provider``'s ``model`` on ``tier`` (see the module
    docstring for the rules).

    ``claimed_tier`` is the raw ``service_tier`` the answer claimed, if any; ``tier`` is what
    the caller made of it. ``would_have_tier`` is, for a cache hit, the tier the call would
    have been sent on. ``overhead_of`` names the saving source a call was spent for.
    """
    standard = book.price(provider, model, Tier.STANDARD)
    if tier is Tier.CACHE:
        reference = book.price(provider, model, would_have_tier or Tier.STANDARD) or standard
        return Bill(
            cost_picodollars=0,
            list_cost_picodollars=0 if overhead_of is not None
            else reference.cost(usage) if reference is not None else None,
            saving_source=overhead_of or saving_source or CACHE_SAVING,
            flag=None,
            price_version=book.version,
            parts=_unpriced_parts(usage),
        )
    priced = book.priced(provider, model)
    flag: str | None = None
    price: TierPrice | None = None
    priced_tier: Tier | None = None
    if not priced:
        flag = UNPRICED
        cost = max(0, unpriced_ceiling_picodollars)
        parts = _unpriced_parts(usage)
    else:
        unknown_claim = claimed_tier is not None and Tier.from_service_tier(claimed_tier) is None
        price = None if unknown_claim else book.price(provider, model, tier)
        priced_tier = tier
        if price is None:
            flag = UNKNOWN_TIER
            priced_tier, price = _dearest(priced, usage)
        parts = price.parts(usage)
        cost = sum(part.picodollars for part in parts)
    # Served on the standard tier (most calls): its list price is what it cost.
    list_cost = cost if price is not None and price is standard \
        else standard.cost(usage) if standard is not None else None
    source: str | None = None
    if overhead_of is not None:
        source, list_cost = overhead_of, 0
    elif routed_from is not None:
        asked = book.price(*routed_from, Tier.STANDARD)
        list_cost = asked.cost(usage) if asked is not None else list_cost
        source = ROUTING_SAVING
    elif saving_source is not None:
        source = saving_source
    elif tier in (Tier.FLEX, Tier.BATCH) and list_cost is not None and cost < list_cost:
        source = TIER_SAVING
    return Bill(cost, list_cost, source, flag, book.version, parts, priced_tier)


def worst_case_usage(
    book: PriceBook,
    provider: str,
    model: str,
    input_tokens: int,
    requested_output: int | None,
    *,
    reserve: Literal["max", "estimate"] = "max",
    ceiling_output_tokens: int,
    estimated_output: int,
) -> Usage:
    """The usage to reserve for a call before it is made.

    The output is ``requested_output`` when the call sets a limit; otherwise, with
    ``reserve="max"``, the model's ``max_output_tokens`` from the price table (or
    ``ceiling_output_tokens`` when the table does not say), which no answer can exceed; with
    ``reserve="estimate"``, ``estimated_output``, the typical answer's length. An estimate can
    fall short of the actual answer, so a budget enforced on estimates can be overshot by the
    difference when the call settles; "max" cannot be overshot but holds more of a budget
    while calls are in flight. The input is all uncached, and the result is marked estimated.
    """
    output: int
    if requested_output is not None:
        output = requested_output
    elif reserve == "max":
        output = book.max_output_tokens(provider, model) or ceiling_output_tokens
    elif reserve == "estimate":
        output = estimated_output
    else:
        raise ValueError(f"reserve must be 'max' or 'estimate', not {reserve!r}")
    return Usage(input_tokens=max(0, input_tokens), output_tokens=max(0, output),
                 estimated=True)


def reservation_cost(
    book: PriceBook,
    provider: str,
    model: str,
    tiers: Sequence[Tier],
    usage: Usage,
    unpriced_ceiling_picodollars: int,
) -> int:
    """The most ``usage`` may cost on any of ``tiers`` (pass every tier the call may end on:
    flex may fall back to standard).

    Every input token is priced at the dearest input price (uncached, in general) and every
    output token at the dearer of output and reasoning, whatever ``usage`` says of caching
    and reasoning. A tier the model has no price on counts at the model's dearest priced tier,
    as ``bill`` would charge it, and so does an empty ``tiers``; ``Tier.CACHE`` costs nothing;
    an unpriced model costs ``unpriced_ceiling_picodollars``.
    """
    priced = book.priced(provider, model)
    if not priced:
        return max(0, unpriced_ceiling_picodollars)
    dearest = max(price.worst_cost(usage) for _tier, price in priced)
    worst = 0 if tiers else dearest
    for tier in tiers:
        if tier is not Tier.CACHE:
            price = book.price(provider, model, tier)
            worst = max(worst, dearest if price is None else price.worst_cost(usage))
    return worst


def _dearest(priced: Sequence[tuple[Tier, TierPrice]], usage: Usage) -> tuple[Tier, TierPrice]:
    """The priced tier on which ``usage`` costs most (the first such, in table order)."""
    return max(priced, key=lambda entry: entry[1].cost(usage))


def _unpriced_parts(usage: Usage) -> tuple[CostPart, ...]:
    """``usage``'s parts with no cost: a cache hit's, or an unpriced model's."""
    return tuple(CostPart(name, tokens, 0)
                 for name, tokens in zip(PART_NAMES, split_counts(usage), strict=True))
