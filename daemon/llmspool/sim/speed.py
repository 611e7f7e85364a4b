"""Time compression: ``[sim] speed`` (or ``llmspool sim --speed``) runs rehearsal time faster.

Every duration the simulator is given is *rehearsal time*, and at speed ``S`` it takes ``1/S``
of that in real time: ``latency``, ``latency_per_token``, the ``flex_*`` latencies, the flex
outage schedule (``flex_outage_period``, ``[[sim.flex_outages]]``), the ``delay`` and
``retry_after`` of fault rules, and every ``[sim.batch]`` duration (so a batch with
``turnaround = "20s"`` at speed 20 is in progress for 1 s). The same holds for the durations
given at run time (``POST /_sim/batch``, ``/_sim/flex``, ``/_sim/faults``), so a script written
for speed 1 works at any speed; what the ``GET`` of those answers is what was set, in rehearsal
time, and the live clocks of ``GET /_sim/flex`` (``elapsed_seconds``, ``spell_left_seconds``)
count rehearsal seconds too.

Not compressed: the timestamps of API answers (``created_at``, ``completed_at``...) are real Unix
times, since the program under test reads them against its own clock; and the rate limits are
per real minute, as the ``x-ratelimit-*`` headers say.

The simulator keeps every setting in rehearsal time and converts where it waits (``real``) or
reads a clock (``rehearsal_clock``); batches convert their settings once, when created.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from llmspool.core.errors import ConfigError

DEFAULT_SPEED = 1.0


def speed_from(value: Any, key: str) -> float:
    """A speed factor: a finite number more than 0 (``ConfigError`` naming ``key`` if not)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(key, f"must be a number more than 0 (2: twice as fast), not {value!r}")
    return float(value)


def real(seconds: float, speed: float) -> float:
    """How long ``seconds`` of rehearsal time take in real time at ``speed``."""
    return seconds / speed


def rehearsal_clock(clock: Callable[[], float], speed: float) -> Callable[[], float]:
    """A clock that reads like ``clock`` now and then runs ``speed`` times as fast."""
    if speed == DEFAULT_SPEED:
        return clock
    start = clock()

    def now() -> float:
        return start + (clock() - start) * speed

    return now
