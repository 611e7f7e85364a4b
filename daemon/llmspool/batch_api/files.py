"""Where the Files API keeps bytes: ``<state_dir>/files/<file id>``, readable by the daemon only.

A file is written under a temporary name in the same directory and renamed to its id once it is
whole, before its row is committed; so a crash leaves at worst a file without a row, which the
start-up sweep removes. Nothing of a file is held in memory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from llmspool.store.api_files import FileRow

TEMP_PREFIX = ".part-"
ORPHAN_AGE = 3600.0  # a temporary file this old belongs to no upload still running


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def file_object(row: FileRow) -> dict[str, Any]:
    """The ``OpenAIFile`` object (``status`` is deprecated, but the schema requires it)."""
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at),
        "expires_at": int(row.expires_at),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
    }


class FileDirectory:
    """The directory of stored files."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "files"

    def create(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path_of(self, file_id: str) -> Path:
        if not file_id.startswith("file-") or "/" in file_id or file_id in ("file-", "."):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.path / file_id

    def temporary(self) -> IO[bytes]:
        """A new file to write into; ``keep`` gives it its id once it is whole."""
        return tempfile.NamedTemporaryFile(
            dir=self.path, prefix=TEMP_PREFIX, delete=False)

    def keep(self, temporary: IO[bytes], file_id: str) -> None:
        temporary.flush()
        os.fsync(temporary.fileno())
        temporary.close()
        os.replace(temporary.name, self.path_of(file_id))

    @staticmethod
    def discard(temporary: IO[bytes]) -> None:
        with contextlib.suppress(OSError):
            temporary.close()
        with contextlib.suppress(OSError):
            os.unlink(temporary.name)

    def remove(self, file_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(file_id).unlink()

    def remove_orphans(self, known: set[str]) -> int:
        """Remove files no row names (a crash between the rename and the commit) and stale
        temporary files; how many."""
        removed = 0
        now = time.time()
        for entry in os.scandir(self.path):
            orphan = entry.name.startswith("file-") and entry.name not in known
            stale = entry.name.startswith(TEMP_PREFIX) and \
                now - entry.stat().st_mtime > ORPHAN_AGE
            if orphan or stale:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
        return removed
