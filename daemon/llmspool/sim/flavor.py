"""Which API the simulator impersonates (``[sim] flavor``): the hooks the app consults where the
answer depends on it.

``Flavor`` is OpenAI's behaviour, the default; ``llmspool.sim.ollama.OllamaFlavor`` overrides it
to answer as Ollama's OpenAI-compatible routes do, ``llmspool.sim.anthropic.AnthropicFlavor`` as
Anthropic's Messages API. The hooks are few on purpose: the endpoints build the same answers for
every flavor, and a flavor only adapts what differs (the parsing of a request, error bodies and
their translation, response headers, the model listing, which routes exist, what a request must
carry).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from llmspool.core.errors import ApiError, NotFound
from llmspool.sim.answer import Answer, Makers
from llmspool.sim.asgi import JSON_HEADERS, FixedHeaders
from llmspool.sim.catalog import ModelCatalog
from llmspool.sim.faults import FaultRule
from llmspool.sim.ratelimit import RateLimitHeaders

Parser = Callable[[dict[str, Any], Makers], Answer]


class Flavor:
    """The simulator as OpenAI: its error shape, its headers, all of its routes."""

    name = "openai"

    openai_headers = True
    """Whether answers carry ``x-request-id``, ``openai-*`` and the ``x-ratelimit-*`` headers."""

    def adapt(self, parse: Parser) -> Parser:
        """The parser an endpoint uses under this flavor, made from the OpenAI one."""
        return parse

    def translate(self, error: ApiError, request_id: str) -> ApiError:
        """``error`` as this API answers it (the request ``request_id``'s)."""
        return error

    def error_body(self, error: ApiError) -> tuple[FixedHeaders, bytes]:
        """The content headers and body that answer ``error``."""
        return JSON_HEADERS, error.body()

    def fault_error(self, rule: FaultRule, *, request_limit: int) -> ApiError:
        """The error an error fault (status, rate limit, quota) answers with."""
        return rule.error(request_limit=request_limit)

    def serves(self, path: str) -> bool:
        """Whether ``path`` (a route the simulator knows) exists under this flavor."""
        return True

    def no_route(self, method: str, path: str) -> ApiError:
        """The error for a path that does not exist."""
        return NotFound(f"Invalid URL ({method} {path})")

    def static_routes(self) -> dict[str, bytes]:
        """Extra ``GET`` routes with a fixed JSON answer, by path."""
        return {}

    def admit(self, path: str, header: Callable[[bytes], bytes]) -> None:
        """Raise the error for a routed request that lacks what this API requires (headers,
        read by lower-case name with ``header``); OpenAI's simulator requires nothing."""

    def extra_headers(
        self, request_id: bytes, ratelimit: Callable[[], RateLimitHeaders]
    ) -> Iterable[tuple[bytes, bytes]]:
        """Headers of every answer when ``openai_headers`` is false (``ratelimit`` gives the
        request's model's ``x-ratelimit-*`` ones)."""
        return ()

    def stream_error(self, error: ApiError) -> bytes:
        """The server-sent event that ends a stream with ``error`` (already translated)."""
        return b"data: " + error.body() + b"\n\n"

    def models_body(self, catalog: ModelCatalog) -> bytes:
        """The ``GET /v1/models`` answer."""
        return catalog.list_body

    def model_body(self, catalog: ModelCatalog, model: str) -> bytes | None:
        """The ``GET /v1/models/{model}`` answer, or ``None`` for a model not served."""
        return catalog.retrieve_body(model)
