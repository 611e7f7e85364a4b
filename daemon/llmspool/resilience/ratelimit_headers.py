"""What upstream answers say about rate limits: reading OpenAI's ``x-ratelimit-*`` headers
(limits, what remains, when a bucket resets; Go-style durations) and how long a 429 asks us to
wait (``retry-after-ms``, ``retry-after``, else the reset of the exhausted bucket). Plugins
for other upstreams map their headers onto these (``llmspool_anthropic.ratelimits``).

Pure: a header we cannot read is ignored, it never fails a call.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

from llmspool.core.http1 import LowercaseHeaders

DEFAULT_PAUSE = 1.0
"""Seconds to pause after a 429 that hints at nothing."""

# The two limits of a key, as the headers name them (``x-ratelimit-limit-{kind}``).
REQUESTS = "requests"
TOKENS = "tokens"


# Go's time.Duration.String() forms ("1m30.5s", "12ms", "6m0s", "1h2m3s", "500µs").
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,  # Go accepts the micro sign and the Greek mu alike
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_go_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration (``1s``, ``6m0s``, ``12ms``, ``1m30.5s``, ``0s``, ``0``);
    a bare number is read as seconds, which some OpenAI-compatible servers send. Anything
    else (including negative values) gives ``None``: a header we cannot read is ignored, it
    never fails a call. ``llmspool.core.units.parse_duration`` is for operators' config and raises,
    and does not know Go's ``us``/``ns`` units, hence this one."""
    if text is None:
        return None
    compact = text.strip().removeprefix("+")
    if not compact:
        return None
    bare = header_number(compact)
    if bare is not None:
        return bare
    position = 0
    total = 0.0
    for match in _GO_PART.finditer(compact):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _GO_UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(compact) or not math.isfinite(total):
        return None
    return total


def header_number(text: str | None) -> float | None:
    """A finite, non-negative number in a header, or ``None``."""
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def lowered_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    if isinstance(headers, LowercaseHeaders):  # the data plane's pool: lower-cased already
        return headers
    # Plain dicts from tests or plugins may keep the upstream's capitalisation.
    return {name.lower(): value for name, value in headers.items()}


def retry_pause(headers: Mapping[str, str]) -> float:
    """Seconds a 429 asks us to wait: ``retry-after-ms``, else ``retry-after`` (seconds or an
    HTTP date), else the reset of the exhausted bucket(s), else ``DEFAULT_PAUSE``."""
    lowered = lowered_headers(headers)
    milliseconds = header_number(lowered.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000.0
    retry_after = lowered.get("retry-after")
    if retry_after is not None:
        seconds = header_number(retry_after)
        if seconds is not None:
            return seconds
        try:
            when = parsedate_to_datetime(retry_after)
        except (TypeError, ValueError, IndexError):
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return max(0.0, when.timestamp() - time.time())
    exhausted: list[float] = []
    others: list[float] = []
    for kind in (REQUESTS, TOKENS):
        reset = parse_go_duration(lowered.get(f"x-ratelimit-reset-{kind}"))
        if reset is None:
            continue
        remaining = header_number(lowered.get(f"x-ratelimit-remaining-{kind}"))
        (exhausted if remaining is not None and remaining < 1 else others).append(reset)
    # "reset" is when a bucket is full again: for the bucket(s) the 429 says are empty, that
    # is the honest answer. If none says so, the soonest reset is the least harmful guess; our
    # own drained bucket paces the restart anyway.
    if exhausted:
        return max(exhausted)
    if others:
        return min(others)
    return DEFAULT_PAUSE
