"""Rate limits as OpenAI enforces them, per model: refilling RPM and TPM buckets, the 429s a
client gets when a request does not fit (with their retry hints), "Request too large", the
``x-ratelimit-*`` headers, the ``/_sim/ratelimits`` control and the counts in ``/_sim/stats``.

The bucket arithmetic is tested with a fake clock; the rest against a real sim process, where
time runs for real: a burst is allowed what refilled while it was being sent.
"""

from __future__ import annotations

import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx2
import openai
import pytest
from llmspool.core.errors import ConfigError
from llmspool.sim.ratelimit import (
    Bucket,
    Limits,
    RateLimiter,
    Refused,
    go_duration,
    limits_from_command,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.sim.conftest import RunningSim

    StartSim = Callable[..., RunningSim]

CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
VISIT = "Visit https://platform.openai.com/account/rate-limits to learn more."


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(requests: int = 600, tokens: int = 200_000, enforce: bool = True) -> Any:
    clock = FakeClock()
    return RateLimiter(Limits(requests, tokens, enforce), clock=clock), clock


def header_map(headers: tuple[tuple[bytes, bytes], ...]) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in headers}


# -- the arithmetic, with a fake clock --------------------------------------------------------


def test_bucket_starts_full_refills_at_a_sixtieth_per_second_and_never_overflows() -> None:
    bucket = Bucket(600, now=0.0)
    assert bucket.remaining(0.0) == 600
    assert bucket.until_full(0.0) == 0
    bucket.take(600, 0.0)
    assert bucket.remaining(0.0) == 0
    assert not bucket.fits(1, 0.0)
    assert bucket.wait(1, 0.0) == pytest.approx(0.1)
    assert bucket.remaining(0.05) == 0
    assert bucket.fits(1, 0.1)
    assert bucket.remaining(1.0) == 10
    assert bucket.until_full(1.0) == pytest.approx(59.0)
    assert bucket.remaining(120.0) == 600
    bucket.take(1000, 120.0)  # more than it holds: it is empty, not in debt
    assert bucket.remaining(120.0) == 0
    assert bucket.wait(601, 120.0) == math.inf


def test_the_601st_request_of_a_burst_is_refused_then_admitted_after_100ms() -> None:
    rates, clock = limiter()
    assert all(rates.admit(MODEL, 10) is None for _ in range(600))
    refusal = rates.admit(MODEL, 10)
    assert refusal is not None
    assert refusal.kind is Refused.REQUESTS
    assert (refusal.status, refusal.type, refusal.code) == (429, "requests", "rate_limit_exceeded")
    assert refusal.message == (
        f"Rate limit reached for {MODEL} in organization org-sim on requests per min (RPM): "
        f"Limit 600, Used 600, Requested 1. Please try again in 100ms. {VISIT}"
    )
    assert refusal.headers() == {"retry-after": "1", "retry-after-ms": "100"}
    clock.now += 0.099
    assert rates.admit(MODEL, 10) is not None
    clock.now += 0.001
    assert rates.admit(MODEL, 10) is None
    assert rates.admit(MODEL, 10) is not None


def test_tokens_asked_count_against_tpm_and_a_refusal_charges_nothing() -> None:
    rates, clock = limiter()
    assert rates.admit(MODEL, 199_800) is None
    refusal = rates.admit(MODEL, 350)
    assert refusal is not None
    assert refusal.kind is Refused.TOKENS
    assert refusal.type == "tokens"
    # 150 tokens missing, refilled at 200000/60 per second: 45 ms.
    assert refusal.message == (
        f"Rate limit reached for {MODEL} in organization org-sim on tokens per min (TPM): "
        f"Limit 200000, Used 199800, Requested 350. Please try again in 45ms. {VISIT}"
    )
    assert refusal.headers() == {"retry-after": "1", "retry-after-ms": "45"}
    headers = header_map(rates.headers(MODEL))
    assert headers["x-ratelimit-remaining-tokens"] == "200"
    assert headers["x-ratelimit-remaining-requests"] == "599"  # the refused one is not charged
    clock.now += 0.045
    assert rates.admit(MODEL, 350) is None


def test_a_request_larger_than_the_limit_is_too_large_and_has_no_retry_hint() -> None:
    rates, _ = limiter()
    refusal = rates.admit(MODEL, 250_000)
    assert refusal is not None
    assert refusal.kind is Refused.TOO_LARGE
    assert (refusal.type, refusal.code) == ("tokens", "rate_limit_exceeded")
    assert refusal.message == (
        f"Request too large for {MODEL} in organization org-sim on tokens per min (TPM): "
        "Limit 200000, Requested 250000. The input or output tokens must be reduced in order "
        f"to run successfully. {VISIT}"
    )
    assert refusal.headers() == {}
    # Exactly the limit fits an untouched bucket.
    assert rates.admit(MODEL, 200_000) is None


def test_models_have_their_own_buckets() -> None:
    rates, _ = limiter(requests=2)
    assert rates.admit("gpt-4o", 1) is None
    assert rates.admit("gpt-4o", 1) is None
    assert rates.admit("gpt-4o", 1) is not None
    assert rates.admit(MODEL, 1) is None


def test_not_enforcing_admits_everything_and_reports_an_empty_bucket() -> None:
    rates, clock = limiter(requests=2, tokens=100, enforce=False)
    assert all(rates.admit(MODEL, 1000) is None for _ in range(5))
    headers = header_map(rates.headers(MODEL))
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1m0s"
    clock.now += 15
    headers = header_map(rates.headers(MODEL))
    assert headers["x-ratelimit-remaining-tokens"] == "25"
    assert headers["x-ratelimit-reset-tokens"] == "45s"


def test_headers_are_what_is_left_now_and_the_time_until_full() -> None:
    rates, clock = limiter(requests=600, tokens=60_000)
    full = header_map(rates.headers(None))
    assert full == {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-limit-tokens": "60000",
        "x-ratelimit-remaining-requests": "600",
        "x-ratelimit-remaining-tokens": "60000",
        "x-ratelimit-reset-requests": "0s",
        "x-ratelimit-reset-tokens": "0s",
    }
    assert header_map(rates.headers(MODEL)) == full  # a model not asked for yet
    rates.admit(MODEL, 6000)
    clock.now += 0.05
    headers = header_map(rates.headers(MODEL))
    assert headers["x-ratelimit-remaining-requests"] == "599"
    assert headers["x-ratelimit-reset-requests"] == "50ms"
    assert headers["x-ratelimit-remaining-tokens"] == "54050"
    assert headers["x-ratelimit-reset-tokens"] == "5.95s"
    exhausted = header_map(rates.headers(MODEL, requests_exhausted=2.0))
    assert exhausted["x-ratelimit-remaining-requests"] == "0"
    assert exhausted["x-ratelimit-reset-requests"] == "2s"
    assert rates.state_json()["models"][MODEL]["remaining_tokens"] == 54050
    rates.configure(Limits(600, 60_000, enforce=True))
    assert header_map(rates.headers(MODEL)) == full


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.012, "12ms"), (0.0004, "1ms"), (1, "1s"), (8.64, "8.64s"), (360, "6m0s")],
)
def test_go_durations(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_limits_from_command() -> None:
    configured = Limits(10_000, 30_000_000)
    current = Limits(600, 200_000, enforce=True)
    assert limits_from_command({}, current, configured) == current
    assert limits_from_command({"tokens": 5}, current, configured) == Limits(600, 5, True)
    assert limits_from_command({"reset": True}, current, configured) == configured
    assert limits_from_command(
        {"reset": True, "enforce": True, "requests": 1}, current, configured
    ) == Limits(1, 30_000_000, True)
    for body, key in [
        ({"requests": 0}, "requests"),
        ({"tokens": "1000"}, "tokens"),
        ({"enforce": 1}, "enforce"),
        ({"rpm": 5}, "rpm"),
    ]:
        with pytest.raises(ConfigError) as caught:
            limits_from_command(body, current, configured)
        assert caught.value.key == key


# -- a real sim -------------------------------------------------------------------------------


def post_chat(http: httpx2.Client, **extra: Any) -> httpx2.Response:
    return http.post(CHAT, json={"model": MODEL, "messages": MESSAGES, **extra})


def test_a_burst_beyond_the_rpm_is_refused_and_admitted_again_after_the_hint(
    sim: RunningSim,
) -> None:
    sim.ratelimits({"enforce": True, "requests": 600, "tokens": 10_000_000})
    clients = [sim.http() for _ in range(16)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda i: post_chat(clients[i % 16]).status_code, range(700)))
    elapsed = time.monotonic() - started
    admitted = statuses.count(200)
    # 600 at once, plus what refilled (10 a second) while the burst was being sent.
    assert 600 <= admitted <= 600 + math.ceil(10 * elapsed) + 1
    assert statuses.count(429) == 700 - admitted
    http = clients[0]
    refused = post_chat(http)
    while refused.status_code == 200:  # the burst may have ended with some refill left
        admitted += 1
        refused = post_chat(http)
    wait_ms = int(refused.headers["retry-after-ms"])
    assert 0 < wait_ms <= 100
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    # What is checked is that the hinted wait (at most 100 ms, per real minute: no speed factor)
    # is enough, so exactly that much must pass; polling would pass with a wrong hint too.
    time.sleep(wait_ms / 1000)
    assert post_chat(http).status_code == 200
    for client in clients:
        client.close()
    stats = sim.stats()
    assert stats["ratelimits"]["enforce"] is True
    assert stats["ratelimits"]["requests"] == 600
    counters = stats["ratelimits"]["by_model"][MODEL]
    assert counters["admitted"] == admitted + 1 == stats["requests"]["by_status"]["200"]
    assert counters["refused_rpm"] == 700 - statuses.count(200) + 1
    assert counters["refused_rpm"] == stats["requests"]["by_status"]["429"]
    assert counters["refused_tpm"] == counters["refused_too_large"] == 0
    # Each admitted call was charged what it then used: its prompt and 16 tokens of output.
    assert counters["tokens"] == stats["tokens"]["input"] + stats["tokens"]["output"]
    assert stats["tokens"]["output"] == 16 * counters["admitted"]


def test_tpm_counts_prompt_and_max_output_asked(sim: RunningSim) -> None:
    sim.ratelimits({"enforce": True, "tokens": 60_000})  # refilled at 1000 a second
    client = sim.client()
    first = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=50_000)
    prompt = first.usage.prompt_tokens if first.usage else 0
    assert prompt > 0
    # Two choices of up to 4000 tokens each: 8000 + the prompt, charged at once.
    two = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4000, n=2)
    assert len(two.choices) == 2
    charged = 50_000 + prompt + 8000 + prompt
    # About 60000 - charged is left (plus what refilled since): ask 100 more than that.
    asked = 60_000 - charged + 100
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=asked - prompt)
    error = caught.value
    assert (error.code, error.type) == ("rate_limit_exceeded", "tokens")
    assert isinstance(error.body, dict)
    match = re.fullmatch(
        rf"Rate limit reached for {MODEL} in organization org-sim on tokens per min \(TPM\): "
        rf"Limit 60000, Used (\d+), Requested {asked}\. Please try again in (\d+)ms\. "
        + re.escape(VISIT),
        error.body["message"],
    )
    assert match is not None, error.body["message"]
    used = int(match.group(1))
    assert charged - 100 < used <= charged
    headers = error.response.headers
    # The headers are written a moment after the refusal: a token a millisecond refilled since.
    assert 0 <= int(headers["x-ratelimit-remaining-tokens"]) - (60_000 - used) <= 10
    wait_ms = int(headers["retry-after-ms"])
    assert 0 < wait_ms <= 100
    assert abs(int(match.group(2)) - wait_ms) <= 1
    # The hinted wait (at most 100 ms) must be enough: it has to pass, not be polled through.
    time.sleep(wait_ms / 1000)
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=asked - prompt)
    counters = sim.stats()["ratelimits"]["by_model"][MODEL]
    assert counters["admitted"] == 3
    assert counters["tokens"] == charged + asked
    assert sim.stats()["requests"]["by_status"] == {"200": 3, "429": 1}
    assert counters["refused_tpm"] == 1


def test_without_max_tokens_the_default_output_length_is_charged(sim: RunningSim) -> None:
    client = sim.client()
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    response = client.responses.create(model=MODEL, input="hi")
    embedding = client.embeddings.create(
        model="text-embedding-3-small", input="four words of input", encoding_format="float"
    )
    assert chat.usage is not None and response.usage is not None
    by_model = sim.stats()["ratelimits"]["by_model"]
    # The sim's default output_tokens is 16; embeddings are charged their input only.
    assert by_model[MODEL]["tokens"] == (
        chat.usage.prompt_tokens + 16 + response.usage.input_tokens + 16
    )
    assert by_model["text-embedding-3-small"]["tokens"] == embedding.usage.prompt_tokens


def test_request_too_large_is_a_429_that_waiting_never_fixes(sim: RunningSim) -> None:
    sim.ratelimits({"enforce": True, "tokens": 6000})
    with sim.http() as http:
        response = post_chat(http, max_tokens=7000)
        assert response.status_code == 429
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"], error["param"]) == (
            "tokens",
            "rate_limit_exceeded",
            None,
        )
        assert error["message"].startswith(
            f"Request too large for {MODEL} in organization org-sim on tokens per min (TPM): "
            "Limit 6000, Requested 70"
        )
        assert "must be reduced" in error["message"]
        assert "retry-after" not in response.headers
        assert "retry-after-ms" not in response.headers
        assert response.headers["x-ratelimit-limit-tokens"] == "6000"
        # Nothing was charged: a request that fits goes through at once.
        assert post_chat(http, max_tokens=5900).status_code == 200
    counters = sim.stats()["ratelimits"]["by_model"][MODEL]
    assert counters["refused_too_large"] == 1
    assert counters["refused_tpm"] == 0
    assert counters["admitted"] == 1


def test_a_rate_limit_refusal_has_openai_headers_and_body(sim: RunningSim) -> None:
    sim.ratelimits({"enforce": True, "requests": 1})
    with sim.http() as http:
        assert post_chat(http).status_code == 200
        response = post_chat(http)
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "requests"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert response.json()["error"]["message"].startswith(
        f"Rate limit reached for {MODEL} in organization org-sim on requests per min (RPM): "
        "Limit 1, Used 1, Requested 1. Please try again in "
    )
    headers = response.headers
    wait_ms = int(headers["retry-after-ms"])
    assert 59_000 <= wait_ms <= 60_000
    assert headers["retry-after"] == "60"
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert re.fullmatch(r"59(\.\d+)?s|1m0s", headers["x-ratelimit-reset-requests"])
    assert headers["x-request-id"].startswith("req_")
    # Another model is not limited by this one's use.
    with sim.http() as http:
        other = http.post(CHAT, json={"model": "gpt-4o", "messages": MESSAGES})
    assert other.status_code == 200
    assert other.headers["x-ratelimit-remaining-requests"] == "0"  # its one request, used


def test_the_sdk_retries_a_rate_limit_after_the_hint(sim: RunningSim) -> None:
    # 60 a minute: after the drain the bucket needs up to a second for its next request, so the
    # SDK's first try, milliseconds later, is refused (at 600 a minute the refill raced it and
    # the test flaked), and its retry after the hint still comes within seconds.
    sim.ratelimits({"enforce": True, "requests": 60})
    client = sim.client(max_retries=3)
    with sim.http() as http:
        while post_chat(http).status_code == 200:
            pass
    refused = sim.stats()["ratelimits"]["by_model"][MODEL]["refused_rpm"]
    started = time.monotonic()
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert time.monotonic() - started < 2.5
    assert sim.stats()["ratelimits"]["by_model"][MODEL]["refused_rpm"] >= refused + 1


def test_not_enforcing_nothing_is_refused(sim: RunningSim) -> None:
    sim.ratelimits({"requests": 2, "tokens": 30})  # each call asks for 17 tokens
    with sim.http() as http:
        responses = [post_chat(http) for _ in range(4)]
    assert [response.status_code for response in responses] == [200] * 4
    assert responses[-1].headers["x-ratelimit-remaining-requests"] == "0"
    assert responses[-1].headers["x-ratelimit-remaining-tokens"] == "0"
    counters = sim.stats()["ratelimits"]["by_model"][MODEL]
    assert counters["admitted"] == 4
    assert counters["refused_rpm"] == counters["refused_tpm"] == 0


def test_the_control_shows_changes_and_resets_the_limits(sim: RunningSim) -> None:
    state = sim.ratelimits()
    assert state == {"enforce": False, "requests": 10_000, "tokens": 30_000_000, "models": {}}
    assert sim.ratelimits({"requests": 6, "tokens": 600})["models"] == {}
    with sim.http() as http:
        post_chat(http, max_tokens=100)
        bad = http.post("/_sim/ratelimits", json={"requests": -1})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "requests"
        assert http.post("/_sim/ratelimits", content=b"{").status_code == 400
    state = sim.ratelimits()
    assert state["requests"] == 6
    assert state["models"][MODEL]["remaining_requests"] == 5
    assert state["models"][MODEL]["reset_requests"].endswith("s")
    assert state["models"][MODEL]["remaining_tokens"] < 600
    state = sim.ratelimits({"enforce": True, "requests": 600, "tokens": 200_000})
    assert state == {"enforce": True, "requests": 600, "tokens": 200_000, "models": {}}
    assert sim.stats()["ratelimits"]["tokens"] == 200_000
    assert sim.ratelimits({"reset": True})["enforce"] is False


def test_stats_time_the_admitted_requests_and_count_connections(sim: RunningSim) -> None:
    before = time.time()
    with sim.http() as http:
        for _ in range(5):
            assert post_chat(http).status_code == 200
    for _ in range(3):
        with sim.http() as http:
            assert post_chat(http).status_code == 200
    after = time.time()
    stats = sim.stats()
    # One kept-alive connection for the first five, then one each.
    assert stats["connections"] == 4
    counters = stats["ratelimits"]["by_model"][MODEL]
    assert counters["admitted"] == 8
    assert before <= counters["first_admitted"] <= counters["last_admitted"] <= after
    assert counters["last_admitted"] - counters["first_admitted"] > 0
    with sim.http() as http:
        http.post("/_sim/stats/reset").raise_for_status()
    stats = sim.stats()
    assert stats["connections"] == 0
    assert stats["ratelimits"]["by_model"] == {}


def test_enforcing_from_config(start_sim: StartSim) -> None:
    running = start_sim(
        "[sim]\nenforce_ratelimits = true\nratelimit_requests = 2\nratelimit_tokens = 1000\n"
    )
    client = running.client()
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.type == "requests"
    with pytest.raises(openai.RateLimitError) as too_large:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1000)
    assert too_large.value.type == "tokens"
    assert "Request too large" in too_large.value.message
    # The configured limits are what a reset goes back to.
    assert running.ratelimits({"reset": True})["enforce"] is True
