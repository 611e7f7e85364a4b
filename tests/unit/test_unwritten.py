"""The keys on their way to the cache file, as the job keeper sees them."""

from __future__ import annotations

from llmspool.cache.unwritten import UnwrittenKeys


def test_a_key_is_unwritten_until_every_commit_that_carries_it_has_landed() -> None:
    unwritten = UnwrittenKeys()
    unwritten.kept([b"a", b"b"])
    unwritten.kept([b"a"])  # answered again before the first commit landed
    unwritten.landed([b"a", b"b"])
    assert b"a" in unwritten and b"b" not in unwritten
    unwritten.landed([b"a"])
    assert b"a" not in unwritten and len(unwritten) == 0


def test_a_landing_it_never_saw_leaves_the_others_alone() -> None:
    unwritten = UnwrittenKeys()
    unwritten.kept([b"a"])
    unwritten.landed([b"b"])
    assert b"a" in unwritten and b"b" not in unwritten
