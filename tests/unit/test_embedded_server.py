"""The daemon's uvicorn server waits for its stop without waking ten times a second (issue 17).

uvicorn's own main loop sleeps 0.1 s at a time to look for ``should_exit``; an idle daemon
then woke ten times a second for nothing. These run the server's main loop on a plain asyncio
loop whose turns are counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from llmspool.server.uvicorn_server import STOP_CHECK_SECONDS, build_server


async def _app(scope: Any, receive: Any, send: Any) -> None:  # never called: nothing connects
    raise AssertionError("no request expected")


def _run_counting_turns(main: Callable[[asyncio.AbstractEventLoop], Coroutine[Any, Any, float]]
                        ) -> tuple[float, int]:
    """``main(loop)``'s result, and how many turns the loop made meanwhile."""
    loop = asyncio.new_event_loop()
    turns = 0
    run_once = loop._run_once  # type: ignore[attr-defined]

    def counted() -> None:
        nonlocal turns
        turns += 1
        run_once()

    loop._run_once = counted  # type: ignore[attr-defined]
    try:
        return loop.run_until_complete(main(loop)), turns
    finally:
        loop.close()


def test_an_idle_server_sleeps_until_it_is_stopped_and_stops_at_once() -> None:
    server = build_server(_app, graceful_shutdown=1.0)

    async def main(loop: asyncio.AbstractEventLoop) -> float:
        waiting = loop.create_task(server.main_loop())
        await asyncio.sleep(2.0)  # idle: uvicorn's own loop would look twenty times
        stopped_at = time.monotonic()
        server.stop()
        await asyncio.wait_for(waiting, 5)
        return time.monotonic() - stopped_at

    took, turns = _run_counting_turns(main)
    assert took < 0.1
    # Measured: 17 turns here (two looks at should_exit, the sleep, the stop, the tasks' own
    # steps); 47 with uvicorn's own loop.
    assert turns < 30, turns


def test_should_exit_set_directly_still_ends_the_wait() -> None:
    server = build_server(_app, graceful_shutdown=1.0)

    async def main(loop: asyncio.AbstractEventLoop) -> float:
        waiting = loop.create_task(server.main_loop())
        await asyncio.sleep(0.05)
        set_at = time.monotonic()
        server.should_exit = True  # as uvicorn itself does on some failures
        await asyncio.wait_for(waiting, 5)
        return time.monotonic() - set_at

    took, _turns = _run_counting_turns(main)
    assert took <= STOP_CHECK_SECONDS + 0.5
