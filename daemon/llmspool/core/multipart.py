"""Reading a ``multipart/form-data`` upload (``POST /v1/files``) as it streams in.

The body is fed chunk by chunk to python-multipart's parser. The ``file`` part's bytes go to a
sink the caller opens (the daemon: a file in its state directory; the simulator: memory), and
the other fields, a few bytes each, are kept as text. So an upload costs one chunk of memory in
the daemon, whatever its size, and one over the limit is refused as soon as it passes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from llmspool.core.errors import ApiError, InvalidRequest

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
MAX_FIELD_BYTES = 64 * 1024
"""Any form field but the file: ``purpose`` and ``expires_after[...]`` are a few bytes."""


@dataclass(slots=True)
class Form:
    """A parsed upload: the file part's name, size and sink (if any), and the other fields."""

    filename: str | None = None
    size: int = 0
    sink: IO[bytes] | None = None
    fields: dict[str, str] = field(default_factory=dict)


class FormReader:
    """Feed it the body's chunks (``write``), then ``finish``; ``form`` is the result.

    ``open_sink`` is called once, when the file part begins; ``too_large(limit)`` is the error
    raised when the file passes ``max_file_bytes``.
    """

    def __init__(self, content_type: bytes, open_sink: Callable[[], IO[bytes]],
                 max_file_bytes: int, too_large: Callable[[int], ApiError]) -> None:
        self.form = Form()
        self._open_sink = open_sink
        self._max_file_bytes = max_file_bytes
        self._too_large = too_large
        self._ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._name = ""
        self._filename: str | None = None
        self._field = bytearray()
        self._in_file = False
        self._parser = MultipartParser(boundary_of(content_type), self._callbacks())

    def write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise InvalidRequest(f"the multipart body could not be parsed: {exc}",
                                 code="invalid_multipart") from None

    def finish(self) -> Form:
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise InvalidRequest(f"the multipart body could not be parsed: {exc}",
                                 code="invalid_multipart") from None
        if not self._ended:
            raise InvalidRequest("the multipart body ended before its closing boundary",
                                 code="invalid_multipart")
        return self.form

    def _callbacks(self) -> MultipartCallbacks:
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
        self._field.clear()
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
        # Only the first file part is kept; a second one is read past.
        self._in_file = self._name == FILE_FIELD and self.form.sink is None
        if self._in_file:
            self.form.filename = self._filename or "upload"
            self.form.sink = self._open_sink()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            assert self.form.sink is not None
            self.form.size += end - start
            if self.form.size > self._max_file_bytes:
                raise self._too_large(self._max_file_bytes)
            # A memoryview slice writes without first copying the chunk.
            self.form.sink.write(memoryview(data)[start:end])
        elif self._name != FILE_FIELD:
            if len(self._field) + (end - start) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"the form field {self._name!r} is too long",
                                     param=self._name)
            self._field += data[start:end]

    def _part_end(self) -> None:
        if self._in_file:
            self._in_file = False
        elif self._name and self._name != FILE_FIELD:
            self.form.fields[self._name] = self._field.decode("utf-8", "replace")
        self._field.clear()

    def _end(self) -> None:
        self._ended = True


def boundary_of(content_type: bytes) -> bytes:
    """The multipart boundary of a ``Content-Type``; a 400 if it is not multipart/form-data."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest(
            "the request must be multipart/form-data with a 'file' and a 'purpose' field",
            code="invalid_content_type",
        )
    return boundary
