"""Flex as a client sees it: only where priced, the tier served, slower answers, and 429
*resource unavailable* spells by chance, by schedule and at run time, counted exactly."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import pytest
from llmspool.sim.config import SimConfig
from llmspool.sim.flex import FlexPacing

from tests.support.waiting import wait_for

if TYPE_CHECKING:
    from tests.sim.conftest import RunningSim

    StartSim = Callable[..., RunningSim]
    RunSim = Callable[..., Any]

FLEX_MODEL = "gpt-5-mini"
UNPRICED_MODEL = "gpt-4o-mini"
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
UNAVAILABLE_BODY = {
    "error": {
        "message": "Resource Unavailable: flex processing capacity is temporarily exhausted. "
        "Please retry later or use service_tier auto.",
        "type": "resource_unavailable",
        "param": None,
        "code": "resource_unavailable",
    }
}


def chat(client: openai.OpenAI, **extra: Any) -> Any:
    options: dict[str, Any] = {"model": FLEX_MODEL, "messages": MESSAGES, **extra}
    return client.chat.completions.create(**options)


def flex_outcome(client: openai.OpenAI, **extra: Any) -> str:
    """``ok`` for a flex answer, else the error code of the 429 the client raised."""
    try:
        completion = chat(client, service_tier="flex", **extra)
    except openai.RateLimitError as exc:
        return str(exc.code)
    assert completion.service_tier == "flex"
    return "ok"


def timed(call: Callable[[], object]) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


# -- where flex is offered --------------------------------------------------------------------


def test_flex_is_refused_for_a_model_without_a_flex_price(sim: RunningSim) -> None:
    client = sim.client()
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, model=UNPRICED_MODEL, service_tier="flex")
    error = caught.value
    assert error.status_code == 400
    assert error.type == "invalid_request_error"
    assert error.param == "service_tier"
    assert error.code == "invalid_value"
    assert f"`{UNPRICED_MODEL}`" in error.message
    with pytest.raises(openai.BadRequestError) as response_error:
        client.responses.create(model=UNPRICED_MODEL, input="hi", service_tier="flex")
    assert response_error.value.param == "service_tier"
    # The same model at the standard tier is fine; so is flex on a model priced for it.
    assert chat(client, model=UNPRICED_MODEL, service_tier="auto").service_tier == "default"
    assert flex_outcome(client) == "ok"
    stats = sim.stats()
    assert stats["flex"] == {"requests": 1, "served": 1, "unavailable": 0}
    assert stats["requests"]["by_status"] == {"200": 2, "400": 2}


def test_embeddings_ignore_service_tier(sim: RunningSim) -> None:
    embedding = sim.client().embeddings.create(
        model="text-embedding-3-small",
        input="x",
        encoding_format="float",
        extra_body={"service_tier": "flex"},
    )
    assert len(embedding.data[0].embedding) == 1536
    assert sim.stats()["flex"] == {"requests": 0, "served": 0, "unavailable": 0}


def test_pricing_file_decides_which_models_offer_flex(start_sim: StartSim, tmp_path: Path) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text(
        f"""
[openai."{UNPRICED_MODEL}".standard]
input = 0.15
output = 0.60

[openai."{UNPRICED_MODEL}".flex]
input = 0.075
output = 0.30

[openai."{FLEX_MODEL}".standard]
input = 0.25
output = 2.00
"""
    )
    running = start_sim(f'[sim]\npricing_file = "{prices}"\n')
    client = running.client()
    assert flex_outcome(client, model=UNPRICED_MODEL) == "ok"
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, service_tier="flex")
    assert caught.value.param == "service_tier"
    assert running.flex()["config"]["flex_models"] == [UNPRICED_MODEL]


def test_an_unreadable_pricing_file_is_a_config_error(run_sim: RunSim, tmp_path: Path) -> None:
    config = tmp_path / "llmspool.toml"
    config.write_text(f'[sim]\npricing_file = "{tmp_path / "missing.toml"}"\n')
    result = run_sim("--port", "0", "--config", str(config))
    assert result.returncode == 2
    assert "sim.pricing_file" in result.stderr


# -- the tier served --------------------------------------------------------------------------


def test_every_flex_answer_says_flex_streamed_or_not(sim: RunningSim) -> None:
    client = sim.client()
    assert chat(client, service_tier="flex").service_tier == "flex"
    chunks = list(
        chat(client, service_tier="flex", stream=True, stream_options={"include_usage": True})
    )
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert {chunk.service_tier for chunk in chunks} == {"flex"}
    response = client.responses.create(model=FLEX_MODEL, input="hi", service_tier="flex")
    assert response.service_tier == "flex"
    events = list(
        client.responses.create(model=FLEX_MODEL, input="hi", service_tier="flex", stream=True)
    )
    assert events[-1].type == "response.completed"
    tiers = {event.response.service_tier for event in events if hasattr(event, "response")}
    assert tiers == {"flex"}
    stats = sim.stats()
    assert stats["flex"] == {"requests": 4, "served": 4, "unavailable": 0}
    assert stats["requests"]["by_tier"] == {"flex": 4}


@pytest.mark.parametrize("asked", [None, "auto", "default"])
def test_responses_report_default_unless_flex_is_asked(sim: RunningSim, asked: str | None) -> None:
    options: dict[str, Any] = {"model": FLEX_MODEL, "input": "hi"}
    if asked is not None:
        options["service_tier"] = asked
    client = sim.client()
    assert client.responses.create(**options).service_tier == "default"
    events = list(client.responses.create(**options, stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.service_tier == "default"
    assert sim.stats()["flex"]["requests"] == 0


# -- run-time spells --------------------------------------------------------------------------


def test_forced_spell_refuses_flex_at_once_and_standard_keeps_working(sim: RunningSim) -> None:
    client = sim.client()
    state = sim.flex({"unavailable": True})
    assert (state["unavailable"], state["cause"], state["forced"]) == (True, "forced", True)
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client, service_tier="flex")
    error = caught.value
    assert error.status_code == 429
    assert error.code == "resource_unavailable"
    assert error.response.json() == UNAVAILABLE_BODY
    headers = error.response.headers
    assert "retry-after" not in headers
    assert "retry-after-ms" not in headers
    assert headers["x-request-id"].startswith("req_")
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model=FLEX_MODEL, input="hi", service_tier="flex", stream=True)
    # Standard requests to the same model are served during the spell.
    assert chat(client).service_tier == "default"
    assert client.responses.create(model=FLEX_MODEL, input="hi").status == "completed"
    state = sim.flex({"unavailable": False})
    assert (state["unavailable"], state["cause"], state["forced"]) == (False, None, False)
    assert flex_outcome(client) == "ok"
    stats = sim.stats()
    assert stats["flex"] == {"requests": 3, "served": 1, "unavailable": 2}
    assert stats["requests"]["by_status"] == {"200": 3, "429": 2}
    assert stats["faults"]["total"] == 0


def test_on_off_toggles_are_immediate_every_time(sim: RunningSim) -> None:
    client = sim.client()
    expected: list[str] = []
    seen: list[str] = []
    for unavailable in [True, False, True, True, False, False, True, False]:
        sim.flex({"unavailable": unavailable})
        expected.append("resource_unavailable" if unavailable else "ok")
        seen.append(flex_outcome(client))
    assert seen == expected
    assert sim.stats()["flex"] == {"requests": 8, "served": 4, "unavailable": 4}


def test_timed_spell_ends_by_itself(sim: RunningSim) -> None:
    client = sim.client()
    state = sim.flex({"unavailable_for": "600ms"})
    assert state["cause"] == "timed"
    assert 0 < state["spell_left_seconds"] <= 0.6
    assert flex_outcome(client) == "resource_unavailable"
    assert chat(client).service_tier == "default"
    # The spell's 600 ms must pass (the shared sim runs at speed 1): poll for its end.
    state = wait_for(
        lambda: not (now := sim.flex())["unavailable"] and now, what="the timed spell to end"
    )
    assert (state["unavailable"], state["cause"], state["spell_left_seconds"]) == (
        False,
        None,
        None,
    )
    assert flex_outcome(client) == "ok"
    assert sim.stats()["flex"] == {"requests": 2, "served": 1, "unavailable": 1}


def test_null_returns_to_the_configured_behaviour(start_sim: StartSim) -> None:
    running = start_sim("[sim]\nflex_unavailable_probability = 1.0\n")
    client = running.client()
    assert flex_outcome(client) == "resource_unavailable"
    running.flex({"unavailable": False})
    assert flex_outcome(client) == "ok"
    # A timed spell overrides the forced state, which resumes when the spell is over.
    running.flex({"unavailable_for": "300ms"})
    assert flex_outcome(client) == "resource_unavailable"
    # The spell's 300 ms must pass: poll for its end, when the forced "available" is back.
    wait_for(lambda: not running.flex()["unavailable"], what="the timed spell to end")
    assert flex_outcome(client) == "ok"
    running.flex({"unavailable": None})
    assert flex_outcome(client) == "resource_unavailable"
    assert running.stats()["flex"] == {"requests": 5, "served": 2, "unavailable": 3}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"unavailable": "yes"}, "unavailable"),
        ({"unavailable_for": "soon"}, "unavailable_for"),
        ({"unavailable": True, "unavailable_for": "1s"}, "unavailable"),
        ({"broken": True}, "broken"),
        ([True], "body"),
    ],
)
def test_bad_flex_commands_are_refused_naming_the_key(
    sim: RunningSim, body: Any, param: str
) -> None:
    with sim.http() as http:
        response = http.post("/_sim/flex", json=body)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param
        bad_json = http.post("/_sim/flex", content=b"{")
        assert bad_json.status_code == 400
    # A refused command changes nothing.
    assert sim.flex()["unavailable"] is False
    assert flex_outcome(sim.client()) == "ok"


def test_unavailable_is_not_a_rate_limit(start_sim: StartSim) -> None:
    # Limits so low that the buckets refill less than one request (0.1/s) and one token (1/s)
    # during the test: what the headers show moves only with what is charged.
    running = start_sim("[sim]\nratelimit_requests = 6\nratelimit_tokens = 60\n")
    client = running.client()

    def remaining(response: Any) -> tuple[int, int]:
        headers = response.headers
        return (
            int(headers["x-ratelimit-remaining-requests"]),
            int(headers["x-ratelimit-remaining-tokens"]),
        )

    first = client.chat.completions.with_raw_response.create(model=FLEX_MODEL, messages=MESSAGES)
    before = remaining(first)
    running.flex({"unavailable": True})
    for _ in range(3):
        with pytest.raises(openai.RateLimitError) as caught:
            chat(client, service_tier="flex")
        assert remaining(caught.value.response) == before
    running.flex({"unavailable": False})
    served = client.chat.completions.with_raw_response.create(
        model=FLEX_MODEL, messages=MESSAGES, service_tier="flex"
    )
    requests_left, _ = remaining(served)
    assert requests_left == before[0] - 1


# -- configured spells ------------------------------------------------------------------------


def test_probability_refuses_a_seeded_share_of_flex_requests(start_sim: StartSim) -> None:
    config = "[sim]\nseed = 7\nflex_unavailable_probability = 0.5\n"

    def run(*, interleave_standard: bool) -> list[str]:
        running = start_sim(config)
        client = running.client()
        outcomes: list[str] = []
        for _ in range(40):
            outcomes.append(flex_outcome(client))
            if interleave_standard:
                assert chat(client).service_tier == "default"
        refused = outcomes.count("resource_unavailable")
        assert running.stats()["flex"] == {
            "requests": 40,
            "served": 40 - refused,
            "unavailable": refused,
        }
        return outcomes

    first = run(interleave_standard=False)
    assert set(first) == {"ok", "resource_unavailable"}
    assert 8 <= first.count("resource_unavailable") <= 32
    # Same seed, same flex traffic: the same requests are refused; standard ones never draw.
    assert run(interleave_standard=True) == first


def observe_schedule(
    running: RunningSim, until: float, expected: Callable[[float], bool],
    enough: Callable[[list[tuple[float, str]]], bool] | None = None, cap: float = 8.0,
) -> list[tuple[float, str]]:
    """Send flex requests until the sim's clock reaches ``until`` (and, given ``enough``, until
    what was observed is enough, within ``cap`` seconds of the sim's clock); for each whose
    moment is certain (the schedule says the same just before and just after it), check the
    outcome against ``expected(elapsed)`` (``True``: unavailable). Returns what was observed.
    On a loaded machine fewer samples are certain, so a repeating schedule is watched longer
    rather than judged on too few."""
    client = running.client()
    observed: list[tuple[float, str]] = []
    while True:
        before = running.flex()["elapsed_seconds"]
        if before >= until and (enough is None or enough(observed) or before >= cap):
            return observed
        outcome = flex_outcome(client)
        after = running.flex()["elapsed_seconds"]
        assert chat(client).service_tier == "default"  # standard is never refused
        if expected(before) == expected(after) and after - before < 0.1:
            wanted = "resource_unavailable" if expected(before) else "ok"
            assert outcome == wanted, f"at {before:.3f}..{after:.3f}s got {outcome}"
            observed.append((before, outcome))
        # No pause between samples: the schedule plays out in real time, paced by these four
        # requests, and on a loaded machine every certain sample counts.


def test_scheduled_outages_are_observed(start_sim: StartSim) -> None:
    # The sim's clock at a quarter speed: a one-shot schedule cannot be watched longer, so
    # each window lasts four times as long in real time and a loaded machine (the suite runs
    # on four workers) still samples it surely.
    running = start_sim(
        """
[sim]
speed = 0.25
[[sim.flex_outages]]
start = "600ms"
duration = "400ms"

[[sim.flex_outages]]
start = "1300ms"
duration = "400ms"
"""
    )

    def in_outage(elapsed: float) -> bool:
        return 0.6 <= elapsed < 1.0 or 1.3 <= elapsed < 1.7

    observed = observe_schedule(running, 2.0, in_outage)
    # Served between the outages and after them, refused during the second one at least.
    assert any(1.0 <= at < 1.3 for at, outcome in observed if outcome == "ok")
    assert any(1.3 <= at < 1.7 for at, outcome in observed if outcome != "ok")
    assert any(at >= 1.7 for at, outcome in observed if outcome == "ok")
    state = running.flex()
    assert state["config"]["flex_outages"] == [
        {"start": "600ms", "duration": "400ms"},
        {"start": "1.3s", "duration": "400ms"},
    ]
    stats = running.stats()["flex"]
    assert stats["requests"] == stats["served"] + stats["unavailable"]
    assert stats["unavailable"] >= 5


def test_periodic_outage_refuses_the_first_fraction_of_each_period(start_sim: StartSim) -> None:
    # A quarter speed, as above: a sample is certain when it fits 0.1 s of the sim's clock.
    running = start_sim('[sim]\nspeed = 0.25\nflex_outage_period = "1s"\n'
                        'flex_outage_fraction = 0.5\n')
    start = running.flex()["elapsed_seconds"]

    def in_outage(elapsed: float) -> bool:
        return elapsed % 1.0 < 0.5

    def repeated(observed: list[tuple[float, str]]) -> bool:
        # Five of each kind, in more than one period each.
        for kind in ("resource_unavailable", "ok"):
            moments = [at for at, outcome in observed if outcome == kind]
            if len(moments) < 5 or len({int(at) for at in moments}) < 2:
                return False
        return True

    observed = observe_schedule(running, start + 2.2, in_outage, enough=repeated)
    refused = [at for at, outcome in observed if outcome == "resource_unavailable"]
    served = [at for at, outcome in observed if outcome == "ok"]
    assert len(refused) >= 5 and len(served) >= 5
    # Both kinds in more than one period: it repeats.
    assert len({int(at) for at in refused}) >= 2
    assert len({int(at) for at in served}) >= 2
    state = running.flex()
    assert state["config"]["flex_outage_period"] == "1s"
    assert state["config"]["flex_outage_fraction"] == 0.5
    assert state["cause"] in (None, "period")


# -- latency ----------------------------------------------------------------------------------


def test_flex_latency_is_fixed_plus_seeded_jitter_and_standard_is_unaffected(
    start_sim: StartSim,
) -> None:
    table = {"seed": 3, "flex_latency": "100ms", "flex_latency_jitter": "200ms"}
    running = start_sim("[sim]\n" + "".join(f"{k} = {v!r}\n" for k, v in table.items()))
    client = running.client()
    # The sim draws one jitter per served flex answer from its seeded RNG, in arrival order:
    # the same draws as a FlexPacing built from the same config.
    pacing = FlexPacing.from_config(SimConfig.from_table(table))
    expected = [pacing.extra_wait() for _ in range(6)]
    assert all(0.1 <= wait <= 0.3 for wait in expected)
    assert max(expected) - min(expected) > 0.05

    def server_ms(**extra: Any) -> int:
        raw = client.chat.completions.with_raw_response.create(
            model=FLEX_MODEL, messages=MESSAGES, **extra
        )
        return int(raw.headers["openai-processing-ms"])

    # Each flex answer waits its own draw. The upper bound is just under the draw taken twice:
    # it catches a doubled wait and leaves a loaded machine the rest (90 to 290 ms) as delay.
    for wait in expected:
        took = server_ms(service_tier="flex")
        assert int(wait * 1000) - 2 <= took < 2 * wait * 1000 - 10, (wait, took)
    assert all(server_ms() < 100 for _ in range(3))  # no flex wait: under the 100 ms minimum
    # A flex request refused as unavailable is answered at once, without the flex wait.
    running.flex({"unavailable": True})
    assert timed(lambda: flex_outcome(client)) < 0.1


def test_flex_per_token_latency_paces_plain_and_streamed_answers(start_sim: StartSim) -> None:
    running = start_sim('[sim]\nflex_latency_per_token = "25ms"\n')
    client = running.client()
    plain = timed(lambda: chat(client, service_tier="flex", max_completion_tokens=10))
    streamed = timed(
        lambda: list(chat(client, service_tier="flex", max_completion_tokens=10, stream=True))
    )
    standard = timed(lambda: chat(client, max_completion_tokens=10))
    assert 0.25 <= plain < 1.0
    assert 0.25 <= streamed < 1.0
    assert standard < 0.15
    assert running.flex()["config"]["flex_latency_per_token"] == "25ms"


def test_flex_per_token_latency_defaults_to_latency_per_token(start_sim: StartSim) -> None:
    running = start_sim('[sim]\nlatency_per_token = "25ms"\n')
    client = running.client()
    assert running.flex()["config"]["flex_latency_per_token"] == "25ms"
    assert 0.25 <= timed(lambda: chat(client, service_tier="flex", max_tokens=10)) < 1.0


def test_get_flex_shows_state_and_config(sim: RunningSim) -> None:
    state = sim.flex()
    assert set(state) == {
        "unavailable",
        "cause",
        "forced",
        "spell_left_seconds",
        "elapsed_seconds",
        "config",
    }
    assert (state["unavailable"], state["cause"], state["forced"]) == (False, None, None)
    assert state["spell_left_seconds"] is None
    assert state["elapsed_seconds"] > 0
    assert state["config"] == {
        "flex_models": ["gpt-5", "gpt-5-mini", "gpt-5-nano", "o3", "o4-mini"],
        "flex_latency": "0s",
        "flex_latency_jitter": "0s",
        "flex_latency_per_token": "0s",
        "flex_unavailable_probability": 0.0,
        "flex_outage_period": "0s",
        "flex_outage_fraction": 0.0,
        "flex_outages": [],
    }
    # Asking is not a request: stats do not move.
    assert sim.stats()["requests"]["total"] == 0


def test_stats_reset_zeroes_the_flex_counts(sim: RunningSim) -> None:
    sim.flex({"unavailable": True})
    flex_outcome(sim.client())
    assert sim.stats()["flex"] == {"requests": 1, "served": 0, "unavailable": 1}
    with sim.http() as http:
        reset = http.post("/_sim/stats/reset").json()
    assert reset["flex"] == {"requests": 0, "served": 0, "unavailable": 0}
