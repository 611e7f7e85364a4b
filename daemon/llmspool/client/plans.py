"""What to do next, without doing it: the client's multi-step operations as plans.

A plan is a generator that yields steps (``Call`` the daemon, ``Fetch`` a job's results,
``Sleep``) and is sent each step's outcome; what it returns is the operation's answer. Waiting
for a job (when to long-poll, when to sleep, when to give up) and ``result()`` are written once
here; the async and sync clients each carry a plan out with their own I/O (``advance``).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from llmspool.client.errors import Json
from llmspool.client.protocol import (
    MAX_LONG_POLL,
    TERMINAL_STATUSES,
    Call,
    StatusCallback,
    finished_count,
    is_single,
    single_result,
    status_call,
)

T = TypeVar("T")

# Long polls shorter than this would mostly fetch partial results to throw away; sleep instead.
LONG_POLL_MIN = 5.0
MIN_POLL = 0.1  # no caller needs fresher news than this; the daemon is shared
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0


@dataclass(frozen=True)
class Fetch:
    """Open a job's results (long-polling ``wait`` seconds when set); the outcome is its lines
    when ``read``, else ``None`` (a long poll whose answer's arrival is the news)."""

    job_id: str
    wait: float | None
    read: bool


@dataclass(frozen=True)
class Sleep:
    """Pause ``seconds``; the outcome is ``None``."""

    seconds: float


Step = Call | Fetch | Sleep
# Sent Any: each step has its own outcome (a Call's JSON object, a Fetch's lines, None).
Plan = Generator[Step, Any, T]


@dataclass(frozen=True)
class Done(Generic[T]):
    """A plan has finished with ``value``."""

    value: T


def advance(plan: Plan[T], outcome: Any) -> Step | Done[T]:
    """Send a step's outcome (``None`` to start) into a plan: its next step, or ``Done``."""
    try:
        return plan.send(outcome)
    except StopIteration as finished:
        return Done(finished.value)


class _WaitClock:
    """When to ask again while waiting for a job; no I/O, so both clients share it.

    Asked to report at most every few seconds (``poll_slice`` below ``LONG_POLL_MIN``, as a
    progress bar does), it sleeps between status requests. Otherwise each round long-polls the
    results endpoint, which the daemon answers as soon as the job finishes; a long poll that is
    not finished is a partial results stream thrown away, so it is worth it only when long.
    Less than a second before the timeout, it sleeps. A daemon that answers long polls early
    while the job still runs (one that does not wait) gets exponential backoff, not a busy loop.
    """

    def __init__(self, job_id: str, timeout: float | None, poll_slice: float) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.poll_slice = max(MIN_POLL, min(float(MAX_LONG_POLL), poll_slice))
        self.long_polls = self.poll_slice >= LONG_POLL_MIN
        self.started = time.monotonic()
        self._backoff = BACKOFF_FIRST

    def remaining(self) -> float | None:
        if self.timeout is None:
            return None
        return self.timeout - (time.monotonic() - self.started)

    def next_round(self, job: Mapping[str, Any]) -> tuple[int, float]:
        """``(seconds to long-poll, seconds to sleep)`` for the next round, one of them zero.

        Raises ``TimeoutError`` once the timeout has run out.
        """
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise TimeoutError(
                f"job {self.job_id} did not finish within {self.timeout:g} s "
                f"(status {job.get('status')}, {finished_count(job)} of "
                f"{(job.get('counts') or {}).get('total', '?')} requests done)"
            )
        budget = self.poll_slice if remaining is None else min(self.poll_slice, remaining)
        if self.long_polls and budget >= 1:
            return int(budget), 0.0
        return 0, budget

    def pause_after(self, asked: int, took: float) -> float:
        """Seconds to sleep after a long poll of ``asked`` seconds that took ``took``."""
        if took >= asked / 2:
            self._backoff = BACKOFF_FIRST
            return 0.0
        pause, self._backoff = self._backoff, min(BACKOFF_MAX, self._backoff * 2)
        remaining = self.remaining()
        return pause if remaining is None else max(0.0, min(pause, remaining))


def wait_plan(
    job_id: str,
    timeout: float | None,
    on_status: StatusCallback | None,
    poll_every: float,
) -> Plan[Json]:
    """Wait until the job is final (see ``JobHandle.wait``); its final job object."""
    clock = _WaitClock(job_id, timeout, poll_every)
    while True:
        job: Json = yield status_call(job_id)
        if on_status is not None:
            on_status(job)
        if job.get("status") in TERMINAL_STATUSES:
            return job
        long_poll, pause = clock.next_round(job)
        if long_poll:
            started = time.monotonic()
            yield Fetch(job_id, long_poll, read=False)  # the lines are fetched when wanted
            pause = clock.pause_after(long_poll, time.monotonic() - started)
        if pause:
            yield Sleep(pause)


def result_plan(job_id: str, single: bool | None, timeout: float | None) -> Plan[Any]:
    """Wait for the job; the response body of a one-request job, else all its output lines.

    A one-request job whose request failed raises ``RequestFailed``.
    """
    job = yield from wait_plan(job_id, timeout, None, MAX_LONG_POLL)
    lines: list[Json] = yield Fetch(job_id, None, read=True)
    if is_single(single, job):
        return single_result(lines, job)
    return lines
