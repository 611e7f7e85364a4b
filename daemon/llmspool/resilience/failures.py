"""What a failed upstream call means: the one table that classifies every failure.

Every failure the daemon sees from a provider is an ``ApiError`` by the time it leaves the
provider boundary (``UpstreamError`` for an HTTP error answer, ``UpstreamUnreachable`` for no
answer, ``BadUpstreamAnswer`` for an unreadable one). ``classify`` reads its status,
``error.type``, ``error.code`` and message once and says what to do about it:

==========================  ==============================================  ==============
class                       when                                            what happens
==========================  ==============================================  ==============
``RATE_LIMITED``            429 ``rate_limit_exceeded`` (requests, tokens)  wait the hint,
                                                                            pause the limit
``TRANSIENT``               500, 502, 503 (``slow_down``), 504, 408, 409,   retry with
                            connection refused or reset, a timeout          backoff
``FLEX_UNAVAILABLE``        429 *resource unavailable* to a flex call       the flex policy
``PERMANENT``               400 (``context_length_exceeded`` too), 401,     never retried
                            403, 404, 413, 422, ``insufficient_quota`` and
                            its kin, "Request too large", an answer that
                            cannot be read
==========================  ==============================================  ==============

README.md "Troubleshooting" documents the same table for operators; a test keeps the two
together.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from llmspool.core.errors import ApiError, BadUpstreamAnswer, UpstreamError, UpstreamUnreachable


class FailureClass(StrEnum):
    RATE_LIMITED = "rate_limited"
    TRANSIENT = "transient"
    FLEX_UNAVAILABLE = "flex_unavailable"
    PERMANENT = "permanent"
    IDLE_CLOSE = "idle_close"
    """The server closed a kept-alive connection as the request went out on it, before
    answering: its idle timeout, not its health. Sent again at once, on the connection pool's
    next connection."""

    @property
    def retryable(self) -> bool:
        return self in (FailureClass.RATE_LIMITED, FailureClass.TRANSIENT,
                        FailureClass.IDLE_CLOSE)

    @property
    def at_once(self) -> bool:
        """Whether a retry goes without waiting (nothing says the provider needs a pause)."""
        return self is FailureClass.IDLE_CLOSE

    @property
    def counts_against_provider(self) -> bool:
        """Whether the circuit breaker counts it as the provider failing (a rate limit or a
        caller's mistake says nothing about the provider's health)."""
        return self is FailureClass.TRANSIENT


@dataclass(frozen=True, slots=True)
class Failure:
    """A classified failure: its class, and a short reason for logs and spans."""

    kind: FailureClass
    reason: str


# 429 codes and types that mean the account cannot pay: waiting never helps.
QUOTA_CODES = frozenset({
    "insufficient_quota",
    "credit_balance_exhausted",
    "organization_spend_limit_exceeded",
    "project_spend_limit_exceeded",
    "billing_hard_limit_reached",
    "billing_not_active",
    "access_terminated",
})

TRANSIENT_STATUSES = frozenset({408, 409, 500, 502, 503, 504})


def classify(error: ApiError, *, flex: bool = False) -> Failure:
    """What ``error`` from a call means (``flex``: the call asked for the flex tier)."""
    if isinstance(error, UpstreamUnreachable):
        if error.code == "idle_connection_closed":
            return Failure(FailureClass.IDLE_CLOSE,
                           "a kept-alive connection closed by the server as the request went out")
        if error.code in ("upstream_timeout", "stream_idle_timeout", "connect_timeout"):
            return Failure(FailureClass.TRANSIENT, f"timeout ({error.code})")
        return Failure(FailureClass.TRANSIENT, "no answer (connection refused or reset)")
    if isinstance(error, BadUpstreamAnswer):
        # It answered 200 with something unreadable; sending again may be charged again.
        return Failure(FailureClass.PERMANENT, f"unreadable answer ({error.code})")
    if not isinstance(error, UpstreamError):
        return Failure(FailureClass.PERMANENT, f"{error.status} {error.code or error.type}")
    status, code, kind = error.status, error.code or "", error.type or ""
    label = f"{status} {code or kind}".strip()
    if status == 429:
        if code in QUOTA_CODES or kind in QUOTA_CODES:
            return Failure(FailureClass.PERMANENT, f"{label}: out of quota, waiting won't help")
        if is_resource_unavailable(error) and flex:
            return Failure(FailureClass.FLEX_UNAVAILABLE, f"{label}: no flex capacity")
        if error.message.lower().startswith("request too large"):
            return Failure(FailureClass.PERMANENT,
                           f"{label}: the request alone is larger than the token limit")
        return Failure(FailureClass.RATE_LIMITED, label)
    if status in TRANSIENT_STATUSES or status >= 500:
        return Failure(FailureClass.TRANSIENT, label)
    return Failure(FailureClass.PERMANENT, label)


def is_resource_unavailable(error: UpstreamError) -> bool:
    """Flex's "no capacity" 429 (not a rate limit, not charged)."""
    return error.status == 429 and (
        error.code == "resource_unavailable" or "resource unavailable" in error.message.lower()
    )
