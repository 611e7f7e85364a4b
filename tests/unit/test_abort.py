"""``Abort``: how a call whose client went away is stopped, by its cancel scope or, for a
flight's leader, by a callback (``on_fire``) that needs no task waiting for it."""

from __future__ import annotations

import anyio
from llmspool.messages import Abort


def test_a_callback_runs_when_fired_at_once_if_fired_already_and_not_once_removed() -> None:
    calls: list[str] = []
    abort = Abort()
    abort.on_fire(lambda: calls.append("first"))
    assert calls == []
    abort.fire()
    assert calls == ["first"]  # a plain call, right away

    late = Abort()
    late.fire()  # the client left before anybody watched
    late.on_fire(lambda: calls.append("late"))
    assert calls == ["first", "late"]

    removed = Abort()
    removed.on_fire(lambda: calls.append("removed"))
    removed.on_fire(None)  # the flight ended
    removed.fire()
    assert calls == ["first", "late"]


def test_firing_cancels_the_bound_scope_and_runs_the_callback() -> None:
    async def main() -> tuple[bool, list[str]]:
        calls: list[str] = []
        abort = Abort()
        abort.on_fire(lambda: calls.append("called"))
        with anyio.CancelScope() as scope:
            abort.bind(scope)
            abort.fire()
            await anyio.sleep(5)
        return scope.cancelled_caught, calls

    assert anyio.run(main) == (True, ["called"])
