"""The one bill: every rule of ``llmspool.policy.billing``, properties that hold for any prices and
usage, the price book's version, and the bundled table."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llmspool.core.calls import Tier, Usage
from llmspool.core.pricing import (
    PART_NAMES,
    PriceTable,
    TierPrice,
    load_price_table,
    price_table_from_mapping,
)
from llmspool.policy.billing import (
    Bill,
    PriceBook,
    bill,
    load_price_book,
    price_version,
    reservation_cost,
    worst_case_usage,
)

REPO = Path(__file__).resolve().parents[2]
MILLION = 1_000_000

# A made-up provider whose prices exercise every key: prices in USD per 1M tokens.
ACME: dict[str, Any] = {"acme": {
    "chat": {
        "max_output_tokens": 8192,
        "standard": {"input": 3, "cached_input": 0.3, "cache_write": 3.75, "output": 15,
                     "reasoning": 20},
        "flex": {"input": 1.5, "cached_input": 0.15, "output": 7.5},
        "batch": {"input": 1.5, "cached_input": 0.15, "cache_write": 1.875, "output": 7.5,
                  "reasoning": 10},
        "priority": {"input": 6, "cached_input": 0.6, "output": 30},
    },
    "flexonly": {"flex": {"input": 1, "output": 2}},
    "samecost": {"standard": {"input": 1, "output": 2}, "flex": {"input": 1, "output": 2}},
}}
BOOK = PriceBook.from_table(price_table_from_mapping(ACME), source="test")
USAGE = Usage(input_tokens=1000, cached_input_tokens=200, output_tokens=300,
              reasoning_tokens=100, cache_write_tokens=300)


def _cost(tier_prices: dict[str, float], usage: Usage) -> int:
    """The cost of ``usage`` worked out by hand from a tier's table entry."""
    per_token = {k: round(v * MILLION) for k, v in tier_prices.items()}
    inp = per_token["input"]
    out = per_token.get("output", 0)
    cached = usage.cached_input_tokens
    write = usage.cache_write_tokens
    return ((usage.input_tokens - cached - write) * inp
            + cached * per_token.get("cached_input", inp)
            + write * per_token.get("cache_write", inp)
            + (usage.output_tokens - usage.reasoning_tokens) * out
            + usage.reasoning_tokens * per_token.get("reasoning", out))


STANDARD_COST = _cost(ACME["acme"]["chat"]["standard"], USAGE)


# --- the rules -------------------------------------------------------------------------------


def test_standard_bill_prices_every_part() -> None:
    result = bill(BOOK, "acme", "chat", Tier.STANDARD, USAGE)
    assert result.cost_picodollars == STANDARD_COST
    assert result.list_cost_picodollars == STANDARD_COST
    assert (result.saving_source, result.flag, result.saving_picodollars) == (None, None, 0)
    assert result.price_version == BOOK.version
    assert result.priced_tier is Tier.STANDARD
    assert [part.name for part in result.parts] == list(PART_NAMES)
    assert result.part("input") == ("input", 500, 500 * 3_000_000)
    assert result.part("cached_input") == ("cached_input", 200, 200 * 300_000)
    assert result.part("cache_write") == ("cache_write", 300, 300 * 3_750_000)
    assert result.part("output") == ("output", 200, 200 * 15_000_000)
    assert result.part("reasoning") == ("reasoning", 100, 100 * 20_000_000)
    with pytest.raises(KeyError):
        result.part("vibes")


def test_missing_cache_write_and_reasoning_prices_fall_back() -> None:
    # Flex prices no cache write (billed as input) and no reasoning (billed as output).
    result = bill(BOOK, "acme", "chat", Tier.FLEX, USAGE)
    assert result.part("cache_write").picodollars == 300 * 1_500_000
    assert result.part("reasoning").picodollars == 100 * 7_500_000
    assert result.cost_picodollars == _cost(ACME["acme"]["chat"]["flex"], USAGE)


@pytest.mark.parametrize("tier", [Tier.FLEX, Tier.BATCH])
def test_a_cheaper_tier_is_a_tier_saving(tier: Tier) -> None:
    result = bill(BOOK, "acme", "chat", tier, USAGE)
    assert result.cost_picodollars == _cost(ACME["acme"]["chat"][tier.value], USAGE)
    assert result.list_cost_picodollars == STANDARD_COST
    assert result.saving_source == "tier"
    assert result.saving_picodollars == STANDARD_COST - result.cost_picodollars > 0


def test_a_tier_that_saves_nothing_names_no_saving() -> None:
    result = bill(BOOK, "acme", "samecost", Tier.FLEX, USAGE)
    assert result.saving_source is None and result.flag is None
    assert result.cost_picodollars == result.list_cost_picodollars


def test_flex_with_no_standard_price_has_no_list_cost() -> None:
    result = bill(BOOK, "acme", "flexonly", Tier.FLEX, USAGE)
    assert result.flag is None and result.list_cost_picodollars is None
    assert result.saving_source is None and result.saving_picodollars == 0


def test_priority_costs_more_than_the_list_and_saves_nothing() -> None:
    result = bill(BOOK, "acme", "chat", Tier.PRIORITY, USAGE, claimed_tier="priority")
    assert result.cost_picodollars > STANDARD_COST == result.list_cost_picodollars
    assert result.saving_source is None and result.saving_picodollars == 0


@pytest.mark.parametrize("source", ["cache", "dedup"])
def test_a_cache_hit_is_free_and_saves_the_list_cost(source: str) -> None:
    result = bill(BOOK, "acme", "chat", Tier.CACHE, USAGE, saving_source=source)
    assert result.cost_picodollars == 0
    assert result.list_cost_picodollars == STANDARD_COST
    assert result.saving_source == source and result.flag is None
    assert result.saving_picodollars == STANDARD_COST
    assert sum(part.picodollars for part in result.parts) == 0
    assert sum(part.tokens for part in result.parts) == USAGE.total_tokens


def test_a_cache_hit_saves_what_it_would_have_cost_on_its_tier() -> None:
    result = bill(BOOK, "acme", "chat", Tier.CACHE, USAGE, would_have_tier=Tier.BATCH)
    assert result.saving_source == "cache"  # the default source of a cache hit
    assert result.list_cost_picodollars == _cost(ACME["acme"]["chat"]["batch"], USAGE)
    # A tier the model is not priced on: the standard price.
    other = bill(BOOK, "acme", "samecost", Tier.CACHE, USAGE, would_have_tier=Tier.BATCH)
    assert other.list_cost_picodollars == _cost({"input": 1, "output": 2}, USAGE)


def test_a_cache_hit_of_an_unpriced_model_is_free_with_no_list_cost() -> None:
    result = bill(BOOK, "acme", "mystery", Tier.CACHE, USAGE,
                  unpriced_ceiling_picodollars=10**11)
    assert result.cost_picodollars == 0 and result.list_cost_picodollars is None
    assert result.flag is None and result.saving_picodollars == 0


def test_overhead_is_a_negative_saving_of_its_source() -> None:
    embedding = Usage(input_tokens=50)
    result = bill(BOOK, "acme", "chat", Tier.STANDARD, embedding, overhead_of="cache")
    assert result.cost_picodollars == 50 * 3_000_000
    assert result.list_cost_picodollars == 0
    assert result.saving_source == "cache"
    assert result.saving_picodollars == -result.cost_picodollars
    # Overhead wins over a tier saving too.
    batch = bill(BOOK, "acme", "chat", Tier.BATCH, embedding, overhead_of="cache",
                 saving_source="routing")
    assert (batch.saving_source, batch.list_cost_picodollars) == ("cache", 0)


def test_an_explicit_saving_source_wins() -> None:
    result = bill(BOOK, "acme", "chat", Tier.BATCH, USAGE, saving_source="routing")
    assert result.saving_source == "routing"
    assert result.list_cost_picodollars == STANDARD_COST


def test_an_unknown_claimed_tier_is_billed_at_the_dearest_price() -> None:
    result = bill(BOOK, "acme", "chat", Tier.STANDARD, USAGE, claimed_tier="warp")
    priority = _cost(ACME["acme"]["chat"]["priority"], USAGE)
    assert result.flag == "unknown_tier"
    assert result.cost_picodollars == priority and result.priced_tier is Tier.PRIORITY
    assert result.list_cost_picodollars == STANDARD_COST
    assert sum(part.picodollars for part in result.parts) == priority
    # A known claim is no flag.
    assert bill(BOOK, "acme", "chat", Tier.STANDARD, USAGE, claimed_tier="default").flag is None


def test_a_tier_the_model_is_not_priced_on_is_billed_at_the_dearest_price() -> None:
    result = bill(BOOK, "acme", "samecost", Tier.BATCH, USAGE)
    assert result.flag == "unknown_tier"
    assert result.cost_picodollars == _cost({"input": 1, "output": 2}, USAGE)
    assert result.saving_source is None


def test_an_unpriced_model_is_billed_at_the_ceiling_never_free() -> None:
    result = bill(BOOK, "acme", "mystery", Tier.STANDARD, USAGE,
                  unpriced_ceiling_picodollars=10**11)
    assert result.flag == "unpriced"
    assert result.cost_picodollars == 10**11
    assert result.list_cost_picodollars is None and result.saving_source is None
    assert result.priced_tier is None
    assert sum(part.tokens for part in result.parts) == USAGE.total_tokens
    assert all(part.picodollars == 0 for part in result.parts)


def test_odd_usage_is_made_sane_before_pricing() -> None:
    odd = Usage(input_tokens=10, cached_input_tokens=8, output_tokens=5, reasoning_tokens=9,
                cache_write_tokens=8)
    result = bill(BOOK, "acme", "chat", Tier.STANDARD, odd)
    assert [part.tokens for part in result.parts] == [0, 8, 2, 0, 5]
    negative = Usage(input_tokens=-5, cached_input_tokens=-1, output_tokens=-3)
    assert bill(BOOK, "acme", "chat", Tier.STANDARD, negative).cost_picodollars == 0


# --- what to reserve -------------------------------------------------------------------------


def test_worst_case_usage_takes_the_requested_output_first() -> None:
    usage = worst_case_usage(BOOK, "acme", "chat", 100, 50, ceiling_output_tokens=4096,
                             estimated_output=10)
    assert usage == Usage(input_tokens=100, output_tokens=50, estimated=True)


def test_worst_case_usage_reserves_the_models_max_output() -> None:
    usage = worst_case_usage(BOOK, "acme", "chat", 100, None, ceiling_output_tokens=4096,
                             estimated_output=10)
    assert usage.output_tokens == 8192 and usage.estimated
    unknown = worst_case_usage(BOOK, "acme", "samecost", 100, None, reserve="max",
                               ceiling_output_tokens=4096, estimated_output=10)
    assert unknown.output_tokens == 4096


def test_worst_case_usage_may_reserve_the_estimate() -> None:
    usage = worst_case_usage(BOOK, "acme", "chat", 100, None, reserve="estimate",
                             ceiling_output_tokens=4096, estimated_output=10)
    assert usage.output_tokens == 10
    with pytest.raises(ValueError, match="reserve"):
        worst_case_usage(BOOK, "acme", "chat", 100, None, reserve="most",  # type: ignore[arg-type]
                         ceiling_output_tokens=4096, estimated_output=10)


def test_reservation_covers_every_tier_the_call_may_end_on() -> None:
    usage = Usage(input_tokens=1000, output_tokens=100)
    flex = reservation_cost(BOOK, "acme", "chat", [Tier.FLEX], usage, 0)
    fallback = reservation_cost(BOOK, "acme", "chat", [Tier.FLEX, Tier.STANDARD], usage, 0)
    assert flex < fallback
    # The dearest input price (a cache write here) and the dearest output price (reasoning).
    assert fallback == 1000 * 3_750_000 + 100 * 20_000_000


def test_reservation_ignores_what_the_usage_says_of_caching() -> None:
    cached = Usage(input_tokens=1000, cached_input_tokens=1000, output_tokens=10)
    plain = Usage(input_tokens=1000, output_tokens=10)
    tiers = [Tier.BATCH]
    assert reservation_cost(BOOK, "acme", "chat", tiers, cached, 0) \
        == reservation_cost(BOOK, "acme", "chat", tiers, plain, 0) \
        >= bill(BOOK, "acme", "chat", Tier.BATCH, plain).cost_picodollars


def test_reservation_of_an_unpriced_model_or_tier() -> None:
    usage = Usage(input_tokens=1000, output_tokens=100)
    assert reservation_cost(BOOK, "acme", "mystery", [Tier.STANDARD], usage, 777) == 777
    # Not priced on batch: the dearest priced tier, as the bill would charge it.
    assert reservation_cost(BOOK, "acme", "samecost", [Tier.BATCH], usage, 0) \
        == bill(BOOK, "acme", "samecost", Tier.BATCH, usage).cost_picodollars
    assert reservation_cost(BOOK, "acme", "chat", [Tier.CACHE], usage, 0) == 0


# --- the price book --------------------------------------------------------------------------


def test_the_price_book_delegates_to_its_table() -> None:
    book = load_price_book()
    assert book.source == "the bundled pricing.toml"
    assert re.fullmatch(r"p-[0-9a-f]{12}", book.version)
    assert book.loaded_at > 0
    assert book.price("openai", "gpt-5", Tier.FLEX) == book.table.price("openai", "gpt-5",
                                                                        Tier.FLEX)
    assert Tier.BATCH in book.tiers("openai", "gpt-4o")
    assert "gpt-4o" in book.models("openai")
    assert book.max_output_tokens("openai", "gpt-4o") == 16384
    assert book.max_output_tokens("openai", "text-embedding-3-small") is None


def test_the_version_follows_the_prices_not_the_file(tmp_path: Path) -> None:
    one = tmp_path / "one.toml"
    one.write_text('[acme.m.standard]\ninput = 2.5\noutput = 10\n\n[acme.m]\n'
                   'max_output_tokens = 100\n')
    two = tmp_path / "two.toml"
    two.write_text('# the same prices, written otherwise\n[acme.m]\nmax_output_tokens = 100\n'
                   '[acme.m.standard]\noutput = 10.00\ninput = 2.50\ncached_input = 2.5\n')
    three = tmp_path / "three.toml"
    three.write_text('[acme.m]\nmax_output_tokens = 100\n'
                     '[acme.m.standard]\ninput = 2.5\noutput = 10.000001\n')
    four = tmp_path / "four.toml"
    four.write_text('[acme.m]\nmax_output_tokens = 101\n'
                    '[acme.m.standard]\ninput = 2.5\noutput = 10\n')
    book = load_price_book(one)
    assert book.source == f"the bundled pricing.toml + {one}"  # laid over the bundled table
    assert load_price_book(two).version == book.version
    assert load_price_book(three).version != book.version
    assert load_price_book(four).version != book.version
    assert load_price_book(one).version == book.version


# --- the bundled table -----------------------------------------------------------------------


def test_the_bundled_table_loads_and_knows_every_chat_models_limit() -> None:
    table = load_price_table()
    chat_models = {
        (provider, model) for (provider, model, tier) in table
        if (price := table.price(provider, model, tier)) is not None and price.output > 0
    }
    assert chat_models
    missing = sorted(m for m in chat_models if table.max_output_tokens(*m) is None)
    assert not missing
    assert table.max_output_tokens("openai", "gpt-4.1-nano") == 32768
    assert table.max_output_tokens("openai", "o3") == 100000
    assert table.max_output_tokens("openai", "gpt-5-mini") == 128000


def test_the_shipped_tables_are_the_same_bytes() -> None:
    bundled = REPO / "daemon" / "llmspool" / "defaults" / "pricing.toml"
    shipped = REPO / "etc" / "pricing.toml"
    assert bundled.read_bytes() == shipped.read_bytes()


# --- properties ------------------------------------------------------------------------------

PRICE = st.integers(min_value=0, max_value=50 * MILLION)  # up to 50 USD per 1M tokens
TOKENS = st.integers(min_value=0, max_value=2_000_000)


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    input_tokens = draw(TOKENS)
    cached = draw(st.integers(0, input_tokens))
    cache_write = draw(st.integers(0, input_tokens - cached))
    output = draw(TOKENS)
    reasoning = draw(st.integers(0, output))
    return Usage(input_tokens, cached, output, reasoning, cache_write_tokens=cache_write)


@st.composite
def standard_prices(draw: st.DrawFn) -> TierPrice:
    return TierPrice(input=draw(PRICE), cached_input=draw(PRICE), output=draw(PRICE),
                     cache_write=draw(st.none() | PRICE), reasoning=draw(st.none() | PRICE))


@st.composite
def cheaper_prices(draw: st.DrawFn, standard: TierPrice) -> TierPrice:
    """Prices at most ``standard``'s, part by part."""
    inp, cached, write, out, reasoning = (draw(st.integers(0, p)) for p in standard.per_token)
    # Leave a price out only where its fallback is no dearer than the standard's.
    return TierPrice(
        input=inp, cached_input=cached, output=out,
        cache_write=None if inp <= standard.cache_write_price and draw(st.booleans()) else write,
        reasoning=None if out <= standard.reasoning_price and draw(st.booleans()) else reasoning,
    )


@st.composite
def books(draw: st.DrawFn) -> PriceBook:
    standard = draw(standard_prices())
    table = PriceTable({
        ("p", "m", Tier.STANDARD): standard,
        ("p", "m", Tier.FLEX): draw(cheaper_prices(standard)),
        ("p", "m", Tier.BATCH): draw(cheaper_prices(standard)),
    })
    return PriceBook.from_table(table, source="hypothesis", loaded_at=0.0)


@settings(max_examples=200, deadline=None)
@given(book=books(), usage=usages(),
       tier=st.sampled_from([Tier.FLEX, Tier.BATCH, Tier.CACHE]),
       would_have=st.none() | st.sampled_from([Tier.STANDARD, Tier.FLEX, Tier.BATCH]))
def test_a_cheaper_tier_or_the_cache_never_costs_more_than_the_list(
    book: PriceBook, usage: Usage, tier: Tier, would_have: Tier | None,
) -> None:
    result = bill(book, "p", "m", tier, usage, would_have_tier=would_have)
    assert result.list_cost_picodollars is not None
    assert 0 <= result.cost_picodollars <= result.list_cost_picodollars
    assert result.flag is None and result.saving_picodollars >= 0


@settings(max_examples=200, deadline=None)
@given(book=books(), usage=usages(),
       tier=st.sampled_from([Tier.STANDARD, Tier.FLEX, Tier.BATCH]))
def test_the_parts_add_up(book: PriceBook, usage: Usage, tier: Tier) -> None:
    result = bill(book, "p", "m", tier, usage)
    tokens = {part.name: part.tokens for part in result.parts}
    assert tokens["input"] + tokens["cached_input"] + tokens["cache_write"] == usage.input_tokens
    assert tokens["output"] + tokens["reasoning"] == usage.output_tokens
    assert tokens["cached_input"] == usage.cached_input_tokens
    assert tokens["cache_write"] == usage.cache_write_tokens
    assert sum(part.picodollars for part in result.parts) == result.cost_picodollars
    price = book.price("p", "m", tier)
    assert price is not None and price.cost(usage) == result.cost_picodollars


CALLS = st.tuples(
    st.sampled_from([Tier.STANDARD, Tier.FLEX, Tier.BATCH, Tier.CACHE]),
    usages(),
    st.sampled_from([None, None, "dedup", "routing"]),  # an explicit saving source
    st.booleans(),  # overhead of the cache
)


@settings(max_examples=100, deadline=None)
@given(book=books(), calls=st.lists(CALLS, max_size=30))
def test_savings_by_source_add_up_to_the_whole_saving(
    book: PriceBook, calls: list[tuple[Tier, Usage, str | None, bool]],
) -> None:
    bills: list[Bill] = [
        bill(book, "p", "m", tier, usage, saving_source=source,
             overhead_of="cache" if overhead else None)
        for tier, usage, source, overhead in calls
    ]
    whole = sum(b.list_cost_picodollars - b.cost_picodollars for b in bills
                if b.list_cost_picodollars is not None)
    by_source: dict[str | None, int] = defaultdict(int)
    for b in bills:
        assert b.list_cost_picodollars is not None
        by_source[b.saving_source] += b.list_cost_picodollars - b.cost_picodollars
    assert by_source.get(None, 0) == 0  # no saving goes unattributed
    assert sum(by_source.values()) == whole
    assert sum(b.saving_picodollars for b in bills) == whole


@settings(max_examples=100, deadline=None)
@given(standard=standard_prices(), part=st.sampled_from(PART_NAMES), bump=st.integers(1, 1000))
def test_the_version_is_stable_and_moves_with_any_price(
    standard: TierPrice, part: str, bump: int,
) -> None:
    def table(price: TierPrice) -> PriceTable:
        return PriceTable({("p", "m", Tier.STANDARD): price,
                           ("p", "e", Tier.BATCH): TierPrice(5, 5, 0)})

    same = TierPrice(*standard.per_token[:2], standard.output,  # defaults filled in
                     cache_write=standard.cache_write_price, reasoning=standard.reasoning_price)
    assert price_version(table(standard)) == price_version(table(same))
    assert PriceBook.from_table(table(standard)).version == price_version(table(standard))
    reordered = PriceTable(dict(reversed(list(table(standard).prices.items()))))
    assert price_version(reordered) == price_version(table(standard))
    prices = dict(zip(PART_NAMES, standard.per_token, strict=True))
    prices[part] += bump
    changed = TierPrice(prices["input"], prices["cached_input"], prices["output"],
                        cache_write=prices["cache_write"], reasoning=prices["reasoning"])
    assert price_version(table(changed)) != price_version(table(standard))
