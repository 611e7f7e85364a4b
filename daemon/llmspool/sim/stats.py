"""What the simulator saw, exactly: the answer of ``GET /_sim/stats``.

Tests and rehearsals ask it how many calls reached the "provider", per path, model and tier,
how many faults hit, how many flex requests were served or refused as *resource unavailable*,
and how many tokens were generated; and for the Batch API, how many batches were created (per
daemon intent, from ``metadata["llmspool_intent"]``), are in each status, and how many lines
they ran. The control paths (``/_sim/…``) are not counted, so asking never changes the answer.

Rate limits (``ratelimits``): per model, the requests admitted and the tokens charged for them
(see ``ratelimit``), the requests refused with 429 (RPM, TPM, or too large for the TPM limit),
and the wall-clock times (Unix seconds) of the first and last admitted request; with the limits
in force, so that a benchmark can tell how much of the limit it used over its run and how
many of its calls were refused. ``connections`` counts the TCP connections that carried
requests (other than control ones) since the last reset, each once however many requests it
carried: a client that reuses its connections makes few.
"""

from __future__ import annotations

import time
import weakref
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class BatchCounters:
    """What the Batch API saw since the last reset."""

    created: int = 0
    files_uploaded: int = 0
    lines_processed: int = 0
    """Lines run to an answer (status 200, HTTP error or failure) in ended batches; the ones
    left unfinished by expiry or cancel are not."""
    cancel_requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    intents: Counter[str] = field(default_factory=Counter)
    """``metadata["llmspool_intent"]`` -> batches created with it: the daemon's crash tests
    expect each intent to be submitted exactly once. (Anthropic's Message Batches have no
    metadata: there each ``custom_id`` prefix, before its last ``_``, counts once per batch.)"""

    def to_json(self, by_status: Mapping[str, int]) -> dict[str, Any]:
        return {
            "created": self.created,
            "by_status": dict(by_status),
            "files_uploaded": self.files_uploaded,
            "lines_processed": self.lines_processed,
            "cancel_requests": self.cancel_requests,
            "tokens": {"input": self.input_tokens, "output": self.output_tokens},
            "intents": dict(self.intents),
        }


@dataclass(slots=True)
class ModelRateCounters:
    """One model's requests as its rate limits saw them."""

    admitted: int = 0
    tokens: int = 0
    """Tokens charged for the admitted requests (prompt + most output asked)."""
    refused_rpm: int = 0
    refused_tpm: int = 0
    refused_too_large: int = 0
    """Refused as larger than the whole TPM limit (never worth a retry; not in refused_tpm)."""
    first_admitted: float | None = None
    last_admitted: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "admitted": self.admitted,
            "tokens": self.tokens,
            "refused_rpm": self.refused_rpm,
            "refused_tpm": self.refused_tpm,
            "refused_too_large": self.refused_too_large,
            "first_admitted": self.first_admitted,
            "last_admitted": self.last_admitted,
        }


class SimStats:
    """Counters for ``GET /_sim/stats``; ``reset`` zeroes all but the live gauges (and the
    batches' current statuses, which the caller passes to ``to_json``)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.open_streams = 0
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.by_path: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.by_tier: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.client_closed = 0
        self.faults: Counter[str] = Counter()
        self.streams = 0
        self.flex_requests = 0
        self.flex_unavailable = 0
        self.flex_served = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.batches = BatchCounters()
        self.ratelimits: dict[str, ModelRateCounters] = {}
        self.connections = 0
        # The connections seen since the reset: their transports while they live (a new
        # connection is always a new object), else the client's (host, port).
        self._transports: weakref.WeakSet[object] = weakref.WeakSet()
        self._clients: set[tuple[Any, ...]] = set()

    def connection(self, transport: object | None, client: Any) -> None:
        """A request came on this connection (its transport, or failing that its client
        address): count the connection the first time."""
        if transport is not None:
            if transport in self._transports:
                return
            self._transports.add(transport)
        else:
            key = tuple(client) if isinstance(client, list | tuple) else (client,)
            if key in self._clients:
                return
            self._clients.add(key)
        self.connections += 1

    def _rate(self, model: str) -> ModelRateCounters:
        counters = self.ratelimits.get(model)
        if counters is None:
            counters = self.ratelimits[model] = ModelRateCounters()
        return counters

    def admitted(self, model: str, tokens: int) -> None:
        """A request to ``model`` was admitted by its rate limits and charged ``tokens``."""
        counters = self._rate(model)
        counters.admitted += 1
        counters.tokens += tokens
        now = time.time()
        if counters.first_admitted is None:
            counters.first_admitted = now
        counters.last_admitted = now

    def rate_limited(self, model: str, kind: str) -> None:
        """A request to ``model`` was refused: ``kind`` is ``requests``, ``tokens`` or
        ``too_large`` (``ratelimit.Refused``)."""
        counters = self._rate(model)
        if kind == "requests":
            counters.refused_rpm += 1
        elif kind == "tokens":
            counters.refused_tpm += 1
        else:
            counters.refused_too_large += 1

    def request(self, path: str) -> None:
        """A request arrived at ``path`` (any path but ``/_sim/…``)."""
        self.requests += 1
        self.by_path[path] += 1

    def served(self, tier: str | None, input_tokens: int, output_tokens: int) -> None:
        """A request was answered with a generation (status 200, streamed or not)."""
        if tier is not None:
            self.by_tier[tier] += 1
            if tier == "flex":
                self.flex_served += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens

    def to_json(
        self,
        batches_by_status: Mapping[str, int] | None = None,
        ratelimit_limits: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``ratelimit_limits``: the limits in force (``ratelimit.Limits.to_json``)."""
        return {
            "requests": {
                "total": self.requests,
                "in_flight": self.in_flight,
                "by_path": dict(self.by_path),
                "by_model": dict(self.by_model),
                "by_tier": dict(self.by_tier),
                "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
                "client_closed": self.client_closed,
            },
            "faults": {"total": sum(self.faults.values()), "by_kind": dict(self.faults)},
            "flex": {
                "requests": self.flex_requests,
                "served": self.flex_served,
                "unavailable": self.flex_unavailable,
            },
            "streams": {"open": self.open_streams, "total": self.streams},
            "tokens": {"input": self.input_tokens, "output": self.output_tokens},
            "batches": self.batches.to_json(batches_by_status or {}),
            "ratelimits": {
                **(ratelimit_limits or {}),
                "by_model": {
                    model: counters.to_json() for model, counters in sorted(self.ratelimits.items())
                },
            },
            "connections": self.connections,
        }
