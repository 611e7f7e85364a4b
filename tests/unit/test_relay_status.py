"""A provider plugin's answer status is checked before the relay reads it: one that is not an
HTTP status code fails the call as a bad upstream answer that names the plugin's provider (a
502 the caller can act on), not as an internal error, and the attempt is billed at its
reservation, as an answer that broke; an ``int`` subclass such as
``http.HTTPStatus`` is taken as its number."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus

import anyio
import orjson
import pytest
from llmspool.actors.dispatch.relay import Relay
from llmspool.actors.dispatch.targets import Target
from llmspool.core.calls import Endpoint, Tier
from llmspool.core.clock import SYSTEM_CLOCK
from llmspool.core.config.sections import BreakerConfig, ProviderConfig
from llmspool.core.errors import BadUpstreamAnswer
from llmspool.core.provider import ProviderSettings, UpstreamRequest
from llmspool.core.streams import create_memory_stream
from llmspool.messages import Answer, Reply
from llmspool.resilience.breaker import CircuitBreaker
from llmspool.resilience.limits import RateLimits
from llmspool.store.records import Settled
from llmspool.testing.provider import FakeAnswer, FakeProvider, FakeUpstream
from opentelemetry.trace import INVALID_SPAN

from tests.unit.test_dispatcher_billing import accounts, call

MODEL = "gpt-4o-mini"
BODY = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})


class _Answering(FakeProvider):
    """The fake provider, answering every call with ``status``."""

    status: object = 200

    @asynccontextmanager
    async def send(self, request: UpstreamRequest) -> AsyncIterator[FakeAnswer]:
        answer = self.upstream.answer(Endpoint.CHAT, orjson.loads(request.body), request.tier)
        yield FakeAnswer(self.status, orjson.dumps(answer),  # type: ignore[arg-type]
                         {"content-type": "application/json"})


async def _send(status: object, settled: list[Settled] | None = None
                ) -> tuple[Reply | None, list[Settled]]:
    """What the caller is answered, and what is settled (also kept in ``settled``, for a
    send that raises), when the plugin says ``status``."""
    ledger_in, ledger_out = create_memory_stream[Settled](4)
    reply_in, reply_out = create_memory_stream[Reply](4)
    provider = _Answering(ProviderSettings("openai", ProviderConfig(), "key"), FakeUpstream())
    provider.status = status
    limits = RateLimits({})
    relay = Relay({"openai": provider}, limits, {}, accounts(ledger_in), SYSTEM_CLOCK)
    the_call = dataclasses.replace(call(MODEL), body=BODY, reply=reply_in)
    target = Target("openai", MODEL, Tier.STANDARD, BODY,
                    CircuitBreaker("openai", Tier.STANDARD, BreakerConfig(), lambda _t: None),
                    probe=False, time_limit=30.0, timeout_name="timeout")
    settled = [] if settled is None else settled
    with ledger_in, ledger_out, reply_in, reply_out:
        permit = await limits.acquire("openai", MODEL, 0, interactive=True)
        try:
            await relay.send(the_call, target, INVALID_SPAN, INVALID_SPAN, permit)
        finally:
            while True:
                try:
                    settled.append(ledger_out.receive_nowait())
                except anyio.WouldBlock:
                    break
        try:
            reply: Reply | None = reply_out.receive_nowait()
        except anyio.WouldBlock:
            reply = None
    return reply, settled


@pytest.mark.parametrize("status", ["200", None, 200.0, True, 0, 1000],
                         ids=["a string", "none", "a float", "a bool", "0", "1000"])
def test_a_status_that_is_not_an_http_status_fails_the_call_naming_the_provider(
        status: object) -> None:
    settled: list[Settled] = []
    with pytest.raises(BadUpstreamAnswer) as raised:
        anyio.run(_send, status, settled)
    assert raised.value.status == 502
    assert raised.value.code == "bad_upstream_status"
    assert f"openai's provider plugin answered with status {status!r}" in raised.value.message
    # Sent and answered, its cost unknown: billed once, at the reservation, as broken.
    [broken] = settled
    assert broken.request_id == f"{call(MODEL).request_id}~1"
    assert broken.cost_picodollars > 0


def test_an_http_status_member_is_taken_as_its_number() -> None:
    reply, settled = anyio.run(_send, HTTPStatus.OK)
    assert isinstance(reply, Answer) and reply.status == 200
    assert [entry.request_id for entry in settled] == [call(MODEL).request_id]
