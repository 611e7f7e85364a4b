"""Reading a ``multipart/form-data`` upload (``POST /v1/files``) as it streams in.

The body is fed chunk by chunk to python-multipart's parser; only the ``file`` part's bytes
and the small text fields are kept, so an upload costs its file's size in memory, not twice
that for a buffered body. The part is collected in a ``BytesIO``, whose ``getvalue`` hands over
its buffer instead of copying it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from llmspool.errors import InvalidRequest, PayloadTooLarge
from llmspool.sim.asgi import Receive

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
MAX_FIELD_BYTES = 64 * 1024
"""Any form field but the file: ``purpose`` and ``expires_after[...]`` are a few bytes."""


@dataclass(slots=True)
class Upload:
    """A parsed upload: the file part (if any) and the other fields as text."""

    filename: str | None = None
    content: bytes | None = None
    fields: dict[str, str] = field(default_factory=dict)


class _Collector:
    """The parser's callbacks: keeps the current part's headers and data."""

    def __init__(self, max_file_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.upload = Upload()
        self.ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._name = ""
        self._filename: str | None = None
        self._data = io.BytesIO()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._data = io.BytesIO()
        self._header_name.clear()
        self._header_value.clear()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._filename = None if filename is None else filename.decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        is_file = self._name == FILE_FIELD
        limit = self.max_file_bytes if is_file else MAX_FIELD_BYTES
        if self._data.tell() + (end - start) > limit:
            if is_file:
                raise PayloadTooLarge(
                    f"The file is over the simulator's limit of {limit} bytes.",
                    param="file",
                    code="file_too_large",
                )
            raise InvalidRequest(f"The form field {self._name!r} is too long.", param=self._name)
        # A memoryview slice appends without first copying the chunk.
        self._data.write(memoryview(data)[start:end])

    def _part_end(self) -> None:
        if self._name == FILE_FIELD:
            if self.upload.content is None:
                self.upload.filename = self._filename or "upload"
                self.upload.content = self._data.getvalue()
        elif self._name:
            self.upload.fields[self._name] = self._data.getvalue().decode("utf-8", "replace")
        self._data = io.BytesIO()

    def _end(self) -> None:
        self.ended = True


def boundary_of(content_type: bytes) -> bytes:
    """The multipart boundary of a ``Content-Type``; a 400 if it is not multipart/form-data."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest(
            "The request must be multipart/form-data with a 'file' and a 'purpose' field.",
            code="invalid_content_type",
        )
    return boundary


async def read_upload(receive: Receive, content_type: bytes, max_file_bytes: int) -> Upload | None:
    """Parse a multipart body from ``receive``; ``None`` if the client left first.

    Raises a 400 for a body that is not (well-formed) multipart/form-data and a 413 for a file
    over ``max_file_bytes``.
    """
    collector = _Collector(max_file_bytes)
    try:
        parser = MultipartParser(boundary_of(content_type), collector.callbacks())
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk: bytes = message.get("body", b"")
            if chunk:
                parser.write(chunk)
            if not message.get("more_body", False):
                break
        parser.finalize()
    except FormParserError as exc:
        raise InvalidRequest(f"The multipart body could not be parsed: {exc}") from None
    if not collector.ended:
        raise InvalidRequest("The multipart body ended before its closing boundary.")
    return collector.upload
