"""Reading a request body under a size limit, refusing early when the header already says.

``read_limited`` keeps the body in memory (bodies bounded by ``[daemon] max_body_size``, and
all of them together by ``[daemon] max_bodies_in_memory``: ``body_budget``);
``spool_limited`` writes an upload to an unlinked temporary file as it arrives, so an upload of
any size costs a chunk of memory at a time, and one over the limit is refused as soon as it
passes it.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from starlette.requests import Request

from llmspool.core.errors import ApiError
from llmspool.server.body_budget import BUDGET, BodyBudget


async def read_limited(
    request: Request, limit: int, too_large: Callable[[int, int], ApiError]
) -> bytes:
    """The whole body, or ``too_large(size, limit)`` raised as soon as it passes ``limit``.
    Its bytes are taken from the daemon's ``BodyBudget`` before they are read: the declared
    length at once, or each chunk as it comes when none is declared."""
    declared = request.headers.get("content-length")
    length = int(declared) if declared is not None and declared.isdigit() else None
    if length is not None and length > limit:
        raise too_large(length, limit)
    scope = request.scope
    budget: BodyBudget | None = scope.get(BUDGET)
    if budget is not None and length:
        await budget.take(scope, length)
    by_chunk = budget if length is None else None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(size, limit)
        if by_chunk is not None and chunk:
            await by_chunk.take(scope, len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


async def spool_limited(
    request: Request, limit: int, too_large: Callable[[int, int], ApiError], directory: Path,
) -> IO[bytes]:
    """The whole body in an unlinked temporary file in ``directory`` (readable by the daemon
    only), rewound; ``too_large(size, limit)`` raised as soon as it passes ``limit``. The
    caller closes the file."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    spool = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (returned to the caller)
    try:
        size = await _copy(request, spool, limit)
    except BaseException:
        with contextlib.suppress(OSError):
            spool.close()
        raise
    if size > limit:
        spool.close()
        raise too_large(size, limit)
    spool.seek(0)
    return spool


async def _copy(request: Request, spool: IO[bytes], limit: int) -> int:
    """Bytes of the body written to ``spool``; stops once past ``limit`` (the size so far)."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return size
        spool.write(chunk)  # into the page cache: microseconds per chunk
    return size
