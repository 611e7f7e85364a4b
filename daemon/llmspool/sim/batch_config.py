"""The ``[sim.batch]`` settings: how fast a simulated batch moves and how it fails.

The same keys, with the same spelling and value forms, are the JSON of ``GET``/``POST
/_sim/batch``: the config sets them at start, a ``POST`` changes them for batches created
afterwards (each batch keeps the settings it was created with). ``BatchSettings.from_table``
validates a table, naming a bad key with the given prefix (``sim.batch.turnaround`` in a config
file, ``turnaround`` in a ``POST``); ``to_table`` writes one back that reads to an equal value.
Durations are rehearsal time, both in the config and in a ``POST``, and ``GET`` answers them so;
a batch takes its settings ``scaled`` by the sim's speed (``llmspool.sim.speed``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any

from llmspool.core.errors import ConfigError
from llmspool.core.units import parse_duration
from llmspool.sim.fault_values import duration_text
from llmspool.sim.speed import real

_DRAW_SCALE = float(2**64)
_Z99 = NormalDist().inv_cdf(0.99)
"""How many standard deviations the 99th percentile of a normal distribution is above its mean."""


def line_draw(seed: int, custom_id: str) -> float:
    """The uniform number in [0, 1) that decides a batch line's fault.

    It depends only on the sim's ``seed`` and the line's ``custom_id`` (BLAKE2b of
    ``"{seed}:{custom_id}"``), never on order or timing, so a test can tell in advance which
    lines ``line_failure_rate`` and ``line_error_rate`` hit: failure if the draw is below
    ``line_failure_rate``, else an HTTP 500 if below ``line_failure_rate + line_error_rate``.
    (A line in ``error_custom_ids`` is an HTTP 500 whatever its draw.)
    """
    return _hash64(f"{seed}:{custom_id}") / _DRAW_SCALE


def turnaround_draw(seed: int, order: int, median: float, p99: float | None) -> float:
    """How long the batch created ``order``-th (from 0) is ``in_progress``.

    With ``p99`` unset (or not above ``median``) it is ``median``. Otherwise a draw from the
    log-normal distribution whose median is ``median`` and whose 99th percentile is ``p99``;
    it depends only on ``seed`` and ``order`` (BLAKE2b of ``"turnaround:{seed}:{order}"``), so
    the same seed and sequence of batches get the same turnarounds, whatever the timing. The
    draw scales with its parameters: at any speed a batch gets the same share of its settings.
    """
    if p99 is None or p99 <= median:
        return median
    # A uniform number strictly inside (0, 1), as the inverse normal CDF needs.
    uniform = (_hash64(f"turnaround:{seed}:{order}") + 0.5) / _DRAW_SCALE
    sigma = math.log(p99 / median) / _Z99
    return median * math.exp(sigma * NormalDist().inv_cdf(uniform))


def _hash64(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """How simulated batches behave; durations in seconds."""

    validating: float = 0.0
    """Time a batch stays ``validating`` before it fails validation or starts."""
    turnaround: float = 2.0
    """Time ``in_progress``; its lines finish one after another, evenly over it. With
    ``turnaround_p99`` set, the median time in progress."""
    turnaround_p99: float | None = None
    """``None`` ("" in TOML and JSON): every batch is in progress exactly ``turnaround``. Else
    the 99th percentile of the time in progress: each batch draws its own from the log-normal
    distribution with median ``turnaround`` and this 99th percentile (``turnaround_draw``,
    seeded with the sim's ``seed`` and the batch's creation order); at least ``turnaround``.
    Realistic, after published measurements of OpenAI batch turnaround on small batches
    (p50 about 2.5 minutes, p99 about 6 hours): ``turnaround = "150s"``,
    ``turnaround_p99 = "6h"`` (about 0.15% of such batches then outlast a 24 h
    ``expire_after`` and expire)."""
    finalizing: float = 0.0
    """Time ``finalizing`` before ``completed``."""
    expire_after: float = 24 * 3600.0
    """A batch unfinished this long after its creation expires (also its ``expires_at``)."""
    expire_partial: float = 0.5
    """Share of an expired batch's lines that finished (the first ones in the file)."""
    cancel_delay: float = 1.0
    """Time ``cancelling`` before ``cancelled``."""
    line_error_rate: float = 0.0
    """Share of lines answered with an HTTP 500 (``response.status_code`` 500), see
    ``line_draw``."""
    line_failure_rate: float = 0.0
    """Share of lines that fail without a response (``error.code`` ``server_error``)."""
    error_custom_ids: tuple[str, ...] = ()
    """Lines with these ``custom_id`` are answered with an HTTP 500, whatever the rates."""
    enqueued_token_limit: int = 0
    """Per-model cap on prompt tokens of batches in progress (0: none): a batch that would
    pass it fails validation with ``token_limit_exceeded``."""
    fail_validation: str = ""
    """If set, an error code: every batch created meanwhile fails validation with it."""

    @classmethod
    def from_table(cls, table: Any, prefix: str) -> BatchSettings:
        """Validate a table of settings; missing keys take their defaults.

        A bad value raises ``ConfigError`` keyed ``{prefix}.{key}`` (just ``key`` if ``prefix``
        is empty).
        """

        def key(name: str) -> str:
            return f"{prefix}.{name}" if prefix else name

        if not isinstance(table, Mapping):
            raise ConfigError(prefix or "body", "must be a table (JSON object) of batch settings")
        known = list(cls.__dataclass_fields__)
        for name in table:
            if name not in known:
                raise ConfigError(key(str(name)), f"unknown key; known keys: {', '.join(known)}")
        defaults = cls()

        def duration(name: str, default: float) -> float:
            if name not in table:
                return default
            try:
                return parse_duration(table[name])
            except ValueError as exc:
                raise ConfigError(key(name), str(exc)) from exc

        def fraction(name: str, default: float) -> float:
            value = table.get(name, default)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(key(name), f"must be a number from 0 to 1, not {value!r}")
            return float(value)

        turnaround = duration("turnaround", defaults.turnaround)
        turnaround_p99: float | None = None
        if table.get("turnaround_p99", "") != "":
            turnaround_p99 = duration("turnaround_p99", 0.0)
            if turnaround <= 0:
                raise ConfigError(
                    key("turnaround_p99"), "needs a turnaround (the median) of more than 0s"
                )
            if turnaround_p99 < turnaround:
                raise ConfigError(
                    key("turnaround_p99"),
                    f'must be at least turnaround ({duration_text(turnaround)}), or "" '
                    f"(unset), not {duration_text(turnaround_p99)}",
                )
        expire_after = duration("expire_after", defaults.expire_after)
        if expire_after <= 0:
            raise ConfigError(key("expire_after"), "must be more than 0s")
        error_rate = fraction("line_error_rate", defaults.line_error_rate)
        failure_rate = fraction("line_failure_rate", defaults.line_failure_rate)
        if error_rate + failure_rate > 1:
            raise ConfigError(
                key("line_error_rate"), "line_error_rate + line_failure_rate must be at most 1"
            )
        limit = table.get("enqueued_token_limit", defaults.enqueued_token_limit)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError(
                key("enqueued_token_limit"), f"must be a whole number from 0 up, not {limit!r}"
            )
        code = table.get("fail_validation", defaults.fail_validation)
        if not isinstance(code, str) or code != code.strip():
            raise ConfigError(
                key("fail_validation"), f'must be an error code or "" (off), not {code!r}'
            )
        return cls(
            validating=duration("validating", defaults.validating),
            turnaround=turnaround,
            turnaround_p99=turnaround_p99,
            finalizing=duration("finalizing", defaults.finalizing),
            expire_after=expire_after,
            expire_partial=fraction("expire_partial", defaults.expire_partial),
            cancel_delay=duration("cancel_delay", defaults.cancel_delay),
            line_error_rate=error_rate,
            line_failure_rate=failure_rate,
            error_custom_ids=_custom_ids(
                table.get("error_custom_ids", []), key("error_custom_ids")
            ),
            enqueued_token_limit=limit,
            fail_validation=code,
        )

    def to_table(self) -> dict[str, Any]:
        """The settings as ``from_table`` reads them: TOML-ready, and the JSON of
        ``GET /_sim/batch``."""
        return {
            "validating": duration_text(self.validating),
            "turnaround": duration_text(self.turnaround),
            "turnaround_p99": (
                "" if self.turnaround_p99 is None else duration_text(self.turnaround_p99)
            ),
            "finalizing": duration_text(self.finalizing),
            "expire_after": duration_text(self.expire_after),
            "expire_partial": self.expire_partial,
            "cancel_delay": duration_text(self.cancel_delay),
            "line_error_rate": self.line_error_rate,
            "line_failure_rate": self.line_failure_rate,
            "error_custom_ids": list(self.error_custom_ids),
            "enqueued_token_limit": self.enqueued_token_limit,
            "fail_validation": self.fail_validation,
        }

    def scaled(self, speed: float) -> BatchSettings:
        """These settings with every duration divided by ``speed``: real time at that speed."""
        p99 = self.turnaround_p99
        return replace(
            self,
            validating=real(self.validating, speed),
            turnaround=real(self.turnaround, speed),
            turnaround_p99=None if p99 is None else real(p99, speed),
            finalizing=real(self.finalizing, speed),
            expire_after=real(self.expire_after, speed),
            cancel_delay=real(self.cancel_delay, speed),
        )

    def changed(self, changes: Mapping[str, Any]) -> BatchSettings:
        """These settings with ``changes`` (keys as in ``to_table``) applied; a bad key or
        value raises ``ConfigError`` naming the bare key."""
        return BatchSettings.from_table({**self.to_table(), **changes}, "")


def settings_from_command(
    data: Any, current: BatchSettings, configured: BatchSettings
) -> BatchSettings:
    """The settings after a ``POST /_sim/batch`` body: any settings keys change ``current``;
    with ``"reset": true`` they change ``configured`` instead. A bad key or value raises
    ``ConfigError`` naming the bare key."""
    if not isinstance(data, Mapping):
        raise ConfigError("body", "must be a JSON object of [sim.batch] settings")
    changes = dict(data)
    base = current
    if "reset" in changes:
        if changes.pop("reset") is not True:
            raise ConfigError("reset", "must be true (or left out)")
        base = configured
    return base.changed(changes)


def _custom_ids(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(key, "must be a list of custom_id strings")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{key}[{index}]", f"must be a non-empty string, not {item!r}")
    return tuple(value)
