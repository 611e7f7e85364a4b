"""Reading a request body under a size limit, refusing early when the header already says."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request

from llmspool.errors import ApiError


async def read_limited(
    request: Request, limit: int, too_large: Callable[[int, int], ApiError]
) -> bytes:
    """The whole body, or ``too_large(size, limit)`` raised as soon as it passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)
