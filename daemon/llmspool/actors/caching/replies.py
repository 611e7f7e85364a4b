"""Answering a call from a cached or shared answer: its replies (``x-llmspool-cache``), and
its ledger entry, sent to the ledger before the replies go out or handed over with them."""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import anyio
from anyio.abc import TaskGroup

from llmspool.actors.caching.write_behind import WriteBehind
from llmspool.cache.answers import ledger_entry, replies_for, would_have_cost
from llmspool.cache.store import CachedAnswer, Corrupt
from llmspool.core.streams import MemorySendStream
from llmspool.messages import Answer, Call, Reply
from llmspool.policy.planner import Planner
from llmspool.store.records import Settled

log = logging.getLogger("llmspool.actors.response_cache")  # the name it always logged under

GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError)


class Replier:
    """Answers calls from answers, recording what each would have cost."""

    def __init__(self, planner: Planner, ledger: MemorySendStream[Settled],
                 writes: WriteBehind) -> None:
        self._planner = planner
        self._ledger = ledger
        self._writes = writes

    def answer(self, call: Call, answer: CachedAnswer, how: str, group: TaskGroup) -> bool:
        """Answer ``call`` from ``answer`` (``how``: hit, shared); False if the answer turned
        out to be unreadable (it is dropped from the cache)."""
        would_have = would_have_cost(self._planner, call, answer.usage)
        try:
            replies = replies_for(call, answer, how, would_have)
        except Corrupt as bad:
            self._writes.corrupt(bad.entry_id)
            return False
        entry = ledger_entry(call, "cache" if how == "hit" else "dedup", would_have,
                             self._planner)
        send_all(call, self.settle(call, replies, entry, group))
        return True

    def answer_near(self, call: Call, found: CachedAnswer, similarity: float,
                    group: TaskGroup) -> bool:
        """Answer ``call`` from the entry its wording matched; False if it is unreadable."""
        would_have = would_have_cost(self._planner, call, found.usage)
        try:
            replies = replies_for(call, found, "hit", would_have, similarity=similarity)
        except Corrupt:
            return False
        send_all(call, self.settle(call, replies,
                                   ledger_entry(call, "cache", would_have, self._planner),
                                   group))
        return True

    def settle(self, call: Call, replies: list[Reply], entry: Settled,
               group: TaskGroup) -> list[Reply]:
        """Send ``entry`` to the ledger before the replies go out (a client that asks for its
        costs right after sees it), or, for a job's call, hand it over with the answer."""
        if call.settle_with_result:
            return [dataclasses.replace(r, settled=entry) if isinstance(r, Answer) else r
                    for r in replies]
        self._record(entry, group)
        return replies

    def _record(self, settled: Settled, group: TaskGroup) -> None:
        try:
            self._ledger.send_nowait(settled)
        except anyio.WouldBlock:
            group.start_soon(self._ledger.send, settled)
        except GONE:
            log.warning("the ledger is gone; %s not recorded", settled.request_id)


def send_all(call: Call, replies: list[Reply]) -> None:
    with contextlib.suppress(anyio.WouldBlock, *GONE):  # the client is gone
        for reply in replies:
            call.reply.send_nowait(reply)
    call.reply.close()
