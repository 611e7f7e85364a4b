"""How often a provider's pooled HTTP connections are reused: keep-alive at work, as a figure.

The daemon's HTTP/1.1 pool (``llmspool.core.http1``, ``pooled_http1``) counts into a
``ConnectionCounter`` itself; a provider plugin that forwards with aiohttp makes its session's
connector with one (``pooled_session`` does). The connector counts each connection it hands
to a request and each one it opens; ``snapshot()`` is what a provider's ``connection_stats()``
answers::

    {"requests": 20, "reused": 19}

``requests`` counts requests put on a connection (a request aiohttp sends again on a fresh
connection, after a pooled one turned out closed, counts twice); ``reused`` those of them sent
on a connection that had already carried a request. A request that fails before it has a
connection (connection refused) is in neither.

The counting is in the connector rather than in aiohttp's trace hooks: a session with any
trace config builds a ``Trace`` per request and awaits a signal at every step of it, which cost
about a tenth of the daemon's throughput to count two integers.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.connector import Connection
from aiohttp.tracing import Trace


class ConnectionCounter:
    """Counts the connections a ``connector()`` opens and the requests it puts on one.

    The counts are plain integers updated on the event loop that runs the sessions.
    """

    __slots__ = ("created", "handed_out")

    def __init__(self) -> None:
        self.created = 0
        self.handed_out = 0

    def connector(self, **options: Any) -> aiohttp.TCPConnector:
        """A ``TCPConnector`` made with ``options`` that feeds this counter."""
        return _CountingConnector(self, **options)

    def snapshot(self) -> dict[str, int]:
        """``{"requests": n, "reused": m}`` since this counter was made."""
        # A connection opened for a request that gave up before taking it is not reuse.
        return {"requests": self.handed_out,
                "reused": max(0, self.handed_out - self.created)}


class _CountingConnector(aiohttp.TCPConnector):
    # aiohttp's own signatures, timeout parameters included (hence the noqa: ASYNC109).

    def __init__(self, counter: ConnectionCounter, **options: Any) -> None:
        super().__init__(**options)
        self._counter = counter

    async def connect(self, req: aiohttp.ClientRequest, traces: list[Trace],
                      timeout: aiohttp.ClientTimeout) -> Connection:  # noqa: ASYNC109
        connection = await super().connect(req, traces, timeout)
        self._counter.handed_out += 1
        return connection

    async def _create_connection(self, req: aiohttp.ClientRequest, traces: list[Trace],
                                 timeout: aiohttp.ClientTimeout) -> ResponseHandler:  # noqa: ASYNC109
        protocol = await super()._create_connection(req, traces, timeout)
        self._counter.created += 1
        return protocol
