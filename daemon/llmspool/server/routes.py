"""The Starlette app on the socket: the OpenAI-compatible endpoints and the daemon's own.

Every error, including unknown paths and wrong methods, answers in OpenAI's error shape
``{"error": {"message", "type", "param", "code"}}``, so the official clients raise their usual
exceptions. An unexpected exception is logged and answered 500; it never stops the daemon.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from llmspool import __version__
from llmspool.core.calls import Endpoint
from llmspool.core.errors import ApiError, MethodNotAllowed, NotFound
from llmspool.core.streams import MemoryReceiveStream, MemorySendStream, create_memory_stream
from llmspool.messages import StatusQuery
from llmspool.policy.routing import ModelRouter
from llmspool.server.body_budget import BUDGET, TAKEN, BodyBudget
from llmspool.server.forwarding import Forwarder, error_response
from llmspool.server.indexed_headers import ForwardedRequest

log = logging.getLogger(__name__)

QUERY_TIMEOUT = 5.0
Question = TypeVar("Question")
Snapshot = TypeVar("Snapshot")
# An actor's inbox, as far as ``/v1/status`` asks it: its snapshot's type is the actor's own.
StatusTarget = MemorySendStream[StatusQuery[Any]]


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type="application/json")


async def ask_status(target: MemorySendStream[StatusQuery[Snapshot]]) -> Snapshot:
    """Ask an actor for its status snapshot and wait (bounded) for it."""
    answer_in, answer_out = create_memory_stream[Snapshot](1)
    with answer_in, answer_out:
        return await ask(target, StatusQuery(answer_in), answer_out)


async def ask(target: MemorySendStream[Question], question: Question,
              answers: MemoryReceiveStream[Snapshot]) -> Snapshot:
    """Send an actor ``question`` and wait (bounded) for its answer on ``answers`` (the other
    end of the question's reply stream)."""
    with anyio.fail_after(QUERY_TIMEOUT):
        await target.send(question)
        return await answers.receive()


def build_app(
    forwarder: Forwarder,
    router: ModelRouter,
    actors: Mapping[str, StatusTarget],
    *,
    started_at: float,
    bodies: BodyBudget,
    extra_routes: Sequence[BaseRoute] = (),
) -> FrontDoorApp:
    """The front door's ASGI app. ``actors`` are the inboxes ``/v1/status`` asks, by name;
    ``bodies`` bounds the request bodies it holds in memory at once."""

    def forward(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint_handler(request: Request) -> Response:
            return await forwarder.handle(request, endpoint)

        return endpoint_handler

    created = int(started_at)

    async def list_models(_request: Request) -> Response:
        return json_response({
            "object": "list",
            "data": [_model_object(model, owner, created) for model, owner in router.models()],
        })

    async def get_model(request: Request) -> Response:
        model_id = request.path_params["model"]
        provider, model = router.resolve(model_id)
        return json_response(_model_object(model_id if model == model_id else model, provider,
                                           created))

    async def healthz(_request: Request) -> Response:
        return json_response({"status": "ok", "version": __version__})

    async def status(_request: Request) -> Response:
        report: dict[str, Any] = {
            "version": __version__,
            "uptime_s": round(time.time() - started_at, 3),
        }
        for name, inbox in actors.items():
            report[name] = await ask_status(inbox)
        report["request_bodies"] = bodies.snapshot()
        return json_response(report)

    routes = [
        Route(Endpoint.CHAT.value, forward(Endpoint.CHAT), methods=["POST"]),
        Route(Endpoint.RESPONSES.value, forward(Endpoint.RESPONSES), methods=["POST"]),
        Route(Endpoint.EMBEDDINGS.value, forward(Endpoint.EMBEDDINGS), methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/v1/status", status, methods=["GET"]),
        *extra_routes,
    ]
    everything_else = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_exception,
            Exception: _unexpected,
        },
    )
    return FrontDoorApp(forwarder, everything_else, bodies)


_FORWARDED = {endpoint.value: endpoint for endpoint in Endpoint}


class FrontDoorApp:
    """The ASGI app: forwarding requests go straight to the forwarder, the rest to Starlette.

    The forwarding endpoints are the hot path; skipping Starlette's middleware and router for
    them saves a few dozen microseconds a call (measured with py-spy under h2load). Their errors
    are handled by the forwarder itself, in the same OpenAI shape.
    """

    def __init__(self, forwarder: Forwarder, everything_else: Starlette,
                 bodies: BodyBudget) -> None:
        self._forwarder = forwarder
        self._everything_else = everything_else
        self._bodies = bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # What the request's body takes of the budget, it holds until its answer is sent.
        scope[BUDGET] = self._bodies
        try:
            endpoint = _FORWARDED.get(scope["path"]) if scope["type"] == "http" else None
            if endpoint is None or scope["method"] != "POST":
                await self._everything_else(scope, receive, send)
                return
            request = ForwardedRequest(scope, receive)
            try:
                response = await self._forwarder.handle(request, endpoint)
            except ClientDisconnect:
                return  # gone before its body arrived: nobody to answer
            except Exception as exc:
                response = await _unexpected(request, exc)
            await response(scope, receive, send)
        finally:
            if TAKEN in scope:
                self._bodies.give_back(scope)


def _model_object(model: str, provider: str, created: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": provider}


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound(
            f"unknown path {request.method} {request.url.path}; llmspool serves "
            "/v1/chat/completions, /v1/responses, /v1/embeddings, /v1/models, /v1/jobs, "
            "/v1/files, /v1/batches, /v1/status, /v1/ledger and /healthz",
            code="unknown_url",
        ))
    if exc.status_code == 405:
        return error_response(MethodNotAllowed(
            f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed"
        ))
    return error_response(ApiError(str(exc.detail), status=exc.status_code,
                                   error_type="invalid_request_error"))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error answering %s %s", request.method, request.url.path)
    return error_response(ApiError(
        f"llmspool hit an unexpected error ({type(exc).__name__}); it is logged, and the daemon "
        "keeps serving",
        code="internal_error",
    ))
