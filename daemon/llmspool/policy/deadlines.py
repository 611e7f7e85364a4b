"""Deadlines as callers write them: a duration from now (``"10m"``, ``"6h"``, ``"1h30m"``) or an
ISO-8601 time with its offset (``"2026-11-23T06:00:00Z"``). Parsed to unix seconds."""

from __future__ import annotations

import datetime as dt

from llmspool.core.units import parse_duration

MAX_DEADLINE = 30 * 86400.0  # a month: further than that is a typo, not a plan


def parse_deadline(text: str, now: float) -> float:
    """Unix seconds of the deadline ``text``, or ``ValueError`` saying what is accepted."""
    text = text.strip()
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = None
    if seconds is None:
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"a deadline is a duration like '10m', '6h', '24h' or an ISO-8601 time with "
                f"an offset like '2026-11-23T06:00:00Z'; got {text!r}"
            ) from None
        if moment.tzinfo is None:
            raise ValueError(f"the deadline {text!r} needs a UTC offset (e.g. 'Z' or '+01:00')")
        at = moment.timestamp()
    else:
        at = now + seconds
    if at <= now:
        raise ValueError(f"the deadline {text!r} is already past")
    if at - now > MAX_DEADLINE:
        raise ValueError(f"the deadline {text!r} is more than 30 days away")
    return at
