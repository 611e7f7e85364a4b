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


def build(upstream: str) -> Starlette:
    sessions: list[aiohttp.ClientSession] = []

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=256)
        sessions.append(aiohttp.ClientSession(connector=connector, headers={
            "content-type": "application/json", "authorization": "Bearer sk-floor"}))
        print("ready", flush=True)
        yield
        await sessions[0].close()

    async def forward(request: Request) -> Response:
        body = await request.body()
        response = await sessions[0].post(upstream + request.url.path.removeprefix("/v1"),
                                          data=body)
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
