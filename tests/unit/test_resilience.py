"""The failure table, the retry policy and its budget, and the circuit breaker's states."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import orjson
import pytest
from llmspool.core.calls import Tier
from llmspool.core.config.sections import BreakerConfig, RetryConfig
from llmspool.core.errors import BadUpstreamAnswer, UpstreamError, UpstreamUnreachable
from llmspool.resilience.breaker import BreakerState, CircuitBreaker, Transition
from llmspool.resilience.failures import QUOTA_CODES, FailureClass, classify
from llmspool.resilience.retry import CallRetries, Retrier, RetryBudget, retry_hint

README = Path(__file__).resolve().parents[2] / "README.md"


def upstream(status: int, code: str | None = None, kind: str = "error", message: str = "x",
             headers: dict[str, str] | None = None) -> UpstreamError:
    body = orjson.dumps({"error": {"message": message, "type": kind, "param": None,
                                   "code": code}})
    return UpstreamError("openai", status, body, upstream_headers=headers)


@pytest.mark.parametrize(("error", "expected"), [
    (upstream(429, "rate_limit_exceeded", "requests"), FailureClass.RATE_LIMITED),
    (upstream(429, "rate_limit_exceeded", "tokens",
              "Request too large for gpt-4o-mini on tokens per min (TPM): Limit 10, "
              "Requested 20."), FailureClass.PERMANENT),
    (upstream(429, "insufficient_quota", "insufficient_quota"), FailureClass.PERMANENT),
    (upstream(429, None, "insufficient_quota"), FailureClass.PERMANENT),
    (upstream(429, "project_spend_limit_exceeded"), FailureClass.PERMANENT),
    (upstream(503, "slow_down", "server_error"), FailureClass.TRANSIENT),
    (upstream(500), FailureClass.TRANSIENT),
    (upstream(502), FailureClass.TRANSIENT),
    (upstream(504), FailureClass.TRANSIENT),
    (upstream(400, "context_length_exceeded", "invalid_request_error"), FailureClass.PERMANENT),
    (upstream(401, "invalid_api_key"), FailureClass.PERMANENT),
    (upstream(403), FailureClass.PERMANENT),
    (upstream(404, "model_not_found"), FailureClass.PERMANENT),
    (UpstreamUnreachable("reset", code="upstream_unreachable"), FailureClass.TRANSIENT),
    (UpstreamUnreachable("slow", code="upstream_timeout", status=504), FailureClass.TRANSIENT),
    (BadUpstreamAnswer("garbled", code="upstream_not_json"), FailureClass.PERMANENT),
])
def test_the_failure_table(error: UpstreamError, expected: FailureClass) -> None:
    assert classify(error).kind is expected


def test_resource_unavailable_is_its_own_class_only_for_flex_calls() -> None:
    error = upstream(429, "resource_unavailable", message="Resource unavailable")
    assert classify(error, flex=True).kind is FailureClass.FLEX_UNAVAILABLE
    assert classify(error, flex=False).kind is FailureClass.RATE_LIMITED


def test_the_readme_documents_every_quota_code_and_class() -> None:
    text = README.read_text()
    section = text[text.index("### How an upstream failure is handled"):]
    for code in QUOTA_CODES:
        assert f"`{code}`" in section, code
    for kind in FailureClass:
        assert f"| `{kind.value}` |" in section, kind


def test_retry_hints_in_every_spelling() -> None:
    assert retry_hint({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_hint({"retry-after": "2"}) == 2.0
    assert retry_hint({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480) == 10.0
    assert retry_hint({"retry-after": "soon"}) is None
    assert retry_hint({"retry-after-ms": "-5"}) is None
    assert retry_hint({}) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_retry_budget_allows_a_fraction_of_calls_over_its_window() -> None:
    clock = Clock()
    budget = RetryBudget(0.1, 60, 2, clock=clock)
    for _ in range(100):
        budget.record_call()
    spent = sum(budget.try_spend() for _ in range(50))
    assert spent == 10 and budget.denied == 40
    clock.now += 61  # the window slid past all of them: only the floor is left
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]


def run_attempts(retrier: Retrier, failures: list[Exception], deadline: float | None = None,
                 ) -> tuple[int, BaseException | None]:
    """Runs the retry policy as the dispatcher does (``Retrier.run``: the first attempt without
    tenacity, the rest through it) against a queue of failures (then success); returns the
    attempts."""
    numbers: list[int] = []

    async def one_attempt(number: int) -> None:
        numbers.append(number)
        if failures:
            raise failures.pop(0)

    async def main() -> BaseException | None:
        state = CallRetries("openai", "req", False, deadline)
        try:
            await retrier.run(state, one_attempt)
        except Exception as exc:
            return exc
        return None

    calls_before = retrier.budget("openai").snapshot()["calls"]
    error = anyio.run(main)
    assert numbers == list(range(1, len(numbers) + 1))  # numbered as tenacity numbers them
    # The call is counted once in the retry budget, however many attempts it took.
    assert retrier.budget("openai").snapshot()["calls"] == calls_before + 1
    return len(numbers), error


FAST = RetryConfig(max_attempts=3, backoff_min=0.001, backoff_max=0.002)


def test_a_transient_failure_is_retried_and_a_permanent_one_is_not() -> None:
    retrier = Retrier(FAST, {})
    assert run_attempts(retrier, [upstream(503, "slow_down")]) == (2, None)
    attempts, error = run_attempts(retrier, [upstream(429, "insufficient_quota")])
    assert attempts == 1 and isinstance(error, UpstreamError)


def test_attempts_are_bounded() -> None:
    attempts, error = run_attempts(Retrier(FAST, {}), [upstream(500)] * 5)
    assert attempts == 3 and isinstance(error, UpstreamError) and error.status == 500


def test_the_providers_hint_is_waited() -> None:
    retrier = Retrier(FAST, {})
    started = anyio.run(_now)
    attempts, _error = run_attempts(retrier, [upstream(429, "rate_limit_exceeded",
                                                       headers={"retry-after-ms": "300"})])
    assert attempts == 2 and anyio.run(_now) - started >= 0.3


async def _now() -> float:
    return anyio.current_time()


def test_a_kept_alive_connection_closed_as_the_call_went_out_is_retried_without_waiting() -> None:
    idle_close = UpstreamUnreachable("closed as it went out", code="idle_connection_closed")
    failure = classify(idle_close)
    assert failure.kind is FailureClass.IDLE_CLOSE
    assert failure.kind.retryable and not failure.kind.counts_against_provider
    slow = RetryConfig(max_attempts=3, backoff_min=30.0, backoff_max=60.0)
    started = anyio.run(_now)
    assert run_attempts(Retrier(slow, {}), [idle_close, idle_close]) == (3, None)
    assert anyio.run(_now) - started < 1.0  # no backoff of 30 s or more


def test_no_retry_whose_wait_passes_the_deadline() -> None:
    import time
    retrier = Retrier(FAST, {})
    attempts, _error = run_attempts(
        retrier, [upstream(429, "rate_limit_exceeded", headers={"retry-after": "30"})],
        deadline=time.time() + 5)
    assert attempts == 1


def test_a_per_provider_override_applies_to_that_provider_only() -> None:
    retrier = Retrier(FAST, {"openai": RetryConfig(max_attempts=1)})
    attempts, _ = run_attempts(retrier, [upstream(500)])
    assert attempts == 1
    assert retrier.settings("ollama").max_attempts == 3


def breaker(clock: Clock, **settings: float) -> tuple[CircuitBreaker, list[Transition]]:
    moves: list[Transition] = []
    config = BreakerConfig(**settings)  # type: ignore[arg-type]
    return CircuitBreaker("openai", Tier.STANDARD, config, moves.append, clock=clock), moves


def test_the_breaker_opens_after_consecutive_failures_and_probes_once_after_cooldown() -> None:
    clock = Clock()
    cb, moves = breaker(clock, failures=5, cooldown=60)
    for _ in range(4):
        assert cb.allow() is False
        cb.failed("503 slow_down")
    assert cb.state is BreakerState.CLOSED
    cb.failed("503 slow_down")
    assert cb.state is BreakerState.OPEN and cb.allow() is None
    assert re.search(r"5 failures in a row", moves[-1].reason)
    clock.now += 59
    assert cb.allow() is None and 0 < cb.retry_after() <= 1
    clock.now += 1
    assert cb.allow() is True  # the probe
    assert cb.state is BreakerState.HALF_OPEN and cb.allow() is None  # only one
    cb.succeeded(probe=True)
    assert cb.state is BreakerState.CLOSED and cb.allow() is False
    assert [m.new for m in moves] == [BreakerState.OPEN, BreakerState.HALF_OPEN,
                                      BreakerState.CLOSED]


def test_a_failed_probe_opens_the_breaker_for_another_cooldown() -> None:
    clock = Clock()
    cb, _moves = breaker(clock, failures=1, cooldown=10)
    cb.failed("500")
    clock.now += 10
    assert cb.allow() is True
    cb.failed("500", probe=True)
    assert cb.state is BreakerState.OPEN and cb.allow() is None
    clock.now += 10
    assert cb.allow() is True


def test_a_probe_that_says_nothing_frees_the_slot_for_the_next_call() -> None:
    clock = Clock()
    cb, _moves = breaker(clock, failures=1, cooldown=10)
    cb.failed("500")
    clock.now += 10
    assert cb.allow() is True
    cb.no_outcome(probe=True)
    assert cb.allow() is True


def test_the_breaker_opens_on_a_failure_rate_over_its_window() -> None:
    clock = Clock()
    cb, moves = breaker(clock, failures=100, failure_rate=0.5, window=60, min_calls=10)
    for i in range(10):
        clock.now += 1
        cb.failed("500") if i % 2 else cb.succeeded()
    assert cb.state is BreakerState.OPEN
    assert "5 of 10 calls failed" in moves[-1].reason


def test_successes_reset_the_consecutive_count() -> None:
    clock = Clock()
    cb, _moves = breaker(clock, failures=3, min_calls=1000)
    for _ in range(10):
        cb.failed("500")
        cb.failed("500")
        cb.succeeded()
    assert cb.state is BreakerState.CLOSED
