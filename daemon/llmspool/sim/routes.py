"""The route table: which handler answers each method and path, under the app's flavor.

``Router`` holds the fixed paths (generation endpoints, models, files, batches, the control
endpoints of ``control``, the Anthropic flavor's own routes, the flavor's static answers) and
finds the paths with an id in them (a model, a file, a batch, a message batch). It also knows
which handlers are generation endpoints (``model_handlers``): those pick their faults
themselves. ``stats_path`` is the path as counted in the stats.
"""

from __future__ import annotations

from llmspool.core.errors import MethodNotAllowed
from llmspool.sim import control, resources
from llmspool.sim.anthropic import BATCHES_PATH as MESSAGE_BATCHES_PATH
from llmspool.sim.anthropic import COUNT_TOKENS_PATH, MESSAGES_PATH, AnthropicFlavor
from llmspool.sim.anthropic_batches import BATCHES_PREFIX as MESSAGE_BATCHES_PREFIX
from llmspool.sim.chat import parse_chat
from llmspool.sim.embeddings import parse_embedding_request
from llmspool.sim.exchange import Exchange, Handler
from llmspool.sim.generate import Parser, generator
from llmspool.sim.responses import parse_response_request
from llmspool.sim.state import SimState

Methods = dict[str, Handler]

_MODELS_PREFIX = resources.MODELS_PREFIX
_FILES_PREFIX = "/v1/files/"
_BATCHES_PREFIX = "/v1/batches/"
# Paths with an id are counted in the stats under a template ("/v1/batches/{batch_id}"), so
# that polling many batches does not make one entry per batch.
_ID_TEMPLATES = (
    (_FILES_PREFIX, "{file_id}"),
    (_BATCHES_PREFIX, "{batch_id}"),
    (MESSAGE_BATCHES_PREFIX, "{message_batch_id}"),
)
_MODEL_ITEM: Methods = {"GET": resources.retrieve_model}
_FILE_ITEM: Methods = {"GET": resources.retrieve_file, "DELETE": resources.delete_file}
_FILE_ACTIONS: dict[str, Methods] = {"content": {"GET": resources.file_content}}
_BATCH_ITEM: Methods = {"GET": resources.retrieve_batch}
_BATCH_ACTIONS: dict[str, Methods] = {"cancel": {"POST": resources.cancel_batch}}
_MESSAGE_BATCH_ITEM: Methods = {
    "GET": resources.retrieve_message_batch,
    "DELETE": resources.delete_message_batch,
}
_MESSAGE_BATCH_ACTIONS: dict[str, Methods] = {
    "cancel": {"POST": resources.cancel_message_batch},
    "results": {"GET": resources.message_batch_results},
}


class Router:
    """The handler of each method and path of one simulator."""

    def __init__(self, state: SimState) -> None:
        self._flavor = state.flavor
        self._message_batches = state.message_batches is not None
        self.model_handlers: set[Handler] = set()
        """The handlers of the model endpoints, which pick their faults themselves."""
        self._routes: dict[str, Methods] = {
            "/v1/chat/completions": {"POST": self._generator(state, parse_chat)},
            "/v1/responses": {"POST": self._generator(state, parse_response_request)},
            "/v1/embeddings": {"POST": self._generator(state, parse_embedding_request)},
            "/v1/models": {"GET": resources.list_models},
            "/v1/files": {"GET": resources.list_files, "POST": resources.upload_file},
            "/v1/batches": {"GET": resources.list_batches, "POST": resources.create_batch},
            **control.ROUTES,
        }
        flavor = self._flavor
        if isinstance(flavor, AnthropicFlavor):
            self._routes[MESSAGES_PATH] = {"POST": self._generator(state, flavor.messages.parse)}
            self._routes[COUNT_TOKENS_PATH] = {"POST": resources.count_tokens}
            self._routes[MESSAGE_BATCHES_PATH] = {
                "GET": resources.list_message_batches,
                "POST": resources.create_message_batch,
            }
        for path, body in flavor.static_routes().items():
            self._routes[path] = {"GET": _fixed_answer(body)}

    def _generator(self, state: SimState, parse: Parser) -> Handler:
        handler = generator(state, parse)
        self.model_handlers.add(handler)
        return handler

    def route(self, exchange: Exchange) -> Handler:
        """The handler of the request's method and path; raises the flavor's 404, or 405."""
        methods = self._routes.get(exchange.path) or self._resource_routes(exchange.path)
        if methods is None or not self._flavor.serves(exchange.path):
            raise self._flavor.no_route(exchange.method, exchange.path)
        handler = methods.get(exchange.method)
        if handler is None:
            raise MethodNotAllowed(
                f"Invalid method for URL ({exchange.method} {exchange.path}); "
                f"use {' or '.join(methods)}."
            )
        return handler

    def _resource_routes(self, path: str) -> Methods | None:
        """The methods of a path with an id in it (a model, a file, a batch)."""
        if path.startswith(_MODELS_PREFIX):
            return _MODEL_ITEM
        if path.startswith(_FILES_PREFIX):
            return _id_route(path[len(_FILES_PREFIX) :], _FILE_ITEM, _FILE_ACTIONS)
        if path.startswith(_BATCHES_PREFIX):
            return _id_route(path[len(_BATCHES_PREFIX) :], _BATCH_ITEM, _BATCH_ACTIONS)
        if self._message_batches and path.startswith(MESSAGE_BATCHES_PREFIX):
            return _id_route(
                path[len(MESSAGE_BATCHES_PREFIX) :], _MESSAGE_BATCH_ITEM, _MESSAGE_BATCH_ACTIONS
            )
        return None


def stats_path(path: str) -> str:
    """The path as counted in the stats: ids in file and batch paths become templates."""
    for prefix, template in _ID_TEMPLATES:
        if path.startswith(prefix):
            _, slash, rest = path[len(prefix) :].partition("/")
            return prefix + template + slash + rest
    return path


def _fixed_answer(body: bytes) -> Handler:
    """A handler that answers 200 with the JSON ``body``."""

    async def handle(exchange: Exchange) -> None:
        await exchange.reply(200, body)

    return handle


def _id_route(rest: str, item: Methods, actions: dict[str, Methods]) -> Methods | None:
    """The methods for ``{id}`` (``item``) or ``{id}/{action}``, after a collection's prefix."""
    identifier, slash, action = rest.partition("/")
    if not identifier:
        return None
    return actions.get(action) if slash else item
