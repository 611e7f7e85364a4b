"""How often a provider's pooled HTTP connections are reused: keep-alive at work, as a figure.

A provider plugin that forwards with aiohttp gives its ``ClientSession`` the trace config of a
``ConnectionCounter``; aiohttp then reports, for every request it puts on a connection, whether
it opened that connection for it (``on_connection_create_end``) or took an idle one from its
pool (``on_connection_reuseconn``). ``snapshot()`` is what a provider's ``connection_stats()``
answers::

    {"requests": 20, "reused": 19}

``requests`` counts requests put on a connection (a request aiohttp sends again on a fresh
connection, after a pooled one turned out closed, counts twice); ``reused`` those of them sent
on a connection that had already carried a request. A request that fails before it has a
connection (connection refused) is in neither.
"""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp


class ConnectionCounter:
    """Counts new and reused connections of the sessions given its ``trace_config()``.

    The counts are plain integers updated on the event loop that runs the sessions.
    """

    __slots__ = ("created", "reused")

    def __init__(self) -> None:
        self.created = 0
        self.reused = 0

    def trace_config(self) -> aiohttp.TraceConfig:
        """A fresh trace config feeding this counter (a session freezes the one it is given)."""
        config = aiohttp.TraceConfig()
        config.on_connection_create_end.append(self._created)
        config.on_connection_reuseconn.append(self._reused)
        return config

    def snapshot(self) -> dict[str, int]:
        """``{"requests": n, "reused": m}`` since this counter was made."""
        return {"requests": self.created + self.reused, "reused": self.reused}

    async def _created(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceConnectionCreateEndParams,
    ) -> None:
        self.created += 1

    async def _reused(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceConnectionReuseconnParams,
    ) -> None:
        self.reused += 1
