"""The simulator's ASGI app: routing, the order of things for each request, and the headers.

For a generation request (chat, responses, embeddings) the order is: read and validate the
body (bad input → 400/404, never faulted; flex on a model without a flex price is bad input),
count it, refuse a flex request while flex capacity is out (429 ``resource_unavailable``,
not counted against the rate limits), charge it to its model's rate limits (enforcing them: a
429 ``rate_limit_exceeded`` if it does not fit; see ``ratelimit``), let the fault rules pick,
wait the configured latency (flex: its own), then answer whole or as a stream. Every answer
carries ``x-request-id`` and the six ``x-ratelimit-*`` headers (of the request's model, if it
has one). ``GET``/``POST /_sim/ratelimits`` read and change the limits.

Every generation served (the ones ``SimStats.served`` counts) is logged with the request's
``X-Client-Request-Id`` and the tokens billed when its answer ends, whole or cut, and so are
the answered lines of ended batches: ``GET /_sim/requests[?since=SEQ&limit=N]`` (see
``request_log``); ``POST /_sim/stats/reset`` empties it too.

Fault rules with a ``path`` also hit the other endpoints (files, batches, models): after
routing, before the endpoint runs (see ``faults``).

The Files and Batch APIs (``/v1/files``, ``/v1/batches``) keep files in memory and move
batches through their statuses by the clock (``batches``); ``GET``/``POST /_sim/batch`` read and
change the batch settings.

All state (stats, request log, faults, flex spells, counters, files, batches) lives in the
``SimApp`` that ``build_app`` returns.

``[sim] flavor`` picks the API impersonated: the hooks of a ``flavor.Flavor`` (OpenAI's), of
``ollama.OllamaFlavor`` or of ``anthropic.AnthropicFlavor`` decide the error bodies, the headers,
the routes that exist, and adapt each endpoint's parser. The Anthropic flavor brings its own
routes: ``/v1/messages`` (a generation endpoint like the others: same rate limits, faults,
latency, stats and request log), ``/v1/messages/count_tokens``, and the Message Batches
(``anthropic_batches``, on the same batch clock and settings, counted under
``/v1/messages/batches/{message_batch_id}``).

Every duration (configured or set at run time) is rehearsal time, kept as given and divided by
``[sim] speed`` where the app waits: latency and stream pace, fault delays and retry hints, the
flex outage clock, and the settings of each new batch (see ``speed``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import anyio
import orjson

from llmspool.core.errors import (
    ApiError,
    ConfigError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from llmspool.sim import validate
from llmspool.sim.answer import Answer, IdMaker, Makers
from llmspool.sim.anthropic import BATCHES_PATH as MESSAGE_BATCHES_PATH
from llmspool.sim.anthropic import COUNT_TOKENS_PATH, MESSAGES_PATH, AnthropicFlavor
from llmspool.sim.anthropic_batches import BATCHES_PREFIX as MESSAGE_BATCHES_PREFIX
from llmspool.sim.anthropic_batches import DEFAULT_LIST_LIMIT as DEFAULT_MESSAGE_BATCH_LIMIT
from llmspool.sim.anthropic_batches import MAX_BATCH_BYTES as MAX_MESSAGE_BATCH_BYTES
from llmspool.sim.anthropic_batches import MAX_LIST_LIMIT as MAX_MESSAGE_BATCH_LIMIT
from llmspool.sim.anthropic_batches import MessageBatchRegistry
from llmspool.sim.asgi import (
    JSON_HEADERS,
    SSE_HEADERS,
    BodyTooLarge,
    FixedHeaders,
    Headers,
    Message,
    Receive,
    Scope,
    Send,
    WaitEnd,
    Waiter,
    connection_transport,
    drop_connection,
    read_body,
    send_bytes,
)
from llmspool.sim.batch_config import settings_from_command
from llmspool.sim.batches import DEFAULT_LIST_LIMIT as DEFAULT_BATCH_LIMIT
from llmspool.sim.batches import MAX_LIST_LIMIT as MAX_BATCH_LIMIT
from llmspool.sim.batches import BatchRegistry
from llmspool.sim.catalog import ModelCatalog
from llmspool.sim.chat import parse_chat
from llmspool.sim.config import SimConfig
from llmspool.sim.embeddings import parse_embedding_request
from llmspool.sim.faults import FaultInjector, FaultKind, FaultRule, rules_from_json
from llmspool.sim.files import MAX_LIST_LIMIT as MAX_FILE_LIMIT
from llmspool.sim.files import MAX_UPLOAD_BYTES, FileStore, file_from_upload
from llmspool.sim.flavor import Flavor
from llmspool.sim.flex import (
    FLEX,
    FlexCapacity,
    FlexPacing,
    command_from_json,
    config_json,
    flex_models,
    resource_unavailable_error,
)
from llmspool.sim.ollama import OllamaFlavor
from llmspool.sim.ratelimit import Limits, RateLimiter, limits_from_command
from llmspool.sim.request_log import RequestLog, tier_of
from llmspool.sim.responses import parse_response_request
from llmspool.sim.speed import real
from llmspool.sim.stats import SimStats
from llmspool.sim.text import TextGenerator
from llmspool.sim.upload import read_upload
from llmspool.sim.vectors import VectorMaker

MAX_BODY_BYTES = 64 * 1024 * 1024
CONTROL_PREFIX = "/_sim/"
_MODELS_PREFIX = "/v1/models/"
_FILES_PREFIX = "/v1/files/"
_BATCHES_PREFIX = "/v1/batches/"
# Paths with an id are counted in the stats under a template ("/v1/batches/{batch_id}"), so
# that polling many batches does not make one entry per batch.
_ID_TEMPLATES = (
    (_FILES_PREFIX, "{file_id}"),
    (_BATCHES_PREFIX, "{batch_id}"),
    (MESSAGE_BATCHES_PREFIX, "{message_batch_id}"),
)
_CONTENT_HEADERS: FixedHeaders = ((b"content-type", b"application/octet-stream"),)
_RESULTS_HEADERS: FixedHeaders = ((b"content-type", b"application/binary"),)
_STATIC_HEADERS: FixedHeaders = ((b"openai-version", b"2020-10-01"),)
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)

Parser = Callable[[dict[str, Any], Makers], Answer]
Handler = Callable[["_Exchange"], Awaitable[None]]


class _Exchange:
    """One request being answered: where to reply, and what every reply's headers need."""

    __slots__ = (
        "app",
        "counted",
        "cut",
        "method",
        "model",
        "path",
        "receive",
        "request_id",
        "scope",
        "send",
        "started",
    )

    def __init__(self, app: SimApp, scope: Scope, receive: Receive, send: Send) -> None:
        self.app = app
        self.scope = scope
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        # Control requests stay out of the stats, so that asking never changes the answer.
        self.counted = not self.path.startswith(CONTROL_PREFIX)
        self.receive = receive
        self.send = send
        self.request_id = app.makers.ids.make("req_").encode()
        self.started = time.perf_counter()
        self.model: str | None = None
        """The model asked for, once known: whose rate-limit headers the answer carries."""
        self.cut = False
        """A ``reset_midway`` fault: the answer is cut after its headers and half its body."""

    def headers(self, content: FixedHeaders, *, requests_exhausted: float | None = None) -> Headers:
        flavor = self.app.flavor
        if not flavor.openai_headers:
            ratelimit = self.app.ratelimit
            return [
                *content,
                *flavor.extra_headers(
                    self.request_id,
                    lambda: ratelimit.headers(self.model, requests_exhausted=requests_exhausted),
                ),
            ]
        elapsed_ms = int((time.perf_counter() - self.started) * 1000)
        return [
            *content,
            (b"x-request-id", self.request_id),
            (b"openai-processing-ms", str(elapsed_ms).encode()),
            *_STATIC_HEADERS,
            *self.app.ratelimit.headers(self.model, requests_exhausted=requests_exhausted),
        ]

    async def send_answer(self, status: int, body: bytes, headers: Headers) -> None:
        """Send a complete answer, or with ``cut`` its start and then reset the connection."""
        if not self.cut:
            await send_bytes(self.send, status, body, headers)
            return
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await self.send(
            {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
        )
        await drop_connection(self.send, self.receive, response_started=True)

    async def reply(self, status: int, body: bytes, *, extra: Headers | None = None) -> None:
        headers = self.headers(JSON_HEADERS)
        if extra:
            headers.extend(extra)
        if self.counted:
            self.app.stats.by_status[status] += 1
        await self.send_answer(status, body, headers)

    async def reply_json(self, status: int, value: Any) -> None:
        await self.reply(status, orjson.dumps(value))

    async def reply_error(
        self,
        error: ApiError,
        *,
        extra: Headers | None = None,
        requests_exhausted: float | None = None,
    ) -> None:
        flavor = self.app.flavor
        error = flavor.translate(error, self.request_id.decode())
        content, body = flavor.error_body(error)
        headers = self.headers(content, requests_exhausted=requests_exhausted)
        given = {name for name, _ in extra or ()}
        headers.extend(
            (name.encode(), value.encode())
            for name, value in error.headers().items()
            if name.encode() not in given
        )
        if extra:
            headers.extend(extra)
        if self.counted:
            self.app.stats.by_status[error.status] += 1
        await self.send_answer(error.status, body, headers)

    def client_request_id(self) -> str | None:
        """The ``X-Client-Request-Id`` header (``None`` if absent)."""
        for key, value in self.scope.get("headers", ()):
            if key == b"x-client-request-id":
                text: str = value.decode("latin-1")
                return text
        return None

    def header(self, name: bytes) -> bytes:
        """A request header's value (``name`` in lower case), or ``b""``."""
        for key, value in self.scope.get("headers", ()):
            if key == name:
                result: bytes = value
                return result
        return b""

    def query(self) -> dict[str, str]:
        """The query string's parameters (the last of repeated ones)."""
        raw: bytes = self.scope.get("query_string", b"")
        return dict(parse_qsl(raw.decode("latin-1")))

    def path_id(self) -> str:
        """The id in ``/v1/files/{id}…`` or ``/v1/batches/{id}…``."""
        return self.path.split("/")[3]

    def message_batch_id(self) -> str:
        """The id in ``/v1/messages/batches/{id}…``."""
        return self.path.split("/")[4]

    def base_url(self) -> str:
        """The URL the client reached the simulator at (scheme and host, no path)."""
        host = self.header(b"host").decode("latin-1")
        if not host:
            server = self.scope.get("server") or ("127.0.0.1", 80)
            host = f"{server[0]}:{server[1]}"
        return f"{self.scope.get('scheme', 'http')}://{host}"

    async def read_json(self, limit: int = MAX_BODY_BYTES) -> dict[str, Any] | None:
        """The request's JSON object, or ``None`` if the client left; bad JSON raises 400."""
        try:
            body = await read_body(self.receive, limit)
        except BodyTooLarge:
            raise PayloadTooLarge(
                f"The request body is over {limit} bytes.", code="payload_too_large"
            ) from None
        if body is None:
            return None
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidRequest(_BAD_JSON) from None
        return validate.json_object(payload)


class SimApp:
    """The simulator as an ASGI app, with all of its state."""

    def __init__(self, config: SimConfig) -> None:
        """Raises ``ConfigError`` (key ``sim.pricing_file``) if the price table cannot load."""
        self.config = config
        self.flavor = _flavor(config)
        self.makers = Makers(
            catalog=ModelCatalog(config.models),
            text=TextGenerator(),
            vectors=VectorMaker(semantic=config.semantic_embeddings),
            ids=IdMaker(),
            default_output_tokens=config.output_tokens,
            flex_models=flex_models(config.pricing_file, config.models),
        )
        for model in self.makers.catalog.embedding_models():
            self.makers.vectors.warm(self.makers.catalog.embedding_dimensions(model))
        self.faults = FaultInjector(config.faults, seed=config.seed)
        self.stats = SimStats()
        self.request_log = RequestLog(config.request_log_size)
        self.flex = FlexCapacity.from_config(config)
        self.flex_pacing = FlexPacing.from_config(config)
        self.configured_limits = Limits(
            requests=config.ratelimit_requests,
            tokens=config.ratelimit_tokens,
            enforce=config.enforce_ratelimits,
        )
        self.ratelimit = RateLimiter(self.configured_limits)
        # The handlers of the model endpoints, which pick their faults themselves.
        self._model_handlers: set[Handler] = set()
        self.files = FileStore()
        batch_options: dict[str, Any] = {
            "files": self.files,
            "makers": self.makers,
            "stats": self.stats,
            "log": self.request_log,
            "settings": config.batch,
            "seed": config.seed,
            "speed": config.speed,
        }
        self.message_batches: MessageBatchRegistry | None = None
        if isinstance(self.flavor, AnthropicFlavor):
            self.message_batches = MessageBatchRegistry(
                messages=self.flavor.messages, **batch_options
            )
        self.batches: BatchRegistry = self.message_batches or BatchRegistry(**batch_options)
        self._waiter = Waiter()
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": self._generator(parse_chat)},
            "/v1/responses": {"POST": self._generator(parse_response_request)},
            "/v1/embeddings": {"POST": self._generator(parse_embedding_request)},
            "/v1/models": {"GET": self._list_models},
            "/v1/files": {"GET": self._list_files, "POST": self._upload_file},
            "/v1/batches": {"GET": self._list_batches, "POST": self._create_batch},
            "/_sim/batch": {"GET": self._get_batch_settings, "POST": self._set_batch_settings},
            "/_sim/faults": {
                "GET": self._get_faults,
                "POST": self._set_faults,
                "DELETE": self._clear_faults,
            },
            "/_sim/flex": {"GET": self._get_flex, "POST": self._set_flex},
            "/_sim/ratelimits": {"GET": self._get_ratelimits, "POST": self._set_ratelimits},
            "/_sim/requests": {"GET": self._get_requests},
            "/_sim/stats": {"GET": self._get_stats},
            "/_sim/stats/reset": {"POST": self._reset_stats},
        }
        if isinstance(self.flavor, AnthropicFlavor):
            self._routes[MESSAGES_PATH] = {"POST": self._generator(self.flavor.messages.parse)}
            self._routes[COUNT_TOKENS_PATH] = {"POST": self._count_tokens}
            self._routes[MESSAGE_BATCHES_PATH] = {
                "GET": self._list_message_batches,
                "POST": self._create_message_batch,
            }
        for path, body in self.flavor.static_routes().items():
            self._routes[path] = {"GET": _fixed_answer(body)}

    def stop(self) -> None:
        """The server is stopping: requests waiting (hung, slow, paced) drop their connections
        now instead of being cancelled mid-wait."""
        self._waiter.stop()

    def _real(self, seconds: float) -> float:
        """How long ``seconds`` of rehearsal time take at the sim's speed."""
        return real(seconds, self.config.speed)

    async def _pause(
        self, exchange: _Exchange, seconds: float, *, response_started: bool = False
    ) -> bool:
        """Wait ``seconds`` (real time); ``False`` if the request is over instead (client gone,
        or the server stopping, in which case the connection is dropped)."""
        end = await self._waiter.wait(exchange.receive, seconds)
        if end is WaitEnd.ELAPSED:
            return True
        if end is WaitEnd.GONE:
            self.stats.client_closed += 1
        else:
            await drop_connection(
                exchange.send, exchange.receive, response_started=response_started
            )
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        exchange = _Exchange(self, scope, receive, send)
        counted = exchange.counted
        if counted:
            self.stats.request(_stats_path(exchange.path))
            self.stats.connection(connection_transport(send), scope.get("client"))
            self.stats.in_flight += 1
        try:
            handler = self._route(exchange)
            self.flavor.admit(exchange.path, exchange.header)
            plain = counted and handler not in self._model_handlers
            if plain and not await self._plain_fault(exchange):
                return
            await handler(exchange)
        except ApiError as error:
            await exchange.reply_error(error)
        finally:
            if counted:
                self.stats.in_flight -= 1

    def _route(self, exchange: _Exchange) -> Handler:
        methods = self._routes.get(exchange.path) or self._resource_routes(exchange.path)
        if methods is None or not self.flavor.serves(exchange.path):
            raise self.flavor.no_route(exchange.method, exchange.path)
        handler = methods.get(exchange.method)
        if handler is None:
            raise MethodNotAllowed(
                f"Invalid method for URL ({exchange.method} {exchange.path}); "
                f"use {' or '.join(methods)}."
            )
        return handler

    def _resource_routes(self, path: str) -> dict[str, Handler] | None:
        """The methods of a path with an id in it (a model, a file, a batch)."""
        if path.startswith(_MODELS_PREFIX):
            return {"GET": self._retrieve_model}
        if path.startswith(_FILES_PREFIX):
            return _id_route(
                path[len(_FILES_PREFIX) :],
                {"GET": self._retrieve_file, "DELETE": self._delete_file},
                {"content": {"GET": self._file_content}},
            )
        if path.startswith(_BATCHES_PREFIX):
            return _id_route(
                path[len(_BATCHES_PREFIX) :],
                {"GET": self._retrieve_batch},
                {"cancel": {"POST": self._cancel_batch}},
            )
        if self.message_batches is not None and path.startswith(MESSAGE_BATCHES_PREFIX):
            return _id_route(
                path[len(MESSAGE_BATCHES_PREFIX) :],
                {"GET": self._retrieve_message_batch, "DELETE": self._delete_message_batch},
                {
                    "cancel": {"POST": self._cancel_message_batch},
                    "results": {"GET": self._message_batch_results},
                },
            )
        return None

    def _generator(self, parse: Parser) -> Handler:
        parse = self.flavor.adapt(parse)

        async def handle(exchange: _Exchange) -> None:
            payload = await exchange.read_json()
            if payload is None:
                self.stats.client_closed += 1
                return
            answer = parse(payload, self.makers)
            exchange.model = answer.model
            self.stats.by_model[answer.model] += 1
            await self._answer(exchange, answer)

        self._model_handlers.add(handle)
        return handle

    async def _answer(self, exchange: _Exchange, answer: Answer) -> None:
        flex = answer.tier == FLEX
        if flex:
            self.stats.flex_requests += 1
            if self.flex.refuses():
                # No capacity is not a rate limit: no retry hint, no request counted.
                self.stats.flex_unavailable += 1
                await exchange.reply_error(resource_unavailable_error())
                return
        # Charged at arrival: the prompt and the most output it asks for (see ``ratelimit``).
        tokens = answer.input_tokens + answer.billed_output_tokens
        refusal = self.ratelimit.admit(answer.model, tokens)
        if refusal is not None:
            self.stats.rate_limited(answer.model, refusal.kind)
            await exchange.reply_error(refusal)
            return
        self.stats.admitted(answer.model, tokens)
        cut_after: int | None = None
        cut_error: ApiError | None = None
        rule = self.faults.pick(
            exchange.path, answer.model, answer.tier, answer.stream, method=exchange.method
        )
        if rule is not None:
            self.stats.faults[rule.kind.value] += 1
            if rule.kind is FaultKind.STREAM_CUT:
                cut_after = rule.after_chunks
                if rule.status is not None:
                    error = self.flavor.fault_error(
                        rule, request_limit=self.ratelimit.request_limit
                    )
                    cut_error = self.flavor.translate(error, exchange.request_id.decode())
            elif not await self._inflict(exchange, rule):
                return
        delay = self.config.latency
        per_token = self.config.latency_per_token
        if flex:
            delay += self.flex_pacing.extra_wait()
            per_token = self.flex_pacing.per_token
        if not answer.stream:
            delay += per_token * answer.output_tokens
        if delay > 0 and not await self._pause(exchange, self._real(delay)):
            return
        self.stats.served(answer.tier, answer.input_tokens, answer.billed_output_tokens)
        if answer.stream:
            await self._stream(exchange, answer, cut_after, self._real(per_token), cut_error)
            return
        try:
            await exchange.reply(200, answer.body())
        finally:
            # Cut or not, the whole answer was generated: all of it is billed.
            self._log_call(exchange, answer, answer.billed_output_tokens, complete=not exchange.cut)

    def _log_call(
        self, exchange: _Exchange, answer: Answer, output_tokens: int, *, complete: bool
    ) -> None:
        """Log a served generation in the request log (``request_log``)."""
        self.request_log.add(
            request_id=exchange.client_request_id(),
            endpoint=exchange.path,
            model=answer.model,
            tier=tier_of(answer.tier),
            stream=answer.stream,
            input_tokens=answer.input_tokens,
            output_tokens=output_tokens,
            complete=complete,
        )

    async def _inflict(self, exchange: _Exchange, rule: FaultRule) -> bool:
        """Apply a fault that is not a stream cut; ``True`` if the request goes on to answer."""
        if rule.is_error:
            extra: Headers = []
            exhausted: float | None = None
            if rule.retry_after is not None:
                seconds = self._real(rule.retry_after)
                extra = [
                    (b"retry-after", str(max(1, math.ceil(seconds))).encode()),
                    (b"retry-after-ms", str(round(seconds * 1000)).encode()),
                ]
                if rule.kind is FaultKind.RATE_LIMIT:
                    exhausted = seconds
            error = self.flavor.fault_error(rule, request_limit=self.ratelimit.request_limit)
            await exchange.reply_error(error, extra=extra, requests_exhausted=exhausted)
            return False
        if rule.kind is FaultKind.DROP:
            await drop_connection(exchange.send, exchange.receive, response_started=False)
            return False
        if rule.kind is FaultKind.HANG:
            if await self._pause(exchange, self._real(rule.delay or 0.0)):
                # Nobody waits forever: after the bound, end it as a dead upstream would.
                await drop_connection(exchange.send, exchange.receive, response_started=False)
            return False
        if rule.kind is FaultKind.SLOW:
            return await self._pause(exchange, self._real(rule.delay or 0.0))
        if rule.kind is FaultKind.RESET_MIDWAY:
            exchange.cut = True
        return True

    async def _plain_fault(self, exchange: _Exchange) -> bool:
        """Let the fault rules with a ``path`` pick for an endpoint that is not about a model
        (files, batches...); ``True`` if the endpoint goes on to answer."""
        rule = self.faults.pick(exchange.path, None, None, False, method=exchange.method)
        if rule is None:
            return True
        self.stats.faults[rule.kind.value] += 1
        if rule.kind is not FaultKind.SLOW:
            return await self._inflict(exchange, rule)
        # The wait watches for the client leaving, which reads the request: read it first,
        # and hand it to the endpoint afterwards.
        try:
            body = await read_body(exchange.receive, MAX_UPLOAD_BYTES)
        except BodyTooLarge:
            raise PayloadTooLarge(
                f"The request body is over {MAX_UPLOAD_BYTES} bytes.", code="payload_too_large"
            ) from None
        if body is None:
            self.stats.client_closed += 1
            return False
        if not await self._inflict(exchange, rule):
            return False
        exchange.receive = _replay(body, exchange.receive)
        return True

    async def _stream(
        self,
        exchange: _Exchange,
        answer: Answer,
        cut_after: int | None,
        interval: float,
        cut_error: ApiError | None = None,
    ) -> None:
        """Send ``answer``'s events; a ``stream_cut`` fault stops them before event
        ``cut_after``: dropping the connection, or with ``cut_error`` ending the stream with
        that error's event (``Flavor.stream_error``)."""
        send = exchange.send
        events = list(answer.events())
        last = len(events) - 1
        # A cut always happens before the terminator, so the client always notices it.
        cut = min(cut_after, last) if cut_after is not None else -1
        self.stats.by_status[200] += 1
        self.stats.streams += 1
        self.stats.open_streams += 1
        # Tokens sent so far (one per paced event), and whether the terminator went out.
        generated = 0
        complete = False
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": exchange.headers(SSE_HEADERS),
                }
            )
            if exchange.cut:
                first = events[0][0]
                half = first[: len(first) // 2]
                await send({"type": "http.response.body", "body": half, "more_body": True})
                await drop_connection(send, exchange.receive, response_started=True)
                return
            next_at = anyio.current_time()
            for index, (data, paced) in enumerate(events):
                if index == cut:
                    if cut_error is None:
                        await drop_connection(send, exchange.receive, response_started=True)
                    else:
                        body = self.flavor.stream_error(cut_error)
                        await send({"type": "http.response.body", "body": body, "more_body": False})
                    return
                if paced and interval > 0:
                    next_at += interval
                    wait = next_at - anyio.current_time()
                    if wait > 0 and not await self._pause(exchange, wait, response_started=True):
                        return
                await send({"type": "http.response.body", "body": data, "more_body": index < last})
                if paced:
                    generated += 1
            complete = True
        finally:
            self.stats.open_streams -= 1
            billed = answer.billed_output_tokens
            self._log_call(
                exchange, answer, billed if complete else min(generated, billed), complete=complete
            )

    async def _list_models(self, exchange: _Exchange) -> None:
        await exchange.reply(200, self.flavor.models_body(self.makers.catalog))

    async def _retrieve_model(self, exchange: _Exchange) -> None:
        model = exchange.path[len(_MODELS_PREFIX) :]
        body = self.flavor.model_body(self.makers.catalog, model)
        if body is None:
            raise NotFound(
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        await exchange.reply(200, body)

    def _faults_json(self) -> dict[str, Any]:
        return {"faults": [rule.to_mapping() for rule in self.faults.active()]}

    async def _get_faults(self, exchange: _Exchange) -> None:
        await exchange.reply_json(200, self._faults_json())

    async def _set_faults(self, exchange: _Exchange) -> None:
        try:
            body = await read_body(exchange.receive, MAX_BODY_BYTES)
            if body is None:
                return
            rules, seed = rules_from_json(orjson.loads(body))
        except orjson.JSONDecodeError:
            raise InvalidRequest(_BAD_JSON) from None
        except BodyTooLarge:
            raise PayloadTooLarge("The fault rules are too large.") from None
        except ConfigError as exc:
            raise InvalidRequest(str(exc), param=exc.key, code="invalid_value") from None
        self.faults.replace(rules, seed=seed)
        await exchange.reply_json(200, self._faults_json())

    async def _clear_faults(self, exchange: _Exchange) -> None:
        self.faults.clear()
        await exchange.reply_json(200, self._faults_json())

    def _flex_json(self) -> dict[str, Any]:
        return {
            **self.flex.state_json(),
            "config": config_json(self.config, self.makers.flex_models, self.flex_pacing),
        }

    async def _get_flex(self, exchange: _Exchange) -> None:
        await exchange.reply_json(200, self._flex_json())

    async def _set_flex(self, exchange: _Exchange) -> None:
        try:
            body = await read_body(exchange.receive, MAX_BODY_BYTES)
            if body is None:
                return
            command = command_from_json(orjson.loads(body))
        except orjson.JSONDecodeError:
            raise InvalidRequest(_BAD_JSON) from None
        except BodyTooLarge:
            raise PayloadTooLarge("The flex command is too large.") from None
        except ConfigError as exc:
            raise InvalidRequest(str(exc), param=exc.key, code="invalid_value") from None
        self.flex.apply(command)
        await exchange.reply_json(200, self._flex_json())

    async def _get_ratelimits(self, exchange: _Exchange) -> None:
        await exchange.reply_json(200, self.ratelimit.state_json())

    async def _set_ratelimits(self, exchange: _Exchange) -> None:
        """Change the limits (``enforce``, ``requests``, ``tokens``; ``"reset": true`` first
        goes back to the configured ones); every model's buckets start full again."""
        try:
            body = await read_body(exchange.receive, MAX_BODY_BYTES)
            if body is None:
                return
            limits = limits_from_command(
                orjson.loads(body), self.ratelimit.limits, self.configured_limits
            )
        except orjson.JSONDecodeError:
            raise InvalidRequest(_BAD_JSON) from None
        except BodyTooLarge:
            raise PayloadTooLarge("The rate-limit command is too large.") from None
        except ConfigError as exc:
            raise InvalidRequest(str(exc), param=exc.key, code="invalid_value") from None
        self.ratelimit.configure(limits)
        await exchange.reply_json(200, self.ratelimit.state_json())

    def _stats_json(self) -> dict[str, Any]:
        return self.stats.to_json(self.batches.by_status(), self.ratelimit.limits.to_json())

    async def _get_stats(self, exchange: _Exchange) -> None:
        await exchange.reply_json(200, self._stats_json())

    async def _reset_stats(self, exchange: _Exchange) -> None:
        self.stats.reset()
        self.request_log.clear()
        await exchange.reply_json(200, self._stats_json())

    async def _get_requests(self, exchange: _Exchange) -> None:
        """``GET /_sim/requests[?since=SEQ&limit=N]``: the request log after ``since``."""
        query = exchange.query()
        since = _whole_number(query, "since") or 0
        limit = _whole_number(query, "limit")
        if limit is not None and limit < 1:
            raise validate.invalid("limit", f"Invalid 'limit': expected at least 1, got {limit}.")
        self.batches.advance()  # Batches that ended by now have their lines logged.
        await exchange.reply_json(200, self.request_log.to_json(since, limit))

    # -- Files API ---------------------------------------------------------------------------

    async def _upload_file(self, exchange: _Exchange) -> None:
        upload = await read_upload(
            exchange.receive, exchange.header(b"content-type"), MAX_UPLOAD_BYTES
        )
        if upload is None:
            self.stats.client_closed += 1
            return
        stored = file_from_upload(upload, self.makers.ids.make("file-"), int(time.time()))
        self.files.add(stored)
        self.stats.batches.files_uploaded += 1
        await exchange.reply_json(200, stored.to_json())

    async def _list_files(self, exchange: _Exchange) -> None:
        query = exchange.query()
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise validate.invalid("order", "Invalid 'order': expected 'asc' or 'desc'.")
        limit = _limit(query, MAX_FILE_LIMIT, MAX_FILE_LIMIT)
        self.batches.advance()  # Batches that ended by now have their result files listed.
        page = self.files.list_json(
            purpose=query.get("purpose"), limit=limit, order=order, after=query.get("after")
        )
        await exchange.reply_json(200, page)

    async def _retrieve_file(self, exchange: _Exchange) -> None:
        await exchange.reply_json(200, self.files.get(exchange.path_id()).to_json())

    async def _delete_file(self, exchange: _Exchange) -> None:
        await exchange.reply_json(200, self.files.delete(exchange.path_id()))

    async def _file_content(self, exchange: _Exchange) -> None:
        stored = self.files.get(exchange.path_id())
        self.stats.by_status[200] += 1
        await exchange.send_answer(200, stored.content, exchange.headers(_CONTENT_HEADERS))

    # -- Batch API ---------------------------------------------------------------------------

    async def _create_batch(self, exchange: _Exchange) -> None:
        payload = await exchange.read_json()
        if payload is None:
            self.stats.client_closed += 1
            return
        await exchange.reply_json(200, self.batches.create(payload))

    async def _retrieve_batch(self, exchange: _Exchange) -> None:
        await exchange.reply_json(200, self.batches.retrieve(exchange.path_id()))

    async def _cancel_batch(self, exchange: _Exchange) -> None:
        await exchange.reply_json(200, self.batches.cancel(exchange.path_id()))

    async def _list_batches(self, exchange: _Exchange) -> None:
        query = exchange.query()
        limit = _limit(query, DEFAULT_BATCH_LIMIT, MAX_BATCH_LIMIT)
        await exchange.reply_json(
            200, self.batches.list_json(after=query.get("after"), limit=limit)
        )

    # -- Anthropic's Message Batches API and token counting ----------------------------------

    def _message_registry(self) -> MessageBatchRegistry:
        assert self.message_batches is not None  # routed only under the Anthropic flavor
        return self.message_batches

    async def _create_message_batch(self, exchange: _Exchange) -> None:
        payload = await exchange.read_json(MAX_MESSAGE_BATCH_BYTES)
        if payload is None:
            self.stats.client_closed += 1
            return
        registry = self._message_registry()
        await exchange.reply_json(200, registry.create_message_batch(payload, exchange.base_url()))

    async def _retrieve_message_batch(self, exchange: _Exchange) -> None:
        registry = self._message_registry()
        document = registry.retrieve_message_batch(exchange.message_batch_id(), exchange.base_url())
        await exchange.reply_json(200, document)

    async def _cancel_message_batch(self, exchange: _Exchange) -> None:
        registry = self._message_registry()
        document = registry.cancel_message_batch(exchange.message_batch_id(), exchange.base_url())
        await exchange.reply_json(200, document)

    async def _delete_message_batch(self, exchange: _Exchange) -> None:
        registry = self._message_registry()
        await exchange.reply_json(200, registry.delete(exchange.message_batch_id()))

    async def _message_batch_results(self, exchange: _Exchange) -> None:
        results = self._message_registry().results(exchange.message_batch_id())
        self.stats.by_status[200] += 1
        await exchange.send_answer(200, results, exchange.headers(_RESULTS_HEADERS))

    async def _list_message_batches(self, exchange: _Exchange) -> None:
        query = exchange.query()
        limit = _limit(query, DEFAULT_MESSAGE_BATCH_LIMIT, MAX_MESSAGE_BATCH_LIMIT)
        page = self._message_registry().list_message_batches(
            limit=limit,
            after_id=query.get("after_id"),
            before_id=query.get("before_id"),
            base_url=exchange.base_url(),
        )
        await exchange.reply_json(200, page)

    async def _count_tokens(self, exchange: _Exchange) -> None:
        payload = await exchange.read_json()
        if payload is None:
            self.stats.client_closed += 1
            return
        assert isinstance(self.flavor, AnthropicFlavor)
        await exchange.reply_json(200, self.flavor.messages.count_tokens(payload, self.makers))

    async def _get_batch_settings(self, exchange: _Exchange) -> None:
        await exchange.reply_json(200, self.batches.settings.to_table())

    async def _set_batch_settings(self, exchange: _Exchange) -> None:
        """Change the settings of batches created from now on; ``"reset": true`` first goes
        back to the configured ones."""
        try:
            body = await read_body(exchange.receive, MAX_BODY_BYTES)
            if body is None:
                return
            settings = settings_from_command(
                orjson.loads(body), self.batches.settings, self.batches.configured
            )
        except orjson.JSONDecodeError:
            raise InvalidRequest(_BAD_JSON) from None
        except BodyTooLarge:
            raise PayloadTooLarge("The batch settings are too large.") from None
        except ConfigError as exc:
            raise InvalidRequest(str(exc), param=exc.key, code="invalid_value") from None
        self.batches.settings = settings
        await exchange.reply_json(200, settings.to_table())


def _flavor(config: SimConfig) -> Flavor:
    """The flavor ``[sim] flavor`` names."""
    if config.flavor == "ollama":
        return OllamaFlavor(config.models)
    if config.flavor == "anthropic":
        return AnthropicFlavor(config.models, speed=config.speed)
    return Flavor()


def _fixed_answer(body: bytes) -> Handler:
    """A handler that answers 200 with the JSON ``body``."""

    async def handle(exchange: _Exchange) -> None:
        await exchange.reply(200, body)

    return handle


def _id_route(
    rest: str, item: dict[str, Handler], actions: dict[str, dict[str, Handler]]
) -> dict[str, Handler] | None:
    """The methods for ``{id}`` (``item``) or ``{id}/{action}``, after a collection's prefix."""
    identifier, slash, action = rest.partition("/")
    if not identifier:
        return None
    return actions.get(action) if slash else item


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` (already read) as the request, then goes on as
    ``receive``."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _stats_path(path: str) -> str:
    """The path as counted in the stats: ids in file and batch paths become templates."""
    for prefix, template in _ID_TEMPLATES:
        if path.startswith(prefix):
            _, slash, rest = path[len(prefix) :].partition("/")
            return prefix + template + slash + rest
    return path


def _whole_number(query: dict[str, str], name: str) -> int | None:
    """A query parameter that is a whole number (0 or more), or ``None`` if absent."""
    text = query.get(name)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()):
        raise validate.invalid(
            name, f"Invalid '{name}': expected a whole number (0 or more), got {text!r}."
        )
    return int(text)


def _limit(query: dict[str, str], default: int, maximum: int) -> int:
    """The ``limit`` query parameter, 1 to ``maximum``."""
    text = query.get("limit")
    if text is None:
        return default
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= maximum:
        raise validate.invalid(
            "limit", f"Invalid 'limit': expected an integer from 1 to {maximum}, got {text!r}."
        )
    return limit


async def _lifespan(receive: Receive, send: Send) -> None:
    """Answer a server's lifespan protocol: nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def build_app(config: SimConfig) -> SimApp:
    """A fresh simulator (its own stats, faults, flex spells and counters) as an ASGI app.

    Raises ``ConfigError`` (key ``sim.pricing_file``) if the price table cannot be read.
    """
    return SimApp(config)
