"""The simulator as Ollama (``[sim] flavor = "ollama"``, or ``llmspool sim --flavor ollama``).

Ollama serves OpenAI-compatible routes under ``/v1`` (chat completions, responses, embeddings,
models) next to its native ``/api`` ones. What a client notices, and this flavor reproduces:

- answers in OpenAI's shapes, with usage, but no ``service_tier`` (a request's is ignored) and
  ``system_fingerprint`` ``fp_ollama``; no ``x-request-id``, ``openai-*`` or ``x-ratelimit-*``
  headers;
- errors in Ollama's own shape, ``{"error": "…"}``: an unknown model is 404
  ``model "x" not found, try pulling it first``; a full request queue (a 503 fault) is
  ``server busy, please try again.  maximum pending requests exceeded``;
- no Files or Batch API: those paths, like any unknown one, answer 404 with the plain text
  ``404 page not found``;
- ``GET /api/tags`` (the pulled models, named with their tag: ``llama3.2:latest``) and
  ``GET /api/version``. A model may be asked for with or without its ``:latest`` tag.

The ``/_sim/…`` control routes work as in the OpenAI flavor.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from llmspool.core.errors import ApiError, NotFound
from llmspool.sim.answer import Answer, Makers
from llmspool.sim.asgi import JSON_HEADERS, FixedHeaders
from llmspool.sim.catalog import ModelCatalog
from llmspool.sim.chat import ChatAnswer
from llmspool.sim.embeddings import EmbeddingAnswer
from llmspool.sim.faults import FaultRule
from llmspool.sim.flavor import Flavor, Parser
from llmspool.sim.responses import ResponseAnswer

OLLAMA_VERSION = "0.12.6"
SYSTEM_FINGERPRINT = "fp_ollama"
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
PAGE_NOT_FOUND = "404 page not found"
_TEXT_HEADERS: FixedHeaders = ((b"content-type", b"text/plain"),)
_LATEST = ":latest"
# Routes of OpenAI's that Ollama does not have.
_OPENAI_ONLY_PREFIXES = ("/v1/files", "/v1/batches")
# Messages of the errors Ollama answers by status; other statuses keep the fault's own.
_FAULT_MESSAGES = {
    500: "llama runner process has terminated: exit status 2",
    503: BUSY_MESSAGE,
}
# /api/tags details: fixed, plausible figures (the sim has no model files to measure).
_MODIFIED_AT = "2024-01-01T00:00:00Z"
_CHAT_MODEL = {"size": 2_019_393_189, "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}
_EMBEDDING_MODEL = {"size": 274_302_450, "parameter_size": "137M", "quantization_level": "F16"}


class PageNotFound(ApiError):
    """A path Ollama does not serve: 404 with a plain-text body, as its router answers."""

    status = 404
    type = "invalid_request_error"

    def __init__(self) -> None:
        super().__init__(PAGE_NOT_FOUND)


def model_not_found(model: str) -> NotFound:
    """Ollama's answer for a model it has not pulled."""
    return NotFound(f'model "{model}" not found, try pulling it first', code="model_not_found")


class OllamaFlavor(Flavor):
    """The hooks that make the simulator answer as Ollama."""

    name = "ollama"
    openai_headers = False

    def __init__(self, models: tuple[str, ...]) -> None:
        self._tags = tags_body(models)
        self._version = orjson.dumps({"version": OLLAMA_VERSION})

    def adapt(self, parse: Parser) -> Parser:
        def parse_as_ollama(payload: dict[str, Any], makers: Makers) -> Answer:
            payload.pop("service_tier", None)  # Ollama ignores what it does not know
            asked = payload.get("model")
            if isinstance(asked, str) and asked not in makers.catalog:
                payload["model"] = served_name(asked, makers.catalog)
            answer = parse(payload, makers)
            if isinstance(answer, ChatAnswer):
                answer.echo_tier = False
                answer.fingerprint = SYSTEM_FINGERPRINT
            elif isinstance(answer, ResponseAnswer):
                answer.echo_tier = False
            if isinstance(asked, str) and isinstance(
                answer, ChatAnswer | ResponseAnswer | EmbeddingAnswer
            ):
                answer.model = asked  # as asked, tag or not, as Ollama echoes it
            return answer

        return parse_as_ollama

    def error_body(self, error: ApiError) -> tuple[FixedHeaders, bytes]:
        if isinstance(error, PageNotFound):
            return _TEXT_HEADERS, PAGE_NOT_FOUND.encode()
        return JSON_HEADERS, orjson.dumps({"error": error.message})

    def fault_error(self, rule: FaultRule, *, request_limit: int) -> ApiError:
        error = rule.error(request_limit=request_limit)
        message = rule.message or _FAULT_MESSAGES.get(error.status, error.message)
        return ApiError(message, status=error.status, error_type=error.type, code=error.code)

    def serves(self, path: str) -> bool:
        return not path.startswith(_OPENAI_ONLY_PREFIXES)

    def no_route(self, method: str, path: str) -> ApiError:
        return PageNotFound()

    def static_routes(self) -> dict[str, bytes]:
        return {"/api/tags": self._tags, "/api/version": self._version}


def served_name(asked: str, catalog: ModelCatalog) -> str:
    """The catalog's name for ``asked``, which names it with or without ``:latest``; raises
    Ollama's 404 if it names no model the catalog has."""
    for name in (asked.removesuffix(_LATEST), asked + _LATEST):
        if name in catalog:
            return name
    raise model_not_found(asked)


def tag_name(model: str) -> str:
    """The name Ollama lists a model under: with its tag, ``:latest`` if it has none."""
    return model if ":" in model else model + _LATEST


def tags_body(models: tuple[str, ...]) -> bytes:
    """The ``GET /api/tags`` answer for ``models``."""
    return orjson.dumps({"models": [_tag_entry(model) for model in models]})


def _tag_entry(model: str) -> dict[str, Any]:
    name = tag_name(model)
    embedding = ModelCatalog.is_embedding(model)
    figures = _EMBEDDING_MODEL if embedding else _CHAT_MODEL
    match = re.match(r"[a-z]+", model.lower())
    family = "nomic-bert" if embedding else match.group() if match else "llama"
    return {
        "name": name,
        "model": name,
        "modified_at": _MODIFIED_AT,
        "size": figures["size"],
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": figures["parameter_size"],
            "quantization_level": figures["quantization_level"],
        },
    }
