"""The simulator's ``POST /v1/files`` body: ``multipart/form-data`` read as it streams in.

The shared reader (``llmspool.core.multipart``) parses the body chunk by chunk; the simulator keeps
the file part in a ``BytesIO``, whose ``getvalue`` hands over its buffer instead of copying it,
so an upload costs its file's size in memory, not twice that for a buffered body.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from llmspool.core.errors import PayloadTooLarge
from llmspool.core.multipart import FormReader
from llmspool.sim.asgi import Receive


@dataclass(slots=True)
class Upload:
    """A parsed upload: the file part (if any) and the other fields as text."""

    filename: str | None = None
    content: bytes | None = None
    fields: dict[str, str] = field(default_factory=dict)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The file is over the simulator's limit of {limit} bytes.",
                           param="file", code="file_too_large")


async def read_upload(receive: Receive, content_type: bytes, max_file_bytes: int) -> Upload | None:
    """Parse a multipart body from ``receive``; ``None`` if the client left first.

    Raises a 400 for a body that is not (well-formed) multipart/form-data and a 413 for a file
    over ``max_file_bytes``.
    """
    reader = FormReader(content_type, io.BytesIO, max_file_bytes, _too_large)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk: bytes = message.get("body", b"")
        if chunk:
            reader.write(chunk)
        if not message.get("more_body", False):
            break
    form = reader.finish()
    content = form.sink.getvalue() if isinstance(form.sink, io.BytesIO) else None
    return Upload(form.filename, content, form.fields)
