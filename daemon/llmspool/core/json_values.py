"""How many values a JSON body may hold, bounded before it is parsed.

Parsed, a JSON body costs memory by its values, not its bytes: ``{}``, ``[]`` or ``"a"`` cost
some 90 bytes each for 3 or 4 bytes of body (orjson 3.13, CPython 3.11: a 32 MiB body of
``{},`` took 941 MiB while parsed and held the event loop 0.7 s; one of ``1,`` 384 MiB), where
a 32 MiB chat request of text or base64 costs its own size again. So ``[daemon] max_body_size``
alone let one request take the daemon past a systemd ``MemoryMax``, and every call in flight
with it.

``values_over`` counts before parsing. A value is the body itself, or follows a comma, or is
the first in an array or object, which its ``[`` or ``{`` opened: so the commas and opening
brackets, plus one, bound the values (the commas alone would not: ``[[[...]]]``, 1,024 deep,
is 1,024 values between two commas). Those inside strings count too, which overcounts a body of
text full of them: a million commas and brackets is a million or so tokens of such text, past
what any model reads in one request. A body of at most twice the limit in bytes is not
counted at all (each value takes two bytes at least: itself and a comma, or an array's
brackets), so the usual request pays nothing; a 32 MiB one pays some 30 ms, against its parse.
"""

from __future__ import annotations

from llmspool.core.errors import PayloadTooLarge
from llmspool.core.units import format_mib

BYTES_PER_VALUE = 100  # what a parsed value takes at most, about: for the error's estimate


def check_values(body: bytes, limit: int, *, what: str = "the body", advice: str = "") -> None:
    """Raise 413 ``too_many_json_values`` when ``body`` may hold more than ``limit`` values,
    saying how many, what it would cost, and ``advice`` (what to do instead)."""
    values = values_over(body, limit)
    if values is not None:
        raise PayloadTooLarge(too_many_values(values, limit, what) + advice,
                              code="too_many_json_values")


def values_over(body: bytes, limit: int) -> int | None:
    """How many values ``body`` may hold (commas and opening brackets, plus one), when that
    is over ``limit``; None when it cannot be."""
    if len(body) <= 2 * limit:
        return None
    values = body.count(b",") + body.count(b"[") + body.count(b"{") + 1
    return values if values > limit else None


def too_many_values(values: int, limit: int, what: str = "the body") -> str:
    """What to tell a client whose body (or line: ``what``) ``values_over`` refused."""
    return (f"{what} holds about {values:,} JSON values (counted by its commas and brackets), "
            f"over the limit of {limit:,} ([daemon] max_json_values); parsed it would take "
            f"about {format_mib(values * BYTES_PER_VALUE)} of the daemon's memory")
