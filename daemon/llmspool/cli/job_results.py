"""Writing a job's results: to standard output, or to a file replaced atomically."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from llmspool.client import SyncJobHandle

__all__ = ["copy_atomically", "write_results"]


def write_results(handle: SyncJobHandle, output: str | None, *, wait: float | None) -> None:
    """Copy the results stream to ``output`` (atomically) or standard output, chunk by chunk."""
    with handle.open_results(wait) as results:
        if output is None:
            lines = _copy(results.iter_bytes(), sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            lines = copy_atomically(results.iter_bytes(), Path(output))
        if not results.complete:
            print(f"llmspool: job {handle.id} is {results.job_status or 'not finished'}: "
                  f"these are the {lines} results so far", file=sys.stderr)
        elif output is not None:
            print(f"llmspool: wrote {lines} results to {output}", file=sys.stderr)


def _copy(chunks: Iterator[bytes], sink: IO[bytes]) -> int:
    """Write every chunk; the number of lines written."""
    lines = 0
    for chunk in chunks:
        sink.write(chunk)
        lines += chunk.count(b"\n")
    return lines


def copy_atomically(chunks: Iterator[bytes], target: Path) -> int:
    """Write to a temporary file beside ``target``, then rename it over ``target``: a reader
    sees the old file or the whole new one, never half of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part",
                                             dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as sink:
            lines = _copy(chunks, sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return lines
