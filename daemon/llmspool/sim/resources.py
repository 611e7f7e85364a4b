"""The endpoints about stored things: models, files, batches, Anthropic's message batches.

``/v1/models[/{id}]`` from the catalog, the Files API (``/v1/files``, kept in memory by
``files``), the Batch API (``/v1/batches``, moved through its statuses by the clock in
``batches``), and under the Anthropic flavor ``/v1/messages/count_tokens`` and the Message
Batches API (``anthropic_batches``). Each handler takes its request's ``Exchange``; ``routes``
says which answers which path.
"""

from __future__ import annotations

import time

from llmspool.core.errors import NotFound
from llmspool.sim import validate
from llmspool.sim.anthropic import AnthropicFlavor
from llmspool.sim.anthropic_batch_request import MAX_BATCH_BYTES as MAX_MESSAGE_BATCH_BYTES
from llmspool.sim.anthropic_batches import DEFAULT_LIST_LIMIT as DEFAULT_MESSAGE_BATCH_LIMIT
from llmspool.sim.anthropic_batches import MAX_LIST_LIMIT as MAX_MESSAGE_BATCH_LIMIT
from llmspool.sim.anthropic_batches import MessageBatchRegistry
from llmspool.sim.asgi import FixedHeaders
from llmspool.sim.batches import DEFAULT_LIST_LIMIT as DEFAULT_BATCH_LIMIT
from llmspool.sim.batches import MAX_LIST_LIMIT as MAX_BATCH_LIMIT
from llmspool.sim.exchange import Exchange
from llmspool.sim.files import MAX_LIST_LIMIT as MAX_FILE_LIMIT
from llmspool.sim.files import MAX_UPLOAD_BYTES, file_from_upload
from llmspool.sim.state import SimState
from llmspool.sim.upload import read_upload

MODELS_PREFIX = "/v1/models/"
_CONTENT_HEADERS: FixedHeaders = ((b"content-type", b"application/octet-stream"),)
_RESULTS_HEADERS: FixedHeaders = ((b"content-type", b"application/binary"),)

# -- Models ----------------------------------------------------------------------------------


async def list_models(exchange: Exchange) -> None:
    state = exchange.state
    await exchange.reply(200, state.flavor.models_body(state.makers.catalog))


async def retrieve_model(exchange: Exchange) -> None:
    state = exchange.state
    model = exchange.path[len(MODELS_PREFIX) :]
    body = state.flavor.model_body(state.makers.catalog, model)
    if body is None:
        raise NotFound(
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    await exchange.reply(200, body)


# -- Files API -------------------------------------------------------------------------------


async def upload_file(exchange: Exchange) -> None:
    state = exchange.state
    upload = await read_upload(exchange.receive, exchange.header(b"content-type"), MAX_UPLOAD_BYTES)
    if upload is None:
        state.stats.client_closed += 1
        return
    stored = file_from_upload(upload, state.makers.ids.make("file-"), int(time.time()))
    state.files.add(stored)
    state.stats.batches.files_uploaded += 1
    await exchange.reply_json(200, stored.to_json())


async def list_files(exchange: Exchange) -> None:
    state = exchange.state
    query = exchange.query()
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise validate.invalid("order", "Invalid 'order': expected 'asc' or 'desc'.")
    limit = _limit(query, MAX_FILE_LIMIT, MAX_FILE_LIMIT)
    state.batches.advance()  # Batches that ended by now have their result files listed.
    page = state.files.list_json(
        purpose=query.get("purpose"), limit=limit, order=order, after=query.get("after")
    )
    await exchange.reply_json(200, page)


async def retrieve_file(exchange: Exchange) -> None:
    await exchange.reply_json(200, exchange.state.files.get(exchange.path_id()).to_json())


async def delete_file(exchange: Exchange) -> None:
    await exchange.reply_json(200, exchange.state.files.delete(exchange.path_id()))


async def file_content(exchange: Exchange) -> None:
    state = exchange.state
    stored = state.files.get(exchange.path_id())
    state.stats.by_status[200] += 1
    await exchange.send_answer(200, stored.content, exchange.headers(_CONTENT_HEADERS))


# -- Batch API -------------------------------------------------------------------------------


async def create_batch(exchange: Exchange) -> None:
    payload = await exchange.read_json()
    if payload is None:
        exchange.state.stats.client_closed += 1
        return
    await exchange.reply_json(200, exchange.state.batches.create(payload))


async def retrieve_batch(exchange: Exchange) -> None:
    await exchange.reply_json(200, exchange.state.batches.retrieve(exchange.path_id()))


async def cancel_batch(exchange: Exchange) -> None:
    await exchange.reply_json(200, exchange.state.batches.cancel(exchange.path_id()))


async def list_batches(exchange: Exchange) -> None:
    query = exchange.query()
    limit = _limit(query, DEFAULT_BATCH_LIMIT, MAX_BATCH_LIMIT)
    await exchange.reply_json(
        200, exchange.state.batches.list_json(after=query.get("after"), limit=limit)
    )


# -- Anthropic's Message Batches API and token counting --------------------------------------


def _message_registry(state: SimState) -> MessageBatchRegistry:
    assert state.message_batches is not None  # routed only under the Anthropic flavor
    return state.message_batches


async def create_message_batch(exchange: Exchange) -> None:
    payload = await exchange.read_json(MAX_MESSAGE_BATCH_BYTES)
    if payload is None:
        exchange.state.stats.client_closed += 1
        return
    registry = _message_registry(exchange.state)
    await exchange.reply_json(200, registry.create_message_batch(payload, exchange.base_url()))


async def retrieve_message_batch(exchange: Exchange) -> None:
    registry = _message_registry(exchange.state)
    document = registry.retrieve_message_batch(exchange.message_batch_id(), exchange.base_url())
    await exchange.reply_json(200, document)


async def cancel_message_batch(exchange: Exchange) -> None:
    registry = _message_registry(exchange.state)
    document = registry.cancel_message_batch(exchange.message_batch_id(), exchange.base_url())
    await exchange.reply_json(200, document)


async def delete_message_batch(exchange: Exchange) -> None:
    registry = _message_registry(exchange.state)
    await exchange.reply_json(200, registry.delete(exchange.message_batch_id()))


async def message_batch_results(exchange: Exchange) -> None:
    state = exchange.state
    results = _message_registry(state).results(exchange.message_batch_id())
    state.stats.by_status[200] += 1
    await exchange.send_answer(200, results, exchange.headers(_RESULTS_HEADERS))


async def list_message_batches(exchange: Exchange) -> None:
    query = exchange.query()
    limit = _limit(query, DEFAULT_MESSAGE_BATCH_LIMIT, MAX_MESSAGE_BATCH_LIMIT)
    page = _message_registry(exchange.state).list_message_batches(
        limit=limit,
        after_id=query.get("after_id"),
        before_id=query.get("before_id"),
        base_url=exchange.base_url(),
    )
    await exchange.reply_json(200, page)


async def count_tokens(exchange: Exchange) -> None:
    state = exchange.state
    payload = await exchange.read_json()
    if payload is None:
        state.stats.client_closed += 1
        return
    assert isinstance(state.flavor, AnthropicFlavor)
    await exchange.reply_json(200, state.flavor.messages.count_tokens(payload, state.makers))


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
