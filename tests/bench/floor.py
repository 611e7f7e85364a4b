"""The floor: what any Python proxy must pay to forward a call — Starlette on a Unix socket
(uvicorn, as the daemon), forwarding the body with a pooled aiohttp session, the answer relayed
whole or streamed chunk by chunk. No validation, no accounting, no durability: the daemon's
added time is judged against this, measured in the same run.

    python -m tests.bench.floor SOCKET UPSTREAM_BASE_URL    (prints "ready" once listening)
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

SIM_KEEPALIVE = 5.0  # seconds: uvicorn's ``timeout_keep_alive``, which the simulator keeps


def build(upstream: str) -> Starlette:
    sessions: list[aiohttp.ClientSession] = []

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Not kept past the simulator's keep-alive (uvicorn closes a connection idle for
        # 5 s; aiohttp would keep it 15 s): a connection reused as the simulator closes it
        # fails its request. The daemon's pool has the same race, and its retry policy.
        connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=SIM_KEEPALIVE - 1)
        sessions.append(aiohttp.ClientSession(connector=connector, headers={
            "content-type": "application/json", "authorization": "Bearer sk-floor"}))
        print("ready", flush=True)
        yield
        await sessions[0].close()

    async def forward(request: Request) -> Response:
        body = await request.body()
        url = upstream + request.url.path.removeprefix("/v1")
        try:
            response = await sessions[0].post(url, data=body)
        except aiohttp.ClientConnectionError:
            # The race above, still: sent again, as the daemon's retry policy sends it. A 500
            # here cost h2load that client's connection and every call it had left to send:
            # 11,359 of 11,465 calls of one open-loop run failed so.
            response = await sessions[0].post(url, data=body)
        if response.content_type == "text/event-stream":
            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in response.content.iter_any():
                        yield chunk
                finally:
                    response.release()

            return StreamingResponse(relay(), status_code=response.status,
                                     media_type="text/event-stream")
        raw = await response.read()
        response.release()
        return Response(raw, status_code=response.status, media_type="application/json")

    return Starlette(routes=[Route("/v1/{path:path}", forward, methods=["POST"])],
                     lifespan=lifespan)


def main() -> None:
    socket_path, upstream = sys.argv[1], sys.argv[2].rstrip("/")
    uvicorn.run(build(upstream), uds=socket_path, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
