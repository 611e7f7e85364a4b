"""``core.records.replaced`` copies the messages it is used on exactly as
``dataclasses.replace`` does, and refuses a field they do not have."""

from __future__ import annotations

import dataclasses

import pytest
from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.core.records import replaced
from llmspool.core.streams import create_memory_stream
from llmspool.messages import Abort, Answer, Call, Reply
from llmspool.policy.planner import TierPolicy
from llmspool.store.records import Caller
from opentelemetry.context import Context


@pytest.mark.parametrize("kind", [Call, Answer])
def test_the_messages_it_copies_are_all_set_by_their_init(kind: type) -> None:
    # What ``replaced`` skips: a field set elsewhere than ``__init__``, or a ``__post_init__``.
    assert all(field.init for field in dataclasses.fields(kind))
    assert not hasattr(kind, "__post_init__")
    assert kind.__slots__ == tuple(field.name for field in dataclasses.fields(kind))


def test_a_copy_is_what_dataclasses_replace_makes() -> None:
    replies, _out = create_memory_stream[Reply](1)
    call = Call("r-1", Endpoint.CHAT, "openai", "gpt-4o-mini", b"{}", False, TierPolicy(),
                Caller(1000, None), None, 1.0, Context(), replies, strip_usage_chunk=True)
    abort = Abort()
    copied = replaced(call, abort=abort, strip_usage_chunk=False)
    assert copied == dataclasses.replace(call, abort=abort, strip_usage_chunk=False)
    assert copied.abort is abort and copied.reply is replies and call.strip_usage_chunk
    answer = Answer(200, {"a": "b"}, b"{}", Tier.STANDARD, 5, 10, {}, usage=Usage(1, 0, 2, 0))
    copy = replaced(answer, headers={"c": "d"})
    assert copy == dataclasses.replace(answer, headers={"c": "d"})
    assert copy.usage == Usage(1, 0, 2, 0) and answer.headers == {"a": "b"}


def test_a_field_it_does_not_have_is_refused() -> None:
    answer = Answer(200, {}, b"{}", Tier.STANDARD, None)
    with pytest.raises(TypeError, match="no field colour"):
        replaced(answer, colour="blue")
