"""A cascade (``[operations.NAME] cascade``): the cheaper model first, the chosen one if need be.

For a whole (not streamed) chat completion of an operation with a cascade, the front door
first sends the request to the cascade's ``first`` model. Its answer is kept when it passes the
checks (``llmspool.policy.model_choice.ModelChooser.accepts``); otherwise, or when that call
fails, the request goes to the model it was going to (the one asked for, or its route's), with
the time left before its deadline and under the same budgets.

Both calls are in the ledger, and their bills make the request's saving come out right. The
verdict is taken where the first call is billed (the dispatcher runs ``Call.cascade_check``):
a kept answer's list price is the model the request asked for (source ``routing``: what the
cascade saved), an answer not kept is routing's overhead (list price 0: its whole cost is
routing's loss), and the second call is billed as any call, so the saving of an escalated
request is minus the first call's cost. A streamed request is not cascaded
(its answer would have to be held back whole to be checked), nor one a ``route`` rule sent to
its model (the rule decided): those go to their model directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

import orjson
from starlette.requests import Request

from llmspool.core.calls import Endpoint
from llmspool.core.config.routes import CascadeConfig
from llmspool.core.streams import MemoryReceiveStream, create_memory_stream
from llmspool.messages import Abort, Answer, Call, Failure, Reply
from llmspool.policy.model_choice import ModelChooser, Verdict
from llmspool.policy.routing import ModelRouter
from llmspool.server.first_reply import StopClock, first_reply

HEADER = "x-llmspool-cascade"

Submit = Callable[[Call, MemoryReceiveStream[Reply]], Awaitable[None]]


class Cascaded(NamedTuple):
    """What answers the request: the call whose reply it is, its first reply, the rest of its
    replies, and the ``x-llmspool-cascade`` header's value."""

    call: Call
    first: Reply
    replies: MemoryReceiveStream[Reply]
    outcome: str


class Cascade:
    """Runs an operation's cascade for the front door: which calls it applies to, and the
    cheaper call, then the request's own when the cheaper answer is not kept."""

    def __init__(self, chooser: ModelChooser, router: ModelRouter, submit: Submit,
                 stop: StopClock) -> None:
        self._chooser = chooser
        self._router = router
        self._submit = submit
        self._stop = stop

    def applies(self, call: Call) -> CascadeConfig | None:
        """The cascade ``call`` goes through (None: none, a stream, or already the cheap
        model)."""
        config = self._chooser.cascade(call.operation)
        if config is None or call.stream or call.endpoint is not Endpoint.CHAT:
            return None
        return None if self._router.resolve(config.first) == (call.provider, call.model) \
            else config

    async def run(self, request: Request, call: Call, replies: MemoryReceiveStream[Reply],
                  config: CascadeConfig) -> Cascaded:
        """Answer ``call`` through the cascade; ``call`` and ``replies`` are sent on only when
        the cheaper model's answer is not kept (and closed when it is)."""
        provider, model = self._router.resolve(config.first)
        # A copy: ``call`` itself is sent on, unchanged, when the cheap answer is not kept.
        body = dict(call.document) if call.document is not None else orjson.loads(call.body)
        asked = dict(body)
        body["model"] = model
        cheap_in, cheap_out = create_memory_stream[Reply](1)
        operation = call.operation

        def check(answer: Mapping[str, Any]) -> Verdict:
            return self._chooser.accepts(config, answer, asked, operation)

        cheap = dataclasses.replace(
            call, request_id=f"{call.request_id}-cascade", provider=provider, model=model,
            body=orjson.dumps(body), document=body, reply=cheap_in, abort=Abort(), cache=None,
            routed_from=call.routed_from or (call.provider, call.model), cascade_check=check)
        try:
            await self._submit(cheap, cheap_out)
            first = await first_reply(request, cheap, cheap_out, self._stop)
        except BaseException:  # the client left, or the daemon is stopping: nothing more
            call.reply.close()
            replies.close()
            raise
        finally:
            cheap_out.close()
        verdict = _verdict(config, first)
        if verdict.accepted:
            call.reply.close()
            replies.close()
            return Cascaded(cheap, first, cheap_out, f"accepted ({model})")
        await self._submit(call, replies)
        answer = await first_reply(request, call, replies, self._stop)
        return Cascaded(call, answer, replies, f"escalated: {verdict.reason}")


def _verdict(config: CascadeConfig, first: Reply) -> Verdict:
    """The dispatcher's verdict on the first call's answer, or why there is none to keep."""
    if isinstance(first, Failure):
        return Verdict(False, f"{config.first} failed ({first.error.message})")
    if not isinstance(first, Answer):
        return Verdict(False, f"{config.first} answered as a stream")
    if first.status != 200 or first.verdict is None:
        return Verdict(False, f"{config.first} answered HTTP {first.status}")
    return first.verdict
