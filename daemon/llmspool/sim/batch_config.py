"""The ``[sim.batch]`` settings: how fast a simulated batch moves and how it fails.

The same keys, with the same spelling and value forms, are the JSON of ``GET``/``POST
/_sim/batch``: the config sets them at start, a ``POST`` changes them for batches created
afterwards (each batch keeps the settings it was created with). ``BatchSettings.from_table``
validates a table, naming a bad key with the given prefix (``sim.batch.turnaround`` in a config
file, ``turnaround`` in a ``POST``); ``to_table`` writes one back that reads to an equal value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmspool.errors import ConfigError
from llmspool.sim.faults import duration_text
from llmspool.units import parse_duration

_DRAW_SCALE = float(2**64)


def line_draw(seed: int, custom_id: str) -> float:
    """The uniform number in [0, 1) that decides a batch line's fault.

    It depends only on the sim's ``seed`` and the line's ``custom_id`` (BLAKE2b of
    ``"{seed}:{custom_id}"``), never on order or timing, so a test can tell in advance which
    lines ``line_failure_rate`` and ``line_error_rate`` hit: failure if the draw is below
    ``line_failure_rate``, else an HTTP 500 if below ``line_failure_rate + line_error_rate``.
    (A line in ``error_custom_ids`` is an HTTP 500 whatever its draw.)
    """
    digest = hashlib.blake2b(f"{seed}:{custom_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _DRAW_SCALE


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """How simulated batches behave; durations in seconds."""

    validating: float = 0.0
    """Time a batch stays ``validating`` before it fails validation or starts."""
    turnaround: float = 2.0
    """Time ``in_progress``; its lines finish one after another, evenly over it."""
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
            turnaround=duration("turnaround", defaults.turnaround),
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
