"""``IndexedHeaders`` answers every single-name lookup as Starlette's ``Headers`` does over the
same raw headers: the first of a repeated name, any case asked, latin-1 values, KeyError and
the default for a name not sent."""

from __future__ import annotations

import pytest
from llmspool.server.indexed_headers import ForwardedRequest, IndexedHeaders
from starlette.datastructures import Headers

RAW = [
    (b"host", b"localhost"),
    (b"content-type", b"application/json"),
    (b"x-llmspool-deadline", b"10m"),
    (b"x-llmspool-deadline", b"1h"),  # repeated: the first is the one read
    (b"x-note", "caf\u00e9".encode("latin-1")),
    (b"content-length", b"42"),
    (b"empty", b""),
]
NAMES = ["host", "Content-Type", "x-llmspool-deadline", "X-LLMSPOOL-DEADLINE", "x-note",
         "content-length", "empty", "traceparent", "x-llmspool-cache"]


@pytest.mark.parametrize("name", NAMES)
def test_each_lookup_answers_as_starlettes_headers(name: str) -> None:
    ours = IndexedHeaders({"type": "http", "headers": list(RAW)})
    theirs = Headers(raw=list(RAW))
    assert (name in ours) == (name in theirs)
    assert ours.get(name) == theirs.get(name)
    assert ours.get(name, "fallback") == theirs.get(name, "fallback")
    if name in theirs:
        assert ours[name] == theirs[name]
    else:
        with pytest.raises(KeyError):
            ours[name]
    assert ours.getlist(name) == theirs.getlist(name)
    assert list(ours.items()) == list(theirs.items())


def test_a_forwarded_request_reads_its_headers_through_the_index() -> None:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    request = ForwardedRequest({"type": "http", "method": "POST", "path": "/v1/chat/completions",
                                "headers": list(RAW), "query_string": b""}, receive)
    assert isinstance(request.headers, IndexedHeaders)
    assert request.headers.get("x-llmspool-deadline") == "10m"
    assert request.headers is request.headers  # made once
