"""The simulator as Anthropic (``[sim] flavor = "anthropic"``, ``llmspool sim --flavor anthropic``).

It serves Anthropic's Messages API under ``/v1`` (so a client's base URL is the sim's root, the
printed URL without its ``/v1``), with the same answer machinery as the OpenAI flavor: the same
deterministic text and token counts, tool arguments made from each tool's ``input_schema``,
latency, faults, rate limits, stats and request log. What a client sees:

- ``POST /v1/messages``, checked as Anthropic does: 400 ``invalid_request_error`` with a message
  ``"<where>: <problem>"`` (``max_tokens: Field required``, ``messages.1.role: Input should be
  'user' or 'assistant'``…) for a missing or bad ``model``, ``max_tokens`` (a positive integer,
  at most the model's output limit), ``messages`` (user/assistant turns with non-empty content:
  a string or blocks ``text``, ``image`` with a ``base64``/``url``/``file`` source,
  ``document``, ``tool_use`` (assistant turns only), ``tool_result`` (user turns only, each
  answering a ``tool_use`` of the turn before, which must all be answered), ``thinking``…),
  ``system`` (a string or ``text`` blocks), ``tools`` (unique names; a custom tool has an
  ``input_schema`` of type ``object``), ``tool_choice`` (``auto``, ``any``, ``tool`` with a name
  in ``tools``, ``none``), ``cache_control`` (``{"type": "ephemeral"}``, ``ttl`` ``5m``/``1h``,
  at most 4 breakpoints), ``stop_sequences``, sampling parameters, and unknown top-level keys
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
- Prompt caching: tools, then ``system``, then ``messages`` form the prompt; a block with
  ``cache_control`` is a breakpoint. The prefix up to the last breakpoint is written to the
  cache (``cache_creation_input_tokens``) unless an earlier request left it there, in which
  case it is read (``cache_read_input_tokens``; with several breakpoints the longest cached
  prefix is read and the rest written); ``input_tokens`` counts only the tokens after the last
  breakpoint. Entries are keyed by a hash of the model and the prefix and live 5 minutes (or
  1 hour with ``ttl: "1h"``) of rehearsal time from their last use. There is no minimum
  cacheable length. Rate limits, stats and the request log count every prompt token.
- ``stream: true``: Anthropic's server-sent events (see ``anthropic_stream``); a ``stream_cut``
  fault with a ``status`` ends the stream with ``event: error`` instead of dropping it.
- ``POST /v1/messages/count_tokens``: ``{"input_tokens": N}`` for the same body less
  ``max_tokens``.
- Errors as ``{"type": "error", "error": {"type", "message"}, "request_id"}``, the type from the
  status: 400 ``invalid_request_error`` (and other 4xx), 401 ``authentication_error``, 402
  ``billing_error``, 403 ``permission_error``, 404 ``not_found_error``, 413
  ``request_too_large``, 429 ``rate_limit_error`` (always with ``retry-after``), 500
  ``api_error``, 504 ``timeout_error``, 529 ``overloaded_error``. Fault rules give these
  (``{"kind": "status", "status": 529}``: 529 ``Overloaded``); a ``quota`` fault answers
  Anthropic's 400 "credit balance is too low".
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

import hashlib
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from llmspool.errors import ApiError
from llmspool.sim.answer import Makers
from llmspool.sim.anthropic_stream import BATCH, STANDARD, MessageAnswer, PromptUsage, event
from llmspool.sim.asgi import JSON_HEADERS, FixedHeaders, Headers
from llmspool.sim.catalog import ModelCatalog
from llmspool.sim.config import MAX_OUTPUT_TOKENS
from llmspool.sim.faults import FaultKind, FaultRule
from llmspool.sim.flavor import Flavor
from llmspool.sim.ratelimit import RateLimitExceeded, RateLimitHeaders
from llmspool.sim.reply import make_reply
from llmspool.sim.speed import real
from llmspool.sim.structured import TEXT, OutputFormat
from llmspool.sim.text import CHARS_PER_TOKEN, PromptMeter, count_tokens
from llmspool.sim.tools import FunctionTool, ToolUse

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
BATCHES_PATH = "/v1/messages/batches"
MAX_CACHE_BREAKPOINTS = 4
MAX_OUTPUT_BY_MODEL = {
    "claude-haiku-4-5": 64_000,
    "claude-sonnet-4-5": 64_000,
    "claude-opus-4-5": 64_000,
}
"""Output-token limits of the default models (others: the sim's own bound)."""
_CREATED = {
    "claude-haiku-4-5": "2025-10-15T00:00:00Z",
    "claude-sonnet-4-5": "2025-09-29T00:00:00Z",
    "claude-opus-4-5": "2025-11-24T00:00:00Z",
}
_DEFAULT_CREATED = "2025-01-01T00:00:00Z"
_CACHE_TTL = {"5m": 300.0, "1h": 3600.0}
_CACHE_PRUNE_AT = 100_000
"""Cache entries kept before expired ones are swept out."""
_TOO_LARGE_RETRY_SECONDS = 60.0

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""Anthropic's error type for each status; other 4xx are ``invalid_request_error``, other 5xx
``api_error``."""
_FAULT_MESSAGES = {
    400: "Simulated bad request.",
    401: "invalid x-api-key",
    402: "Your credit balance is too low to access the Anthropic API.",
    403: "Your API key does not have permission to use the specified resource.",
    404: "Not Found",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: (
        "This request would exceed your organization's rate limit. Please reduce the prompt "
        "length or the maximum tokens requested, or try again later."
    ),
    500: "Internal server error",
    504: "Request timed out",
    529: "Overloaded",
}
CREDIT_MESSAGE = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing "
    "to upgrade or purchase credits."
)
_TOP_KEYS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "tools",
        "tool_choice",
        "stream",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "thinking",
        "service_tier",
        "output_config",
        "output_format",
        "container",
        "context_management",
        "mcp_servers",
        "inference_geo",
    }
)
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_ROLES = ("user", "assistant")
_CHOICE_TYPES = ("auto", "any", "tool", "none")
_THINKING_TYPES = ("enabled", "disabled", "adaptive")
_SERVICE_TIERS = ("auto", "standard_only")
_MIN_THINKING_BUDGET = 1024
# Block types a request may hold, and the turns they may be in.
_USER_ONLY = frozenset({"tool_result"})
_ASSISTANT_ONLY = frozenset({"tool_use", "thinking", "redacted_thinking", "server_tool_use"})
_KNOWN_BLOCKS = frozenset(
    {
        "text",
        "image",
        "document",
        "search_result",
        "tool_use",
        "tool_result",
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "container_upload",
    }
)


class AnthropicError(ApiError):
    """An error in Anthropic's shape; ``retry_after`` (seconds) adds ``retry-after``."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        error_type: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, error_type=error_type or error_type_of(status))
        self.request_id = request_id
        self.retry_after = retry_after

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "type": "error",
                "error": {"type": self.type, "message": self.message},
                "request_id": self.request_id,
            }
        )

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, math.ceil(self.retry_after)))}


def error_type_of(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def invalid(where: str, problem: str) -> AnthropicError:
    """400 ``invalid_request_error``: ``"<where>: <problem>"``, as Anthropic words them."""
    return AnthropicError(f"{where}: {problem}", status=400)


def translate(error: ApiError, request_id: str | None) -> AnthropicError:
    """``error`` (raised by the shared code in OpenAI's terms) as Anthropic answers it."""
    if isinstance(error, AnthropicError):
        return AnthropicError(
            error.message,
            status=error.status,
            error_type=error.type,
            request_id=request_id,
            retry_after=error.retry_after,
        )
    retry_after: float | None = None
    message = error.message
    if isinstance(error, RateLimitExceeded):
        # Waiting never lets a request larger than the limit through, but Anthropic always
        # sends a hint: a full refill.
        retry_after = error.retry_after or _TOO_LARGE_RETRY_SECONDS
        message = _FAULT_MESSAGES[429]
    else:
        hint = error.headers().get("retry-after")
        if hint is not None:
            retry_after = float(hint)
        elif error.status == 429:
            retry_after = 1.0
    if error.status == 404 and message.startswith("Invalid URL"):
        message = _FAULT_MESSAGES[404]
    return AnthropicError(
        message, status=error.status, request_id=request_id, retry_after=retry_after
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
        message = rule.message or _FAULT_MESSAGES.get(status, f"Simulated HTTP {status} error.")
        # The app adds the rule's own retry_after; a 429 without one still gets a hint.
        hint = 1.0 if status == 429 and rule.retry_after is None else None
        return AnthropicError(message, status=status, retry_after=hint)

    def serves(self, path: str) -> bool:
        return path.startswith(("/v1/messages", "/v1/models", "/_sim/"))

    def no_route(self, method: str, path: str) -> ApiError:
        return AnthropicError(_FAULT_MESSAGES[404], status=404)

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


# -- prompt caching --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """A ``cache_control`` mark: the prompt up to it, as tokens and as a cache key."""

    tokens: int
    key: str
    ttl: float
    one_hour: bool


class PromptWalk:
    """Measures a prompt in Anthropic's order (tools, system, messages) as it is checked: its
    tokens and answer key (``PromptMeter``), and a hash of the prefix at each breakpoint."""

    def __init__(self, model: str) -> None:
        self.meter = PromptMeter()
        self._digest = hashlib.blake2b(model.encode(), digest_size=16)
        self.breakpoints: list[Breakpoint] = []

    def add(self, text: str) -> None:
        self.meter.add(text)
        self._digest.update(text.encode("utf-8", "surrogatepass") + b"\0")

    def mark(self, cache_control: Any, where: str) -> None:
        """Check a block's ``cache_control`` (if any) and make the prompt so far a breakpoint."""
        if cache_control is None:
            return
        if not isinstance(cache_control, dict):
            raise invalid(f"{where}.cache_control", "Input should be a valid dictionary")
        if cache_control.get("type") != "ephemeral":
            raise invalid(f"{where}.cache_control.type", "Input should be 'ephemeral'")
        ttl = cache_control.get("ttl", "5m")
        if ttl not in _CACHE_TTL:
            raise invalid(f"{where}.cache_control.ttl", "Input should be '5m' or '1h'")
        chars = self.meter.chars
        self.breakpoints.append(
            Breakpoint(
                tokens=(chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN,
                key=self._digest.hexdigest(),
                ttl=_CACHE_TTL[ttl],
                one_hour=ttl == "1h",
            )
        )
        if len(self.breakpoints) > MAX_CACHE_BREAKPOINTS:
            raise AnthropicError(
                f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be "
                f"provided. Found {len(self.breakpoints)}.",
                status=400,
            )


class PromptCache:
    """Prefixes written to the cache, by key, with when each expires (real seconds)."""

    def __init__(self, speed: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._speed = speed
        self._clock = clock
        self._expiry: dict[str, float] = {}

    def usage(self, walk: PromptWalk, *, remember: bool = True) -> PromptUsage:
        """How the prompt's tokens split; with ``remember``, its prefixes are cached from now."""
        total = walk.meter.tokens
        if not walk.breakpoints:
            return PromptUsage(total=total, uncached=total)
        now = self._clock()
        last = walk.breakpoints[-1]
        read = 0
        for mark in reversed(walk.breakpoints):
            if self._expiry.get(mark.key, -math.inf) > now:
                read = mark.tokens
                break
        if remember:
            if len(self._expiry) >= _CACHE_PRUNE_AT:
                self._expiry = {k: t for k, t in self._expiry.items() if t > now}
            for mark in walk.breakpoints:
                self._expiry[mark.key] = now + real(mark.ttl, self._speed)
        cached = min(last.tokens, total)
        return PromptUsage(
            total=total,
            uncached=total - cached,
            cache_creation=max(0, cached - read),
            cache_read=min(read, cached),
            one_hour=last.one_hour,
        )


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
        request = _Request(payload, makers, counting=True)
        return {"input_tokens": request.walk.meter.tokens}

    def _parse(self, payload: dict[str, Any], makers: Makers, *, tier: str) -> MessageAnswer:
        request = _Request(payload, makers, counting=False)
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


class _Request:
    """A Messages API body, checked and measured."""

    def __init__(self, payload: dict[str, Any], makers: Makers, *, counting: bool) -> None:
        for key in payload:
            if key not in _TOP_KEYS and not (counting and key == "max_tokens"):
                raise invalid(key, "Extra inputs are not permitted")
        self.model = _model(payload, makers.catalog)
        self.max_tokens = None if counting else _max_tokens(payload, self.model)
        self.stream = False if counting else _flag(payload, "stream")
        self.walk = PromptWalk(self.model)
        self.tools = _tools(payload, self.walk)
        _system(payload.get("system"), self.walk)
        self.user_turn = _messages(payload, self.walk)
        self.output = _output_format(payload)
        if self.output.prompt:
            self.walk.add(self.output.prompt)
        self.stop_sequences = _stop_sequences(payload)
        _sampling(payload, self.max_tokens)


def _model(payload: dict[str, Any], catalog: ModelCatalog) -> str:
    model = payload.get("model")
    if model is None:
        raise invalid("model", "Field required")
    if not isinstance(model, str):
        raise invalid("model", "Input should be a valid string")
    if model not in catalog or catalog.is_embedding(model):
        raise AnthropicError(f"model: {model}", status=404)
    return model


def _max_tokens(payload: dict[str, Any], model: str) -> int:
    value = payload.get("max_tokens")
    if value is None:
        raise invalid("max_tokens", "Field required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid("max_tokens", "Input should be a valid integer")
    if value < 1:
        raise invalid("max_tokens", "Input should be greater than or equal to 1")
    limit = MAX_OUTPUT_BY_MODEL.get(model, MAX_OUTPUT_TOKENS)
    if value > limit:
        raise invalid(
            "max_tokens",
            f"{value} > {limit}, which is the maximum allowed number of output tokens for {model}",
        )
    return value


def _flag(payload: dict[str, Any], name: str) -> bool:
    value = payload.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(name, "Input should be a valid boolean")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(where, "Input should be a valid dictionary")
    return value


def _text(value: Any, where: str) -> str:
    if value is None:
        raise invalid(where, "Field required")
    if not isinstance(value, str):
        raise invalid(where, "Input should be a valid string")
    return value


def _tools(payload: dict[str, Any], walk: PromptWalk) -> ToolUse:
    tools = payload.get("tools")
    choice = payload.get("tool_choice")
    entries: list[Any] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("tools", "Input should be a valid list")
        entries = tools
    functions: list[FunctionTool] = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"tools.{index}"
        tool = _object(entry, where)
        kind = tool.get("type")
        name = _text(tool.get("name"), f"{where}.name")
        if kind in (None, "custom"):
            if not _TOOL_NAME.match(name):
                raise invalid(
                    f"{where}.custom.name", f"String should match pattern '{_TOOL_NAME.pattern}'"
                )
            description = tool.get("description")
            if description is not None and not isinstance(description, str):
                raise invalid(f"{where}.custom.description", "Input should be a valid string")
            schema = tool.get("input_schema")
            if schema is None:
                raise invalid(f"{where}.custom.input_schema", "Field required")
            schema = _object(schema, f"{where}.custom.input_schema")
            if schema.get("type") != "object":
                raise invalid(f"{where}.custom.input_schema.type", "Input should be 'object'")
            functions.append(FunctionTool(name=name, parameters=schema, param=where))
        elif not isinstance(kind, str):
            raise invalid(f"{where}.type", "Input should be a valid string")
        if name in names:
            raise invalid("tools", "Tool names must be unique.")
        names.add(name)
        walk.add(orjson.dumps({k: v for k, v in tool.items() if k != "cache_control"}).decode())
        walk.mark(tool.get("cache_control"), where)
    mode, forced, parallel = _tool_choice(choice, names, {tool.name for tool in functions})
    return ToolUse(functions=tuple(functions), mode=mode, forced=forced, parallel=parallel)


def _tool_choice(choice: Any, names: set[str], functions: set[str]) -> tuple[str, str | None, bool]:
    """Mode, forced tool and whether parallel calls are allowed, from ``tool_choice``."""
    if choice is None:
        return ("auto" if names else "none"), None, True
    choice = _object(choice, "tool_choice")
    kind = choice.get("type")
    if kind not in _CHOICE_TYPES:
        raise invalid("tool_choice.type", "Input should be 'auto', 'any', 'tool' or 'none'")
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise invalid(
            f"tool_choice.{kind}.disable_parallel_tool_use", "Input should be a valid boolean"
        )
    parallel = not disable
    if kind in ("any", "tool") and not names:
        raise invalid("tool_choice", f"tool_choice.type '{kind}' may only be used with 'tools'")
    if kind == "tool":
        name = _text(choice.get("name"), "tool_choice.tool.name")
        if name not in names:
            raise invalid("tool_choice", f"Tool '{name}' not found in 'tools'")
        # A server tool named: the simulator runs none, so the answer is text.
        return ("required", name, parallel) if name in functions else ("none", None, parallel)
    mode = {"auto": "auto", "any": "required", "none": "none"}[kind]
    return mode, None, parallel


def _system(system: Any, walk: PromptWalk) -> None:
    if system is None:
        return
    if isinstance(system, str):
        walk.add(system)
        return
    if not isinstance(system, list):
        raise invalid("system", "Input should be a valid string or a list of text blocks")
    for index, entry in enumerate(system):
        where = f"system.{index}"
        block = _object(entry, where)
        if block.get("type") != "text":
            raise invalid(f"{where}.type", "Input should be 'text'")
        text = _text(block.get("text"), f"{where}.text")
        if not text:
            raise invalid(f"{where}.text", "text content blocks must be non-empty")
        walk.add(text)
        walk.mark(block.get("cache_control"), where)


def _messages(payload: dict[str, Any], walk: PromptWalk) -> bool:
    """Check and measure ``messages``; whether the conversation ends on the user's turn (a user
    message that is not tool results)."""
    messages = payload.get("messages")
    if messages is None:
        raise invalid("messages", "Field required")
    if not isinstance(messages, list):
        raise invalid("messages", "Input should be a valid list")
    if not messages:
        raise invalid("messages", "at least one message is required")
    last = len(messages) - 1
    pending: list[str] = []
    """``tool_use`` ids of the assistant turn before, which the next turn must answer."""
    user_turn = False
    for index, entry in enumerate(messages):
        where = f"messages.{index}"
        message = _object(entry, where)
        role = message.get("role")
        if role is None:
            raise invalid(f"{where}.role", "Field required")
        if role not in _ROLES:
            raise invalid(f"{where}.role", "Input should be 'user' or 'assistant'")
        content = message.get("content")
        if content is None:
            raise invalid(f"{where}.content", "Field required")
        empty = (isinstance(content, str) and not content.strip()) or content == []
        if empty and not (index == last and role == "assistant"):
            raise invalid(
                where,
                "all messages must have non-empty content except for the optional final "
                "assistant message",
            )
        uses, results = _content(content, role, where, walk)
        if pending:
            missing = [tool_id for tool_id in pending if tool_id not in results]
            if role != "user" or missing:
                raise invalid(
                    f"messages.{index - 1}",
                    f"`tool_use` ids were found without `tool_result` blocks immediately "
                    f"after: {', '.join(missing or pending)}. Each `tool_use` block must have "
                    "a corresponding `tool_result` block in the next message.",
                )
        unexpected = [tool_id for tool_id in results if tool_id not in pending]
        if unexpected:
            raise invalid(
                f"{where}.content",
                f"unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{', '.join(unexpected)}. Each `tool_result` block must have a corresponding "
                "`tool_use` block in the previous message.",
            )
        pending = uses
        user_turn = role == "user" and not results
    return user_turn


def _content(content: Any, role: str, where: str, walk: PromptWalk) -> tuple[list[str], list[str]]:
    """Check and measure a message's content; the ids of its ``tool_use`` blocks and of the
    ``tool_use`` its ``tool_result`` blocks answer."""
    if isinstance(content, str):
        walk.add(content)
        return [], []
    if not isinstance(content, list):
        raise invalid(f"{where}.content", "Input should be a valid string or a list of blocks")
    uses: list[str] = []
    results: list[str] = []
    for index, entry in enumerate(content):
        at = f"{where}.content.{index}"
        block = _object(entry, at)
        kind = block.get("type")
        if kind not in _KNOWN_BLOCKS:
            raise invalid(
                f"{at}.type",
                f"Input tag {kind!r} found using 'type' does not match any of the expected "
                f"tags: {', '.join(repr(k) for k in sorted(_KNOWN_BLOCKS))}",
            )
        if (kind in _USER_ONLY and role != "user") or (
            kind in _ASSISTANT_ONLY and role != "assistant"
        ):
            raise invalid(at, f"{kind} blocks are not allowed in {role} messages")
        if kind == "tool_use":
            uses.append(_tool_use(block, at, walk))
        elif kind == "tool_result":
            results.append(_tool_result(block, at, walk))
        else:
            _leaf_block(block, kind, at, walk)
        walk.mark(block.get("cache_control"), at)
    return uses, results


def _tool_use(block: dict[str, Any], at: str, walk: PromptWalk) -> str:
    tool_id = _text(block.get("id"), f"{at}.tool_use.id")
    name = _text(block.get("name"), f"{at}.tool_use.name")
    arguments = block.get("input")
    if arguments is None:
        raise invalid(f"{at}.tool_use.input", "Field required")
    arguments = _object(arguments, f"{at}.tool_use.input")
    walk.add(name)
    walk.add(orjson.dumps(arguments).decode())
    return tool_id


def _tool_result(block: dict[str, Any], at: str, walk: PromptWalk) -> str:
    tool_id = _text(block.get("tool_use_id"), f"{at}.tool_result.tool_use_id")
    error = block.get("is_error")
    if error is not None and not isinstance(error, bool):
        raise invalid(f"{at}.tool_result.is_error", "Input should be a valid boolean")
    content = block.get("content")
    if content is None:
        return tool_id
    if isinstance(content, str):
        walk.add(content)
        return tool_id
    if not isinstance(content, list):
        raise invalid(
            f"{at}.tool_result.content", "Input should be a valid string or a list of blocks"
        )
    for index, entry in enumerate(content):
        where = f"{at}.tool_result.content.{index}"
        inner = _object(entry, where)
        kind = inner.get("type")
        if kind not in ("text", "image", "document", "search_result"):
            raise invalid(
                f"{where}.type",
                f"Input tag {kind!r} found using 'type' does not match any of the expected "
                "tags: 'text', 'image', 'document', 'search_result'",
            )
        _leaf_block(inner, kind, where, walk)
    return tool_id


def _leaf_block(block: dict[str, Any], kind: str, at: str, walk: PromptWalk) -> None:
    """Check and measure a block that holds no other: text, image, document, thinking…"""
    if kind == "text":
        text = _text(block.get("text"), f"{at}.text.text")
        if not text:
            raise invalid(f"{at}.text.text", "text content blocks must be non-empty")
        walk.add(text)
    elif kind in ("image", "document"):
        _source(block.get("source"), kind, f"{at}.{kind}.source")
    elif kind == "thinking":
        walk.add(_text(block.get("thinking"), f"{at}.thinking.thinking"))
        _text(block.get("signature"), f"{at}.thinking.signature")
    elif kind == "redacted_thinking":
        _text(block.get("data"), f"{at}.redacted_thinking.data")


def _source(source: Any, kind: str, where: str) -> None:
    if source is None:
        raise invalid(where, "Field required")
    source = _object(source, where)
    source_type = source.get("type")
    if source_type == "base64":
        media_type = source.get("media_type")
        if kind == "image" and media_type not in _IMAGE_TYPES:
            raise invalid(
                f"{where}.base64.media_type",
                "Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'",
            )
        _text(source.get("data"), f"{where}.base64.data")
    elif source_type == "url":
        _text(source.get("url"), f"{where}.url.url")
    elif source_type == "file":
        _text(source.get("file_id"), f"{where}.file.file_id")
    elif not (kind == "document" and source_type in ("text", "content")):
        expected = "'base64', 'url' or 'file'"
        raise invalid(f"{where}.type", f"Input tag {source_type!r} does not match {expected}")


def _output_format(payload: dict[str, Any]) -> OutputFormat:
    spec: Any = None
    where = "output_format"
    config = payload.get("output_config")
    if config is not None:
        config = _object(config, "output_config")
        spec = config.get("format")
        where = "output_config.format"
    if spec is None:
        spec = payload.get("output_format")
        where = "output_format"
    if spec is None:
        return TEXT
    spec = _object(spec, where)
    if spec.get("type") != "json_schema":
        raise invalid(f"{where}.type", "Input should be 'json_schema'")
    schema = _object(spec.get("schema"), f"{where}.schema")
    return OutputFormat(kind="json_schema", name="output", schema=schema, param=f"{where}.schema")


def _stop_sequences(payload: dict[str, Any]) -> tuple[str, ...]:
    value = payload.get("stop_sequences")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise invalid("stop_sequences", "Input should be a valid list")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise invalid(f"stop_sequences.{index}", "Input should be a valid string")
    return tuple(value)


def _sampling(payload: dict[str, Any], max_tokens: int | None) -> None:
    """``temperature``, ``top_p``, ``top_k``, ``metadata``, ``service_tier``, ``thinking``:
    checked, then without effect on the simulated model."""
    for name in ("temperature", "top_p"):
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid(name, "Input should be a valid number")
        if not 0 <= value <= 1:
            raise invalid(name, "Input should be less than or equal to 1 and at least 0")
    top_k = payload.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise invalid("top_k", "Input should be a valid integer of at least 0")
    metadata = payload.get("metadata")
    if metadata is not None:
        user_id = _object(metadata, "metadata").get("user_id")
        if user_id is not None and not isinstance(user_id, str):
            raise invalid("metadata.user_id", "Input should be a valid string")
    tier = payload.get("service_tier")
    if tier is not None and tier not in _SERVICE_TIERS:
        raise invalid("service_tier", "Input should be 'auto' or 'standard_only'")
    thinking = payload.get("thinking")
    if thinking is None:
        return
    thinking = _object(thinking, "thinking")
    kind = thinking.get("type")
    if kind not in _THINKING_TYPES:
        raise invalid("thinking.type", "Input should be 'enabled', 'disabled' or 'adaptive'")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise invalid("thinking.enabled.budget_tokens", "Input should be a valid integer")
        if budget < _MIN_THINKING_BUDGET:
            raise invalid(
                "thinking.enabled.budget_tokens",
                f"Input should be greater than or equal to {_MIN_THINKING_BUDGET}",
            )
        if max_tokens is not None and budget >= max_tokens:
            raise invalid(
                "max_tokens", "`max_tokens` must be greater than `thinking.budget_tokens`"
            )
