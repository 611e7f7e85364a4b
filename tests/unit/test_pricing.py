"""Prices: the bundled table matches the published figures, costs are exact, bad tables are
refused with the key named."""

from __future__ import annotations

import pytest
from llmspool.calls import Tier, Usage
from llmspool.errors import ConfigError
from llmspool.pricing import load_price_table, price_table_from_mapping, usd


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
    ],
)
def test_bad_price_tables_are_refused(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        price_table_from_mapping(table)
    assert caught.value.key == key
