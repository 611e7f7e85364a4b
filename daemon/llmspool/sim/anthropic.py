"""The simulator as Anthropic (``[sim] flavor = "anthropic"``, ``llmspool sim --flavor anthropic``).

It serves Anthropic's Messages API under ``/v1`` (so a client's base URL is the sim's root, the
printed URL without its ``/v1``), with the same answer machinery as the OpenAI flavor: the same
deterministic text and token counts, tool arguments made from each tool's ``input_schema``,
latency, faults, rate limits, stats and request log. What a client sees:

- ``POST /v1/messages``, checked as Anthropic does (``anthropic_validate``): 400
  ``invalid_request_error`` with a message ``"<where>: <problem>"``
  (``max_tokens: Field required``, ``messages.1.role: Input should be 'user' or
  'assistant'``…) for a missing or bad ``model``, ``max_tokens`` (a positive integer, at most
  the model's output limit), ``messages`` (user/assistant turns with non-empty content: a string
  or blocks ``text``, ``image`` with a ``base64``/``url``/``file`` source, ``document``,
  ``tool_use`` (assistant turns only), ``tool_result`` (user turns only, each answering a
  ``tool_use`` of the turn before, which must all be answered), ``thinking``…), ``system`` (a
  string or ``text`` blocks), ``tools`` (unique names; a custom tool has an ``input_schema`` of
  type ``object``), ``tool_choice`` (``auto``, ``any``, ``tool`` with a name in ``tools``,
  ``none``), ``cache_control`` (``{"type": "ephemeral"}``, ``ttl`` ``5m``/``1h``, at most 4
  breakpoints), ``stop_sequences``, sampling parameters, and unknown top-level keys
  (``Extra inputs are not permitted``); 404 ``not_found_error`` ``model: NAME`` for a model
  not served. Requests must carry ``anthropic-version`` and an API key (``x-api-key`` or
  ``Authorization``), else 400 / 401, as Anthropic answers.
- The answer (``anthropic_stream.MessageAnswer``): one ``text`` block of the sim's usual length
  (``[sim] output_tokens``), cut at ``max_tokens`` (``stop_reason: "max_tokens"``) or at the
  first of the ``stop_sequences`` it contains (``stop_sequence``); or, when tools are offered
  and ``tool_choice`` lets the model use them, ``tool_use`` blocks decided as the OpenAI flavor
  decides tool calls (``tools.ToolUse``: ``any``/``tool`` always; ``auto`` when the
  conversation ends with a user turn that is not tool results; one call per tool offered, up to
  four, or only the first with ``disable_parallel_tool_use``). ``output_config.format`` (or
  ``output_format``) of type ``json_schema`` makes the text an instance of the schema.
- Prompt caching (``anthropic_cache``): tools, then ``system``, then ``messages`` form the
  prompt; a block with ``cache_control`` is a breakpoint. The prefix up to the last breakpoint
  is written to the cache (``cache_creation_input_tokens``) unless an earlier request left it
  there, in which case it is read (``cache_read_input_tokens``; with several breakpoints the
  longest cached prefix is read and the rest written); ``input_tokens`` counts only the tokens
  after the last breakpoint. Entries are keyed by a hash of the model and the prefix and live 5
  minutes (or 1 hour with ``ttl: "1h"``) of rehearsal time from their last use. There is no
  minimum cacheable length. Rate limits, stats and the request log count every prompt token.
- ``stream: true``: Anthropic's server-sent events (see ``anthropic_stream``); a ``stream_cut``
  fault with a ``status`` ends the stream with ``event: error`` instead of dropping it.
- ``POST /v1/messages/count_tokens``: ``{"input_tokens": N}`` for the same body less
  ``max_tokens``.
- Errors (``anthropic_errors``) as ``{"type": "error", "error": {"type", "message"},
  "request_id"}``, the type from the status: 400 ``invalid_request_error`` (and other 4xx), 401
  ``authentication_error``, 402 ``billing_error``, 403 ``permission_error``, 404
  ``not_found_error``, 413 ``request_too_large``, 429 ``rate_limit_error`` (always with
  ``retry-after``), 500 ``api_error``, 504 ``timeout_error``, 529 ``overloaded_error``. Fault
  rules give these (``{"kind": "status", "status": 529}``: 529 ``Overloaded``); a ``quota``
  fault answers Anthropic's 400 "credit balance is too low".
- Every answer carries ``request-id`` and the ``anthropic-ratelimit-{requests,tokens,
  input-tokens,output-tokens}-{limit,remaining,reset}`` headers (``reset`` an RFC 3339 time)
  from the sim's rate limiter, instead of OpenAI's ``x-request-id`` and ``x-ratelimit-*``. The
  limiter has one token bucket per model (``[sim] ratelimit_tokens``): the tokens, input-tokens
  and output-tokens headers all report it.
- ``GET /v1/models`` (``{"data": [{"id", "type": "model", "display_name", "created_at"}],
  "has_more", "first_id", "last_id"}``) and ``GET /v1/models/{id}``; the default models are
  ``ANTHROPIC_MODELS`` (``[sim] models`` overrides them).
- Message Batches under ``/v1/messages/batches`` (``anthropic_batches``).
- OpenAI's routes (chat completions, responses, embeddings, files, batches) do not exist:
  404 ``not_found_error`` ``Not Found``.

The ``/_sim/…`` control routes work as in the OpenAI flavor.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from llmspool.core.errors import ApiError
from llmspool.sim.answer import Makers
from llmspool.sim.anthropic_cache import PromptCache
from llmspool.sim.anthropic_errors import FAULT_MESSAGES, AnthropicError, invalid, translate
from llmspool.sim.anthropic_stream import BATCH, STANDARD, MessageAnswer, event
from llmspool.sim.anthropic_validate import MessagesRequest
from llmspool.sim.asgi import JSON_HEADERS, FixedHeaders, Headers
from llmspool.sim.catalog import ModelCatalog
from llmspool.sim.faults import FaultKind, FaultRule
from llmspool.sim.flavor import Flavor
from llmspool.sim.ratelimit import RateLimitHeaders
from llmspool.sim.reply import make_reply
from llmspool.sim.text import count_tokens

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
BATCHES_PATH = "/v1/messages/batches"
_CREATED = {
    "claude-haiku-4-5": "2025-10-15T00:00:00Z",
    "claude-sonnet-4-5": "2025-09-29T00:00:00Z",
    "claude-opus-4-5": "2025-11-24T00:00:00Z",
}
_DEFAULT_CREATED = "2025-01-01T00:00:00Z"
CREDIT_MESSAGE = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing "
    "to upgrade or purchase credits."
)


class AnthropicFlavor(Flavor):
    """The hooks that make the simulator answer as Anthropic."""

    name = "anthropic"
    openai_headers = False

    def __init__(self, models: tuple[str, ...], *, speed: float) -> None:
        self.messages = MessagesApi(speed)
        self._models = models
        entries = [model_object(model) for model in models]
        self._list_body = orjson.dumps(
            {
                "data": entries,
                "has_more": False,
                "first_id": models[0] if models else None,
                "last_id": models[-1] if models else None,
            }
        )
        self._model_bodies = {entry["id"]: orjson.dumps(entry) for entry in entries}

    def translate(self, error: ApiError, request_id: str) -> ApiError:
        return translate(error, request_id)

    def fault_error(self, rule: FaultRule, *, request_limit: int) -> ApiError:
        if rule.kind is FaultKind.QUOTA:
            return AnthropicError(rule.message or CREDIT_MESSAGE, status=400)
        status = 429 if rule.kind is FaultKind.RATE_LIMIT else rule.status or 500
        message = rule.message or FAULT_MESSAGES.get(status, f"Simulated HTTP {status} error.")
        # The app adds the rule's own retry_after; a 429 without one still gets a hint.
        hint = 1.0 if status == 429 and rule.retry_after is None else None
        return AnthropicError(message, status=status, retry_after=hint)

    def serves(self, path: str) -> bool:
        return path.startswith(("/v1/messages", "/v1/models", "/_sim/"))

    def no_route(self, method: str, path: str) -> ApiError:
        return AnthropicError(FAULT_MESSAGES[404], status=404)

    def admit(self, path: str, header: Callable[[bytes], bytes]) -> None:
        if not path.startswith("/v1/"):
            return
        if not header(b"x-api-key") and not header(b"authorization"):
            raise AnthropicError("x-api-key header is required", status=401)
        if not header(b"anthropic-version"):
            raise invalid("anthropic-version", "header is required")

    def stream_error(self, error: ApiError) -> bytes:
        body = orjson.loads(error.body())
        return event("error", body)

    def extra_headers(
        self, request_id: bytes, ratelimit: Callable[[], RateLimitHeaders]
    ) -> Iterable[tuple[bytes, bytes]]:
        return [(b"request-id", request_id), *anthropic_ratelimit_headers(ratelimit())]

    def models_body(self, catalog: ModelCatalog) -> bytes:
        return self._list_body

    def model_body(self, catalog: ModelCatalog, model: str) -> bytes | None:
        return self._model_bodies.get(model)

    def error_body(self, error: ApiError) -> tuple[FixedHeaders, bytes]:
        return JSON_HEADERS, error.body()


def model_object(model: str) -> dict[str, Any]:
    """A ``GET /v1/models`` entry."""
    return {
        "type": "model",
        "id": model,
        "display_name": display_name(model),
        "created_at": _CREATED.get(model, _DEFAULT_CREATED),
    }


def display_name(model: str) -> str:
    """``claude-sonnet-4-5`` → ``Claude Sonnet 4.5`` (a date suffix dropped)."""
    words: list[str] = []
    numbers: list[str] = []
    for part in model.split("-"):
        if part.isdigit():
            if len(part) < 8:
                numbers.append(part)
            continue
        if numbers:
            words.append(".".join(numbers))
            numbers = []
        words.append(part.capitalize())
    if numbers:
        words.append(".".join(numbers))
    return " ".join(words)


def anthropic_ratelimit_headers(openai: RateLimitHeaders) -> Headers:
    """Anthropic's rate-limit headers from the limiter's ``x-ratelimit-*`` ones (the same
    buckets): limits, what remains, and when each bucket is full again (RFC 3339)."""
    values = dict(openai)
    now = time.time()
    headers: Headers = []
    for unit, names in (
        (b"requests", (b"requests",)),
        (b"tokens", (b"tokens", b"input-tokens", b"output-tokens")),
    ):
        limit = values.get(b"x-ratelimit-limit-" + unit, b"0")
        remaining = values.get(b"x-ratelimit-remaining-" + unit, limit)
        wait = go_seconds(values.get(b"x-ratelimit-reset-" + unit, b"0s").decode())
        reset = rfc3339(math.ceil(now + wait), fraction=False).encode()
        for name in names:
            prefix = b"anthropic-ratelimit-" + name
            headers += [
                (prefix + b"-limit", limit),
                (prefix + b"-remaining", remaining),
                (prefix + b"-reset", reset),
            ]
    return headers


def go_seconds(text: str) -> float:
    """Seconds in a duration as ``ratelimit.go_duration`` writes it (``12ms``, ``1.5s``,
    ``6m0s``)."""
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    minutes, _, seconds = text.rpartition("m")
    return (float(minutes) * 60 if minutes else 0.0) + float(seconds.rstrip("s") or 0)


def rfc3339(moment: float, *, fraction: bool = True) -> str:
    """A Unix time as Anthropic writes times: ``2024-08-20T18:37:24.100435Z``."""
    stamp = datetime.fromtimestamp(moment, UTC)
    text = stamp.isoformat(timespec="microseconds" if fraction else "seconds")
    return text.replace("+00:00", "Z")


# -- the Messages API ------------------------------------------------------------------------


class MessagesApi:
    """``POST /v1/messages`` and ``/v1/messages/count_tokens``, with the prompt cache they
    share with batch lines."""

    def __init__(self, speed: float) -> None:
        self.cache = PromptCache(speed)

    def parse(self, payload: dict[str, Any], makers: Makers) -> MessageAnswer:
        """A direct call's answer (a ``flavor.Parser``)."""
        return self._parse(payload, makers, tier=STANDARD)

    def parse_batch_line(self, payload: dict[str, Any], makers: Makers) -> MessageAnswer:
        """A batch line's answer: the same, served at the ``batch`` tier."""
        return self._parse(payload, makers, tier=BATCH)

    def count_tokens(self, payload: dict[str, Any], makers: Makers) -> dict[str, Any]:
        """The ``count_tokens`` answer: the prompt's tokens, caching nothing."""
        request = MessagesRequest(payload, makers, counting=True)
        return {"input_tokens": request.walk.meter.tokens}

    def _parse(self, payload: dict[str, Any], makers: Makers, *, tier: str) -> MessageAnswer:
        request = MessagesRequest(payload, makers, counting=False)
        assert request.max_tokens is not None
        functions = request.tools.to_call(user_turn=request.user_turn)
        key = request.walk.meter.crc

        def reply_within(limit: int | None) -> Any:
            return make_reply(
                key=key,
                limit=limit,
                default_tokens=makers.default_output_tokens,
                text=makers.text,
                output=request.output,
                functions=functions,
            )

        reply = reply_within(None)
        if reply.tokens > request.max_tokens:
            reply = reply_within(request.max_tokens)
        text = reply.text
        tokens = reply.tokens
        stop_reason = "max_tokens" if reply.cut else "tool_use" if reply.calls else "end_turn"
        stop_sequence: str | None = None
        if text is not None and request.stop_sequences:
            found = [(text.find(s), s) for s in request.stop_sequences if s and s in text]
            if found:
                position, stop_sequence = min(found)
                text = text[:position]
                tokens = count_tokens(text)
                stop_reason = "stop_sequence"
        return MessageAnswer(
            id=makers.ids.make("msg_"),
            model=request.model,
            stream=request.stream,
            prompt=self.cache.usage(request.walk),
            output_tokens=tokens,
            text=text,
            stop_reason=stop_reason,
            stop_sequence=stop_sequence,
            calls=reply.calls,
            call_ids=tuple(makers.ids.make("toolu_") for _ in reply.calls),
            tier=tier,
        )
