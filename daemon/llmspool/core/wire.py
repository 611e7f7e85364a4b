"""Reading OpenAI-shaped bodies on the hot path: only what the daemon needs, nothing re-encoded.

- ``usage_of`` and ``served_tier_of`` read a whole answer's ``usage`` and ``service_tier``;
- ``response_id_of``, ``response_model_of`` and ``finish_reasons_of`` read what telemetry
  reports of an answer (its id, the model that answered, why it stopped);
- ``SseMeter`` watches a server-sent-event stream pass through: it forwards whole events as
  they complete, notes the usage, tier, id, model and finish reasons they report, and drops
  the usage-only chunk that the daemon asked for when the client did not.

Chat Completions and Embeddings name usage ``prompt_tokens``/``completion_tokens`` (cached and
cache-write input under ``prompt_tokens_details``); the Responses API names it
``input_tokens``/``output_tokens`` (details under ``input_tokens_details``). Both count all the
input. ``kept_json`` encodes JSON that will be held in memory for a while (a job's bodies, a batch's
results waiting for their transaction).

Finish reasons: a chat completion's ``choices[].finish_reason`` (in a stream, the chunk that
ends a choice); the Responses API has none, so a finished response's ``status`` stands in:
``completed`` is ``stop``, ``incomplete`` is its ``incomplete_details.reason``
(``max_output_tokens``, ``content_filter``), ``failed`` is ``error``.

Anthropic-shaped usage (``cache_read_input_tokens``, ``cache_creation_input_tokens``)
counts only the uncached input in ``input_tokens``; it is added up so that every ``Usage``
means the same thing.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmspool.core.calls import Tier, Usage

_EVENT_END = (b"\n\n", b"\r\n\r\n")
_FINISH_KEY = b'"finish_reason"'
_USAGE_KEY = b'"usage"'
_NO_USAGE = b'"usage":null'  # each chunk of a stream that asked for usage, but the last
_FINISHED_STATUSES = {"completed": "stop", "failed": "error", "cancelled": "cancelled"}
_ANTHROPIC_CACHE_KEYS = frozenset({"cache_read_input_tokens", "cache_creation_input_tokens"})


def kept_json(value: Any) -> bytes:
    """``orjson.dumps(value)`` in an exact-size ``bytes``: orjson's own result keeps a ~4 KiB
    allocation whatever its length, which is 10x the memory for the few hundred bytes of a
    typical request or result held by the thousand (measured: 100,000 job bodies 400 MB ->
    20 MB; 5,000 batch results waiting for their commit 20 MB -> 2 MB)."""
    return bytes(memoryview(orjson.dumps(value)))


def usage_of(answer: Any) -> Usage | None:
    """The usage a parsed answer (or a stream event's object) reports; None if it has none.

    ``input_tokens`` comes out as all the input, with the cached and cache-write tokens as
    parts of it, whichever shape reported them (see the module docstring). An odd value (not
    a whole number, negative) counts as 0, and parts never exceed their whole.
    """
    if not isinstance(answer, dict):
        return None
    usage = answer.get("usage")
    if not isinstance(usage, dict) and isinstance(answer.get("response"), dict):
        usage = answer["response"].get("usage")  # Responses API stream events
    if not isinstance(usage, dict):
        return None
    input_details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    output_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    cached = _int(_get(input_details, "cached_tokens"))
    cache_write = _int(_get(input_details, "cache_write_tokens")) \
        or _int(_get(input_details, "cache_creation_tokens"))
    if "prompt_tokens" in usage:
        # Chat Completions and Embeddings: prompt_tokens is all the input. A proxy may put
        # Anthropic's counts beside it; they are parts of it then.
        input_tokens = _int(usage["prompt_tokens"])
        cached = cached or _int(usage.get("cache_read_input_tokens"))
        cache_write = cache_write or _int(usage.get("cache_creation_input_tokens"))
    elif _ANTHROPIC_CACHE_KEYS & usage.keys():
        # Anthropic: input_tokens counts only the input after the last cache breakpoint.
        cached = _int(usage.get("cache_read_input_tokens"))
        cache_write = _int(usage.get("cache_creation_input_tokens"))
        input_tokens = _int(usage.get("input_tokens")) + cached + cache_write
    else:
        input_tokens = _int(usage.get("input_tokens"))  # Responses: all the input
    output_tokens = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    cached = min(cached, input_tokens)
    return Usage(
        input_tokens=input_tokens,
        cached_input_tokens=cached,
        output_tokens=output_tokens,
        reasoning_tokens=min(_int(_get(output_details, "reasoning_tokens")), output_tokens),
        cache_write_tokens=min(cache_write, input_tokens - cached),
    )


def claimed_tier_of(answer: Any) -> str | None:
    """The raw ``service_tier`` an answer claims, known to us or not."""
    if not isinstance(answer, dict):
        return None
    tier = answer.get("service_tier")
    if tier is None and isinstance(answer.get("response"), dict):
        tier = answer["response"].get("service_tier")
    return tier if isinstance(tier, str) else None


def served_tier_of(answer: Any) -> Tier | None:
    """The tier a parsed answer says it was served on; None when it does not say."""
    if not isinstance(answer, dict):
        return None
    tier = answer.get("service_tier")
    if tier is None and isinstance(answer.get("response"), dict):
        tier = answer["response"].get("service_tier")
    return Tier.from_service_tier(tier)


def response_id_of(answer: Any) -> str | None:
    """The ``id`` of a chat completion (or chunk) or of a Responses API response (or of the
    response a stream event carries); None if it has none (embeddings)."""
    if not isinstance(answer, dict):
        return None
    value = answer.get("id")
    if value is None and isinstance(answer.get("response"), dict):
        value = answer["response"].get("id")
    return value if isinstance(value, str) else None


def response_model_of(answer: Any) -> str | None:
    """The ``model`` an answer says produced it (a dated name, ``gpt-4o-mini-2024-07-18``)."""
    if not isinstance(answer, dict):
        return None
    value = answer.get("model")
    if value is None and isinstance(answer.get("response"), dict):
        value = answer["response"].get("model")
    return value if isinstance(value, str) else None


def finish_reasons_of(answer: Any) -> list[str]:
    """Why each choice of an answer (or chunk) stopped, as the module docstring says; empty
    when it does not say (yet)."""
    if not isinstance(answer, dict):
        return []
    choices = answer.get("choices")
    if isinstance(choices, list):
        return [choice["finish_reason"] for choice in choices if isinstance(choice, dict)
                and isinstance(choice.get("finish_reason"), str)]
    response = answer.get("response") if answer.get("object") != "response" else answer
    if not isinstance(response, dict):
        return []
    status = response.get("status")
    if status == "incomplete":
        reason = _get(response.get("incomplete_details"), "reason")
        return [reason if isinstance(reason, str) else "incomplete"]
    finished = _FINISHED_STATUSES.get(status) if isinstance(status, str) else None
    return [finished] if finished else []


def _reports_usage(data: bytes) -> bool:
    """Whether events ``data`` may report usage: a ``"usage"`` key that is not ``null``. A
    stream that asked for usage says ``"usage":null`` in every chunk but the last, so counting
    both is what spares those chunks a parse each (two ``count``s, in C)."""
    keys = data.count(_USAGE_KEY)
    return keys > 0 and keys != data.count(_NO_USAGE)


def _ends_a_choice(data: bytes) -> bool:
    """Whether events ``data`` hold a non-null ``finish_reason``: a few ``find``s, so that the
    chunks of a stream (each says ``"finish_reason":null``) need not be parsed to see it."""
    at = data.find(_FINISH_KEY)
    while at >= 0:
        after = data[at + len(_FINISH_KEY):at + len(_FINISH_KEY) + 8].lstrip(b": \t")
        if not after.startswith(b"null"):
            return True
        at = data.find(_FINISH_KEY, at + len(_FINISH_KEY))
    return False


class SseMeter:
    """Passes a server-sent-event stream through, event by event, reading usage on the way.

    ``feed`` takes raw upstream bytes and returns the bytes of the events completed by them
    (possibly empty); ``flush`` returns whatever is left when the stream ends.
    """

    __slots__ = ("_buffer", "_strip_usage_chunk", "claimed_tier", "events", "finish_reasons",
                 "model", "response_id", "tier", "usage")

    def __init__(self, *, strip_usage_chunk: bool = False) -> None:
        self._buffer = b""
        self._strip_usage_chunk = strip_usage_chunk
        self.usage: Usage | None = None
        self.tier: Tier | None = None
        self.claimed_tier: str | None = None
        self.events = 0
        # For telemetry, from the events parsed anyway (the first, those with usage) and the
        # chunk that ends each choice: no event is parsed for these alone but that one.
        self.response_id: str | None = None
        self.model: str | None = None
        self.finish_reasons: list[str] = []

    def feed(self, data: bytes) -> bytes:
        buffer = self._buffer + data if self._buffer else data
        end = _last_event_end(buffer)
        if end < 0:
            self._buffer = buffer
            return b""
        self._buffer = buffer[end:]
        complete = buffer[:end]
        if self.tier is not None and not _reports_usage(complete) \
                and not _ends_a_choice(complete):
            self.events += complete.count(b"data:")
            return complete  # the common case: nothing to read, forward as it is
        return self._read_events(complete)

    def flush(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return self._read_events(rest) if rest.strip() else rest

    def _read_events(self, complete: bytes) -> bytes:
        return b"".join(event for event in _split_events(complete) if self._keep(event))

    def _keep(self, event: bytes) -> bool:
        """Note what ``event`` reports; False when it is the usage chunk to drop."""
        data = _data_of(event)
        if data is None:
            return True
        self.events += 1
        if data == b"[DONE]":
            return True
        if self.tier is not None and (b'"usage"' not in data or b'"usage":null' in data) \
                and not _ends_a_choice(data):
            return True
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            return True  # not ours to judge: the client sees exactly what upstream sent
        tier = served_tier_of(parsed)
        if tier is not None:
            self.tier = tier
        self.claimed_tier = claimed_tier_of(parsed) or self.claimed_tier
        self.response_id = self.response_id or response_id_of(parsed)
        self.model = self.model or response_model_of(parsed)
        self.finish_reasons += finish_reasons_of(parsed)
        usage = usage_of(parsed)
        if usage is None:
            return True
        self.usage = usage
        usage_only = isinstance(parsed, dict) and parsed.get("choices") == []
        return not (self._strip_usage_chunk and usage_only)


def _last_event_end(buffer: bytes) -> int:
    """Index just past the last complete event in ``buffer``, or -1."""
    best = -1
    for separator in _EVENT_END:
        at = buffer.rfind(separator)
        if at >= 0:
            best = max(best, at + len(separator))
    return best


def _split_events(complete: bytes) -> list[bytes]:
    """Whole events, each keeping its trailing blank line."""
    events: list[bytes] = []
    start = 0
    length = len(complete)
    while start < length:
        end_lf = complete.find(b"\n\n", start)
        end_crlf = complete.find(b"\r\n\r\n", start)
        candidates = [e + 2 for e in (end_lf,) if e >= 0] + [e + 4 for e in (end_crlf,) if e >= 0]
        if not candidates:
            events.append(complete[start:])
            break
        end = min(candidates)
        events.append(complete[start:end])
        start = end
    return events


def _data_of(event: bytes) -> bytes | None:
    """The joined ``data:`` lines of one event, or None for a comment or keep-alive."""
    lines = [line for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[5:].lstrip(b" ") for line in lines)


def _get(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, dict) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
