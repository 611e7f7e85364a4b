"""Reading a request body under a size limit, refusing early when the header already says.

``read_limited`` keeps the body in memory (bodies bounded by ``[daemon] max_body_size``);
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
