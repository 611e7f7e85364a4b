"""How many bytes of request bodies the front door holds in memory at once, across connections.

``[daemon] max_body_size`` bounds one body, not many: 4,096 connections each sending a 32 MiB
chat body would have the daemon hold 128 GiB (twice that while each is joined), far past any
systemd ``MemoryMax``, and every call in flight would go down with it. ``BodyBudget`` bounds
them together (``[daemon] max_bodies_in_memory``):

- a body read into memory (``bodies.read_limited``: the forwarded calls, JSON jobs, batch
  creation, feedback) takes its size from the budget before it is read: its declared
  ``content-length``, or each chunk as it arrives when it has none. Uploads spooled to disk
  take nothing;
- without room, it waits, first come first served, while the daemon does not read it (the
  connection's flow control holds the client back), for up to ``[daemon] bodies_wait``; then
  503 ``bodies_memory_full`` with ``retry-after``. A body larger than the whole budget can
  never fit: 413 ``body_over_memory_budget`` at once, and so does a chunked body as soon as it
  grows past it;
- a chunked body part read goes first: it takes its next chunks while there is room, and is
  handed room before the bodies that hold none (the body ahead may be waiting for what it
  holds, and finishing it is what frees memory soonest);
- bodies part read can wait for each other: two chunked bodies, each holding half the budget
  and each needing more. Once every byte held is held by a body that waits, none can come
  back but by a timeout, so the last of them to wait is refused at once (503
  ``bodies_memory_full``), and what it held goes to the others, rather than all of them
  waiting out ``bodies_wait`` to be refused together;
- what a request took goes back when its answer has been sent (a stream's last event
  included): the call holds its body until then.

The front door's app (``routes.FrontDoorApp``) keeps each request's share in its ASGI scope
(``TAKEN``) and gives it back when the request ends, whatever the route. A request that takes
nothing pays a dict entry and a lookup.
"""

from __future__ import annotations

import collections
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from llmspool.core.errors import PayloadTooLarge, ServiceUnavailable
from llmspool.core.units import format_mib

__all__ = ["BUDGET", "TAKEN", "BodyBudget"]

# Keys of the ASGI scope: the daemon's budget, and the bytes this request holds of it.
BUDGET = "llmspool.body_budget"
TAKEN = "llmspool.body_bytes"


@dataclass(eq=False, slots=True)
class _Waiter:
    """A body waiting for room: what it asks for, and what its request holds already."""

    size: int
    held: int
    room: anyio.Event = field(default_factory=anyio.Event)
    refused: bool = False  # woken to be refused: the bodies part read held each other up


class BodyBudget:
    """Bytes of request bodies in memory at once, at most ``limit``; a body waits for room up
    to ``wait`` seconds (see the module's docstring)."""

    def __init__(self, limit: int, wait: float) -> None:
        self.limit = limit
        self._wait = wait
        self._used = 0
        self._waiting: collections.deque[_Waiter] = collections.deque()
        self._held_waiting = 0  # of ``_used``: what the requests waiting for room hold
        self._waited = 0  # bodies that had to wait for room
        self._refused = 0  # bodies refused room: none came in time, or they held each other up

    def take_now(self, scope: MutableMapping[str, Any], size: int) -> bool:
        """Hold ``size`` bytes for the request of ``scope`` if there is room and nobody waits
        for it (or this request already holds some: a chunked body part read goes on while
        there is room, so that a body waiting for room it holds cannot hold it up); False:
        ``wait_for_room``. 413 if the body could never fit."""
        held = scope.get(TAKEN, 0)
        if held + size > self.limit:
            grown = "this chunked body has grown past" if held else "this body is larger than"
            raise PayloadTooLarge(
                f"{grown} all request bodies together may take of the daemon's memory "
                f"({format_mib(held + size)}; [daemon] max_bodies_in_memory = "
                f"{format_mib(self.limit)}); send a large job as a JSONL upload, which is "
                "written to disk as it arrives", code="body_over_memory_budget")
        if (self._waiting and not held) or self._used + size > self.limit:
            return False
        self._used += size
        scope[TAKEN] = held + size
        return True

    async def take(self, scope: MutableMapping[str, Any], size: int) -> None:
        """Hold ``size`` bytes for the request of ``scope``: at once when ``take_now`` can,
        else once ``wait_for_room`` finds room (no wait, and no loop turn, when there is)."""
        if not self.take_now(scope, size):
            await self.wait_for_room(scope, size)

    async def wait_for_room(self, scope: MutableMapping[str, Any], size: int) -> None:
        """Hold ``size`` bytes for the request of ``scope`` once the bodies ahead of it leave
        room (first come, first served; bodies part read first); 503 if none comes within the
        wait, or at once if it would only wait for bodies that wait for it."""
        self._waited += 1
        waiter = _Waiter(size, scope.get(TAKEN, 0))
        self._waiting.append(waiter)
        self._held_waiting += waiter.held
        self._hand_out()  # its wait may complete a circle of bodies waiting for each other
        try:
            if not waiter.room.is_set():
                with anyio.move_on_after(self._wait):
                    await waiter.room.wait()
        finally:
            # Room handed over (``_hand_out`` counted it as used) is this request's from then
            # on, even if it was cancelled on the way: its end gives it back.
            if waiter.room.is_set():
                if not waiter.refused:
                    scope[TAKEN] = scope.get(TAKEN, 0) + size
            else:
                self._waiting.remove(waiter)
                self._held_waiting -= waiter.held
                self._hand_out()  # a big body that gave up may have held smaller ones back
        if waiter.refused or not waiter.room.is_set():
            self._refused += 1
            why = ("the other bodies being read wait for the room this one holds"
                   if waiter.refused else f"no room came within {self._wait:g}s")
            raise ServiceUnavailable(
                f"request bodies already take {format_mib(self._used)} of the daemon's memory "
                f"([daemon] max_bodies_in_memory = {format_mib(self.limit)}) and {why}; retry "
                "shortly, or send a large job as a JSONL upload",
                retry_after=1.0, code="bodies_memory_full")

    def give_back(self, scope: MutableMapping[str, Any]) -> None:
        """The request of ``scope`` has ended: what it held goes to those waiting, in turn."""
        taken = scope.pop(TAKEN, 0)
        if taken:
            self._used -= taken
            self._hand_out()

    def _hand_out(self) -> None:
        """Room to the waiting bodies that fit: a body part read first, then the oldest. When
        none fits and every byte held is held by a waiting body, nothing would come back
        before their waits ran out: the last body part read to start waiting is refused, and
        its request's end gives its bytes to the others."""
        waiting = self._waiting
        while waiting:
            chosen = next((waiter for waiter in waiting
                           if waiter.held and self._used + waiter.size <= self.limit), None)
            if chosen is None and self._used + waiting[0].size <= self.limit:
                chosen = waiting[0]
            if chosen is not None:
                self._used += chosen.size
            elif self._held_waiting and self._used == self._held_waiting:
                chosen = next(waiter for waiter in reversed(waiting) if waiter.held)
                chosen.refused = True
            else:
                return
            waiting.remove(chosen)
            self._held_waiting -= chosen.held
            chosen.room.set()

    def snapshot(self) -> dict[str, int]:
        return {"bytes_held": self._used, "limit": self.limit, "waiting": len(self._waiting),
                "waited": self._waited, "refused": self._refused}
