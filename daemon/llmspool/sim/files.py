"""The simulator's Files API store: uploaded files and batch results, kept in memory as bytes.

Files answer as OpenAI's ``OpenAIFile`` objects and list as ``ListFilesResponse`` pages
(newest first by default, cursor ``after`` = a file id). A file's content is immutable bytes,
so a batch keeps reading its input even after the file is deleted, and serving content copies
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from llmspool.core.errors import InvalidRequest, NotFound
from llmspool.sim import validate
from llmspool.sim.upload import Upload

MAX_UPLOAD_BYTES = 512 * 1000 * 1000
"""OpenAI's limit on any uploaded file."""
MAX_BATCH_FILE_BYTES = 200 * 1000 * 1000
"""OpenAI's limit on a batch input file ("200 MB")."""
MIN_EXPIRY_SECONDS = 3600
MAX_EXPIRY_SECONDS = 30 * 86400
BATCH_FILE_EXPIRY_SECONDS = 30 * 86400
"""OpenAI's default lifetime of a ``purpose=batch`` file (the sim deletes nothing by itself)."""
UPLOAD_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
"""Purposes a client may upload with (``CreateFileRequest.purpose``)."""
BATCH_OUTPUT = "batch_output"
MAX_LIST_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One file: its metadata and its whole content."""

    id: str
    filename: str
    purpose: str
    created_at: int
    content: bytes
    expires_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``OpenAIFile`` object (the spec types ``expires_at`` as an integer: it is left
        out when the file does not expire)."""
        document: dict[str, Any] = {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }
        if self.expires_at is not None:
            document["expires_at"] = self.expires_at
        return document


def file_from_upload(upload: Upload, file_id: str, now: int) -> StoredFile:
    """The file an upload stores, checked as OpenAI checks it: a 400 for a missing field, an
    unknown purpose, a batch file that is not ``.jsonl`` or is over 200 MB, or a bad
    ``expires_after``. (A batch file's lines are checked when a batch is created from it.)"""
    if upload.content is None or upload.filename is None:
        raise validate.missing("file")
    purpose = upload.fields.get("purpose")
    if purpose is None:
        raise validate.missing("purpose")
    if purpose not in UPLOAD_PURPOSES:
        raise validate.invalid(
            "purpose",
            f"Invalid value for 'purpose': {purpose!r}. Supported values are: "
            f"{', '.join(repr(p) for p in sorted(UPLOAD_PURPOSES))}.",
        )
    if purpose == "batch":
        if not upload.filename.endswith(".jsonl"):
            raise InvalidRequest(
                "Invalid file format for Batch API. Must be .jsonl",
                param="file",
                code="invalid_file_format",
            )
        if len(upload.content) > MAX_BATCH_FILE_BYTES:
            raise InvalidRequest(
                f"File is too large for purpose 'batch': {len(upload.content)} bytes, more "
                f"than the maximum of {MAX_BATCH_FILE_BYTES} bytes.",
                param="file",
                code="file_too_large",
            )
    return StoredFile(
        id=file_id,
        filename=upload.filename,
        purpose=purpose,
        created_at=now,
        content=upload.content,
        expires_at=_expires_at(upload.fields, now, purpose),
    )


def _expires_at(fields: dict[str, str], now: int, purpose: str) -> int | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return now + BATCH_FILE_EXPIRY_SECONDS if purpose == "batch" else None
    if anchor != "created_at":
        raise validate.invalid(
            "expires_after.anchor", "Invalid 'expires_after.anchor': expected 'created_at'."
        )
    if seconds is None or not seconds.isdigit():
        raise validate.missing("expires_after.seconds")
    if not MIN_EXPIRY_SECONDS <= int(seconds) <= MAX_EXPIRY_SECONDS:
        raise validate.invalid(
            "expires_after.seconds",
            f"Invalid 'expires_after.seconds': expected {MIN_EXPIRY_SECONDS} to "
            f"{MAX_EXPIRY_SECONDS}.",
        )
    return now + int(seconds)


class HasId(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=HasId)


def page_json(
    items: Sequence[T], after: str | None, limit: int, to_json: Callable[[T], dict[str, Any]]
) -> dict[str, Any]:
    """A cursor page of ``items`` (already in the order listed): the ``limit`` after the one
    whose id is ``after``. An ``after`` that names no listed item is a 400."""
    start = 0
    if after is not None:
        start = next((i + 1 for i, item in enumerate(items) if item.id == after), -1)
        if start < 0:
            raise InvalidRequest(
                f"No such object for cursor 'after': {after!r}.",
                param="after",
                code="invalid_value",
            )
    chosen = items[start : start + limit]
    data = [to_json(item) for item in chosen]
    return {
        "object": "list",
        "data": data,
        "first_id": chosen[0].id if chosen else None,
        "last_id": chosen[-1].id if chosen else None,
        "has_more": start + limit < len(items),
    }


class FileStore:
    """Files by id, in the order they were created."""

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}

    def add(self, stored: StoredFile) -> StoredFile:
        self._files[stored.id] = stored
        return stored

    def get(self, file_id: str, *, param: str = "file_id") -> StoredFile:
        """The file, or a 404 naming ``param`` as OpenAI answers for an unknown id."""
        stored = self._files.get(file_id)
        if stored is None:
            raise NotFound(f"No such File object: {file_id}", param=param, code="file_not_found")
        return stored

    def delete(self, file_id: str) -> dict[str, Any]:
        """Remove the file; the ``DeleteFileResponse``."""
        self.get(file_id)
        del self._files[file_id]
        return {"id": file_id, "object": "file", "deleted": True}

    def list_json(
        self, *, purpose: str | None, limit: int, order: str, after: str | None
    ) -> dict[str, Any]:
        """A ``ListFilesResponse`` page; ``order`` is by creation, ``asc`` or ``desc``."""
        files: Iterable[StoredFile] = self._files.values()
        if order == "desc":
            files = reversed(self._files.values())
        chosen = [f for f in files if purpose is None or f.purpose == purpose]
        return page_json(chosen, after, limit, StoredFile.to_json)

    def __len__(self) -> int:
        return len(self._files)
