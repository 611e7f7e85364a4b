"""Durations and sizes as operators write them in config and on the command line.

``"90s"``, ``"15m"``, ``"24h"``, ``"1h30m"``, ``"250ms"`` are durations; ``"32MiB"``, ``"200MB"``,
``"512KiB"`` or a bare integer of bytes are sizes. Parsing raises ``ValueError`` with a message
that shows the accepted forms; callers attach the config key.
"""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?")
_BYTES_PER_UNIT = {
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


def parse_duration(text: str | float) -> float:
    """Seconds in a duration like ``"90s"``, ``"1h30m"``; a bare number is seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"a duration cannot be negative: {text}")
        return float(text)
    if not isinstance(text, str):
        raise ValueError(f"expected a duration like '90s', '15m' or '24h', got {text!r}")
    compact = text.strip().replace(" ", "")
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(compact):
        if match.start() != position:
            break
        total += float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)]
        position = match.end()
    if position == 0 or position != len(compact):
        raise ValueError(
            f"expected a duration like '250ms', '90s', '15m', '24h' or '1h30m', got {text!r}"
        )
    return total


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` that ``parse_duration`` reads back."""
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    if whole != seconds:
        return f"{seconds}s"
    if whole >= 2 * 86400 and whole % 86400 == 0:
        return f"{whole // 86400}d"  # "24h" reads better than "1d"; "7d" better than "168h"
    for unit, size in (("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def parse_size(text: str | int) -> int:
    """Bytes in a size like ``"32MiB"`` or ``"200MB"``; a bare integer is bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"a size cannot be negative: {text}")
        return text
    if not isinstance(text, str):
        raise ValueError(f"expected a size like '32MiB' or '200MB', got {text!r}")
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected a size like '512KiB', '32MiB' or '200MB', got {text!r}")
    return int(match.group(1)) * _BYTES_PER_UNIT[match.group(2) or "B"]


def format_size(size: int) -> str:
    """The shortest exact spelling of ``size`` that ``parse_size`` reads back: binary units
    first, then decimal ones (OpenAI states its file limits in MB)."""
    for unit in ("GiB", "MiB", "KiB", "GB", "MB", "KB"):
        scale = _BYTES_PER_UNIT[unit]
        if size and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def format_mib(size: float) -> str:
    """``size`` bytes in MiB to a tenth, for messages ("12.3 MiB"); ``format_size`` spells
    sizes exactly."""
    return f"{size / (1 << 20):,.1f} MiB"
