"""Where the plugin's aiohttp exceptions become ``llmspool.errors``.

Nothing outside the plugin ever sees an aiohttp exception: no answer at all is
``UpstreamUnreachable`` (504 for a timeout, with ``connect_timeout`` or ``upstream_timeout`` as
its code, so that the daemon's retry policy and its messages can tell them apart).
"""

from __future__ import annotations

import aiohttp
from llmspool.errors import UpstreamUnreachable


def unreachable(provider: str, exc: BaseException) -> UpstreamUnreachable:
    """No answer from ``provider``: a timeout (504: ``connect_timeout`` for the connection,
    ``upstream_timeout`` for the rest) or a connection error."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamUnreachable(
            f"no connection to {provider} within its connect timeout ([providers.{provider}] "
            "connect_timeout); check the network and base_url",
            code="connect_timeout",
            status=504,
        )
    if isinstance(exc, TimeoutError):  # aiohttp's other timeouts are TimeoutErrors too
        return UpstreamUnreachable(
            f"{provider} did not answer in time ({type(exc).__name__}); the request may be "
            "retried, or given a longer timeout in [providers." + provider + "] timeout",
            code="upstream_timeout",
            status=504,
        )
    return UpstreamUnreachable(
        f"cannot reach {provider}: {exc or type(exc).__name__}", code="upstream_unreachable"
    )
