"""The request queue actor: admission, a bound on work in flight, and most-urgent-first order.

The dispatcher has ``slots`` places for calls; the queue hands it a call only while a place is
free, and learns of freed places from ``SlotFreed`` messages. Calls waiting for a place are kept
in a heap ordered by when each is due (its deadline; for a call without one, its arrival:
someone is waiting on it), then by arrival, so when providers are saturated the call that must
finish soonest goes first. Past ``max_waiting`` waiting calls, a new one is refused with
503 and a ``retry-after``: work is pushed back, never dropped silently.

The front door's calls and the dispatcher's freed places skip the hop to this actor's task
when that changes nothing but the wait (``take_now``: a place is free, none waits and no call
is on its way here ahead; ``free_slot``): the event loop has one thread, and neither awaits.

OpenTelemetry gauges: ``llmspool.queue.depth`` (calls waiting for a place) and
``llmspool.queue.in_flight`` (places taken).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable

import anyio
from anyio.abc import TaskStatus
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from llmspool.core.clock import SYSTEM_CLOCK, Clock
from llmspool.core.errors import ServiceUnavailable
from llmspool.core.streams import MemoryReceiveStream, MemorySendStream
from llmspool.core.tracing import active
from llmspool.messages import Call, Failure, QueueStatus, SlotFreed, StatusQuery, answer

# Calls from the front door, the cache and the job keeper; status questions.
QueueMessage = Call | StatusQuery[QueueStatus]


class RequestQueue:
    def __init__(
        self,
        inbox: MemoryReceiveStream[QueueMessage],
        freed: MemoryReceiveStream[SlotFreed],
        dispatcher: MemorySendStream[Call],
        *,
        slots: int,
        max_waiting: int,
        meter: metrics.Meter | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._inbox = inbox
        self._clock = clock  # calls' ``received_at`` is on the daemon's clock
        self._freed = freed
        self._dispatcher = dispatcher
        self._free_slots = slots
        self._slots = slots
        self._max_waiting = max_waiting
        self._waiting: list[tuple[float, int, Call]] = []
        self._arrivals = itertools.count()
        self._admitted = 0
        self._refused = 0
        self._taking = False  # the inbox is read: ``take_now`` may take a call in its stead
        self._running = False  # freed places are counted: ``free_slot`` may count one
        meter = meter or active().meter  # without one given, the daemon's
        meter.create_observable_gauge("llmspool.queue.depth", [self._observe_waiting],
                                      "{request}", "calls waiting for a place in flight")
        meter.create_observable_gauge("llmspool.queue.in_flight", [self._observe_in_flight],
                                      "{request}", "calls in flight (places taken)")

    # Called by the metric reader's thread: each reads one number, which is safe.
    def _observe_waiting(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(len(self._waiting))]

    def _observe_in_flight(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._slots - self._free_slots)]

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with self._dispatcher, anyio.create_task_group() as group:
            group.start_soon(self._take_freed_slots)
            task_status.started()
            self._taking = True
            try:
                async with self._inbox:
                    async for message in self._inbox:
                        if isinstance(message, StatusQuery):
                            answer(message.reply, self._snapshot())
                        else:
                            self._admit(message)
            finally:
                self._taking = False
            # The front door is closed: hand over what still waits, then close our send end
            # at once, so that the dispatcher can finish (its end closes ``freed``, which ends
            # ``_take_freed_slots``; waiting for that first would wait forever).
            while self._waiting:
                _deadline, _arrival, call = heapq.heappop(self._waiting)
                await self._dispatcher.send(call)
            await self._dispatcher.aclose()

    def take_now(self, call: Call) -> bool:
        """Hand ``call`` to the dispatcher in the caller's own task, without the hop to the
        queue's task, when that is what the queue would do at once: a place is free, no call
        waits for one and none is on its way here ahead of it. False: send it."""
        if not self._taking or self._waiting or self._free_slots <= 0 \
                or self._inbox.backlog():
            return False
        self._hand_over(call)
        return True

    def free_slot(self) -> bool:
        """A ``SlotFreed`` taken in the dispatcher's task: the place goes to the most urgent
        call waiting, if any. False once the queue no longer runs: send it."""
        if not self._running:
            return False
        self._free_slots += 1
        while self._free_slots > 0 and self._waiting:
            _deadline, _arrival, call = heapq.heappop(self._waiting)
            self._hand_over(call)
        return True

    def _admit(self, call: Call) -> None:
        if self._free_slots > 0 and not self._waiting:
            self._hand_over(call)
            return
        if len(self._waiting) >= self._max_waiting:
            self._refused += 1
            error = ServiceUnavailable(
                f"llmspool has {len(self._waiting)} requests waiting (the limit is "
                f"[daemon] max_in_flight = {self._max_waiting}); retry shortly",
                retry_after=1.0,
                code="queue_full",
            )
            _answer(call, Failure(error))
            return
        # Most urgent first: a call with a deadline is due then; one without has a caller
        # waiting on it, so it is due when it arrived (among those, arrival order stands),
        # and a job's line due in an hour waits behind them.
        due = call.deadline_at if call.deadline_at is not None else call.received_at
        heapq.heappush(self._waiting, (due, next(self._arrivals), call))

    def _hand_over(self, call: Call) -> None:
        self._free_slots -= 1
        self._admitted += 1
        # Never blocks: the dispatcher's inbox holds as many calls as there are slots.
        self._dispatcher.send_nowait(call)

    async def _take_freed_slots(self) -> None:
        self._running = True
        try:
            async with self._freed:
                async for _freed in self._freed:
                    self.free_slot()
        finally:
            self._running = False

    def _snapshot(self) -> QueueStatus:
        now = self._clock.now()
        return {
            "in_flight": self._slots - self._free_slots,
            "waiting": len(self._waiting),
            "slots": self._slots,
            "admitted": self._admitted,
            "refused_full": self._refused,
            "oldest_wait_s": round(now - min(
                (c.received_at for _d, _a, c in self._waiting), default=now), 3),
        }


def _answer(call: Call, reply: Failure) -> None:
    try:
        call.reply.send_nowait(reply)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock):
        pass  # the client is gone; nobody to tell
    finally:
        call.reply.close()
