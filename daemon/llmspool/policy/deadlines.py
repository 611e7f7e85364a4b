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


class DeadlineHeaders:
    """``parse_deadline`` for the ``x-llmspool-deadline`` header of every call, with the
    durations it has read remembered: most programs send one spelling ("10m") on every call,
    and reading it again (a regular expression's matches, their groups, the checks) was about
    a sixth of what a deadline cost a call on the daemon's event loop (0.9 µs in a loop; 0.06
    remembered). A time of day is read each time (it is not the same deadline from one call
    to the next)."""

    LIMIT = 256  # spellings remembered; past it, the memo starts over

    def __init__(self) -> None:
        self._durations: dict[str, float] = {}  # spelling → seconds, each a valid deadline

    def parse(self, text: str, now: float) -> float:
        """Unix seconds of the deadline ``text``, or ``ValueError`` saying what is
        accepted (``parse_deadline``'s)."""
        seconds = self._durations.get(text)
        if seconds is not None:
            return now + seconds
        at = parse_deadline(text, now)
        try:
            duration = parse_duration(text.strip())
        except ValueError:
            return at  # a time of day
        # Valid now is valid at any moment: a duration is more than zero and at most a month.
        if len(self._durations) >= self.LIMIT:
            self._durations.clear()
        self._durations[text] = duration
        return at
