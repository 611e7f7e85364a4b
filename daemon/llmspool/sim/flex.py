"""Flex processing in the simulator: which models offer it, how slow it is, and when it is out.

A ``service_tier: "flex"`` request for a model without a flex price in the price table is a 400
(see ``validate.served_tier``). Otherwise flex capacity may be *unavailable*, and the request is
answered at once with a 429 whose ``error.code`` is ``resource_unavailable`` and which has no
``retry-after`` header (``resource_unavailable_error``). Flex is unavailable:

- during a *timed spell* started at run time (``POST /_sim/flex {"unavailable_for": "5s"}``);
- else, if forced at run time (``{"unavailable": true}`` or ``false``), as forced; ``null``
  returns to the configured behaviour;
- else during a scheduled outage: a ``[[sim.flex_outages]]`` window, or the first
  ``flex_outage_fraction`` of every ``flex_outage_period`` (both counted from the sim's start);
- else with chance ``flex_unavailable_probability`` per request, from a seeded RNG.

A flex request that is served waits ``flex_latency`` plus a uniform 0..``flex_latency_jitter``
(its own seeded RNG) on top of ``latency``, and ``flex_latency_per_token`` per token.

All of these durations are rehearsal time (``llmspool.sim.speed``): ``FlexCapacity.from_config``
runs its clock ``speed`` times as fast, so the outage schedule, timed spells and the
``elapsed_seconds`` and ``spell_left_seconds`` of ``GET /_sim/flex`` are in rehearsal seconds;
the app divides ``FlexPacing``'s waits by the speed when it waits.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from llmspool.core.calls import Tier
from llmspool.core.errors import ApiError, ConfigError
from llmspool.core.pricing import load_price_table
from llmspool.core.units import parse_duration
from llmspool.sim.fault_values import duration_text
from llmspool.sim.speed import rehearsal_clock


class FlexSettings(Protocol):
    """The part of the simulator's config (``llmspool.sim.config.SimConfig``) flex reads;
    named here so that this module does not import the config, which imports it."""

    @property
    def speed(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def latency_per_token(self) -> float: ...
    @property
    def flex_latency(self) -> float: ...
    @property
    def flex_latency_jitter(self) -> float: ...
    @property
    def flex_latency_per_token(self) -> float | None: ...
    @property
    def flex_unavailable_probability(self) -> float: ...
    @property
    def flex_outage_period(self) -> float: ...
    @property
    def flex_outage_fraction(self) -> float: ...
    @property
    def flex_outages(self) -> Sequence[FlexOutage]: ...


FLEX = "flex"
PRICING_PROVIDER = "openai"
RESOURCE_UNAVAILABLE = "resource_unavailable"
RESOURCE_UNAVAILABLE_MESSAGE = (
    "Resource Unavailable: flex processing capacity is temporarily exhausted. "
    "Please retry later or use service_tier auto."
)
_OUTAGE_KEYS = ("start", "duration")
_COMMAND_KEYS = ("unavailable", "unavailable_for")


def resource_unavailable_error() -> ApiError:
    """The 429 a flex request gets when capacity is out: not a rate limit, so no retry hint."""
    return ApiError(
        RESOURCE_UNAVAILABLE_MESSAGE,
        status=429,
        error_type=RESOURCE_UNAVAILABLE,
        code=RESOURCE_UNAVAILABLE,
    )


def flex_models(pricing_file: str, served: Iterable[str]) -> frozenset[str]:
    """The served models that have a flex price in the table at ``pricing_file`` ("": bundled).

    A file that cannot be read or is malformed raises ``ConfigError`` keyed ``sim.pricing_file``.
    """
    try:
        table = load_price_table(pricing_file or None)
    except ConfigError as exc:
        raise ConfigError("sim.pricing_file", str(exc)) from exc
    return frozenset(model for model in served if Tier.FLEX in table.tiers(PRICING_PROVIDER, model))


@dataclass(frozen=True, slots=True)
class FlexOutage:
    """A scheduled spell: flex is unavailable from ``start`` for ``duration`` seconds, counted
    from the sim's start."""

    start: float
    duration: float

    def covers(self, elapsed: float) -> bool:
        return self.start <= elapsed < self.start + self.duration

    @classmethod
    def from_mapping(cls, data: Any, key: str) -> FlexOutage:
        """Read ``{start, duration}``; a bad entry raises ``ConfigError`` naming ``key.name``."""
        if not isinstance(data, Mapping):
            raise ConfigError(key, "a flex outage must be a table with start and duration")
        for name in data:
            if name not in _OUTAGE_KEYS:
                raise ConfigError(f"{key}.{name}", "unknown key; known keys: start, duration")
        for name in _OUTAGE_KEYS:
            if name not in data:
                raise ConfigError(f"{key}.{name}", 'missing; a duration like "30s"')
        start = _duration(data["start"], f"{key}.start")
        duration = _duration(data["duration"], f"{key}.duration")
        if duration <= 0:
            raise ConfigError(f"{key}.duration", "must be more than 0s")
        return cls(start=start, duration=duration)

    def to_mapping(self) -> dict[str, str]:
        return {"start": duration_text(self.start), "duration": duration_text(self.duration)}


def outages_from_list(items: Any, key: str) -> tuple[FlexOutage, ...]:
    """Outages from a list of ``{start, duration}`` tables (or one table), named ``key[i]``."""
    if isinstance(items, Mapping):
        return (FlexOutage.from_mapping(items, key),)
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise ConfigError(key, "must be a list of tables with start and duration")
    return tuple(FlexOutage.from_mapping(item, f"{key}[{i}]") for i, item in enumerate(items))


class SpellCause(StrEnum):
    """Why flex is unavailable right now (the per-request chance is not a spell)."""

    TIMED = "timed"
    """``POST /_sim/flex {"unavailable_for": ...}``, until it runs out."""
    FORCED = "forced"
    """``POST /_sim/flex {"unavailable": true}``, until changed."""
    OUTAGE = "outage"
    """A ``[[sim.flex_outages]]`` window."""
    PERIOD = "period"
    """The first ``flex_outage_fraction`` of a ``flex_outage_period``."""


@dataclass(frozen=True, slots=True)
class FlexCommand:
    """A ``POST /_sim/flex`` body: force a state (``None``: back to config) or a timed spell."""

    forced: bool | None = None
    spell_seconds: float | None = None


def command_from_json(data: Any) -> FlexCommand:
    """Read ``{"unavailable": true|false|null}`` or ``{"unavailable_for": "5s"}``.

    A wrong body raises ``ConfigError`` naming the offending key.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("body", 'must be a JSON object like {"unavailable": true}')
    for name in data:
        if name not in _COMMAND_KEYS:
            raise ConfigError(name, "unknown key; known keys: unavailable, unavailable_for")
    if len(data) != 1:
        raise ConfigError("unavailable", "give exactly one of unavailable, unavailable_for")
    if "unavailable" in data:
        forced = data["unavailable"]
        if forced is not None and not isinstance(forced, bool):
            raise ConfigError("unavailable", f"must be true, false or null, not {forced!r}")
        return FlexCommand(forced=forced)
    return FlexCommand(spell_seconds=_duration(data["unavailable_for"], "unavailable_for"))


class FlexCapacity:
    """Whether flex capacity is there for the next request: spells, schedule and chance.

    ``refuses`` never awaits, so on one event loop counts of refusals are exact.
    """

    def __init__(
        self,
        *,
        outages: Iterable[FlexOutage] = (),
        period: float = 0.0,
        fraction: float = 0.0,
        probability: float = 0.0,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._outages = tuple(outages)
        self._period = period
        self._fraction = fraction
        self._probability = probability
        # Its own RNG, so that flex spells do not shift which requests a fault rule hits.
        self._rng = random.Random(f"flex-unavailable:{seed}")
        self._clock = clock
        self._started = clock()
        self._forced: bool | None = None
        self._spell_until: float | None = None

    @classmethod
    def from_config(
        cls, config: FlexSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> FlexCapacity:
        """The capacity ``config`` describes, on ``clock`` sped up by ``config.speed``."""
        return cls(
            outages=config.flex_outages,
            period=config.flex_outage_period,
            fraction=config.flex_outage_fraction,
            probability=config.flex_unavailable_probability,
            seed=config.seed,
            clock=rehearsal_clock(clock, config.speed),
        )

    def spell(self) -> SpellCause | None:
        """The spell in force now, if any."""
        return self._spell_at(self._clock())

    def _spell_at(self, now: float) -> SpellCause | None:
        if self._spell_until is not None:
            if now < self._spell_until:
                return SpellCause.TIMED
            self._spell_until = None
        if self._forced is not None:
            return SpellCause.FORCED if self._forced else None
        elapsed = now - self._started
        if any(outage.covers(elapsed) for outage in self._outages):
            return SpellCause.OUTAGE
        if self._period > 0 and elapsed % self._period < self._fraction * self._period:
            return SpellCause.PERIOD
        return None

    def refuses(self) -> bool:
        """Whether the flex request arriving now is refused (draws its chance if need be)."""
        if self.spell() is not None:
            return True
        if self._forced is False or self._probability <= 0.0:
            return False
        return self._rng.random() < self._probability

    def apply(self, command: FlexCommand) -> None:
        """Force a state (clearing any timed spell), or start a timed spell on top of it."""
        if command.spell_seconds is not None:
            self._spell_until = self._clock() + command.spell_seconds
        else:
            self._forced = command.forced
            self._spell_until = None

    def state_json(self) -> dict[str, Any]:
        """The live part of ``GET /_sim/flex``."""
        now = self._clock()
        cause = self._spell_at(now)
        return {
            "unavailable": cause is not None,
            "cause": None if cause is None else cause.value,
            "forced": self._forced,
            "spell_left_seconds": None if self._spell_until is None else self._spell_until - now,
            # The clock of the outage schedule: rehearsal seconds since the sim started.
            "elapsed_seconds": now - self._started,
        }


class FlexPacing:
    """How long a served flex answer takes: the extra wait before it and the per-token pace."""

    def __init__(self, *, latency: float, jitter: float, per_token: float, seed: int) -> None:
        self.latency = latency
        self.jitter = jitter
        self.per_token = per_token
        self._rng = random.Random(f"flex-latency:{seed}")

    @classmethod
    def from_config(cls, config: FlexSettings) -> FlexPacing:
        per_token = config.flex_latency_per_token
        return cls(
            latency=config.flex_latency,
            jitter=config.flex_latency_jitter,
            per_token=config.latency_per_token if per_token is None else per_token,
            seed=config.seed,
        )

    def extra_wait(self) -> float:
        """The wait a flex answer adds to ``latency``: fixed plus a fresh uniform jitter."""
        if self.jitter <= 0:
            return self.latency
        return self.latency + self._rng.uniform(0.0, self.jitter)


def config_json(config: FlexSettings, models: Iterable[str], pacing: FlexPacing) -> dict[str, Any]:
    """The configured part of ``GET /_sim/flex`` (latency per token as in effect)."""
    return {
        "flex_models": sorted(models),
        "flex_latency": duration_text(config.flex_latency),
        "flex_latency_jitter": duration_text(config.flex_latency_jitter),
        "flex_latency_per_token": duration_text(pacing.per_token),
        "flex_unavailable_probability": config.flex_unavailable_probability,
        "flex_outage_period": duration_text(config.flex_outage_period),
        "flex_outage_fraction": config.flex_outage_fraction,
        "flex_outages": [outage.to_mapping() for outage in config.flex_outages],
    }


def _duration(value: Any, key: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from exc
