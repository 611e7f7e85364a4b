"""The per-minute request and token counters behind the ``x-ratelimit-*`` headers.

For now they only report (remaining = limit - used this minute, never below 0); nothing is
refused. Enforcing RPM/TPM later means checking ``remaining_*`` before answering.
"""

from __future__ import annotations

import time
from collections.abc import Callable

WINDOW_SECONDS = 60.0


def go_duration(seconds: float) -> str:
    """A duration as OpenAI's headers spell it, Go's way: ``12ms``, ``1s``, ``8.64s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


class RateLimitWindow:
    """Requests and tokens used in the current fixed one-minute window."""

    def __init__(
        self,
        request_limit: int,
        token_limit: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.request_limit = request_limit
        self.token_limit = token_limit
        self._clock = clock
        self._window_start = clock()
        self._requests = 0
        self._tokens = 0
        self._limit_headers = [
            (b"x-ratelimit-limit-requests", str(request_limit).encode()),
            (b"x-ratelimit-limit-tokens", str(token_limit).encode()),
        ]

    def _roll(self) -> float:
        """Seconds left in the current window, starting a new one if the last has ended."""
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed >= WINDOW_SECONDS:
            self._window_start = now
            self._requests = 0
            self._tokens = 0
            elapsed = 0.0
        return WINDOW_SECONDS - elapsed

    def record(self, *, requests: int = 0, tokens: int = 0) -> None:
        self._roll()
        self._requests += requests
        self._tokens += tokens

    @property
    def remaining_requests(self) -> int:
        return max(0, self.request_limit - self._requests)

    @property
    def remaining_tokens(self) -> int:
        return max(0, self.token_limit - self._tokens)

    def headers(self, *, requests_exhausted: float | None = None) -> list[tuple[bytes, bytes]]:
        """The six ``x-ratelimit-*`` headers now.

        ``requests_exhausted`` (seconds) reports no requests left, resetting after that long,
        as a 429 ``rate_limit_exceeded`` does.
        """
        left = self._roll()
        if requests_exhausted is not None:
            remaining_requests, reset_requests = 0, requests_exhausted
        else:
            remaining_requests = self.remaining_requests
            reset_requests = left if self._requests else 0.0
        return [
            *self._limit_headers,
            (b"x-ratelimit-remaining-requests", str(remaining_requests).encode()),
            (b"x-ratelimit-remaining-tokens", str(self.remaining_tokens).encode()),
            (b"x-ratelimit-reset-requests", go_duration(reset_requests).encode()),
            (b"x-ratelimit-reset-tokens", go_duration(left if self._tokens else 0.0).encode()),
        ]
