"""Durations and sizes as operators write them."""

from __future__ import annotations

import pytest
from llmspool.core.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("90s", 90), ("15m", 900), ("24h", 86400), ("1h30m", 5400), (12, 12)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10 parsecs", "5x", "m5", "-3s", -1, True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)  # type: ignore[arg-type]


def test_sizes() -> None:
    assert parse_size("32MiB") == 32 * 1024 * 1024
    assert parse_size("200MB") == 200_000_000
    assert parse_size(4096) == 4096
    assert parse_size(format_size(3 * 1024**3)) == 3 * 1024**3
    with pytest.raises(ValueError, match="size"):
        parse_size("lots")
