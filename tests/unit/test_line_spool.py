"""Checked job lines wait on disk (``LineSpool``) until the keeper stores them: every field of
every line comes back as it went in, in order; the spool counts them and knows their targets
without reading them back; clearing it forgets them."""

from __future__ import annotations

from pathlib import Path

from llmspool.core.calls import Endpoint
from llmspool.jobs.spool import CHUNK, LineSpool
from llmspool.store.records import JobLine


def test_lines_come_back_as_they_went_in(tmp_path: Path) -> None:
    lines = [
        JobLine(1, "a", Endpoint.CHAT, "openai", "gpt-5-mini", b'{"model":"x"}'),
        JobLine(3, "b\u00e9", Endpoint.EMBEDDINGS, "openai", "text-embedding-3-small",
                b'{"input":["y"]}', cache_key=b"\x00\xffkey", cache_ttl=3600.0),
        JobLine(4, "c", Endpoint.CHAT, "anthropic", "claude-haiku",
                b"{}", routed_from=("openai", "gpt-5")),
    ]
    spool = LineSpool(tmp_path)
    assert not spool and len(spool) == 0 and list(spool) == []
    for line in lines:
        spool.append(line)
    assert spool and len(spool) == 3
    assert list(spool) == lines
    assert list(spool) == lines  # read again (the keeper reads once; a retry may not)
    assert spool.targets == {("openai", "gpt-5-mini"), ("openai", "text-embedding-3-small"),
                             ("anthropic", "claude-haiku")}
    assert list(tmp_path.iterdir()) == []  # unlinked: nothing left behind by a crash
    spool.clear()
    assert len(spool) == 0 and list(spool) == []


def test_many_lines_come_back_across_chunks_in_order(tmp_path: Path) -> None:
    lines = [JobLine(n, f"r{n}", Endpoint.CHAT, "openai", "gpt-5-mini", b'{"n":%d}' % n)
             for n in range(1, 2 * CHUNK + 502)]
    spool = LineSpool(tmp_path)
    for line in lines:
        spool.append(line)
    assert len(spool) == len(lines)
    assert list(spool) == lines
