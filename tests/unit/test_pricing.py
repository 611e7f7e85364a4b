"""Prices: the bundled table matches the published figures, costs are exact, bad tables are
refused with the key named."""

from __future__ import annotations

import pytest
from llmspool.core.calls import Tier, Usage
from llmspool.core.errors import ConfigError
from llmspool.core.pricing import load_price_table, price_table_from_mapping, usd


def test_bundled_table_has_the_published_prices() -> None:
    table = load_price_table()
    gpt5 = table.price("openai", "gpt-5", Tier.FLEX)
    assert gpt5 is not None and gpt5.input == 625_000 and gpt5.output == 5_000_000
    mini = table.price("openai", "gpt-4o-mini", Tier.BATCH)
    assert mini is not None and "cached_input" in mini.estimated
    assert table.price("openai", "gpt-4o-mini", Tier.FLEX) is None  # flex not offered
    assert Tier.FLEX in table.tiers("openai", "o3")
    assert "text-embedding-3-small" in table.models("openai")


def test_cost_is_exact_in_picodollars() -> None:
    price = load_price_table().price("openai", "gpt-4o-mini", Tier.STANDARD)
    assert price is not None
    # 1,000 prompt tokens (200 cached) and 500 output tokens at 0.15 / 0.075 / 0.60 per 1M.
    usage = Usage(input_tokens=1000, cached_input_tokens=200, output_tokens=500)
    assert price.cost(usage) == 800 * 150_000 + 200 * 75_000 + 500 * 600_000
    assert usd(price.cost(usage)) == pytest.approx(0.000435)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"openai": {"m": {"standard": {"input": -1}}}}, "pricing.openai.m.standard.input"),
        ({"openai": {"m": {"standard": {"input": 1e9}}}}, "pricing.openai.m.standard.input"),
        ({"openai": {"m": {"standard": {"input": "cheap"}}}}, "pricing.openai.m.standard.input"),
        ({"openai": {"m": {"standard": {"output": 1}}}}, "pricing.openai.m.standard.input"),
        ({"openai": {"m": {"warp": {"input": 1}}}}, "pricing.openai.m.warp"),
        ({"openai": {"m": {"standard": {"input": 1, "outptu": 2}}}},
         "pricing.openai.m.standard.outptu"),
        ({"openai": {"m": 3}}, "pricing.openai.m"),
        ({"openai": {"m": {"cache": {"input": 1}}}}, "pricing.openai.m.cache"),
        ({"openai": {"m": {"standard": {"input": 1, "cache_write": -1}}}},
         "pricing.openai.m.standard.cache_write"),
        ({"openai": {"m": {"standard": {"input": 1, "reasoning": "x"}}}},
         "pricing.openai.m.standard.reasoning"),
        ({"openai": {"m": {"standard": {"input": 1, "estimated": [["input"]]}}}},
         "pricing.openai.m.standard.estimated"),
        ({"openai": {"m": {"max_output_tokens": 0}}}, "pricing.openai.m.max_output_tokens"),
        ({"openai": {"m": {"max_output_tokens": 1.5}}}, "pricing.openai.m.max_output_tokens"),
        ({"openai": {"m": {"max_output_tokens": True}}}, "pricing.openai.m.max_output_tokens"),
    ],
)
def test_bad_price_tables_are_refused(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        price_table_from_mapping(table)
    assert caught.value.key == key


def test_cache_writes_and_reasoning_have_their_own_prices() -> None:
    table = price_table_from_mapping({"acme": {"m": {
        "max_output_tokens": 4096,
        "standard": {"input": 3, "cached_input": 0.3, "cache_write": 3.75, "output": 15,
                     "reasoning": 20, "estimated": ["reasoning"]},
        "batch": {"input": 1.5, "output": 7.5},
    }}})
    standard = table.price("acme", "m", Tier.STANDARD)
    assert standard is not None and standard.estimated == {"reasoning"}
    usage = Usage(input_tokens=100, cached_input_tokens=30, output_tokens=50,
                  reasoning_tokens=20, cache_write_tokens=10)
    assert standard.cost(usage) == (60 * 3_000_000 + 30 * 300_000 + 10 * 3_750_000
                                    + 30 * 15_000_000 + 20 * 20_000_000)
    # Absent: cached input and cache writes at the input price, reasoning at the output price.
    batch = table.price("acme", "m", Tier.BATCH)
    assert batch is not None
    assert (batch.cached_input, batch.cache_write_price, batch.reasoning_price) == (
        1_500_000, 1_500_000, 7_500_000)
    assert batch.cost(usage) == 100 * 1_500_000 + 50 * 7_500_000
    assert table.max_output_tokens("acme", "m") == 4096
    assert table.max_output_tokens("acme", "other") is None
    assert table.tiers("acme", "m") == [Tier.STANDARD, Tier.BATCH]  # not max_output_tokens


def test_a_model_limit_without_prices_prices_nothing() -> None:
    table = price_table_from_mapping({"acme": {"m": {"max_output_tokens": 10}}})
    assert table.models("acme") == [] and table.max_output_tokens("acme", "m") == 10
