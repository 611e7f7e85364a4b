"""Price files laid over the bundled table: a file that prices one new model makes it billable,
and every bundled model keeps its prices; tiers are replaced whole, ``false`` removes, errors
name the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from llmspool.core.calls import Tier, Usage
from llmspool.core.errors import ConfigError
from llmspool.core.pricing import load_price_table, overlay_price_table
from llmspool.policy.billing import UNPRICED, bill, load_price_book

BUNDLED = load_price_table()
USAGE = Usage(input_tokens=1000, cached_input_tokens=200, output_tokens=500)
NEW_MODEL = """
[openai."my-fine-tune"]
max_output_tokens = 4096

[openai."my-fine-tune".standard]
input = 0.30
output = 1.20
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_file_pricing_one_new_model_makes_it_billable_and_keeps_the_bundled_prices(
    tmp_path: Path,
) -> None:
    overlay = write(tmp_path / "mine.toml", NEW_MODEL)
    before = load_price_book()
    assert bill(before, "openai", "my-fine-tune", Tier.STANDARD, USAGE).flag == UNPRICED

    book = load_price_book(str(overlay))
    charged = bill(book, "openai", "my-fine-tune", Tier.STANDARD, USAGE)
    assert charged.flag is None
    assert charged.cost_picodollars == 1000 * 300_000 + 500 * 1_200_000
    assert book.max_output_tokens("openai", "my-fine-tune") == 4096
    # Every bundled price is still there, unchanged.
    for provider, model, tier in BUNDLED:
        assert book.price(provider, model, tier) == BUNDLED.price(provider, model, tier)
    assert bill(book, "openai", "gpt-4o-mini", Tier.STANDARD, USAGE).cost_picodollars \
        == bill(before, "openai", "gpt-4o-mini", Tier.STANDARD, USAGE).cost_picodollars
    assert book.source == f"the bundled pricing.toml + {overlay}"
    assert book.version != before.version


def test_a_tier_given_replaces_that_tier_whole_and_leaves_the_others(tmp_path: Path) -> None:
    overlay = write(tmp_path / "cheaper.toml",
                    '[openai."gpt-4o".standard]\ninput = 2.0\noutput = 8.0\n')
    table = overlay_price_table([overlay])
    standard = table.price("openai", "gpt-4o", Tier.STANDARD)
    assert standard is not None
    # cached_input left out takes pricing.toml's default (the input price), not the bundled 1.25.
    assert (standard.input, standard.cached_input, standard.output) == (
        2_000_000, 2_000_000, 8_000_000)
    assert table.price("openai", "gpt-4o", Tier.BATCH) == BUNDLED.price("openai", "gpt-4o",
                                                                        Tier.BATCH)
    assert table.max_output_tokens("openai", "gpt-4o") == BUNDLED.max_output_tokens("openai",
                                                                                    "gpt-4o")


def test_files_are_laid_over_in_order_and_false_removes(tmp_path: Path) -> None:
    first = write(tmp_path / "1.toml", NEW_MODEL)
    second = write(tmp_path / "2.toml", '[openai."my-fine-tune".standard]\ninput = 0.5\n'
                                        'output = 2\n\n[openai."gpt-5"]\nflex = false\n\n'
                                        '[openai]\n"gpt-4o" = false\n')
    table = overlay_price_table([first, second])
    fine_tune = table.price("openai", "my-fine-tune", Tier.STANDARD)
    assert fine_tune is not None and fine_tune.input == 500_000  # the later file wins
    assert Tier.FLEX in BUNDLED.tiers("openai", "gpt-5")
    assert Tier.FLEX not in table.tiers("openai", "gpt-5")
    assert Tier.STANDARD in table.tiers("openai", "gpt-5")
    assert "gpt-4o" not in table.models("openai")
    assert table.max_output_tokens("openai", "gpt-4o") is None
    assert "gpt-4o-mini" in table.models("openai")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[openai."m".standard]\noutput = 1\n', "pricing.openai.m.standard.input"),
        ('[openai."m".warp]\ninput = 1\n', "pricing.openai.m.warp"),
        ('[openai."nothing-here"]\nflex = false\n', "pricing.openai.nothing-here.flex"),
        ('[openai]\n"nothing-here" = false\n', "pricing.openai.nothing-here"),
    ],
)
def test_a_bad_overlay_is_refused_naming_the_key_and_the_file(
    tmp_path: Path, text: str, key: str
) -> None:
    overlay = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_price_book([str(overlay)])
    assert caught.value.key == key
    assert str(overlay) in str(caught.value)


def test_a_missing_overlay_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pricing\.file: cannot read .*missing\.toml"):
        load_price_book(str(tmp_path / "missing.toml"))


def test_no_overlay_is_the_bundled_table() -> None:
    for nothing in (None, "", (), [""]):
        book = load_price_book(nothing)
        assert book.table.canonical() == BUNDLED.canonical()
        assert book.source == "the bundled pricing.toml"
