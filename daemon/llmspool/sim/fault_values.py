"""The value readers of the simulator's rule tables: fault rules (``faults``) and the durations
the sim's config and control routes echo back.

Each reader takes a value as it came from TOML or JSON and the key it was under; a bad value
raises ``ConfigError`` naming that key, so ``POST /_sim/faults`` answers a 400 whose ``param`` is
the culprit and a bad ``[[sim.faults]]`` table stops the sim with the key in its message.
"""

from __future__ import annotations

from typing import Any

from llmspool.core.errors import ConfigError
from llmspool.core.units import format_duration, parse_duration

METHODS = frozenset({"GET", "POST", "DELETE"})
"""The HTTP methods the simulator's routes answer, so the only ones a rule may select."""


def duration_text(seconds: float) -> str:
    """A duration string that ``parse_duration`` reads back to exactly ``seconds``."""
    text = format_duration(seconds)
    return text if parse_duration(text) == seconds else f"{seconds}s"


def probability(value: Any, key: str) -> float:
    """A chance from 0 to 1 (a boolean is refused, though Python counts it as a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(key, f"must be a number from 0 to 1, not {value!r}")
    return float(value)


def optional_int(
    value: Any, key: str, *, minimum: int | None = None, maximum: int | None = None
) -> int | None:
    """A whole number within the bounds given, or ``None`` if absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be a whole number, not {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(key, f"must be at least {minimum}, not {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(key, f"must be at most {maximum}, not {value}")
    return value


def optional_text(value: Any, key: str) -> str | None:
    """A non-empty string, or ``None`` if absent (an empty one would select or say nothing)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be a non-empty string, not {value!r}")
    return value


def method(value: Any, key: str) -> str | None:
    """One of ``METHODS``, in any case, given back in upper case; ``None`` if absent."""
    text = optional_text(value, key)
    if text is not None and text.upper() not in METHODS:
        raise ConfigError(key, f"must be one of {', '.join(sorted(METHODS))}, not {text!r}")
    return text.upper() if text is not None else None


def optional_duration(value: Any, key: str) -> float | None:
    """A duration (``"250ms"``, ``"2s"``, a number of seconds) in seconds; ``None`` if absent."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from exc
