"""Anthropic's rate-limit headers in the ``x-ratelimit-*`` form the daemon's limiter reads.

Anthropic answers ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,
remaining,reset}``, the reset as an RFC 3339 time (``2026-12-01T12:00:30Z``); the daemon's
limiter (``llmspool.resilience.ratelimit_headers``) reads OpenAI's ``x-ratelimit-{limit,
remaining,reset}-{requests,tokens}``, the reset as a Go-style duration from now (``12.5s``).

The tokens family is Anthropic's most restrictive token limit in force, which is the one to
pace by; where an answer has only the input-tokens family, that stands in. ``retry-after``
(seconds) passes through unchanged: the limiter prefers it to the resets on a 429.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import datetime

__all__ = ["go_duration", "openai_ratelimit_headers"]

_PREFIX = "anthropic-ratelimit-"
_FIELDS = ("limit", "remaining", "reset")
_SECONDS_PER_HOUR = 3600
_SECONDS_PER_MINUTE = 60


def go_duration(seconds: float) -> str:
    """``seconds`` (rounded to the millisecond, at least 0) as Go prints a duration:
    ``0s``, ``12.5s``, ``1m3s``, ``2h0m5s``."""
    millis = max(0, round(seconds * 1000)) if math.isfinite(seconds) else 0
    hours, millis = divmod(millis, _SECONDS_PER_HOUR * 1000)
    minutes, millis = divmod(millis, _SECONDS_PER_MINUTE * 1000)
    whole, fraction = divmod(millis, 1000)
    secs = f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def _reset_in(value: str, now: float) -> str | None:
    """The time from ``now`` (epoch seconds) to RFC 3339 ``value``; None if unreadable."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"  # RFC 3339 allows a lower-case "z" too
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None  # RFC 3339 always has an offset; a time without one cannot be placed
    return go_duration(when.timestamp() - now)


def openai_ratelimit_headers(headers: Mapping[str, str], *,
                             now: float | None = None) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers (and ``retry-after``) for Anthropic answer ``headers``
    (any capitalisation); ``now`` is the epoch time the resets are counted from (the clock's
    if None). Values that cannot be read are left out."""
    lowered = {name.lower(): value for name, value in headers.items()}
    clock = time.time() if now is None else now
    out: dict[str, str] = {}
    token_family = "tokens" if any(f"{_PREFIX}tokens-{field}" in lowered for field in _FIELDS) \
        else "input-tokens"
    for theirs, ours in (("requests", "requests"), (token_family, "tokens")):
        for field in _FIELDS:
            value = lowered.get(f"{_PREFIX}{theirs}-{field}")
            if value is None:
                continue
            if field == "reset":
                reset = _reset_in(value, clock)
                if reset is not None:
                    out[f"x-ratelimit-reset-{ours}"] = reset
            else:
                out[f"x-ratelimit-{field}-{ours}"] = value.strip()
    if "retry-after" in lowered:
        out["retry-after"] = lowered["retry-after"]
    return out
