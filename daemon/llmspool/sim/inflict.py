"""Faults applied to a request: what a picked fault rule does to its answer.

``inflict`` carries out a rule that is not a stream cut (an error, a dropped connection, a hang,
a slow answer, a ``reset_midway`` cut; stream cuts are the stream's to apply, see ``generate``).
``spoil`` makes a chat completion's body the poor answer of a ``refusal`` or ``truncated`` rule.
``plain_fault`` lets the rules with a ``path`` pick for the endpoints that are not about a model
(files, batches, models...), after routing and before the endpoint runs.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from llmspool.core.errors import PayloadTooLarge
from llmspool.sim.asgi import BodyTooLarge, Headers, Message, Receive, drop_connection, read_body
from llmspool.sim.exchange import Exchange
from llmspool.sim.faults import REFUSAL_TEXT, FaultKind, FaultRule
from llmspool.sim.files import MAX_UPLOAD_BYTES


async def inflict(exchange: Exchange, rule: FaultRule) -> bool:
    """Apply a fault that is not a stream cut; ``True`` if the request goes on to answer."""
    state = exchange.state
    if rule.is_error:
        extra: Headers = []
        exhausted: float | None = None
        if rule.retry_after is not None:
            seconds = state.real(rule.retry_after)
            extra = [
                (b"retry-after", str(max(1, math.ceil(seconds))).encode()),
                (b"retry-after-ms", str(round(seconds * 1000)).encode()),
            ]
            if rule.kind is FaultKind.RATE_LIMIT:
                exhausted = seconds
        error = state.flavor.fault_error(rule, request_limit=state.ratelimit.request_limit)
        await exchange.reply_error(error, extra=extra, requests_exhausted=exhausted)
        return False
    if rule.kind is FaultKind.DROP:
        await drop_connection(exchange.send, exchange.receive, response_started=False)
        return False
    if rule.kind is FaultKind.HANG:
        if await exchange.pause(state.real(rule.delay or 0.0)):
            # Nobody waits forever: after the bound, end it as a dead upstream would.
            await drop_connection(exchange.send, exchange.receive, response_started=False)
        return False
    if rule.kind is FaultKind.SLOW:
        return await exchange.pause(state.real(rule.delay or 0.0))
    if rule.kind is FaultKind.RESET_MIDWAY:
        exchange.cut = True
    return True


def spoil(body: bytes, rule: FaultRule) -> bytes:
    """The chat completion ``body`` as a ``refusal`` or ``truncated`` rule makes it: every
    choice refused, or cut to about half with ``finish_reason`` ``"length"``. The rest (id,
    model, usage, service tier...) stays as it was: a poor answer is billed like a good one.

    Done on the finished body rather than in ``chat``: the fault path pays the extra JSON
    round trip, the answers without a fault pay nothing."""
    completion: dict[str, Any] = orjson.loads(body)
    for choice in completion["choices"]:
        message = choice["message"]
        if rule.kind is FaultKind.REFUSAL:
            message["content"] = None
            message["refusal"] = rule.message or REFUSAL_TEXT
            # A refusal does nothing, so it calls nothing.
            message.pop("tool_calls", None)
            choice["finish_reason"] = "stop"
            continue
        if isinstance(message["content"], str):
            message["content"] = _half(message["content"])
        for call in message.get("tool_calls", ()):
            call["function"]["arguments"] = _half(call["function"]["arguments"])
        choice["finish_reason"] = "length"
    return orjson.dumps(completion)


def _half(text: str) -> str:
    """The first half of ``text``: what a model stopped halfway would have said."""
    return text[: len(text) // 2]


async def plain_fault(exchange: Exchange) -> bool:
    """Let the fault rules with a ``path`` pick for an endpoint that is not about a model
    (files, batches...); ``True`` if the endpoint goes on to answer."""
    state = exchange.state
    rule = state.faults.pick(exchange.path, None, None, False, method=exchange.method)
    if rule is None:
        return True
    state.stats.faults[rule.kind.value] += 1
    if rule.kind is not FaultKind.SLOW:
        return await inflict(exchange, rule)
    # The wait watches for the client leaving, which reads the request: read it first,
    # and hand it to the endpoint afterwards.
    try:
        body = await read_body(exchange.receive, MAX_UPLOAD_BYTES)
    except BodyTooLarge:
        raise PayloadTooLarge(
            f"The request body is over {MAX_UPLOAD_BYTES} bytes.", code="payload_too_large"
        ) from None
    if body is None:
        state.stats.client_closed += 1
        return False
    if not await inflict(exchange, rule):
        return False
    exchange.receive = _replay(body, exchange.receive)
    return True


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
