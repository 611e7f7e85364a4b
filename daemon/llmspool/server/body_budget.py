"""How many bytes of request bodies the front door holds in memory at once, across connections.

``[daemon] max_body_size`` bounds one body, not many: 4,096 connections each sending a 32 MiB
chat body would have the daemon hold 128 GiB (twice that while each is joined), far past any
systemd ``MemoryMax``, and every call in flight would go down with it. ``BodyBudget`` bounds
them together (``[daemon] max_bodies_in_memory``):

- a body read into memory (``bodies.read_limited``: the forwarded calls, JSON jobs, batch
  creation, feedback) takes its size from the budget before it is read: its declared
  ``content-length``, or each chunk as it arrives when it has none. Uploads spooled to disk
  take nothing;
- without room, it waits, first come first served (but a chunked body part read takes its
  next chunks while there is room: the body ahead may be waiting for what it holds), while
  the daemon does not read it (the connection's flow control holds the client back), for up
  to ``[daemon] bodies_wait``; then
  503 ``bodies_memory_full`` with ``retry-after``. A body larger than the whole budget can
  never fit: 413 ``body_over_memory_budget`` at once;
- what a request took goes back when its answer has been sent (a stream's last event
  included): the call holds its body until then.

The front door's app (``routes.FrontDoorApp``) keeps each request's share in its ASGI scope
(``TAKEN``) and gives it back when the request ends, whatever the route. A request that takes
nothing pays a dict entry and a lookup.
"""

from __future__ import annotations

import collections
from collections.abc import MutableMapping
from typing import Any

import anyio

from llmspool.core.errors import PayloadTooLarge, ServiceUnavailable
from llmspool.core.units import format_mib

__all__ = ["BUDGET", "TAKEN", "BodyBudget"]

# Keys of the ASGI scope: the daemon's budget, and the bytes this request holds of it.
BUDGET = "llmspool.body_budget"
TAKEN = "llmspool.body_bytes"


class BodyBudget:
    """Bytes of request bodies in memory at once, at most ``limit``; a body waits for room up
    to ``wait`` seconds (see the module's docstring)."""

    def __init__(self, limit: int, wait: float) -> None:
        self.limit = limit
        self._wait = wait
        self._used = 0
        self._waiting: collections.deque[tuple[int, anyio.Event]] = collections.deque()
        self._waited = 0  # bodies that had to wait for room
        self._refused = 0  # bodies that found none in time

    def take_now(self, scope: MutableMapping[str, Any], size: int) -> bool:
        """Hold ``size`` bytes for the request of ``scope`` if there is room and nobody waits
        for it (or this request already holds some: a chunked body part read goes on while
        there is room, so that a body waiting for room it holds cannot hold it up); False:
        ``wait_for_room``. 413 if the body could never fit."""
        if size > self.limit:
            raise PayloadTooLarge(
                f"this body ({format_mib(size)}) is larger than all request bodies together may "
                f"take of the daemon's memory ([daemon] max_bodies_in_memory = "
                f"{format_mib(self.limit)}); send a large job as a JSONL upload, which is "
                "written to disk as it arrives", code="body_over_memory_budget")
        if (self._waiting and TAKEN not in scope) or self._used + size > self.limit:
            return False
        self._used += size
        scope[TAKEN] = scope.get(TAKEN, 0) + size
        return True

    async def take(self, scope: MutableMapping[str, Any], size: int) -> None:
        """Hold ``size`` bytes for the request of ``scope``: at once when ``take_now`` can,
        else once ``wait_for_room`` finds room (no wait, and no loop turn, when there is)."""
        if not self.take_now(scope, size):
            await self.wait_for_room(scope, size)

    async def wait_for_room(self, scope: MutableMapping[str, Any], size: int) -> None:
        """Hold ``size`` bytes for the request of ``scope`` once the bodies ahead of it leave
        room (first come, first served); 503 if none comes within the wait."""
        self._waited += 1
        room = anyio.Event()
        waiter = (size, room)
        self._waiting.append(waiter)
        try:
            with anyio.move_on_after(self._wait):
                await room.wait()
        finally:
            # Room handed over (``give_back`` counted it as used) is this request's from then
            # on, even if it was cancelled on the way: its end gives it back.
            if room.is_set():
                scope[TAKEN] = scope.get(TAKEN, 0) + size
            else:
                self._waiting.remove(waiter)
                self._hand_out()  # a big body that gave up may have held smaller ones back
        if not room.is_set():
            self._refused += 1
            raise ServiceUnavailable(
                f"request bodies already take {format_mib(self._used)} of the daemon's memory "
                f"([daemon] max_bodies_in_memory = {format_mib(self.limit)}) and no room came "
                f"within {self._wait:g}s; retry shortly, or send a large job as a JSONL upload",
                retry_after=1.0, code="bodies_memory_full")

    def give_back(self, scope: MutableMapping[str, Any]) -> None:
        """The request of ``scope`` has ended: what it held goes to those waiting, in turn."""
        taken = scope.pop(TAKEN, 0)
        if taken:
            self._used -= taken
            self._hand_out()

    def _hand_out(self) -> None:
        waiting = self._waiting
        while waiting and self._used + waiting[0][0] <= self.limit:
            size, room = waiting.popleft()
            self._used += size
            room.set()

    def snapshot(self) -> dict[str, int]:
        return {"bytes_held": self._used, "limit": self.limit, "waiting": len(self._waiting),
                "waited": self._waited, "refused": self._refused}
