"""A chat call with a cache plan, made in process, for the tests of the response cache's
parts (flights, the actor's shortcut, a fleet's flights): the call and the receive end of its
reply stream."""

from __future__ import annotations

from llmspool.core.calls import Endpoint
from llmspool.core.streams import MemoryReceiveStream, create_memory_stream
from llmspool.messages import Call, Reply
from llmspool.policy.cache_keys import CachePlan
from llmspool.policy.planner import TierPolicy
from llmspool.store.records import Caller
from opentelemetry.context import Context


def cached_call(request_id: str, key: bytes) -> tuple[Call, MemoryReceiveStream[Reply]]:
    """A non-streamed chat call for gpt-4o-mini, cached under ``key`` for a minute, shared."""
    reply_in, reply_out = create_memory_stream[Reply](1)
    return Call(
        request_id=request_id, endpoint=Endpoint.CHAT, provider="openai", model="gpt-4o-mini",
        body=b"{}", stream=False, policy=TierPolicy(), caller=Caller(), operation=None,
        received_at=0.0, trace=Context(), reply=reply_in,
        cache=CachePlan(key, 60.0, "shared"),
    ), reply_out
