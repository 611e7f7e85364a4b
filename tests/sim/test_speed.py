"""Time compression and batch turnaround draws: ``[sim] speed`` / ``--speed`` divide every
duration (configured or set at run time), ``[sim.batch] turnaround_p99`` gives each batch a
seeded log-normal turnaround.

Timing is checked on real sim processes at speeds that turn seconds of rehearsal time into
fractions of a real second; the statistics of the draws are checked on ``turnaround_draw``
itself, and which batch gets which draw on a ``BatchRegistry`` with a fake clock.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import pytest
from llmspool.sim.app import build_app
from llmspool.sim.batch_config import BatchSettings, turnaround_draw
from llmspool.sim.batches import BatchRegistry
from llmspool.sim.cli import load_config
from llmspool.sim.config import SimConfig
from llmspool.sim.stats import SimStats

from tests.sim.test_batches import (
    Clock,
    batch_settings,
    chat_line,
    configure,
    create,
    submit,
    wait_for,
)
from tests.sim.test_config import assert_refused
from tests.support import waiting

if TYPE_CHECKING:
    from tests.sim.conftest import RunningSim

    StartSim = Callable[..., RunningSim]
    RunSim = Callable[..., Any]

MESSAGES: Any = [{"role": "user", "content": "x"}]
# The realistic setting of the key's documentation: p50 2.5 min, p99 6 h.
MEDIAN = 150.0
P99 = 6 * 3600.0


def timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def chat_seconds(client: openai.OpenAI) -> float:
    """Real seconds one chat completion takes."""
    return timed(lambda: client.chat.completions.create(model="gpt-4o", messages=MESSAGES))


def batch_seconds(client: openai.OpenAI, lines: int = 4) -> float:
    """Real seconds from creating a batch to seeing it completed."""
    started = time.monotonic()
    batch = submit(client, [chat_line(f"r{i}") for i in range(lines)])
    wait_for(client, batch.id, "completed")
    return time.monotonic() - started


# -- speed on a running sim -------------------------------------------------------------------


def test_speed_divides_latency_and_stream_pace(start_sim: StartSim) -> None:
    running = start_sim(
        '[sim]\nspeed = 10\nlatency = "3s"\nlatency_per_token = "500ms"\noutput_tokens = 4\n'
    )
    client = running.client()
    # 3s + 4 x 500ms of rehearsal time: 0.5 s of real time.
    assert 0.45 <= chat_seconds(client) < 2.0

    def stream() -> None:
        chunks = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        assert sum(1 for chunk in chunks if chunk.choices and chunk.choices[0].delta.content) == 4

    assert 0.45 <= timed(stream) < 2.0
    assert "speed 10" in running.stderr()


def test_speed_divides_batch_durations_and_timestamps_stay_real(start_sim: StartSim) -> None:
    running = start_sim('[sim.batch]\nturnaround = "20s"\n', "--speed", "20")
    client = running.client()
    before = time.time()
    seconds = batch_seconds(client)
    assert 0.9 <= seconds < 3.0
    batch = client.batches.list().data[0]
    # Real Unix times; expiry after 24 h of rehearsal time: 72 real minutes.
    assert before - 1 <= batch.created_at <= time.time()
    assert batch.expires_at is not None
    assert batch.expires_at - batch.created_at == pytest.approx(24 * 3600 / 20, abs=1)
    # What GET shows is what was set: rehearsal time.
    assert batch_settings(running).json()["turnaround"] == "20s"


def test_runtime_batch_settings_are_rehearsal_time(start_sim: StartSim) -> None:
    running = start_sim(None, "--speed", "20")
    assert configure(running, turnaround="10s", cancel_delay="20s")["turnaround"] == "10s"
    client = running.client()
    assert 0.45 <= batch_seconds(client) < 3.0
    # A cancel takes 20s of rehearsal time: 1 real second.
    configure(running, turnaround="1h")
    batch = submit(client, [chat_line("c")])
    started = time.monotonic()
    client.batches.cancel(batch.id)
    wait_for(client, batch.id, "cancelled")
    assert 0.95 <= time.monotonic() - started < 3.0


def test_runtime_faults_and_flex_spells_are_rehearsal_time(start_sim: StartSim) -> None:
    running = start_sim(None, "--speed", "20")
    client = running.client()
    slow = running.set_faults({"kind": "slow", "delay": "10s", "count": 1})
    assert slow["faults"][0]["delay"] == "10s"
    assert 0.45 <= chat_seconds(client) < 2.0
    running.set_faults({"kind": "rate_limit", "retry_after": "10s", "count": 1})
    with running.http() as http:
        response = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES})
    assert response.status_code == 429
    assert response.headers["retry-after-ms"] == "500"
    # A spell of 10s of rehearsal time is over after half a real second; GET counts rehearsal
    # time. That must pass: poll for the end, and check it came when the speed says.
    started = time.monotonic()
    state = running.flex({"unavailable_for": "10s"})
    assert state["unavailable"] is True
    assert 5 < state["spell_left_seconds"] <= 10
    state = waiting.wait_for(
        lambda: not (now := running.flex())["unavailable"] and now,
        timeout=3.0,
        what="the 10s spell to end (0.5 real seconds at speed 20)",
    )
    assert time.monotonic() - started >= 0.45
    assert state["elapsed_seconds"] > 10


def test_scheduled_flex_outages_follow_the_speed(start_sim: StartSim) -> None:
    running = start_sim('[sim]\nspeed = 20\n[[sim.flex_outages]]\nstart = "0s"\nduration = "30s"\n')
    assert running.flex()["cause"] == "outage"
    waiting.wait_for(
        lambda: not running.flex()["unavailable"],
        timeout=3.0,
        every=0.05,
        what="the 30s outage to end (1.5 real seconds at speed 20)",
    )
    assert running.flex()["config"]["flex_outages"] == [{"start": "0s", "duration": "30s"}]


# -- the command line ---------------------------------------------------------------------------


def test_the_command_line_speed_overrides_the_config(start_sim: StartSim) -> None:
    running = start_sim('[sim]\nspeed = 0.5\nlatency = "5s"\n', "--speed", "10")
    client = running.client()
    assert 0.45 <= chat_seconds(client) < 2.0


def test_load_config_takes_the_flag_over_the_table(tmp_path: Path) -> None:
    path = tmp_path / "llmspool.toml"
    path.write_text('[sim]\nspeed = 2\nlatency = "1s"\n')
    assert load_config(str(path)).speed == 2.0
    assert load_config(str(path), speed=60).speed == 60.0
    assert load_config(None, speed=3).speed == 3.0
    assert load_config(None).speed == 1.0


@pytest.mark.parametrize("flag", ["0", "-2", "fast", "nan", "inf"])
def test_a_bad_speed_flag_exits_2(run_sim: RunSim, flag: str) -> None:
    result = run_sim("--port", "0", "--speed", flag)
    assert result.returncode == 2
    assert "--speed" in result.stderr
    assert result.stdout == ""


def test_help_mentions_speed(run_sim: RunSim) -> None:
    text = run_sim("--help").stdout
    for words in ("--speed FACTOR", "[sim] speed", "turnaround_p99"):
        assert words in text, words


# -- config values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"speed": 0}, "sim.speed"),
        ({"speed": -1.5}, "sim.speed"),
        ({"speed": "fast"}, "sim.speed"),
        ({"speed": "10"}, "sim.speed"),
        ({"speed": True}, "sim.speed"),
        ({"speed": float("inf")}, "sim.speed"),
        ({"batch": {"turnaround": "2s", "turnaround_p99": "1s"}}, "sim.batch.turnaround_p99"),
        ({"batch": {"turnaround_p99": "1s"}}, "sim.batch.turnaround_p99"),  # below the 2s default
        ({"batch": {"turnaround": "0s", "turnaround_p99": "1h"}}, "sim.batch.turnaround_p99"),
        ({"batch": {"turnaround_p99": "often"}}, "sim.batch.turnaround_p99"),
        ({"batch": {"turnaround_p99": -5}}, "sim.batch.turnaround_p99"),
    ],
)
def test_bad_values_name_their_key(table: dict[str, Any], key: str) -> None:
    assert_refused(table, key)


def test_speed_and_turnaround_p99_are_read_and_written_back() -> None:
    config = SimConfig.from_table(
        {"speed": 1440, "batch": {"turnaround": "150s", "turnaround_p99": "6h"}}
    )
    assert config.speed == 1440.0
    assert config.batch.turnaround == MEDIAN
    assert config.batch.turnaround_p99 == P99
    table = config.to_table()
    assert table["speed"] == 1440.0
    assert table["batch"]["turnaround_p99"] == "6h"
    assert SimConfig.from_table(table) == config
    assert SimConfig().batch.turnaround_p99 is None
    assert SimConfig().to_table()["batch"]["turnaround_p99"] == ""
    assert SimConfig.from_table({"batch": {"turnaround_p99": ""}}) == SimConfig()
    # Equal to turnaround is allowed: every draw is then exactly turnaround.
    same = BatchSettings.from_table({"turnaround": "5s", "turnaround_p99": "5s"}, "")
    assert same.turnaround_p99 == 5.0


def test_scaled_divides_every_duration_and_nothing_else() -> None:
    settings = BatchSettings(
        validating=10, turnaround=20, turnaround_p99=200, finalizing=30, expire_after=3600,
        cancel_delay=40, expire_partial=0.3, line_error_rate=0.1, enqueued_token_limit=7,
    )  # fmt: skip
    assert settings.scaled(10) == BatchSettings(
        validating=1, turnaround=2, turnaround_p99=20, finalizing=3, expire_after=360,
        cancel_delay=4, expire_partial=0.3, line_error_rate=0.1, enqueued_token_limit=7,
    )  # fmt: skip
    assert BatchSettings().scaled(1) == BatchSettings()


def test_turnaround_p99_over_post_sim_batch(start_sim: StartSim) -> None:
    running = start_sim(None)
    assert configure(running, turnaround="150s", turnaround_p99="6h")["turnaround_p99"] == "6h"
    assert batch_settings(running).json()["turnaround_p99"] == "6h"
    refused = batch_settings(running, {"turnaround_p99": "1m"})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "turnaround_p99"
    assert configure(running, turnaround_p99="")["turnaround_p99"] == ""
    assert configure(running, turnaround_p99="6h", reset=True)["turnaround"] == "2s"


# -- the draws ----------------------------------------------------------------------------------


def test_draws_have_the_configured_median_and_p99() -> None:
    draws = sorted(turnaround_draw(7, order, MEDIAN, P99) for order in range(20_000))
    assert statistics.median(draws) == pytest.approx(MEDIAN, rel=0.05)
    assert draws[int(0.99 * len(draws))] == pytest.approx(P99, rel=0.15)
    assert min(draws) > 0


def test_draws_are_reproducible_and_differ_per_batch_and_seed() -> None:
    first = [turnaround_draw(1, order, MEDIAN, P99) for order in range(50)]
    assert first == [turnaround_draw(1, order, MEDIAN, P99) for order in range(50)]
    assert len(set(first)) == 50
    assert first != [turnaround_draw(2, order, MEDIAN, P99) for order in range(50)]
    # Unset, or no spread: exactly turnaround.
    assert turnaround_draw(1, 3, MEDIAN, None) == MEDIAN
    assert turnaround_draw(1, 3, MEDIAN, MEDIAN) == MEDIAN
    # Scaling the settings scales the draw: the same batch is as slow at any speed.
    assert turnaround_draw(1, 3, MEDIAN / 60, P99 / 60) == pytest.approx(first[3] / 60)


def registry(seed: int, speed: float, clock: Clock) -> BatchRegistry:
    app = build_app(SimConfig())
    settings = BatchSettings(turnaround=MEDIAN, turnaround_p99=P99, expire_after=10 * 86400.0)
    return BatchRegistry(
        files=app.files, makers=app.makers, stats=SimStats(), settings=settings, seed=seed,
        speed=speed, clock=clock,
    )  # fmt: skip


def in_progress_for(seed: int, speed: float, batches: int) -> list[float]:
    """How long each of ``batches`` batches, created together, stays in progress (real
    seconds): the draw, checked against its status just before and just after it runs out."""
    clock = Clock()
    reg = registry(seed, speed, clock)
    created = clock.now
    ids = [create(reg, 2) for _ in range(batches)]
    expected = [
        turnaround_draw(seed, order, MEDIAN / speed, P99 / speed) for order in range(batches)
    ]
    # The clock only goes forward: the shortest turnaround first.
    for order in sorted(range(batches), key=expected.__getitem__):
        clock.now = created + expected[order] - 1e-6
        assert reg.retrieve(ids[order])["status"] == "in_progress"
        clock.now = created + expected[order] + 1e-6
        assert reg.retrieve(ids[order])["status"] == "completed"
    return expected


def test_each_batch_is_in_progress_for_its_own_draw() -> None:
    first = in_progress_for(seed=5, speed=60, batches=6)
    assert len(set(first)) == 6
    assert in_progress_for(seed=5, speed=60, batches=6) == first
    assert in_progress_for(seed=6, speed=60, batches=6) != first
