"""Rate limits per (provider, model): RPM spacing, token accounting, fairness, cancel-safety,
the concurrency cap, learning and correcting from ``x-ratelimit-*`` headers, 429 pauses and the
ramp back, requests too large, and Go durations.

Most tests freeze a fake clock, so bucket arithmetic is exact and only a release, a header or a
cancellation can let a waiter through; the few that check real waiting use short real times.
Where the other tasks must have done all they can before a check (queued, been admitted, or
found they still do not fit), the test waits until every task is blocked (``settled``) instead
of sleeping a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import pytest
from llmspool.core.errors import InvalidRequest
from llmspool.core.http1 import LowercaseHeaders
from llmspool.resilience.buckets import Permit
from llmspool.resilience.key_limits import LimitSettings, RequestTooLarge
from llmspool.resilience.limits import RateLimits
from llmspool.resilience.ratelimit_headers import parse_go_duration, retry_pause

PROVIDER, MODEL = "openai", "gpt-test"
KEY = (PROVIDER, MODEL)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(limits: RateLimits) -> dict[str, Any]:
    snapshot: dict[str, Any] = limits.snapshot()[f"{PROVIDER}/{MODEL}"]
    return snapshot


async def take(limits: RateLimits, tokens: int = 0, *, interactive: bool = False) -> Permit:
    return await limits.acquire(PROVIDER, MODEL, tokens, interactive=interactive)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    anyio.run(main)


async def settled() -> None:
    """Let every other task run until each one waits (for a wake-up or a timer): what the tasks
    just started or woken can do, they have done."""
    await anyio.wait_all_tasks_blocked()


# -- Go durations and pause hints -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("8.64s", 8.64),
        ("1m30.5s", 90.5),
        ("0s", 0.0),
        ("0", 0.0),
        ("1h2m3s", 3723.0),
        ("500us", 0.0005),
        ("500µs", 0.0005),
        (" 2s ", 2.0),
        ("20", 20.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", [None, "", "soon", "5x", "m5", "-3s", "1s later", "s", "1.2.3s", "nan", "inf", "1e999s"]
)
def test_unreadable_durations_are_ignored(text: str | None) -> None:
    assert parse_go_duration(text) is None


def test_pause_hints_in_order_of_precedence() -> None:
    assert retry_pause({"retry-after-ms": "250", "retry-after": "1"}) == 0.25
    assert retry_pause({"Retry-After": "3"}) == 3.0
    exhausted_tokens = {
        "x-ratelimit-remaining-requests": "5",
        "x-ratelimit-reset-requests": "2s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "1m30.5s",
    }
    assert retry_pause(exhausted_tokens) == 90.5  # the reset of the bucket that is empty
    assert retry_pause({"retry-after": "whenever"}) == 1.0
    assert retry_pause({}) == 1.0


# -- requests and tokens ----------------------------------------------------------------------


def test_rpm_allows_the_burst_then_spaces_requests() -> None:
    clock = FakeClock()
    limits = RateLimits({KEY: LimitSettings(rpm=600)}, clock=clock)
    granted: list[str] = []

    async def waiter(name: str) -> None:
        await take(limits)
        granted.append(name)

    async def main() -> None:
        with anyio.fail_after(5):  # the clock is frozen: any of these waiting would hang
            for _ in range(600):
                await take(limits)  # a full bucket: the first 600 go at once
        async with anyio.create_task_group() as group:
            for name in ("a", "b"):
                group.start_soon(waiter, name)
            await settled()
            assert granted == []
            assert state(limits)["waiting_deferred"] == 2
            # Then one every 60/600 = 0.1 s. (An empty header set wakes the head to look again
            # at the fake clock, which its real-time sleep does not follow.)
            for step, expected in ((0.09, []), (0.01, ["a"]), (0.09, ["a"]), (0.01, ["a", "b"])):
                clock.now += step
                limits.observe(PROVIDER, MODEL, {})
                await settled()
                assert granted == expected, (step, granted)

    run(main)


def test_an_idle_bucket_refills_to_its_burst_and_no_further() -> None:
    clock = FakeClock()
    limits = RateLimits({KEY: LimitSettings(rpm=60)}, clock=clock)

    async def main() -> None:
        with anyio.fail_after(5):  # the clock is frozen: a call that waits would hang
            for _ in range(30):
                await take(limits)
            clock.now += 15  # a request a second: 15 of the 30 back
            assert state(limits)["requests_available"] == 45
            clock.now += 3600  # an hour idle holds a minute's worth, not an hour's
            assert state(limits)["requests_available"] == 60
            for _ in range(60):
                await take(limits)
            assert state(limits)["requests_available"] == 0

    run(main)


def test_the_waiter_a_newcomer_makes_the_head_is_woken_to_time_its_wait() -> None:
    # Only the head sleeps on a timer; those behind it sleep until woken. A newcomer's look at
    # the queue can let the head through (the bucket refilled while the head slept): the one
    # behind it is then the head, and must be woken to time its own wait, or it sleeps for
    # good, and every waiter behind it with it. (Seen as a hang of the test below in CI.)
    clock = FakeClock()
    limits = RateLimits({KEY: LimitSettings(rpm=60)}, clock=clock)  # one a second
    granted: list[str] = []

    async def waiter(name: str) -> None:
        await take(limits)
        granted.append(name)

    async def main() -> None:
        with anyio.fail_after(5):
            for _ in range(60):
                await take(limits)  # the bucket, empty
        async with anyio.create_task_group() as group:
            group.start_soon(waiter, "a")
            await settled()  # a: the head, on a timer of a (real) second
            group.start_soon(waiter, "b")
            await settled()  # b: behind it, until woken
            clock.now += 1  # room for one, well before a's timer fires
            group.start_soon(waiter, "c")  # its arrival lets a through; b is now the head
            with anyio.fail_after(0.5):
                while granted != ["a"]:
                    await anyio.sleep(0.01)
            clock.now += 1  # room for b, which must be timing its wait (a second)
            with anyio.fail_after(3):
                while "b" not in granted:
                    await anyio.sleep(0.01)
            group.cancel_scope.cancel()

    run(main)


def test_waiters_sleep_just_until_the_bucket_has_room() -> None:
    # Real time: the event loop must wake each waiter when its turn comes (3 x 0.02 s).
    started = time.monotonic()
    limits = RateLimits({KEY: LimitSettings(rpm=3000)})
    times: list[float] = []

    async def waiter() -> None:
        await take(limits)
        times.append(time.monotonic() - started)

    async def main() -> None:
        for _ in range(3000):
            await take(limits)
        async with anyio.create_task_group() as group:  # waiting together, served in turn
            for _ in range(3):
                group.start_soon(waiter)

    run(main)
    # The bucket was full when made and gains one request every 0.02 s: the k-th waiter cannot
    # go before k * 0.02 s, whatever the machine's load; and it is not kept much longer.
    assert len(times) == 3
    for k, at in enumerate(times, start=1):
        assert at >= k * 0.02 - 0.002, times
    assert times[-1] <= 1.5, times


def test_a_refund_that_leaves_the_head_short_shortens_its_wait() -> None:
    # Real time: the head, asleep for 30 s, must be woken and re-timed to 0.03 s.
    started = time.monotonic()
    limits = RateLimits({KEY: LimitSettings(tpm=60_000)})  # 1,000 tokens a second
    waited: list[float] = []

    async def main() -> None:
        holder = await take(limits, 60_000)

        async def waiter() -> None:
            await take(limits, 30_000)  # 30 s of refill away
            waited.append(time.monotonic() - started)

        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await settled()  # queued, and timed its 30 s wait
            holder.release(used_tokens=30_030)  # 29,970 back: 0.03 s of refill short now

    run(main)
    assert 0.028 <= waited[0] <= 1.5  # not the 30 s it was timed for before the refund


def test_tpm_charges_requested_tokens_and_release_settles_the_difference() -> None:
    clock = FakeClock()
    limits = RateLimits({KEY: LimitSettings(tpm=6000)}, clock=clock)

    async def main() -> None:
        first = await take(limits, 1000)
        assert state(limits)["tokens_available"] == 5000
        first.release(used_tokens=400)  # 600 given back
        assert state(limits)["tokens_available"] == 5600
        second = await take(limits, 2000)
        second.release(used_tokens=2500)  # used more than charged: 500 more taken
        assert state(limits)["tokens_available"] == 3100
        third = await take(limits, 3000)
        third.release()  # no count: the charge stands
        third.release(used_tokens=0)  # a second release does nothing
        assert state(limits)["tokens_available"] == 100
        fourth = await take(limits, 100)
        fourth.release(used_tokens=-50)  # never more than was charged comes back
        assert state(limits)["tokens_available"] == 100
        clock.now += 6  # refills at 6000/60 = 100 tokens a second
        assert state(limits)["tokens_available"] == 700

        # A waiter that does not fit is let through by a refund, not by the (frozen) clock.
        holder = await take(limits, 700)
        granted: list[Permit] = []

        async def waiter() -> None:
            granted.append(await take(limits, 500))

        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await settled()
            assert granted == []
            assert state(limits)["waiting_deferred"] == 1
            holder.release(used_tokens=100)
        assert len(granted) == 1
        assert state(limits)["tokens_available"] == 100
        assert state(limits)["in_flight"] == 1  # only the waiter's call

    run(main)


def test_request_larger_than_the_whole_tpm_limit_is_refused() -> None:
    limits = RateLimits({KEY: LimitSettings(tpm=1000)})

    async def main() -> None:
        with pytest.raises(RequestTooLarge) as refused:
            await take(limits, 1001)
        error = refused.value
        assert isinstance(error, InvalidRequest)
        assert error.status == 400
        assert error.code == "request_too_large"
        for part in ("openai/gpt-test", "1000", "1001", "max_tokens"):
            assert part in error.message
        assert state(limits)["tokens_available"] == 1000  # nothing was charged
        (await take(limits, 1000)).release()

    run(main)


# -- fairness ---------------------------------------------------------------------------------


def test_interactive_waiters_go_first_and_each_class_is_fifo() -> None:
    limits = RateLimits({KEY: LimitSettings(concurrency=1)})
    order: list[str] = []

    async def worker(name: str, interactive: bool) -> None:
        permit = await take(limits, interactive=interactive)
        order.append(name)
        await anyio.lowlevel.checkpoint()  # the call: the slot is held across a yield
        permit.release()

    async def main() -> None:
        holder = await take(limits, interactive=True)
        async with anyio.create_task_group() as group:
            arrivals = [("d1", False), ("d2", False), ("i1", True), ("d3", False), ("i2", True)]
            for name, interactive in arrivals:
                group.start_soon(worker, name, interactive)
                await settled()  # queued before the next one arrives
            assert state(limits)["waiting_interactive"] == 2
            assert state(limits)["waiting_deferred"] == 3
            holder.release()

    run(main)
    assert order == ["i1", "i2", "d1", "d2", "d3"]


def test_a_big_head_blocks_its_class_but_not_an_interactive_arrival() -> None:
    clock = FakeClock()
    limits = RateLimits({KEY: LimitSettings(tpm=60_000)}, clock=clock)
    order: list[str] = []

    async def worker(name: str, tokens: int, interactive: bool) -> None:
        await take(limits, tokens, interactive=interactive)
        order.append(name)

    async def main() -> None:
        first = await take(limits, 40_000)
        second = await take(limits, 20_000)
        async with anyio.create_task_group() as group:
            group.start_soon(worker, "big", 30_000, False)
            await settled()
            group.start_soon(worker, "small", 10, False)
            await settled()
            first.release(used_tokens=20_000)  # 20,000 back: "small" would fit, "big" not
            await settled()
            assert order == []  # "small" waits behind "big": big requests are not starved
            group.start_soon(worker, "interactive", 10, True)
            await settled()
            assert order == ["interactive"]
            second.release(used_tokens=0)  # 20,000 more: now "big" fits, then "small"
        assert order == ["interactive", "big", "small"]
        assert state(limits)["tokens_available"] == 40_000 - 10 - 30_000 - 10

    run(main)


# -- cancellation -----------------------------------------------------------------------------


def test_a_cancelled_head_leaves_nothing_and_lets_the_next_one_through() -> None:
    clock = FakeClock()
    limits = RateLimits({KEY: LimitSettings(tpm=60_000)}, clock=clock)
    order: list[str] = []

    async def worker(name: str, tokens: int) -> None:
        await take(limits, tokens)
        order.append(name)

    async def main() -> None:
        holder = await take(limits, 60_000)
        big = anyio.CancelScope()

        async def cancellable_big() -> None:
            with big:
                await worker("big", 30_000)

        async with anyio.create_task_group() as group:
            group.start_soon(cancellable_big)
            await settled()
            group.start_soon(worker, "small", 50)
            await settled()
            holder.release(used_tokens=59_900)  # 100 back: "small" fits, but "big" is ahead
            await settled()
            assert order == []
            big.cancel()
            await settled()
            assert order == ["small"]
        assert state(limits)["tokens_available"] == 50  # nothing charged for "big"
        assert state(limits)["waiting_deferred"] == 0

    run(main)


def test_a_waiter_cancelled_as_it_is_admitted_gives_its_admission_back() -> None:
    clock = FakeClock()
    limits = RateLimits({KEY: LimitSettings(tpm=60_000, concurrency=1)}, clock=clock)
    got: list[str] = []

    async def second_waiter() -> None:
        await take(limits, 1000)
        got.append("second")

    async def main() -> None:
        scope = anyio.CancelScope()

        async def first_waiter() -> None:
            with scope:
                await take(limits, 1000)
                got.append("first")

        holder = await take(limits, 1000)
        async with anyio.create_task_group() as group:
            group.start_soon(first_waiter)
            await settled()
            group.start_soon(second_waiter)
            await settled()
            # Cancelled, and then admitted before it could run: it must give the slot back.
            scope.cancel()
            holder.release()
            assert state(limits)["in_flight"] == 1  # the first waiter holds it for now
        assert got == ["second"]
        snapshot = state(limits)
        assert snapshot["in_flight"] == 1
        assert snapshot["tokens_available"] == 60_000 - 1000 - 1000  # holder's and second's
        assert snapshot["waiting_deferred"] == 0

    run(main)


# -- concurrency ------------------------------------------------------------------------------


def test_concurrency_cap() -> None:
    limits = RateLimits({}, default=LimitSettings(concurrency=2))
    running = 0
    most = 0

    async def worker(go: anyio.Event) -> None:
        nonlocal running, most
        permit = await take(limits)
        running += 1
        most = max(most, running)
        await go.wait()
        running -= 1
        permit.release()

    async def main() -> None:
        go = anyio.Event()
        async with anyio.create_task_group() as group:
            for _ in range(6):
                group.start_soon(worker, go)
            await settled()
            assert (state(limits)["in_flight"], state(limits)["waiting_deferred"]) == (2, 4)
            assert running == 2
            go.set()

    run(main)
    assert most == 2
    assert state(limits)["in_flight"] == 0


# -- headers ----------------------------------------------------------------------------------


def test_limits_are_learned_from_headers() -> None:
    clock = FakeClock()
    limits = RateLimits({}, clock=clock)

    async def main() -> None:
        first = await take(limits, 100)
        await take(limits, 200)
        before = state(limits)
        assert (before["rpm"], before["tpm"], before["tokens_available"]) == (None, None, None)
        assert before["tpm_source"] == "unknown"
        limits.observe(
            PROVIDER,
            MODEL,
            {
                "x-ratelimit-limit-requests": "100",
                "X-RateLimit-Limit-Tokens": "10000",
                "x-ratelimit-remaining-requests": "99",
                "x-ratelimit-remaining-tokens": "9900",
                "x-ratelimit-reset-tokens": "60ms",
            },
            permit=first,
        )
        after = state(limits)
        assert (after["rpm"], after["rpm_source"]) == (100, "learned")
        assert (after["tpm"], after["tpm_source"]) == (10_000, "learned")
        # What the upstream had when it took the first call, less the call we sent after it.
        assert after["tokens_available"] == 9900 - 200
        assert after["requests_available"] == 99 - 1
        with pytest.raises(RequestTooLarge):
            await take(limits, 10_001)

    run(main)


def test_a_limit_is_learned_anew_when_an_answer_changes_it() -> None:
    # Answers repeat their limits, and a repeat is not read again; a change still counts.
    limits = RateLimits({}, clock=FakeClock())
    for rpm in ("100", "100", "50", "50", "80"):
        limits.observe(PROVIDER, MODEL, LowercaseHeaders({"x-ratelimit-limit-requests": rpm}))
        assert state(limits)["rpm"] == int(rpm)
    limits.observe(PROVIDER, MODEL, {})  # says nothing: what was learnt stands
    assert state(limits)["rpm"] == 80


def test_a_configured_limit_stays_in_force() -> None:
    limits = RateLimits({KEY: LimitSettings(tpm=5000)}, clock=FakeClock())
    limits.observe(PROVIDER, MODEL, {"x-ratelimit-limit-tokens": "10000"})
    snapshot = state(limits)
    assert (snapshot["tpm"], snapshot["tpm_source"]) == (5000, "configured")
    assert snapshot["tokens_available"] == 5000


def test_a_waiter_too_large_for_a_newly_learned_limit_fails_instead_of_waiting() -> None:
    limits = RateLimits({}, default=LimitSettings(concurrency=1), clock=FakeClock())
    errors: list[Exception] = []

    async def big() -> None:
        try:
            await take(limits, 50_000)
        except RequestTooLarge as error:
            errors.append(error)

    async def main() -> None:
        holder = await take(limits)
        async with anyio.create_task_group() as group:
            group.start_soon(big)
            await settled()
            limits.observe(PROVIDER, MODEL, {"x-ratelimit-limit-tokens": "10000"})
        assert len(errors) == 1
        assert state(limits)["waiting_deferred"] == 0
        holder.release()

    run(main)


def test_headers_lower_what_is_available_never_raise_it() -> None:
    clock = FakeClock()
    limits = RateLimits({KEY: LimitSettings(rpm=600, tpm=60_000)}, clock=clock)

    def observe(permit: Permit | None, tokens: int, requests: int | None = None) -> None:
        headers = {"x-ratelimit-remaining-tokens": str(tokens)}
        if requests is not None:
            headers["x-ratelimit-remaining-requests"] = str(requests)
        limits.observe(PROVIDER, MODEL, headers, permit=permit)

    async def main() -> None:
        first = await take(limits, 1000)
        second = await take(limits, 2000)
        assert state(limits)["tokens_available"] == 57_000
        # The upstream had 30,000 after the first call (a restart, another client...): less
        # the second call, which it had not seen yet.
        observe(first, 30_000, requests=500)
        assert state(limits)["tokens_available"] == 28_000
        assert state(limits)["requests_available"] == 499
        # The second call's answer reports the same shortfall: corrected once, not twice.
        observe(second, 28_000, requests=499)
        assert state(limits)["tokens_available"] == 28_000
        assert state(limits)["requests_available"] == 499
        # A header saying more is left than we think never raises our bucket.
        observe(second, 59_000)
        assert state(limits)["tokens_available"] == 28_000
        # An answer not tied to a permit is taken as the oldest call in flight's.
        observe(None, 10_000)
        assert state(limits)["tokens_available"] == 8000

    run(main)


def test_a_stale_header_counts_the_refill_since_its_call() -> None:
    clock = FakeClock()
    limits = RateLimits({KEY: LimitSettings(tpm=60_000)}, clock=clock)

    async def main() -> None:
        slow = await take(limits, 30_000)
        clock.now += 20  # a long call: the upstream, like us, refilled 20,000 since
        assert state(limits)["tokens_available"] == 50_000
        limits.observe(PROVIDER, MODEL, {"x-ratelimit-remaining-tokens": "30000"}, permit=slow)
        assert state(limits)["tokens_available"] == 50_000

    run(main)


def test_after_a_restart_the_first_header_sets_the_level_the_upstream_has_now() -> None:
    clock = FakeClock()
    limits = RateLimits({KEY: LimitSettings(tpm=60_000)}, clock=clock)

    async def main() -> None:
        # We start full; the upstream, still used from before, had 9,000 left after the call.
        slow = await take(limits, 1000)
        clock.now += 20  # ours is full again; the upstream refilled 20,000 since
        limits.observe(PROVIDER, MODEL, {"x-ratelimit-remaining-tokens": "9000"}, permit=slow)
        assert state(limits)["tokens_available"] == 29_000

    run(main)


def test_a_header_from_a_full_bucket_does_not_count_refill_it_could_not_hold() -> None:
    clock = FakeClock()
    limits = RateLimits({KEY: LimitSettings(tpm=60_000)}, clock=clock)

    async def main() -> None:
        first = await take(limits, 1000)  # the upstream, full too, says 59,000 are left
        clock.now += 1  # both buckets are full again after one second, not "60,000 + 1,000"
        await take(limits, 10_000)
        clock.now += 10
        assert state(limits)["tokens_available"] == 60_000
        limits.observe(PROVIDER, MODEL, {"x-ratelimit-remaining-tokens": "59000"}, permit=first)
        assert state(limits)["tokens_available"] == 60_000

    run(main)


def test_a_lowered_bucket_makes_the_head_wait_longer() -> None:
    # Real time: the head's sleep must follow the corrected level.
    started = time.monotonic()
    limits = RateLimits({KEY: LimitSettings(tpm=600_000)})  # 10,000 tokens a second
    waited: list[float] = []

    async def main() -> None:
        first = await take(limits, 1000)
        limits.observe(PROVIDER, MODEL, {"x-ratelimit-remaining-tokens": "0"}, permit=first)
        await take(limits, 400)  # 0.04 s of refill after the first call, not 0 s
        waited.append(time.monotonic() - started)

    run(main)
    assert 0.038 <= waited[0] <= 1.5


# -- 429 --------------------------------------------------------------------------------------


def test_rate_limited_drains_pauses_then_ramps_back() -> None:
    clock = FakeClock()
    limits = RateLimits({KEY: LimitSettings(rpm=600, tpm=60_000)}, clock=clock, ramp_seconds=10)
    assert limits.rate_limited(PROVIDER, MODEL, {"retry-after-ms": "2000"}) == 2.0
    snapshot = state(limits)
    assert snapshot["paused_for_s"] == 2.0
    assert (snapshot["requests_available"], snapshot["tokens_available"]) == (0, 0)
    assert (snapshot["rate_limited"], snapshot["ramp"]) == (1, 0.0)
    clock.now += 1
    assert state(limits)["tokens_available"] == 0  # nothing refills during the pause
    clock.now += 1
    assert (state(limits)["paused_for_s"], state(limits)["ramp"]) == (0.0, 0.25)
    clock.now += 5  # half-way: the rate has ramped from 25% to 62.5% of 1,000 tokens/s
    snapshot = state(limits)
    assert snapshot["ramp"] == 0.625
    assert snapshot["tokens_available"] == 2187  # 1000 * (0.25*5 + 0.075/2 * 5²) = 2187.5
    assert snapshot["requests_available"] == 21
    clock.now += 5
    assert (state(limits)["ramp"], state(limits)["tokens_available"]) == (1.0, 6250)
    clock.now += 1
    assert state(limits)["tokens_available"] == 7250  # full rate again


def test_rate_limited_holds_waiters_then_admits_them_slowly() -> None:
    # Real time: waiters must sleep through the pause and be woken at the ramping rate.
    limits = RateLimits({KEY: LimitSettings(rpm=60_000)}, ramp_seconds=0.4)  # 1,000/s
    granted: list[float] = []
    pause_end: list[float] = []

    async def main() -> None:
        for _ in range(100):
            await take(limits)  # a full bucket first: a 429 must empty it
        pause_end.append(
            time.monotonic() + limits.rate_limited(PROVIDER, MODEL, {"retry-after-ms": "50"})
        )
        while not granted or granted[-1] < pause_end[0] + 0.1:
            await take(limits)
            granted.append(time.monotonic())

    run(main)
    assert granted[0] >= pause_end[0] - 0.002  # nobody goes during the pause
    # After it, at most what a rate ramping from 25% to 100% over 0.4 s refills, however late
    # each waiter woke: by 0.1 s about 34 (1000 * (0.25*0.1 + 0.75/0.4 * 0.1²/2)) where the
    # full rate would let 100 through.
    slope = 0.75 / 0.4
    for count, at in enumerate(granted, start=1):
        elapsed = at - pause_end[0]
        assert count <= 1000 * (0.25 * elapsed + slope * elapsed**2 / 2) + 2, (count, elapsed)
    assert len(granted) >= 10


def test_rate_limited_pauses_a_key_with_no_known_limits() -> None:
    limits = RateLimits({})
    waited: list[float] = []

    async def main() -> None:
        start = time.monotonic()
        limits.rate_limited(PROVIDER, MODEL, {"retry-after": "0.05"})
        await take(limits)
        waited.append(time.monotonic() - start)

    run(main)
    assert waited[0] >= 0.045
    assert state(limits)["rate_limited"] == 1
