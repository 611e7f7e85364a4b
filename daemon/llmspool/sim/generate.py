"""The generation endpoints (chat, responses, embeddings, Anthropic's messages): one answer each.

``generator`` turns a flavor-adapted parser into the endpoint's handler. For each request, in
order: read and validate the body, count it, refuse a flex request while flex capacity is out,
charge it to its model's rate limits, let the fault rules pick (a stream cut is applied by the
stream itself, a poor answer, ``refusal`` or ``truncated``, by ``inflict.spoil`` on the body,
the others by ``inflict``), wait the configured latency, then answer whole or as a paced
stream, and log the call with the tokens billed (``request_log``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from llmspool.core.errors import ApiError
from llmspool.sim.answer import Answer, Makers
from llmspool.sim.asgi import SSE_HEADERS, drop_connection
from llmspool.sim.exchange import Exchange, Handler
from llmspool.sim.faults import ANSWER_KINDS, FaultKind, FaultRule
from llmspool.sim.flex import FLEX, resource_unavailable_error
from llmspool.sim.inflict import inflict, spoil
from llmspool.sim.request_log import tier_of
from llmspool.sim.state import SimState

Parser = Callable[[dict[str, Any], Makers], Answer]


def generator(state: SimState, parse: Parser) -> Handler:
    """The handler of a generation endpoint whose bodies ``parse`` reads (adapted to the
    flavor)."""
    parse = state.flavor.adapt(parse)

    async def handle(exchange: Exchange) -> None:
        payload = await exchange.read_json()
        if payload is None:
            state.stats.client_closed += 1
            return
        answer = parse(payload, state.makers)
        exchange.model = answer.model
        state.stats.by_model[answer.model] += 1
        await _answer(state, exchange, answer)

    return handle


async def _answer(state: SimState, exchange: Exchange, answer: Answer) -> None:
    stats = state.stats
    flex = answer.tier == FLEX
    if flex:
        stats.flex_requests += 1
        if state.flex.refuses():
            # No capacity is not a rate limit: no retry hint, no request counted.
            stats.flex_unavailable += 1
            await exchange.reply_error(resource_unavailable_error())
            return
    # Charged at arrival: the prompt and the most output it asks for (see ``ratelimit``).
    tokens = answer.input_tokens + answer.billed_output_tokens
    refusal = state.ratelimit.admit(answer.model, tokens)
    if refusal is not None:
        stats.rate_limited(answer.model, refusal.kind)
        await exchange.reply_error(refusal)
        return
    stats.admitted(answer.model, tokens)
    cut_after: int | None = None
    cut_error: ApiError | None = None
    poor: FaultRule | None = None
    rule = state.faults.pick(
        exchange.path,
        answer.model,
        answer.tier,
        answer.stream,
        method=exchange.method,
        body=exchange.body,
    )
    if rule is not None:
        stats.faults[rule.kind.value] += 1
        if rule.kind in ANSWER_KINDS:
            poor = rule
        elif rule.kind is FaultKind.STREAM_CUT:
            cut_after = rule.after_chunks
            if rule.status is not None:
                error = state.flavor.fault_error(rule, request_limit=state.ratelimit.request_limit)
                cut_error = state.flavor.translate(error, exchange.request_id.decode())
        elif not await inflict(exchange, rule):
            return
    delay = state.config.latency
    per_token = state.config.latency_per_token
    if flex:
        delay += state.flex_pacing.extra_wait()
        per_token = state.flex_pacing.per_token
    if not answer.stream:
        delay += per_token * answer.output_tokens
    if delay > 0 and not await exchange.pause(state.real(delay)):
        return
    stats.served(answer.tier, answer.input_tokens, answer.billed_output_tokens)
    if answer.stream:
        await _stream(state, exchange, answer, cut_after, state.real(per_token), cut_error)
        return
    body = answer.body() if poor is None else spoil(answer.body(), poor)
    try:
        await exchange.reply(200, body)
    finally:
        # Cut or not, the whole answer was generated: all of it is billed.
        _log_call(state, exchange, answer, answer.billed_output_tokens, complete=not exchange.cut)


def _log_call(
    state: SimState, exchange: Exchange, answer: Answer, output_tokens: int, *, complete: bool
) -> None:
    """Log a served generation in the request log (``request_log``)."""
    state.request_log.add(
        request_id=exchange.client_request_id(),
        endpoint=exchange.path,
        model=answer.model,
        tier=tier_of(answer.tier),
        stream=answer.stream,
        input_tokens=answer.input_tokens,
        output_tokens=output_tokens,
        complete=complete,
    )


async def _stream(
    state: SimState,
    exchange: Exchange,
    answer: Answer,
    cut_after: int | None,
    interval: float,
    cut_error: ApiError | None = None,
) -> None:
    """Send ``answer``'s events; a ``stream_cut`` fault stops them before event
    ``cut_after``: dropping the connection, or with ``cut_error`` ending the stream with
    that error's event (``Flavor.stream_error``)."""
    send = exchange.send
    stats = state.stats
    events = list(answer.events())
    last = len(events) - 1
    # A cut always happens before the terminator, so the client always notices it.
    cut = min(cut_after, last) if cut_after is not None else -1
    stats.by_status[200] += 1
    stats.streams += 1
    stats.open_streams += 1
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
                    body = state.flavor.stream_error(cut_error)
                    await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            if paced and interval > 0:
                next_at += interval
                wait = next_at - anyio.current_time()
                if wait > 0 and not await exchange.pause(wait, response_started=True):
                    return
            await send({"type": "http.response.body", "body": data, "more_body": index < last})
            if paced:
                generated += 1
        complete = True
    finally:
        stats.open_streams -= 1
        billed = answer.billed_output_tokens
        _log_call(
            state,
            exchange,
            answer,
            billed if complete else min(generated, billed),
            complete=complete,
        )
