"""A chat call as raw HTTP/1.1 bytes, and reading its answer, for tests that drive many calls
from asyncio connections of their own (faster than a client library, and exactly as sent)."""

from __future__ import annotations

import asyncio

import orjson

CHAT_BODY = orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 5,
                          "messages": [{"role": "user", "content": "hello"}]})
CHAT_REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(CHAT_BODY), CHAT_BODY))


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, str]:
    """(status, x-llmspool-request-id) of the next answer on ``reader``; its body is read."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in head[1:] if line)
    await reader.readexactly(int(fields["content-length"]))
    return int(head[0].split()[1]), fields.get("x-llmspool-request-id", "")
