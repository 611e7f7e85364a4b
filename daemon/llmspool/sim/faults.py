"""Fault injection: the rules that make the simulator misbehave on purpose, and who gets hit.

A rule is written the same way in the ``[[sim.faults]]`` config tables and in the JSON of
``POST /_sim/faults``::

    {"kind": "status", "status": 503, "count": 2, "path": "/v1/chat/completions"}

``kind`` says what happens; the other keys say to which requests:

- ``probability`` (0..1, default 1): each matching request is hit with this chance, drawn from
  the simulator's seeded RNG, so a run with the same seed and traffic misbehaves the same way.
- ``count``: the rule hits at most this many requests, then it is spent and removed. With no
  ``probability`` that is exactly "the next N matching requests".
- ``path``, ``model``, ``tier``, ``method``: only requests to that path, for that model, served
  at that service tier, or with that HTTP method (``"POST"``) match. ``stream_cut`` matches
  streamed requests only; ``refusal`` and ``truncated`` only non-streamed chat completions.
- ``contains`` (a non-empty string): only requests whose JSON body, as sent, contains that
  text match, so a workload can mark the requests a model fails (``{"kind": "refusal",
  "model": "gpt-4o-mini", "contains": "HARD:"}``). The raw body is searched, escapes and all:
  pick a marker JSON writes as is (no quotes, backslashes, or non-ASCII a client may escape).
  Only model endpoints are searched; a rule with ``contains`` never hits the others.

``refusal`` and ``truncated`` answer 200 with a *poor* chat completion (id, model, usage, tier
as the good one's), for clients that check answers (a cascade escalating to a larger model).
They only hit ``/v1/chat/completions``, so never under the Anthropic flavor (``/v1/messages``).

Which endpoints a rule can hit:

- A rule without ``path`` hits only the model endpoints (chat completions, responses,
  embeddings), after their body is validated (bad input is never faulted).
- A rule with a ``path`` also hits the other endpoints: the Files and Batch APIs and
  ``/v1/models``. A ``path`` ending in ``/`` is a prefix: ``/v1/batches/`` matches every batch
  (``/v1/batches/{id}``, ``/v1/batches/{id}/cancel``) but not ``/v1/batches`` itself (list and
  create), and ``/v1/`` matches every endpoint; any other ``path`` is matched exactly. A rule
  with a ``model`` or a ``tier`` never hits those endpoints (they have neither). There the
  fault comes after routing (an unknown path or method is still 404/405) and before the
  endpoint acts: an error, a ``drop`` or a ``hang`` means no file was stored, no batch created
  or cancelled; ``slow`` waits (having read the request body), then the endpoint answers as
  usual. ``reset_midway`` lets the endpoint act (the batch *is* created), then cuts its answer.

Rules are tried in order; the first one that hits decides the request's fault.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

from llmspool.core.errors import ApiError, ConfigError
from llmspool.core.units import format_duration
from llmspool.sim import fault_values as values


class FaultKind(StrEnum):
    """What a fault does to the request it hits."""

    STATUS = "status"
    """Answer an HTTP error (``status``, default 500) in the flavor's shape (OpenAI's; under
    the Anthropic flavor any status, 529 ``overloaded_error`` included)."""
    RATE_LIMIT = "rate_limit"
    """429 ``rate_limit_exceeded`` with ``retry-after``, ``retry-after-ms`` and remaining 0."""
    QUOTA = "quota"
    """429 ``insufficient_quota``: waiting never helps."""
    SLOW = "slow"
    """Wait ``delay`` more before answering normally."""
    HANG = "hang"
    """Never answer; wait until the client goes away (or ``delay``, then drop the connection)."""
    DROP = "drop"
    """Close the connection without any HTTP answer (reset before the status line)."""
    RESET_MIDWAY = "reset_midway"
    """The answer starts (its status, headers and about half its body; a stream: half of its
    first event), then the connection is reset."""
    STREAM_CUT = "stream_cut"
    """Streamed answers stop after ``after_chunks`` events and the connection closes; with a
    ``status``, the stream ends instead with an error event of that status in the flavor's
    shape (Anthropic's ``event: error``, e.g. 529 ``overloaded_error``)."""
    REFUSAL = "refusal"
    """A 200 chat completion refusing as OpenAI's do: ``content`` null, ``refusal`` the rule's
    ``message`` (or ``REFUSAL_TEXT``), no tool calls, ``finish_reason`` ``"stop"``. Hits only
    non-streamed chat completions (as ``stream_cut`` hits only streamed requests)."""
    TRUNCATED = "truncated"
    """A 200 chat completion cut short: ``content`` (and tool call arguments) cut to about half,
    ``finish_reason`` ``"length"``, usage as billed. Hits only non-streamed chat completions
    (as ``stream_cut`` hits only streamed requests)."""


REFUSAL_TEXT = "I'm sorry, but I can't help with that."
"""What a ``refusal`` fault's answer says without a ``message`` of its own."""
CHAT_PATH = "/v1/chat/completions"
"""The only path the answer kinds (``ANSWER_KINDS``) hit: their answer is a chat completion."""


_ERROR_KINDS = frozenset({FaultKind.STATUS, FaultKind.RATE_LIMIT, FaultKind.QUOTA})
ANSWER_KINDS = frozenset({FaultKind.REFUSAL, FaultKind.TRUNCATED})
"""The kinds that answer 200 with a poor chat completion instead of failing the request."""

# Which optional keys make sense for each kind; anything else is a mistake worth reporting.
_KIND_KEYS: dict[FaultKind, frozenset[str]] = {
    FaultKind.STATUS: frozenset({"status", "retry_after", "code", "message"}),
    FaultKind.RATE_LIMIT: frozenset({"retry_after", "code", "message"}),
    FaultKind.QUOTA: frozenset({"code", "message"}),
    FaultKind.SLOW: frozenset({"delay"}),
    FaultKind.HANG: frozenset({"delay"}),
    FaultKind.DROP: frozenset(),
    FaultKind.RESET_MIDWAY: frozenset(),
    FaultKind.STREAM_CUT: frozenset({"after_chunks", "status", "message"}),
    FaultKind.REFUSAL: frozenset({"message"}),
    FaultKind.TRUNCATED: frozenset(),
}
_SELECTOR_KEYS = frozenset(
    {"kind", "probability", "count", "path", "model", "tier", "method", "contains"}
)

_DEFAULT_DELAY = {FaultKind.SLOW: 2.0, FaultKind.HANG: 3600.0}
_DEFAULT_RETRY_AFTER = {FaultKind.RATE_LIMIT: 1.0}

# status -> (error type, code, message), following what OpenAI (and its edge) answers.
_STATUS_ERRORS: dict[int, tuple[str, str | None, str]] = {
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: (
        "server_error",
        "slow_down",
        "The server is overloaded or not ready yet. Please reduce your request rate.",
    ),
    504: ("server_error", "timeout", "Gateway timeout: the request took too long."),
}


@dataclass(frozen=True, slots=True)
class FaultRule:
    """One fault rule; ``None`` fields that matter for ``kind`` are filled with its defaults."""

    kind: FaultKind
    probability: float = 1.0
    count: int | None = None
    path: str | None = None
    model: str | None = None
    tier: str | None = None
    method: str | None = None
    contains: str | None = None
    status: int | None = None
    delay: float | None = None
    retry_after: float | None = None
    after_chunks: int | None = None
    code: str | None = None
    message: str | None = None

    def __post_init__(self) -> None:
        if self.kind is FaultKind.STATUS and self.status is None:
            object.__setattr__(self, "status", 500)
        if self.delay is None and self.kind in _DEFAULT_DELAY:
            object.__setattr__(self, "delay", _DEFAULT_DELAY[self.kind])
        if self.retry_after is None and self.kind in _DEFAULT_RETRY_AFTER:
            object.__setattr__(self, "retry_after", _DEFAULT_RETRY_AFTER[self.kind])
        if self.kind is FaultKind.STREAM_CUT and self.after_chunks is None:
            object.__setattr__(self, "after_chunks", 1)

    @classmethod
    def from_mapping(cls, data: Any, key: str) -> FaultRule:
        """Read one rule; a bad or unknown entry raises ``ConfigError`` naming ``key.entry``."""
        if not isinstance(data, Mapping):
            raise ConfigError(key, "a fault rule must be a table (JSON object)")
        if "kind" not in data:
            raise ConfigError(f"{key}.kind", f"missing; one of {_kinds_text()}")
        kind_text = data["kind"]
        if kind_text not in FaultKind.__members__.values():
            raise ConfigError(f"{key}.kind", f"must be one of {_kinds_text()}, not {kind_text!r}")
        kind = FaultKind(kind_text)
        allowed = _SELECTOR_KEYS | _KIND_KEYS[kind]
        for name in data:
            if name not in allowed:
                if name in _all_kind_keys():
                    raise ConfigError(f"{key}.{name}", f"does not apply to kind {kind.value!r}")
                raise ConfigError(f"{key}.{name}", "unknown key")
        return cls(
            kind=kind,
            probability=values.probability(data.get("probability", 1.0), f"{key}.probability"),
            count=values.optional_int(data.get("count"), f"{key}.count", minimum=1),
            path=values.optional_text(data.get("path"), f"{key}.path"),
            model=values.optional_text(data.get("model"), f"{key}.model"),
            tier=values.optional_text(data.get("tier"), f"{key}.tier"),
            method=values.method(data.get("method"), f"{key}.method"),
            contains=values.optional_text(data.get("contains"), f"{key}.contains"),
            status=values.optional_int(
                data.get("status"), f"{key}.status", minimum=400, maximum=599
            ),
            delay=values.optional_duration(data.get("delay"), f"{key}.delay"),
            retry_after=values.optional_duration(data.get("retry_after"), f"{key}.retry_after"),
            after_chunks=values.optional_int(
                data.get("after_chunks"), f"{key}.after_chunks", minimum=0
            ),
            code=values.optional_text(data.get("code"), f"{key}.code"),
            message=values.optional_text(data.get("message"), f"{key}.message"),
        )

    def to_mapping(self) -> dict[str, Any]:
        """The rule as ``from_mapping`` reads it back (durations as strings, no nulls)."""
        out: dict[str, Any] = {"kind": self.kind.value, "probability": self.probability}
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None and field.name not in out:
                durations = field.name in ("delay", "retry_after")
                out[field.name] = values.duration_text(value) if durations else value
        return out

    def matches(
        self,
        path: str,
        model: str | None,
        tier: str | None,
        stream: bool,
        method: str | None,
        body: str | None = None,
    ) -> bool:
        """Whether a request with these properties is one this rule is about; ``model`` is
        ``None`` for the endpoints that are not about a model (files, batches...), ``body``
        the request's body as text, ``None`` where there is none to search (only a rule with
        ``contains`` looks at it)."""
        if self.contains is not None and (body is None or self.contains not in body):
            return False
        if self.kind in ANSWER_KINDS and (stream or path != CHAT_PATH):
            return False
        if self.path is None:
            if model is None:
                return False
        elif self.path != path and not (self.path.endswith("/") and path.startswith(self.path)):
            return False
        return (
            (self.model is None or self.model == model)
            and (self.method is None or self.method == method)
            and (self.tier is None or self.tier == tier)
            and (self.kind is not FaultKind.STREAM_CUT or stream)
        )

    def error(self, *, request_limit: int) -> ApiError:
        """The OpenAI-shaped error an error kind answers with."""
        if self.kind is FaultKind.RATE_LIMIT:
            wait = format_duration(self.retry_after or 0.0)
            return ApiError(
                self.message
                or (
                    "Rate limit reached for requests per min (RPM): "
                    f"Limit {request_limit}, Used {request_limit}, Requested 1. "
                    f"Please try again in {wait}."
                ),
                status=429,
                error_type="requests",
                code=self.code or "rate_limit_exceeded",
            )
        if self.kind is FaultKind.QUOTA:
            return ApiError(
                self.message
                or ("You exceeded your current quota, please check your plan and billing details."),
                status=429,
                error_type="insufficient_quota",
                code=self.code or "insufficient_quota",
            )
        status = self.status or 500
        default_type = "invalid_request_error" if status < 500 else "server_error"
        error_type, code, message = _STATUS_ERRORS.get(
            status, (default_type, None, f"Simulated HTTP {status} error.")
        )
        return ApiError(
            self.message or message, status=status, error_type=error_type, code=self.code or code
        )

    @property
    def is_error(self) -> bool:
        return self.kind in _ERROR_KINDS


class FaultInjector:
    """The active rules, how many hits each has left, and the seeded RNG that draws chances.

    ``pick`` never awaits, so on one event loop a ``count`` is exact under any concurrency.
    """

    def __init__(self, rules: Iterable[FaultRule], *, seed: int) -> None:
        self._rules: list[FaultRule] = list(rules)
        self._rng = random.Random(seed)

    def replace(self, rules: Iterable[FaultRule], *, seed: int | None = None) -> None:
        """Make ``rules`` the active set (counts start afresh); reseed the RNG if ``seed``."""
        self._rules = list(rules)
        if seed is not None:
            self._rng.seed(seed)

    def clear(self) -> None:
        self._rules = []

    def active(self) -> list[FaultRule]:
        """The rules as they stand now: ``count`` is what is left; spent rules are gone."""
        return list(self._rules)

    def pick(
        self,
        path: str,
        model: str | None,
        tier: str | None,
        stream: bool,
        *,
        method: str | None = None,
        body: bytes | None = None,
    ) -> FaultRule | None:
        """The rule that hits this request, if any; a hit uses up one of its ``count``.

        ``model`` is ``None`` for an endpoint that is not about a model (only rules with a
        ``path`` can hit those); ``body`` is the request's body as sent, ``None`` where it was
        not read (only rules with ``contains`` look at it)."""
        if not self._rules:
            return None
        text: str | None = None
        for index, rule in enumerate(self._rules):
            if rule.contains is not None and text is None and body is not None:
                # Decoded once per request, and only when a rule wants to search it.
                text = body.decode("utf-8", "replace")
            if not rule.matches(path, model, tier, stream, method, text):
                continue
            if rule.probability < 1.0 and (
                rule.probability <= 0.0 or self._rng.random() >= rule.probability
            ):
                continue
            if rule.count is not None:
                if rule.count <= 1:
                    del self._rules[index]
                else:
                    self._rules[index] = replace(rule, count=rule.count - 1)
            return rule
        return None


def rules_from_json(data: Any) -> tuple[list[FaultRule], int | None]:
    """Rules (and an optional new seed) from a ``POST /_sim/faults`` body.

    The body is a rule, a list of rules, or ``{"faults": [...], "seed": N}`` (what
    ``GET /_sim/faults`` answers, so its output can be posted back).
    """
    seed: int | None = None
    items: Any
    if isinstance(data, Mapping) and "faults" in data and set(data) <= {"faults", "seed"}:
        items = data["faults"]
        if "seed" in data:
            seed = values.optional_int(data["seed"], "seed")
    elif isinstance(data, Mapping):
        items = [data]
    else:
        items = data
    return rules_from_list(items, "faults"), seed


def rules_from_list(items: Any, key: str) -> list[FaultRule]:
    """Rules from a list of rule tables (or one table), keys named ``key[i].name``."""
    if isinstance(items, Mapping):
        return [FaultRule.from_mapping(items, key)]
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise ConfigError(key, "must be a list of fault rules")
    return [FaultRule.from_mapping(item, f"{key}[{i}]") for i, item in enumerate(items)]


def _kinds_text() -> str:
    return ", ".join(repr(kind.value) for kind in FaultKind)


def _all_kind_keys() -> frozenset[str]:
    return frozenset().union(*_KIND_KEYS.values())
