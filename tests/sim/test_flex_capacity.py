"""Flex spells, pacing and run-time commands on a fake clock: exact, instant, no server."""

from __future__ import annotations

from typing import Any

import pytest
from llmspool.core.errors import ConfigError
from llmspool.sim.config import SimConfig
from llmspool.sim.flex import (
    FlexCapacity,
    FlexCommand,
    FlexOutage,
    FlexPacing,
    SpellCause,
    command_from_json,
    flex_models,
    resource_unavailable_error,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def causes(capacity: FlexCapacity, clock: FakeClock, times: list[float]) -> list[str | None]:
    """The spell cause at each of ``times`` (seconds after the start)."""
    seen: list[str | None] = []
    for at in times:
        clock.now = 1000.0 + at
        cause = capacity.spell()
        seen.append(None if cause is None else cause.value)
    return seen


def test_scheduled_outages_cover_start_to_start_plus_duration() -> None:
    clock = FakeClock()
    capacity = FlexCapacity(outages=[FlexOutage(10, 30), FlexOutage(60, 1)], clock=clock)
    times = [0, 9.999, 10, 39.999, 40, 59, 60, 60.5, 61]
    assert causes(capacity, clock, times) == [
        None, None, "outage", "outage", None, None, "outage", "outage", None,
    ]  # fmt: skip


def test_periodic_outage_is_the_first_fraction_of_each_period() -> None:
    clock = FakeClock()
    capacity = FlexCapacity(period=10, fraction=0.3, clock=clock)
    times = [0, 2.9, 3, 9.9, 10, 12.5, 13.1, 25]
    assert causes(capacity, clock, times) == [
        "period", "period", None, None, "period", "period", None, None,
    ]  # fmt: skip
    # Over many periods the share of unavailable time is the fraction.
    samples = [i / 100 for i in range(100_000)]
    unavailable = sum(cause is not None for cause in causes(capacity, clock, samples))
    assert unavailable == 30_000


def test_forcing_overrides_the_schedule_until_changed() -> None:
    clock = FakeClock()
    capacity = FlexCapacity(period=10, fraction=0.5, probability=1.0, clock=clock)
    capacity.apply(FlexCommand(forced=True))
    assert causes(capacity, clock, [1, 7]) == ["forced", "forced"]
    capacity.apply(FlexCommand(forced=False))
    assert causes(capacity, clock, [1, 7]) == [None, None]
    # Forced available also silences the per-request chance.
    assert not capacity.refuses()
    capacity.apply(FlexCommand(forced=None))
    assert causes(capacity, clock, [1, 7]) == ["period", None]
    assert capacity.refuses()  # at 7 s: no spell, but probability 1


def test_a_timed_spell_ends_by_itself_and_the_previous_state_resumes() -> None:
    clock = FakeClock()
    capacity = FlexCapacity(clock=clock)
    capacity.apply(FlexCommand(forced=False))
    clock.now += 5
    capacity.apply(FlexCommand(spell_seconds=2.0))
    state = capacity.state_json()
    assert state == {
        "unavailable": True,
        "cause": "timed",
        "forced": False,
        "spell_left_seconds": 2.0,
        "elapsed_seconds": 5.0,
    }
    clock.now += 1.999
    assert capacity.spell() is SpellCause.TIMED
    clock.now += 0.001
    assert capacity.spell() is None
    assert capacity.state_json()["spell_left_seconds"] is None
    # Forcing a state ends a timed spell at once.
    capacity.apply(FlexCommand(spell_seconds=60.0))
    capacity.apply(FlexCommand(forced=None))
    assert capacity.spell() is None


def test_probability_is_seeded_and_only_flex_draws() -> None:
    def run(seed: int) -> list[bool]:
        capacity = FlexCapacity(probability=0.3, seed=seed)
        return [capacity.refuses() for _ in range(1000)]

    first, again, other = run(1), run(1), run(2)
    assert first == again
    assert first != other
    assert 230 <= sum(first) <= 370
    never = FlexCapacity(probability=0.0)
    assert not any(never.refuses() for _ in range(1000))


def test_pacing_draws_jitter_within_bounds_and_defaults_per_token() -> None:
    config = SimConfig.from_table(
        {"flex_latency": "1s", "flex_latency_jitter": "500ms", "latency_per_token": "20ms"}
    )
    pacing = FlexPacing.from_config(config)
    waits = [pacing.extra_wait() for _ in range(1000)]
    assert all(1.0 <= wait <= 1.5 for wait in waits)
    assert max(waits) - min(waits) > 0.45
    again = FlexPacing.from_config(config)
    assert [again.extra_wait() for _ in range(5)] == waits[:5]
    assert pacing.per_token == 0.02
    own = SimConfig.from_table({"latency_per_token": "20ms", "flex_latency_per_token": "0s"})
    assert FlexPacing.from_config(own).per_token == 0.0
    fixed = FlexPacing.from_config(SimConfig.from_table({"flex_latency": "3s"}))
    assert {fixed.extra_wait() for _ in range(10)} == {3.0}


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ([], "body"),
        ({}, "unavailable"),
        ({"unavailable": "yes"}, "unavailable"),
        ({"unavailable": 1}, "unavailable"),
        ({"unavailable_for": "a while"}, "unavailable_for"),
        ({"unavailable_for": -1}, "unavailable_for"),
        ({"unavailable": True, "unavailable_for": "1s"}, "unavailable"),
        ({"down": True}, "down"),
    ],
)
def test_bad_commands_name_their_key(body: Any, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        command_from_json(body)
    assert caught.value.key == key


def test_commands_are_read() -> None:
    assert command_from_json({"unavailable": True}) == FlexCommand(forced=True)
    assert command_from_json({"unavailable": False}) == FlexCommand(forced=False)
    assert command_from_json({"unavailable": None}) == FlexCommand(forced=None)
    assert command_from_json({"unavailable_for": "1m"}) == FlexCommand(spell_seconds=60.0)
    assert command_from_json({"unavailable_for": 0.25}) == FlexCommand(spell_seconds=0.25)


def test_flex_models_come_from_the_price_table() -> None:
    served = SimConfig().models
    assert flex_models("", served) == {"gpt-5", "gpt-5-mini", "gpt-5-nano", "o3", "o4-mini"}
    with pytest.raises(ConfigError) as caught:
        flex_models("/nonexistent/prices.toml", served)
    assert caught.value.key == "sim.pricing_file"


def test_the_unavailable_error_is_a_429_keyed_on_its_code() -> None:
    error = resource_unavailable_error()
    assert error.status == 429
    assert error.code == "resource_unavailable"
    assert error.headers() == {}
